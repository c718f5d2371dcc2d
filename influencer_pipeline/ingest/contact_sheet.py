"""A small JPEG grid of the kept images, sized to embed in Dagster metadata (which stores it in the run DB).

Tiles shrink with the number of images so the sheet stays around a megapixel, then the JPEG quality (and,
as a last resort, the tile size) steps down until the file fits `MAX_BYTES`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw

from influencer_pipeline.images import encode_jpeg

TILE = 128
MAX_BYTES = 140_000
_GAP = 4
_MAX_WIDTH = 1024
_SHEET_PIXELS = 1_000_000
_BACKGROUND = (32, 32, 32)
_QUALITIES = (85, 70, 55, 40)


def thumbnail(image: Image.Image) -> Image.Image:
    """The largest tile a sheet will use; workers make it so the parent never re-decodes curated images."""
    return image.resize((TILE, TILE), Image.Resampling.BOX, reducing_gap=2.0)


def contact_sheet(thumbs: Sequence[Image.Image], max_bytes: int = MAX_BYTES) -> bytes:
    """JPEG bytes of `thumbs` in a grid, at most `max_bytes` long; a labelled placeholder when empty."""
    if not thumbs:
        return encode_jpeg(_placeholder(), _QUALITIES[0])
    tile = min(TILE, math.isqrt(_SHEET_PIXELS // len(thumbs)))
    while True:
        sheet = _grid(thumbs, tile)
        for quality in _QUALITIES:
            data = encode_jpeg(sheet, quality)
            if len(data) <= max_bytes or (tile <= 16 and quality == _QUALITIES[-1]):
                return data
        tile = tile * 3 // 4


def _grid(thumbs: Sequence[Image.Image], tile: int) -> Image.Image:
    columns = max(1, min(math.ceil(math.sqrt(len(thumbs))), _MAX_WIDTH // (tile + _GAP)))
    rows = math.ceil(len(thumbs) / columns)
    step = tile + _GAP
    sheet = Image.new("RGB", (columns * step + _GAP, rows * step + _GAP), _BACKGROUND)
    for index, thumb in enumerate(thumbs):
        row, column = divmod(index, columns)
        small = thumb if thumb.size == (tile, tile) else thumb.resize((tile, tile), Image.Resampling.BOX)
        sheet.paste(small, (_GAP + column * step, _GAP + row * step))
    return sheet


def _placeholder() -> Image.Image:
    image = Image.new("RGB", (320, 80), _BACKGROUND)
    ImageDraw.Draw(image).text((16, 30), "no images kept: see the rejection reasons", fill=(230, 230, 230))
    return image
