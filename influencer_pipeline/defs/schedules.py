"""The content calendar: every day, plan and render *today's* content for every active persona."""

import os

import dagster as dg

from influencer_pipeline.defs.partitions import personas
from influencer_pipeline.defs.resources import MediaStoreResource
from influencer_pipeline.errors import InputError
from influencer_pipeline.personas import load_persona

daily_content_job = dg.define_asset_job(
    "daily_content",
    selection=dg.AssetSelection.groups("content"),
    description="Plan, render and cut today's posts for one persona (requested by content_calendar).",
)

CONTENT_HOUR = int(os.environ.get("CONTENT_SCHEDULE_HOUR", "6"))
CONTENT_TIMEZONE = os.environ.get("CONTENT_TIMEZONE", "UTC")


@dg.schedule(
    job=daily_content_job,
    cron_schedule=f"0 {CONTENT_HOUR} * * *",
    execution_timezone=CONTENT_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at CONTENT_SCHEDULE_HOUR (CONTENT_TIMEZONE): today's content for each active persona.",
)
def content_calendar(context: dg.ScheduleEvaluationContext, media: MediaStoreResource):
    """One run per active persona for the tick's own date (not yesterday's, which is Dagster's default)."""
    day = context.scheduled_execution_time.date().isoformat()
    store = media.get_store()
    requests = []
    for slug in sorted(context.instance.get_dynamic_partitions(personas.name)):
        try:
            if not load_persona(store, slug).active:
                continue
        except InputError as err:
            context.log.warning(f"skipping {slug}: {err}")
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"content:{day}:{slug}",
                partition_key=dg.MultiPartitionKey({"date": day, "persona": slug}),
                tags={"persona": slug, "content_date": day},
            )
        )
    return requests or dg.SkipReason(f"no active persona for {day}")
