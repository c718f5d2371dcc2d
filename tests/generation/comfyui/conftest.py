"""The stand-in ComfyUI every test here runs against: a fresh one per test, with a shared loras folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.generation.comfy_standin import ComfyStandin


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[ComfyStandin]:
    (tmp_path / "loras").mkdir()
    with ComfyStandin(output_dir=tmp_path / "output", loras_dir=tmp_path / "loras", seconds_per_image=0.02) as server:
        yield server
