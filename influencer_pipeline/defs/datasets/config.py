"""Launchpad config of the datasets group's assets (checked before a run is queued, see admin/run_coordinator.py)."""

import dagster as dg
from pydantic import Field

from influencer_pipeline.ingest.settings import IngestSettings

_DEFAULTS = IngestSettings()


class TrainingImagesConfig(dg.Config):
    """Curation thresholds; defaults suit SD1.5 LoRA training. See docs/SETUP.md for what each rule does."""

    min_short_side: int = Field(_DEFAULTS.min_short_side, ge=64, le=8192)
    resolution: int = Field(_DEFAULTS.resolution, ge=128, le=2048, multiple_of=64)
    max_pixels: int = Field(_DEFAULTS.max_pixels, ge=1_000_000)
    min_sharpness: float = Field(_DEFAULTS.min_sharpness, ge=0)
    min_brightness: float = Field(_DEFAULTS.min_brightness, ge=0, le=255)
    max_brightness: float = Field(_DEFAULTS.max_brightness, ge=0, le=255)
    duplicate_distance: int = Field(_DEFAULTS.duplicate_distance, ge=0, le=64)
    animated: str = Field(_DEFAULTS.animated, pattern="^(first_frame|reject)$")
    workers: int = Field(_DEFAULTS.workers, ge=1, le=64)


class ImageCaptionsConfig(dg.Config):
    overwrite: bool = Field(False, description="Re-caption images that already have a caption (needs a model).")
