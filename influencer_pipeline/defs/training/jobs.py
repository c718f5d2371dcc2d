"""Jobs of the training group: train a persona's LoRA, or run its whole dataset-to-LoRA pipeline (GPU pool)."""

from __future__ import annotations

import dagster as dg

from influencer_pipeline.dagster_layer.tags import GPU_TAGS

persona_training_job = dg.define_asset_job(
    "persona_training",
    selection=dg.AssetSelection.groups("training"),
    tags=GPU_TAGS,
    description="Train the persona's LoRA and render its sample grid (GPU pool).",
)


persona_pipeline_job = dg.define_asset_job(
    "persona_pipeline",
    selection=dg.AssetSelection.groups("datasets", "training"),
    tags=GPU_TAGS,
    description="Dataset, captions, LoRA and samples for one persona: what a new or changed upload folder starts.",
)
