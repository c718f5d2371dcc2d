"""Wire the studio (influencer_pipeline/studio/) to this deployment: media store, post ledger, accounts, and the
Dagster instance's last failures. Used by `ops/webserver_auth.py`, which serves the studio beside the UI.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import dagster as dg
from dagster._core.events import DagsterEventType

from influencer_pipeline.studio.app import ASGIApp, StudioRoutes
from influencer_pipeline.studio.overview import Failure, Overview, build_overview, day_for_review

RUNS_READ = 300  # the newest finished runs looked at for failures: enough for weeks of a few personas


def _persona_of(run: dg.DagsterRun, personas: Iterable[str]) -> str | None:
    partition = run.tags.get("dagster/partition", "")
    persona = run.tags.get("dagster/partition/persona") or partition.rsplit("|", 1)[-1]
    return persona if persona in personas else None


def _failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """The failed step's own message (a user error's text, with its fix), else the run's failure message."""
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE, limit=1).records:
        data = record.event_log_entry.dagster_event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        if data.error is not None:
            return data.error.message.strip()
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE, limit=1).records:
        return record.event_log_entry.dagster_event.message or "the run failed"
    return "the run failed; open it for its log"


def last_failures(instance: dg.DagsterInstance, personas: list[str]) -> dict[str, Failure]:
    """Per persona, its newest failed run unless a later run of the same job and partition succeeded."""
    runs = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS]), limit=RUNS_READ
    )
    seen: set[tuple[str, str]] = set()
    found: dict[str, Failure] = {}
    for record in runs:  # newest first
        run = record.dagster_run
        persona = _persona_of(run, personas)
        slot = (run.job_name, run.tags.get("dagster/partition", ""))
        if persona is None or slot in seen:
            continue
        seen.add(slot)
        if run.status == dg.DagsterRunStatus.FAILURE and persona not in found:
            when = datetime.fromtimestamp(record.end_time, UTC) if record.end_time else record.create_timestamp
            found[persona] = Failure(run.job_name, run.run_id, when, _failure_message(instance, run.run_id))
    return found


def studio_routes(app: ASGIApp, instance: dg.DagsterInstance, path_prefix: str = "") -> StudioRoutes:
    """The studio in front of `app`, reading the deployment's stores as the code location does (env vars)."""
    from influencer_pipeline.accounts.store import AccountStore
    from influencer_pipeline.dagster_layer.resources import media_store_for
    from influencer_pipeline.dagster_layer.settings import Settings
    from influencer_pipeline.publishing.decisions import ledger_from_env
    from influencer_pipeline.publishing.due import day_statuses

    store = media_store_for(Settings.from_env().media).get_store

    def overview() -> Overview:
        ledger = ledger_from_env()
        return build_overview(
            store(),
            today=datetime.now(UTC).date(),
            statuses=lambda persona, day: day_statuses(ledger, persona, day),
            accounts=AccountStore.from_env().list(),
            failures=lambda slugs: last_failures(instance, slugs),
        )

    def day(persona: str, day: str) -> list[dict]:
        ledger = ledger_from_env()
        return day_for_review(store(), persona, day, lambda p, d: day_statuses(ledger, p, d))

    return StudioRoutes(app, overview, store, day, path_prefix)
