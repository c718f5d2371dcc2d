"""Fixtures for the ingest tests: the shared synthetic-photo helpers (`tests/images.py`) as fixtures.

`store` comes from `tests/conftest.py` and runs each test on the local-folder and the S3 backend.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image

from tests import images


@pytest.fixture(scope="session")
def make_photo() -> Callable[..., Image.Image]:
    """`make_photo(seed, size=(768, 1024))`: a sharp, well-exposed photo-like image, distinct per seed."""
    return images.make_photo


@pytest.fixture(scope="session")
def encode() -> Callable[..., bytes]:
    """`encode(image, "JPEG", **save_params)`: the encoded bytes."""
    return images.encode


@pytest.fixture(scope="session")
def png_bomb() -> Callable[[int, int], bytes]:
    """`png_bomb(width, height)`: a tiny valid 1-bit PNG of huge dimensions."""
    return images.png_bomb
