"""Pre-flight of one image: upright, in a format the platform takes, inside its aspect range, size and byte limit.

Only the edges of a picture are ever lost (a centred crop to the nearest allowed aspect ratio), and each change is
reported; the colour conversion and the JPEG encoder are the shared ones in `influencer_pipeline.images`.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageOps

from influencer_pipeline import images
from influencer_pipeline.platforms import ImageRules
from influencer_pipeline.publishing.preflight.report import Outcome, aspect_range, megabytes

EXIF_ORIENTATION = 0x0112


def check_image(rules: ImageRules, platform: str, path: Path, target: Path) -> Outcome:
    outcome = Outcome(path)
    try:
        fixed = _fixed_image(rules, platform, path, outcome)
    except OSError as error:  # Pillow read the header but not the pixels: a truncated or corrupt file
        outcome.problems.append(f"{path.name}: the image cannot be decoded ({error}). Fix: generate it again")
        return outcome
    if fixed is not None:
        data, reasons = fixed
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        outcome.path = target
        outcome.changes.insert(0, f"{path.name}: posting a fixed JPEG copy {target.name} because {'; '.join(reasons)}")
    return outcome


def _fixed_image(rules: ImageRules, platform: str, path: Path, outcome: Outcome) -> tuple[bytes, list[str]] | None:
    """The JPEG to post instead of `path` and why, or None when the original is fine (or cannot be fixed)."""
    with Image.open(path) as image:
        if getattr(image, "n_frames", 1) > 1:
            outcome.problems.append(
                f"{path.name}: an animated {image.format}; {platform} would post its first frame only. "
                "Fix: render it as a video (reel) or export one still"
            )
            return None
        reasons = _image_reasons(rules, platform, image, path)
        if not reasons:
            return None
        picture = images.to_srgb(ImageOps.exif_transpose(image))
    picture = _crop_to_aspect(rules, platform, path.name, picture, outcome)
    picture = _downscale_image(rules, platform, path.name, picture, outcome)
    picture = _crop_to_aspect(rules, platform, path.name, picture, Outcome(path))  # undo rounding, ≤ 1 px
    data = _encode_jpeg(rules, platform, path.name, picture, outcome)
    return None if data is None else (data, reasons)


def _image_reasons(rules: ImageRules, platform: str, image: Image.Image, path: Path) -> list[str]:
    """Why this image cannot go as it is (empty: post the original)."""
    reasons = []
    if image.format not in rules.formats:
        reasons.append(f"{platform} takes {'/'.join(sorted(rules.formats))}, not {image.format} ({rules.source})")
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        reasons.append("its EXIF orientation tag rotates it, which some platforms ignore")
    width, height = _displayed_size(image)
    if rules.aspect and not rules.aspect[0] <= width / height <= rules.aspect[1]:
        reasons.append(
            f"its aspect ratio {width / height:.2f}:1 is outside {platform}'s {aspect_range(rules.aspect)} "
            f"({rules.source})"
        )
    if _fit_scale(rules, width, height) < 1:
        reasons.append(f"{width}x{height} is larger than {platform}'s {_size_limit(rules)} ({rules.source})")
    size = path.stat().st_size
    if size > rules.max_bytes:
        reasons.append(f"{megabytes(size)} is over {platform}'s {megabytes(rules.max_bytes)} ({rules.source})")
    return reasons


def _displayed_size(image: Image.Image) -> tuple[int, int]:
    """Width and height as a viewer sees them: EXIF orientations 5-8 swap the sides."""
    swapped = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    return (image.height, image.width) if swapped else image.size


def _crop_to_aspect(rules: ImageRules, platform: str, name: str, image: Image.Image, outcome: Outcome) -> Image.Image:
    """Crop, centred, to the nearest allowed aspect ratio: the least picture lost that makes the platform take it."""
    if rules.aspect is None:
        return image
    low, high = rules.aspect
    width, height = image.size
    if width / height > high:
        new_width = math.floor(height * high)
        box = ((width - new_width) // 2, 0, (width - new_width) // 2 + new_width, height)
        edges = "left and right"
    elif width / height < low:
        new_height = math.floor(width / low)
        box = (0, (height - new_height) // 2, width, (height - new_height) // 2 + new_height)
        edges = "top and bottom"
    else:
        return image
    cropped = image.crop(box)
    outcome.changes.append(
        f"{name}: cropped {width}x{height} ({width / height:.2f}:1) to {cropped.width}x{cropped.height} "
        f"({cropped.width / cropped.height:.2f}:1), centred, cutting the {edges} edges: {platform} accepts "
        f"{aspect_range(rules.aspect)} ({rules.source})"
    )
    return cropped


def _fit_scale(rules: ImageRules, width: int, height: int) -> float:
    scale = 1.0
    if rules.max_width:
        scale = min(scale, rules.max_width / width)
    if rules.max_box:
        long_side, short_side = rules.max_box
        scale = min(scale, long_side / max(width, height), short_side / min(width, height))
    return scale


def _downscale_image(rules: ImageRules, platform: str, name: str, image: Image.Image, outcome: Outcome) -> Image.Image:
    scale = _fit_scale(rules, image.width, image.height)
    if scale >= 1:
        return image
    size = (max(1, math.floor(image.width * scale)), max(1, math.floor(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    outcome.changes.append(
        f"{name}: downscaled {image.width}x{image.height} to {resized.width}x{resized.height}: {platform}'s maximum "
        f"is {_size_limit(rules)} ({rules.source})"
    )
    return resized


def _encode_jpeg(rules: ImageRules, platform: str, name: str, image: Image.Image, outcome: Outcome) -> bytes | None:
    """Baseline JPEG at the best quality that fits the byte limit, then at 3/4 the size, until it is useless."""
    fitted = images.jpeg_within(image, rules.max_bytes)
    if fitted is None:
        outcome.problems.append(
            f"{name}: no JPEG of it fits {platform}'s {megabytes(rules.max_bytes)} ({rules.source}). "
            "Fix: use a smaller or simpler image"
        )
        return None
    if fitted.quality != images.JPEG_QUALITIES[0] or fitted.size != image.size:
        outcome.changes.append(
            f"{name}: saved at JPEG quality {fitted.quality}, {fitted.size[0]}x{fitted.size[1]}, to fit {platform}'s "
            f"{megabytes(rules.max_bytes)} ({rules.source})"
        )
    return fitted.data


def _size_limit(rules: ImageRules) -> str:
    limits = []
    if rules.max_width:
        limits.append(f"{rules.max_width} px wide")
    if rules.max_box:
        limits.append(f"{rules.max_box[0]}x{rules.max_box[1]} px")
    return " and ".join(limits)
