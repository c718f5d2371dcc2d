"""Jobs of the publishing group."""

from __future__ import annotations

import dagster as dg

publish_job = dg.define_asset_job(
    "publish_posts",
    selection=dg.AssetSelection.assets("published_posts"),
    description="Publish a day's due posts for one persona through the ledger (requested by due_posts_sensor).",
)
