"""The content calendar: each day, prepare a day ahead (default: tomorrow) for every active persona.

Preparing ahead leaves a review window before anything is due. A day that already has a plan is left alone
(launch with `regenerate: true` to rewrite it); a day whose plan went stale because persona.yaml changed is
regenerated, unless one of its posts was already published. Each persona is evaluated on its own: one bad
persona.yaml is logged and skipped, and every other persona is still planned.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from influencer_pipeline.content.plan import ContentPlan
from influencer_pipeline.dagster_layer.loras import lora_blocker
from influencer_pipeline.dagster_layer.partitions import personas
from influencer_pipeline.dagster_layer.plans import plan_key, published_count
from influencer_pipeline.dagster_layer.resources import MediaStoreResource
from influencer_pipeline.dagster_layer.settings import CalendarSettings, load_settings
from influencer_pipeline.defs.content.jobs import daily_content_job
from influencer_pipeline.errors import InputError
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.personas import load_persona
from influencer_pipeline.profile_inputs import plan_digest


def build_content_calendar(settings: CalendarSettings) -> dg.ScheduleDefinition:
    """The `content_calendar` schedule for these settings: its cron, time zone and lead time (`CalendarSettings`)."""

    @dg.schedule(
        name="content_calendar",
        job=daily_content_job,
        cron_schedule=settings.cron,
        execution_timezone=settings.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Daily at {settings.hour:02d}:{settings.minute:02d} ({settings.timezone}): the content of "
        f"the day {settings.lead_days} day(s) ahead for each active persona; days already planned are kept.",
    )
    def content_calendar(context: dg.ScheduleEvaluationContext, media: MediaStoreResource):
        day = (context.scheduled_execution_time.date() + timedelta(days=settings.lead_days)).isoformat()
        store = media.get_store()
        requests, skipped = [], []
        for slug in sorted(context.instance.get_dynamic_partitions(personas.name)):
            try:
                request, reason = plan_persona(context.instance, store, slug, day)
            except InputError as err:
                request, reason = None, str(err)
                context.log.warning(f"{slug}: not planned for {day}: {reason}")
            except Exception as err:  # one persona's surprise must not stop every other persona's content
                request, reason = None, f"{type(err).__name__}: {err}"
                context.log.error(f"{slug}: not planned for {day}: {reason}")
            else:
                if reason:
                    context.log.info(f"{slug}: not planned for {day}: {reason}")
            if request is not None:
                requests.append(request)
            else:
                skipped.append(f"{slug}: {reason}")
        return requests or dg.SkipReason(f"nothing to prepare for {day}: " + "; ".join(skipped or ["no persona"]))

    return content_calendar


def plan_persona(
    instance: dg.DagsterInstance, store: MediaStore, slug: str, day: str
) -> tuple[dg.RunRequest | None, str]:
    """The run that prepares `day` for persona `slug`, or None and the reason nothing is to be done."""
    persona = load_persona(store, slug)
    if not persona.active:
        return None, "inactive (active: false in persona.yaml)"
    blocker = lora_blocker(instance, store, persona)
    if blocker:
        return None, blocker
    partition = dg.MultiPartitionKey({"date": day, "persona": slug})
    tags = {"persona": slug, "content_date": day}
    if not store.exists(plan_key(slug, day)):
        return dg.RunRequest(run_key=f"content:{day}:{slug}", partition_key=partition, tags=tags), ""
    plan = ContentPlan.model_validate_json(store.read_bytes(plan_key(slug, day)))
    current = plan_digest(persona)
    if plan.profile_digest == current:
        return None, "already planned (launch daily_content with content_plan regenerate: true to rewrite it)"
    published = published_count(instance, str(partition))
    if published:
        return None, f"plan is stale (persona.yaml changed) but {published} post(s) went out: kept as posted"
    return (
        dg.RunRequest(
            run_key=f"content:{day}:{slug}:{current[:12]}",
            partition_key=partition,
            tags={**tags, "regenerate": "stale plan"},
            run_config={"ops": {"content_plan": {"config": {"regenerate": True}}}},
        ),
        "",
    )


@dg.definitions
def calendar_schedule() -> dg.Definitions:
    """The content calendar, built from the settings the definitions are built with, never at import."""
    return dg.Definitions(schedules=[build_content_calendar(load_settings().calendar)])
