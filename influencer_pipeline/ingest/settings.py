"""Curation settings for a persona's training dataset: one frozen value, recorded in the manifest."""

from __future__ import annotations

from dataclasses import dataclass

from influencer_pipeline.errors import InputError

ANIMATED_CHOICES = ("first_frame", "reject")


@dataclass(frozen=True)
class IngestSettings:
    """Thresholds and output shape for `curate`.

    `min_sharpness` is the variance of the 4-neighbour Laplacian on the 512-pixel grayscale working copy of
    the cropped image (see `quality.py`). Calibrated on a real portrait (matplotlib's `grace_hopper.jpg`
    sample): sharp it scores about 630; blurred by a Gaussian of sigma 1 at 512 px about 110, sigma 1.5
    about 40, sigma 2 about 20. 40 therefore rejects only images that are visibly soft even at training
    resolution, and keeps shallow-depth-of-field portraits whose background is smooth on purpose.

    `max_pixels` is checked from the header before decoding. PIL's own process-wide limit
    (`Image.MAX_IMAGE_PIXELS`, about 89 MP, left untouched) also rejects, so raising `max_pixels` above it
    has no effect.
    """

    min_short_side: int = 512
    resolution: int = 512
    max_pixels: int = 80_000_000
    min_sharpness: float = 40.0
    min_brightness: float = 25.0
    max_brightness: float = 230.0
    duplicate_distance: int = 6
    animated: str = "first_frame"
    workers: int = 2

    def __post_init__(self) -> None:
        if self.animated not in ANIMATED_CHOICES:
            self._fail("animated", f"must be one of {', '.join(ANIMATED_CHOICES)}, not {self.animated!r}")
        if self.workers < 1:
            self._fail("workers", f"must be at least 1 (1 = in-process), not {self.workers}")
        if self.resolution < 64:
            self._fail("resolution", f"must be at least 64 pixels, not {self.resolution}")
        if not 0 <= self.min_brightness < self.max_brightness <= 255:
            self._fail("min_brightness/max_brightness", "must satisfy 0 <= min < max <= 255")
        if not 0 <= self.duplicate_distance <= 64:
            self._fail("duplicate_distance", f"must be 0-64 bits, not {self.duplicate_distance}")

    def _fail(self, field: str, rule: str) -> None:
        raise InputError(f"ingest setting {field}", rule, f"set {field} to a valid value")
