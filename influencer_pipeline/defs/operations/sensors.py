"""Run notifications: when any job of this code location succeeds or fails, POST a signed webhook.

The payload, signing and retries live in `influencer_pipeline.notify` (plain Python); this module only turns a run
status sensor's context into a `RunEvent` and reads the destinations from the environment:

* ``NOTIFY_WEBHOOK_URLS``: comma-separated generic webhooks (n8n, any URL), JSON body, HMAC-signed.
* ``NOTIFY_SLACK_WEBHOOK_URL``: a Slack incoming webhook, Block Kit body.
* ``NOTIFY_WEBHOOK_SECRET``: the HMAC secret; required when ``NOTIFY_WEBHOOK_URLS`` is set.
* ``DAGSTER_UI_URL``: the UI's base URL (e.g. ``https://dagster.example.com``), for the run link.

URLs and the secret are `dg.EnvVar`s: read at run time, never stored in the definitions or shown in the UI. With
nothing configured the sensors still run and do nothing, so a laptop needs no setup.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import dagster as dg

from influencer_pipeline.dagster_layer.notifier import NotifierResource
from influencer_pipeline.notify import (
    EVENT_FAILURE,
    EVENT_SUCCESS,
    Failure,
    RunEvent,
    truncate_message,
)

if TYPE_CHECKING:
    from dagster._utils.error import SerializableErrorInfo


def run_event(
    context: dg.RunStatusSensorContext, notifier: NotifierResource, event: str, failure: Failure | None
) -> RunEvent:
    """The facts a receiver needs, read from the run and its event log."""
    run = context.dagster_run
    record = context.instance.get_run_record_by_id(run.run_id)
    return RunEvent(
        event=event,
        run_id=run.run_id,
        job=run.job_name,
        status="SUCCESS" if failure is None else "FAILURE",
        partition=run.tags.get("dagster/partition"),
        assets=materialized_assets(context.instance, run.run_id),
        failure=failure,
        run_url=notifier.run_url(run.run_id),
        timestamp=record.end_time if record and record.end_time else time.time(),
    )


def materialized_assets(instance: dg.DagsterInstance, run_id: str) -> tuple[str, ...]:
    """Asset keys this run materialised, in order, each once (a partitioned run may write one key many times)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    keys = (record.event_log_entry.asset_materialization.asset_key.to_user_string() for record in records)
    return tuple(dict.fromkeys(keys))


def failure_of(context: dg.RunFailureSensorContext) -> Failure:
    """The first failed step and its own error (not Dagster's wrapper), else the run-level failure message.

    Failed asset checks of the run add a line each with their description: a blocking check's own error only
    names the check, while its description says what is wrong (e.g. which posts are late, and why).
    """
    checks = failed_checks(context.instance, context.dagster_run.run_id)
    for step_event in context.get_step_failure_events():
        error = step_event.step_failure_data.error
        if error is not None:
            message = "\n".join([_root_message(error), *checks])
            return Failure(step=step_event.step_key, message=truncate_message(message))
    message = "\n".join([context.failure_event.message or "The run failed.", *checks])
    return Failure(step=None, message=truncate_message(message))


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """One line per failed asset check evaluation of the run: `<asset>.<check>: <description>`."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    lines = []
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not evaluation.passed:
            name = f"{evaluation.asset_key.to_user_string()}.{evaluation.check_name}"
            lines.append(f"{name}: {evaluation.description or 'failed'}")
    return lines


def _root_message(error: SerializableErrorInfo) -> str:
    """Dagster wraps user errors ("Error occurred while executing op ..."); the cause says what went wrong."""
    while error.cause is not None:
        error = error.cause
    return error.message


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="run_success_notifier",
    description="POSTs a signed notification for every successful run of this code location.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_success_notifier(context: dg.RunStatusSensorContext, notifier: NotifierResource) -> None:
    _send(context, notifier, run_event(context, notifier, EVENT_SUCCESS, failure=None))


@dg.run_failure_sensor(
    name="run_failure_notifier",
    description="POSTs a signed notification, with the failing step and message, for every failed run.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_failure_notifier(context: dg.RunFailureSensorContext, notifier: NotifierResource) -> None:
    _send(context, notifier, run_event(context, notifier, EVENT_FAILURE, failure=failure_of(context)))


def _send(context: dg.RunStatusSensorContext, notifier: NotifierResource, event: RunEvent) -> None:
    """Returns nothing on purpose: a run status sensor that returns a value stops processing runs for that tick.

    A delivery failure raises: Dagster then records it on the sensor tick and as an event on the run itself.
    """
    sent = notifier.send(event)
    context.log.info(f"{event.event} for run {event.run_id}: notified {len(sent)} webhook(s) {sent}")


notification_sensors = [run_success_notifier, run_failure_notifier]


follow_upstream = dg.AutomationConditionSensorDefinition(
    "follow_upstream",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
