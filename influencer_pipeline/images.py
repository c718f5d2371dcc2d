"""The one place pixels become sRGB RGB and JPEG bytes: upload curation, pre-flight and the Meta publishers share it.

Why one module: the platforms read images as sRGB (an untagged or wide-gamut file is shown with shifted colours) and
limit the file size, and curation wants the same upright 8-bit sRGB RGB for training. Three copies of this drifted
apart (one converted CMYK profiles, one did not; one flattened palette transparency, one did not), so each caller
now gets the same conversion and the same encoder.

Colour management is Pillow's ImageCms (LittleCMS): https://pillow.readthedocs.io/en/stable/reference/ImageCms.html.
JPEG options (`quality`, `optimize`, `progressive`): https://pillow.readthedocs.io/en/stable/handbook/image-file-formats.html#jpeg
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
JPEG_QUALITIES = (92, 85, 75, 60)  # tried in order; below 60 artefacts show on faces
MIN_SIDE_PX = 32  # below this a re-compressed image is useless: the caller reports instead


@dataclass(frozen=True)
class FittedJpeg:
    """A baseline JPEG that fits a byte limit, with the quality and size it took to get there."""

    data: bytes
    quality: int
    size: tuple[int, int]


def to_srgb(image: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """Any supported mode as 8-bit RGB in sRGB: CMYK and wide-gamut (Display P3, Adobe RGB...) profiles converted,
    16-bit grayscale scaled (not clipped), transparency composited on white. `notes` gets a sentence per change."""
    said = notes if notes is not None else []
    icc = image.info.get("icc_profile")
    if image.mode == "CMYK":
        return _cmyk_to_srgb(image, icc, said)
    if image.mode.startswith("I"):
        said.append(f"converted {image.mode} ({_bits(image.mode)}-bit) grayscale to 8-bit")
        image = _to_8bit(image)
    if image.mode == "P":
        transparent = "transparency" in image.info
        said.append("converted palette (P) image to RGB" + (" with its transparency" if transparent else ""))
        image = image.convert("RGBA" if transparent else "RGB")
    if image.mode in ALPHA_MODES:
        said.append(f"composited {image.mode} alpha on white")
        image = flatten_on_white(image)
    if image.mode != "RGB":
        said.append(f"converted {image.mode} to RGB")
        image = image.convert("RGB")
    return _rgb_profile_to_srgb(image, icc, said) if icc else image


def is_srgb_or_untagged(image: Image.Image) -> bool:
    """True when the embedded profile (if any) is sRGB: the image can be posted without a colour conversion."""
    icc = image.info.get("icc_profile")
    if not icc:
        return True
    try:
        return "srgb" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).lower()
    except (OSError, ImageCms.PyCMSError):
        return False


def flatten_on_white(image: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (what a viewer of a PNG on a light feed would see)."""
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Baseline (not progressive) optimized JPEG: every platform and every browser decodes it."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True, progressive=False)
    return buffer.getvalue()


def jpeg_within(image: Image.Image, max_bytes: int) -> FittedJpeg | None:
    """The best quality in `JPEG_QUALITIES` that fits `max_bytes`, then the same at 3/4 the size, and so on; None
    when even a `MIN_SIDE_PX` image does not fit (the caller says why that image cannot be posted)."""
    while min(image.size) >= MIN_SIDE_PX:
        for quality in JPEG_QUALITIES:
            data = encode_jpeg(image, quality)
            if len(data) <= max_bytes:
                return FittedJpeg(data, quality, image.size)
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)
    return None


def _bits(mode: str) -> int:
    return 16 if mode.startswith("I;16") else 32


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit (or 32-bit integer holding 16-bit data) grayscale down to 0-255 instead of clipping."""
    pixels = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
        pixels = pixels / 257
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _cmyk_to_srgb(image: Image.Image, icc: bytes | None, notes: list[str]) -> Image.Image:
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, profile, SRGB, outputMode="RGB")
        except (OSError, ImageCms.PyCMSError) as exc:
            notes.append(f"embedded CMYK ICC profile unusable ({exc})")
        else:
            if converted is not None:
                notes.append("converted CMYK to sRGB RGB using the embedded ICC profile")
                return converted
    notes.append("converted CMYK to sRGB RGB (no usable ICC profile: approximate colours)")
    return image.convert("RGB")


def _rgb_profile_to_srgb(image: Image.Image, icc: bytes, notes: list[str]) -> Image.Image:
    """Convert a wide-gamut (Display P3, Adobe RGB...) embedded profile to sRGB; sRGB itself is left alone."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space.strip() != "RGB":
            return image
        name = ImageCms.getProfileDescription(profile).strip()
        if "srgb" in name.lower():
            return image
        converted = ImageCms.profileToProfile(image, profile, SRGB, outputMode="RGB")
    except (OSError, ImageCms.PyCMSError) as exc:
        notes.append(f"ignored an unreadable embedded ICC profile ({exc})")
        return image
    if converted is None:
        return image
    notes.append(f"converted embedded ICC profile '{name}' to sRGB")
    return converted
