"""Jobs of the datasets group."""

from __future__ import annotations

import dagster as dg

persona_dataset_job = dg.define_asset_job(
    "persona_dataset",
    selection=dg.AssetSelection.groups("datasets"),
    description="Curate and caption one persona's uploads (requested by the upload sensor).",
)
