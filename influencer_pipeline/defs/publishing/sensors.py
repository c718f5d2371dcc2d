"""The due-posts sensor: registers rendered days for review and requests a publish run per due persona and day."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from influencer_pipeline.dagster_layer import publishing as shared
from influencer_pipeline.dagster_layer.partitions import calendar
from influencer_pipeline.dagster_layer.plans import read_plan
from influencer_pipeline.dagster_layer.publishing import PublishingResource
from influencer_pipeline.dagster_layer.resources import MediaStoreResource
from influencer_pipeline.defs.publishing.assets import register
from influencer_pipeline.defs.publishing.jobs import publish_job
from influencer_pipeline.errors import InputError
from influencer_pipeline.publishing.due import due_runs
from influencer_pipeline.publishing.ledger import Ledger

REGISTER_BATCH = 200  # post_videos materializations registered per tick at most


@dg.sensor(
    job=publish_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers rendered days for review, then requests a run per persona and day with due posts "
    "(any day, retries and crash recovery included); run keys change whenever an attempt is released.",
)
def due_posts_sensor(context: dg.SensorEvaluationContext, media: MediaStoreResource, publishing: PublishingResource):
    now = shared.CLOCK()
    ledger = publishing.ledger()
    cursor = register_new_days(context, media, ledger, now)
    requests = [
        dg.RunRequest(
            run_key=run.run_key, partition_key=dg.MultiPartitionKey({"date": run.day, "persona": run.persona})
        )
        for run in due_runs(ledger, now)
    ]
    if not requests:
        return dg.SensorResult(skip_reason=dg.SkipReason("no post is due"), cursor=cursor)
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def register_new_days(
    context: dg.SensorEvaluationContext, media: MediaStoreResource, ledger: Ledger, now: datetime
) -> str:
    """Register the days whose post_videos materialised since the cursor: new work only, never the history
    (the media store, an S3 client in production, is opened only when there is something to read)."""
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("post_videos"), after_storage_id=after),
        limit=REGISTER_BATCH,
        ascending=True,
    ).records
    store = media.get_store() if records else None
    for record in records:
        after = record.storage_id
        key = record.partition_key
        if key is None:
            continue
        keys = calendar.get_partition_key_from_str(key).keys_by_dimension
        day, slug = keys["date"], keys["persona"]
        try:
            assert store is not None
            plan = read_plan(store, slug, day)
            register(ledger, store, slug, day, plan, f"videos:{record.storage_id}", now)
        except (InputError, ValueError) as exc:  # a missing or invalid plan or persona.yaml (pydantic: ValueError)
            context.log.warning(f"{day}|{slug} is not registered for publishing: {exc}")
    return str(after) if after is not None else (context.cursor or "")
