"""Square training crops.

The crop is the largest square that fits, horizontally centred. For portrait images the window is not
vertically centred: its centre sits one third of the way down (clamped to the image), because in portraits
and full-body shots the face is almost always in the upper third, and a centre crop of a 9:16 phone photo
cuts the head off. Landscape and square images are centred both ways.
"""

from __future__ import annotations

from PIL import Image

Box = tuple[int, int, int, int]


def crop_box(width: int, height: int) -> Box:
    """(left, top, right, bottom) of the square training crop of a `width` x `height` image."""
    side = min(width, height)
    left = (width - side) // 2
    top = 0
    if height > width:
        top = min(max(round(height / 3 - side / 2), 0), height - side)
    return left, top, left + side, top + side


def square_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Crop and resize in one pass; `reducing_gap` lets PIL box-reduce first, then finish with LANCZOS."""
    box = crop_box(*image.size)
    size = (resolution, resolution)
    return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
