"""A labelled contact grid of images as one PNG: how `lora_samples` shows a LoRA's samples at a glance."""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw, ImageFont, ImageOps

BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
GAP = 4
LABEL_HEIGHT = 20


def render_grid(
    images: list[Image.Image], labels: list[str] | None = None, columns: int | None = None, cell: int | None = None
) -> bytes:
    """Images in a near-square grid, each fitted into a `cell`-pixel square with its label (truncated) beneath.

    `cell` defaults to the largest image side clamped to 128-512, so tiny 64 px samples are enlarged enough to
    see and full-size renders are shrunk to a thumbnail-friendly grid.
    """
    if not images:
        raise ValueError("render_grid needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"render_grid got {len(images)} images but {len(labels)} labels")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell = cell or min(max(max(max(image.size) for image in images), 128), 512)
    band = LABEL_HEIGHT if labels else 0
    sheet = Image.new("RGB", (columns * (cell + GAP) + GAP, rows * (cell + band + GAP) + GAP), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for index, image in enumerate(images):
        x = GAP + (index % columns) * (cell + GAP)
        y = GAP + (index // columns) * (cell + band + GAP)
        fitted = ImageOps.contain(image.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)
        sheet.paste(fitted, (x + (cell - fitted.width) // 2, y + (cell - fitted.height) // 2))
        if labels:
            draw.text((x + 2, y + cell + 3), _fit(draw, labels[index], font, cell - 4), fill=TEXT, font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """`text` on one line, cut with an ellipsis where it would overflow the cell."""
    text = " ".join(text.split())
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
