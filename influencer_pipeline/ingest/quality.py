"""Image quality measures on a small grayscale working copy: sharpness, exposure and a perceptual hash.

All three run on a fixed-size copy (`WORK_SIZE` on the long side) so the numbers, and therefore the thresholds
in `IngestSettings`, mean the same thing whatever the source resolution: the variance of the Laplacian grows
when an image is downscaled, so measuring at the source size would make a 48 MP photo look blurrier than
the same photo at 12 MP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

WORK_SIZE = 512
HASH_SIZE = 8
_DCT_SIZE = 32
_DARK_LEVEL = 5
_BRIGHT_LEVEL = 250


def working_copy(image: Image.Image) -> np.ndarray:
    """Grayscale float32 copy whose long side is `WORK_SIZE` pixels."""
    gray = image.convert("L")
    scale = WORK_SIZE / max(gray.size)
    if scale != 1:
        size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
        gray = gray.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(gray, dtype=np.float32)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: low when edges are soft (blur, missed focus, motion)."""
    lap = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1]
    return float(lap.var())


@dataclass(frozen=True)
class Exposure:
    """Mean luminance (0-255) and the fractions of pixels crushed to black or blown to white."""

    brightness: float
    dark_fraction: float
    bright_fraction: float


def exposure(gray: np.ndarray) -> Exposure:
    return Exposure(
        brightness=float(gray.mean()),
        dark_fraction=float((gray <= _DARK_LEVEL).mean()),
        bright_fraction=float((gray >= _BRIGHT_LEVEL).mean()),
    )


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis, so `m @ x @ m.T` is the 2-D DCT of an n x n block."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT = _dct_matrix(_DCT_SIZE)


def phash(gray: np.ndarray) -> str:
    """64-bit DCT perceptual hash as 16 hex digits: survives resizing, recompression and small edits.

    The 32 x 32 thumbnail's lowest 8 x 8 frequencies are compared with their median (the DC term, which only
    says how bright the image is, is left out of the median as in the original pHash).
    """
    small = Image.fromarray(gray.astype(np.uint8)).resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.BOX)
    coeffs = _DCT @ np.asarray(small, dtype=np.float64) @ _DCT.T
    low = coeffs[:HASH_SIZE, :HASH_SIZE].flatten()
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
