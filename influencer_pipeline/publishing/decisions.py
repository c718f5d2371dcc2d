"""A person's review decisions, applied to the ledger the same way from every surface.

The `review_posts` job (Dagster UI launchpad, n8n over GraphQL) and `influencer-pipeline posts ...` all turn what
the person asked into `Decision`s and call `apply`, so the three surfaces cannot drift apart. A decision names a
post of a persona and, optionally, one platform (none: every platform the post is planned on). Every decision is
tried and its outcome reported; one that does not apply (a post already published, a time in the past) is an
`Outcome` with the reason and the fix, not an exception that leaves the rest undone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from influencer_pipeline.publishing import review
from influencer_pipeline.publishing.base import PublishError
from influencer_pipeline.publishing.due import PostStatus, day_statuses
from influencer_pipeline.publishing.ledger import PLANNED, Ledger, default_url, shared_ledger
from influencer_pipeline.publishing.outbox import bundle_folder, record_posted
from influencer_pipeline.publishing.review import PlannedView, PostKey, ReviewError

ACTIONS = ("keep", "approve", "hold", "reschedule", "publish_now", "mark_posted")


@dataclass(frozen=True)
class Decision:
    """What a person asked for one post (`platform` empty: all its platforms); `publish_at` only for reschedule."""

    persona: str
    post_id: str
    action: str
    platform: str = ""
    publish_at: datetime | None = None
    url: str = ""  # mark_posted: where the post is live, if the person gives it


@dataclass(frozen=True)
class Outcome:
    """One (post, platform) after a decision: its status now, or why the decision did not apply."""

    key: PostKey
    action: str
    status: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def ledger_from_env(environ: os._Environ[str] | dict[str, str] = os.environ) -> Ledger:
    """The ledger the pipeline publishes from: `POST_LEDGER_URL`, else SQLite under `WORK_DIR` (as the
    definitions read them, so the CLI and the job's launchpad defaults see the same rows as the runs)."""
    return shared_ledger(environ.get("POST_LEDGER_URL") or default_url(environ.get("WORK_DIR", "work")))


def outbox_from_env(environ: os._Environ[str] | dict[str, str] = os.environ) -> Path:
    return Path(environ.get("OUTBOX_DIR", "outbox")).resolve()


def parse_time(text: str, where: str) -> datetime:
    """An ISO 8601 time with its offset (`2026-12-07T18:30:00+01:00` or `...Z`); a bare time is refused."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReviewError(f"{where}: {text!r} is not a time; write it as 2026-12-07T18:30:00+00:00") from None
    if value.tzinfo is None:
        raise ReviewError(f"{where}: {text!r} has no timezone offset; add one, e.g. {text.strip()}+00:00")
    return value


def targets(ledger: Ledger, decision: Decision) -> list[PlannedView]:
    """The planned rows a decision acts on: the post on one platform, or on every platform it is planned on."""
    if decision.platform:
        view = review.get(ledger, PostKey(decision.persona, decision.post_id, decision.platform))
        return [view] if view else []
    query = (
        select(PLANNED)
        .where(PLANNED.c.persona == decision.persona, PLANNED.c.post_id == decision.post_id)
        .order_by(PLANNED.c.platform)
    )
    with ledger.engine.begin() as connection:
        return [PlannedView.from_row(row) for row in connection.execute(query).mappings()]


def apply(
    ledger: Ledger, decisions: list[Decision], *, reviewer: str, now: datetime, outbox: Path | None = None
) -> list[Outcome]:
    """Apply each decision to each of its rows; `keep` changes nothing. Never raises for a decision that does not
    apply: its outcome carries the reason."""
    outcomes: list[Outcome] = []
    for decision in decisions:
        if decision.action not in ACTIONS:
            key = PostKey(decision.persona, decision.post_id, decision.platform or "*")
            outcomes.append(Outcome(key, decision.action, "", f"unknown action; use one of {', '.join(ACTIONS)}"))
            continue
        rows = targets(ledger, decision)
        if not rows:
            key = PostKey(decision.persona, decision.post_id, decision.platform or "*")
            error = "no such planned post; list the day's posts (`influencer-pipeline posts list`) for their ids"
            outcomes.append(Outcome(key, decision.action, "", error))
            continue
        for row in rows:
            try:
                status = _one(ledger, row, decision, reviewer, now, outbox)
            except (ReviewError, PublishError) as exc:
                outcomes.append(Outcome(row.key, decision.action, row.status, str(exc)))
            else:
                outcomes.append(Outcome(row.key, decision.action, status))
    return outcomes


def _one(
    ledger: Ledger, row: PlannedView, decision: Decision, reviewer: str, now: datetime, outbox: Path | None
) -> str:
    action = decision.action
    if action == "keep":
        return row.status
    if action == "approve":
        return review.approve(ledger, row.key, reviewer=reviewer, now=now).status
    if action == "hold":
        return review.hold(ledger, row.key, reviewer=reviewer, now=now).status
    if action == "publish_now":
        return review.publish_now(ledger, row.key, reviewer=reviewer, now=now).status
    if action == "reschedule":
        if decision.publish_at is None:
            raise ReviewError(f"post {row.post_id}: reschedule needs a new time (e.g. 2026-12-07T18:30:00+00:00)")
        return review.reschedule(ledger, row.key, decision.publish_at, reviewer=reviewer, now=now).status
    # mark_posted: the ledger first (it refuses a bundle that is not ready), then the marker beside the bundle
    view = review.mark_posted(ledger, row.key, now=now)
    if outbox is not None:
        record_posted(bundle_folder(outbox, row.persona, row.post_id, row.platform), by=reviewer, now=now,
                      url=decision.url)  # fmt: skip
    return view.status


def summary(outcomes: list[Outcome]) -> str:
    """One line per outcome, for logs and the CLI."""
    lines = []
    for outcome in outcomes:
        key = outcome.key
        head = f"{key.persona} {key.post_id} on {key.platform}: {outcome.action}"
        lines.append(f"{head} -> {outcome.status}" if outcome.ok else f"{head} refused: {outcome.error}")
    return "\n".join(lines)


def posts_between(ledger: Ledger, first_day: str, last_day: str, persona: str | None = None) -> list[PostStatus]:
    """Every planned post from `first_day` to `last_day` (inclusive), all personas unless one is named, in time
    order, as a person sees it (review state, or the attempt's)."""
    query = select(PLANNED.c.persona, PLANNED.c.day).distinct()
    query = query.where(PLANNED.c.day >= first_day, PLANNED.c.day <= last_day)
    if persona:
        query = query.where(PLANNED.c.persona == persona)
    with ledger.engine.begin() as connection:
        pairs = sorted(connection.execute(query).all())
    statuses = [status for name, day in pairs for status in day_statuses(ledger, name, day)]
    return sorted(statuses, key=lambda s: (s.publish_at, s.persona, s.post_id, s.platform))
