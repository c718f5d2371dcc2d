"""The content calendar: each day, prepare a day ahead (default: tomorrow) for every active persona.

Preparing ahead leaves a review window before anything is due. A day that already has a plan is left alone
(launch with `regenerate: true` to rewrite it); a day whose plan went stale because persona.yaml changed is
regenerated, unless one of its posts was already published. Each persona is evaluated on its own: one bad
persona.yaml is logged and skipped, and every other persona is still planned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg

from influencer_pipeline.content.plan import ContentPlan
from influencer_pipeline.dagster_layer.loras import lora_blocker
from influencer_pipeline.dagster_layer.partitions import HORIZON_DAYS, personas
from influencer_pipeline.dagster_layer.plans import plan_key, published_count
from influencer_pipeline.dagster_layer.resources import MediaStoreResource
from influencer_pipeline.defs.content.jobs import daily_content_job
from influencer_pipeline.errors import InputError
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.personas import load_persona
from influencer_pipeline.profile_inputs import plan_digest


@dataclass(frozen=True)
class CalendarSettings:
    """When the calendar runs and how far ahead it prepares; see docs/SETUP.md."""

    hour: int = 6
    minute: int = 0
    timezone: str = "UTC"
    lead_days: int = 1  # 1: each tick prepares tomorrow; 0: today (no review window)
    horizon_days: int = HORIZON_DAYS  # the last date partition is this many days after today

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.hour <= 23:
            problems.append(f"CONTENT_SCHEDULE_HOUR={self.hour}: must be 0-23")
        if not 0 <= self.minute <= 59:
            problems.append(f"CONTENT_SCHEDULE_MINUTE={self.minute}: must be 0-59")
        if not 0 <= self.lead_days <= self.horizon_days:
            problems.append(
                f"CONTENT_LEAD_DAYS={self.lead_days}: must be 0-{self.horizon_days} (CONTENT_HORIZON_DAYS), "
                "a day the calendar has a partition for"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"CONTENT_TIMEZONE={self.timezone!r}: not an IANA time zone such as 'Europe/Rome'")
        if problems:
            raise ValueError("; ".join(problems) + ". Fix: correct or unset these environment variables")

    @property
    def cron(self) -> str:
        return f"{self.minute} {self.hour} * * *"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CalendarSettings:
        env = dict(os.environ if env is None else env)

        def number(name: str, default: int) -> int:
            raw = env.get(name, str(default))
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r}: must be a whole number. Fix: e.g. {name}={default}") from None

        return cls(
            hour=number("CONTENT_SCHEDULE_HOUR", 6),
            minute=number("CONTENT_SCHEDULE_MINUTE", 0),
            timezone=env.get("CONTENT_TIMEZONE", "UTC"),
            lead_days=number("CONTENT_LEAD_DAYS", 1),
        )


def build_content_calendar(settings: CalendarSettings) -> dg.ScheduleDefinition:
    """The `content_calendar` schedule for these settings (read from the environment by `build_definitions`)."""

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
    """The content calendar, built from CALENDAR_* when the definitions load, never when this module is imported."""
    return dg.Definitions(schedules=[build_content_calendar(CalendarSettings.from_env())])
