"""Safe decoding of one upload into an upright 8-bit sRGB RGB image.

Uploads come from people's phones, cameras and browsers, so every failure is expected and becomes a
`Rejected` with a sentence a person can act on. Decoding happens in two steps so that the cheap checks run
on the header alone: `open_upload` identifies the file and refuses decompression bombs before a single pixel
is decoded, then `load_upload` decodes (JPEGs at a reduced DCT scale that is still at least what the crop
needs), applies the EXIF orientation and converts the colour mode and ICC profile to sRGB.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from influencer_pipeline.errors import InputError
from influencer_pipeline.images import to_srgb
from influencer_pipeline.ingest.settings import IngestSettings

EXTENSIONS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".mpo": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".gif": "GIF",
}
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # JPEG also opens MPO
SUPPORTED = "JPEG, PNG, WebP, BMP, TIFF and GIF"
ANIMATION_FORMATS = ("GIF", "PNG", "WEBP")
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_REUPLOAD = "re-export the photo from the original (or upload it again; the transfer may have been cut short)"


class Rejected(InputError):
    """An upload that breaks a curation rule. `reason` is the rule and the fix, without the file name."""

    @property
    def reason(self) -> str:
        return f"{self.rule}. Fix: {self.fix}"


@dataclass
class Decoded:
    """An upright RGB image, possibly decoded at a reduced scale; `width`/`height` are the original's."""

    image: Image.Image
    width: int
    height: int
    notes: list[str] = field(default_factory=list)


def open_upload(key: str, data: bytes, settings: IngestSettings) -> Image.Image:
    """Identify the file from its header and refuse what must never be decoded; nothing is decoded yet."""
    _check_extension(key)
    if not data:
        raise Rejected(key, "empty file: the upload is 0 bytes", _REUPLOAD)
    with _pil_errors(key, data):
        image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    width, height = image.size
    if width * height > settings.max_pixels:
        raise _bomb(key, f"{width} x {height} is {width * height / 1e6:.0f} megapixels", settings)
    return image


def check_header(key: str, image: Image.Image, settings: IngestSettings) -> None:
    """Rules that need only the header: minimum size (rotation does not change the short side), animation."""
    width, height = image.size
    if min(width, height) < settings.min_short_side:
        raise Rejected(
            key,
            f"too small: {width} x {height} pixels, the short side {min(width, height)} is below "
            f"min_short_side {settings.min_short_side}",
            f"use the original photo, at least {settings.min_short_side} pixels on its short side",
        )
    if settings.animated == "reject" and _is_animation(image):
        raise Rejected(
            key,
            f"animated {image.format}: {_frames(image)} frames and animated images are set to be rejected",
            "upload a still photo, or set animated='first_frame' to use the first frame",
        )


def load_upload(key: str, image: Image.Image, settings: IngestSettings) -> Decoded:
    """Decode (reduced for JPEG), orient and convert to sRGB RGB; `notes` says what was changed."""
    notes = _format_notes(key, image) + _frame_notes(image)
    header_size = image.size
    if image.format in ("JPEG", "MPO"):
        image.draft("RGB", draft_size(header_size, settings.resolution))
    with _pil_errors(key):
        image.load()
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in range(2, 9):
            image = ImageOps.exif_transpose(image)
            notes.append(f"applied EXIF orientation {orientation}")
    width, height = header_size[::-1] if orientation in (5, 6, 7, 8) else header_size
    return Decoded(to_srgb(image, notes), width, height, notes)


def draft_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The smallest size whose short side still covers `resolution`, for `Image.draft` to scale down to."""
    scale = resolution / min(size)
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def _check_extension(key: str) -> None:
    suffix = _suffix(key)
    if suffix not in EXTENSIONS:
        named = f"'{suffix}' files are" if suffix else "files without an extension are"
        raise Rejected(
            key,
            f"unsupported format: {named} not accepted (supported: {SUPPORTED})",
            "export the photo as JPEG or PNG and upload that",
        )


def _suffix(key: str) -> str:
    return PurePosixPath(key).suffix.lower()


def _format_notes(key: str, image: Image.Image) -> list[str]:
    """Say so when the content's format differs from what the name promises (it is decoded all the same)."""
    actual = "JPEG" if image.format == "MPO" else image.format
    if actual == EXTENSIONS[_suffix(key)]:
        return []
    return [f"content is {image.format} although the file is named {_suffix(key)}"]


def _bomb(key: str, detail: str, settings: IngestSettings) -> Rejected:
    return Rejected(
        key,
        f"decompression bomb: {detail}, above max_pixels {settings.max_pixels / 1e6:.0f} megapixels "
        "(decoding it could exhaust memory)",
        "resize the image below the limit, or raise max_pixels if you trust the file",
    )


@contextmanager
def _pil_errors(key: str, data: bytes = b"") -> Iterator[None]:
    """Turn PIL's failures (and its decompression-bomb warning) into rejections that say what is wrong."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected(
                key,
                f"decompression bomb: {exc}",
                "resize the image below the limit; PIL refuses to decode images this large",
            ) from None
        except UnidentifiedImageError:
            raise _unidentified(key, data) from None
        except Exception as exc:
            raise Rejected(key, f"corrupt or truncated file: {exc}", _REUPLOAD) from None


def _unidentified(key: str, data: bytes) -> Rejected:
    """Say what the file looks like when PIL cannot identify it: a damaged image, text/HTML, or unknown."""
    sniffed = _sniff(data)
    if sniffed:
        return Rejected(key, f"corrupt file: it starts like a {sniffed} file but its header cannot be read", _REUPLOAD)
    head = data[:1024]
    if b"\x00" not in head:
        text = head.decode("utf-8", errors="replace").lower()
        kind = "HTML (a web page saved under an image name?)" if "<html" in text or "<!doctype" in text else "text"
        return Rejected(
            key,
            f"not an image: the file contains {kind}, not image data",
            "save the picture itself (for example 'Save image as...') and upload that",
        )
    return Rejected(
        key,
        f"not an image: the contents match none of the supported formats ({SUPPORTED})",
        "export the photo as JPEG or PNG and upload that",
    )


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _frames(image: Image.Image) -> int:
    return getattr(image, "n_frames", 1)


def _is_animation(image: Image.Image) -> bool:
    return image.format in ANIMATION_FORMATS and _frames(image) > 1


def _frame_notes(image: Image.Image) -> list[str]:
    frames = _frames(image)
    if frames <= 1:
        return []
    if _is_animation(image):
        return [f"animated {image.format}: used first frame of {frames}"]
    what = "primary image" if image.format == "MPO" else "first frame"
    return [f"multi-frame {image.format}: used the {what} of {frames}"]
