"""Synthetic photo-like test images, shared by every test suite that needs pictures.

`make_photo` draws a smooth gradient, large random shapes, a detail texture and a fine grain: the shapes make
each seed's perceptual hash distinct, the texture keeps it sharp (high Laplacian variance) at any resolution once
downscaled to training size, and the colours keep the mean luminance mid-range, so a photo passes every curation
rule unless a test deliberately spoils it.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_DETAIL_CELLS = 500
_DETAIL_AMPLITUDE = 8.0


def make_photo(seed: int, size: tuple[int, int] = (768, 1024), grain: float = 10.0) -> Image.Image:
    """A sharp, well-exposed RGB image, visually distinct for every `seed` (width, height = `size`)."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = _gradient(rng, width, height)
    draw = ImageDraw.Draw(image)
    scale = min(width, height)
    for _ in range(14):
        x, y = rng.uniform(-0.1, 1.0, 2) * (width, height)
        w, h = rng.uniform(0.1, 0.5, 2) * scale
        colour = tuple(int(c) for c in rng.integers(40, 220, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=colour)
    for _ in range(6):
        points = [tuple(p) for p in rng.uniform(0, 1, (2, 2)) * (width, height)]
        draw.line(points, fill=tuple(int(c) for c in rng.integers(0, 255, 3)), width=max(2, scale // 200))
    image = image.filter(ImageFilter.GaussianBlur(scale / 600))
    noise = rng.standard_normal((height, width, 1), dtype=np.float32) * grain
    pixels = np.asarray(image, dtype=np.float32) + noise + _detail(rng, width, height)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _detail(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Texture about 1/500 of the short side across, like skin, fabric and foliage: it keeps a photo sharp
    once downscaled to training size, whatever its resolution (per-pixel grain alone averages away)."""
    factor = min(1.0, _DETAIL_CELLS / min(width, height))
    small = rng.standard_normal((max(1, round(height * factor)), max(1, round(width * factor))), dtype=np.float32)
    texture = Image.fromarray(small * _DETAIL_AMPLITUDE).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(texture)


def _gradient(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A linear blend between two random mid-tone colours at a random angle (drawn small, then upscaled)."""
    start, end = rng.integers(60, 200, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32) / 63
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    small = Image.fromarray((start + (end - start) * t[..., None]).astype(np.uint8))
    return small.resize((width, height), Image.Resampling.BILINEAR)


def encode(image: Image.Image, format: str, **params: object) -> bytes:
    """The bytes `image.save` writes in `format` (JPEG quality 90 unless given)."""
    if format == "JPEG":
        params.setdefault("quality", 90)
    buffer = io.BytesIO()
    image.save(buffer, format, **params)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of `width` x `height`: a few KB on disk, gigabytes once decoded."""
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
