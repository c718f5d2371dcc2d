"""Jobs of the content group: the daily plan, images and reels of every persona."""

from __future__ import annotations

import dagster as dg

daily_content_job = dg.define_asset_job(
    "daily_content",
    selection=dg.AssetSelection.groups("content"),
    description="Plan, render and cut one day's posts for one persona (requested by content_calendar).",
)
