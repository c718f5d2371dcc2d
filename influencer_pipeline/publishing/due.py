"""Which posts are due now, the run keys that publish them, and what a person should know about every day.

The selection is one ledger query over `scheduled` planned posts whose time has come, joined to their attempt
(found by the persona's account and post, never by post id alone): posts with no attempt yet, attempts waiting
for their retry time, and attempts whose worker died (lease run out: publishing reconciles them). It skips rows a
run holds (a picked row's lease, an attempt's lease) and attempts still backing off. Every day and persona counts,
not only today: a post that missed its hour is found on the next tick. Finished and unreviewed posts are never
read, so the cost follows the due work, not the history.

A run key names what a run was asked to do, in the version of each row it saw (`updated_at` of the row and of
its attempt, both changed by every pick, claim and release): a tick while a run holds the rows asks for nothing,
and every release yields a key that was never used, so a retry or a reconcile always gets its run. A row that
stays due unchanged (a run that never started) gets a fresh key each `stale_after`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.engine import RowMapping

from influencer_pipeline.publishing.ledger import ATTEMPTS, PLANNED, TERMINAL, Ledger
from influencer_pipeline.publishing.review import PostKey, close_finished, reopen

STALE_AFTER = timedelta(minutes=30)
# What a person sees per post (docs/PUBLISHING.md): the review states, then the attempt's.
SHOWN = (
    "draft",
    "held",
    "approved",
    "scheduled",
    "pending",
    "blocked",
    "ready_to_post",
    "published",
    "failed",
    "unconfirmed",
)


@dataclass(frozen=True)
class DueItem:
    """One (persona, post, platform) to work on now; `attempt_state` is None before the first attempt."""

    key: PostKey
    day: str
    publish_at: datetime
    attempt_state: str | None
    version: datetime


@dataclass(frozen=True)
class DueRun:
    """One run to request: a persona's day, with the items it should publish and a key unique to their versions."""

    persona: str
    day: str
    run_key: str
    items: tuple[DueItem, ...]


@dataclass(frozen=True)
class PostStatus:
    """One planned post on one platform as a person sees it (`state` is one of `SHOWN`)."""

    persona: str
    day: str
    post_id: str
    platform: str
    state: str
    publish_at: datetime
    account_id: str
    next_attempt_at: datetime | None
    attempts: int
    last_error: str
    remote_id: str
    permalink: str

    @property
    def key(self) -> PostKey:
        return PostKey(self.persona, self.post_id, self.platform)


def _joined(*where: object):  # type: ignore[no-untyped-def]
    columns = (
        *PLANNED.c,
        ATTEMPTS.c.state.label("a_state"),
        ATTEMPTS.c.account_id.label("a_account"),
        ATTEMPTS.c.updated_at.label("a_updated_at"),
        ATTEMPTS.c.next_attempt_at.label("a_next"),
        ATTEMPTS.c.lease_until.label("a_lease_until"),
        ATTEMPTS.c.attempts.label("a_attempts"),
        ATTEMPTS.c.last_error.label("a_error"),
        ATTEMPTS.c.remote_id.label("a_remote_id"),
        ATTEMPTS.c.permalink.label("a_permalink"),
    )
    return (
        select(*columns).select_from(PLANNED.outerjoin(ATTEMPTS, ATTEMPTS.c.id == PLANNED.c.attempt_id)).where(*where)
    )


def due_posts(ledger: Ledger, now: datetime, *, persona: str | None = None, day: str | None = None) -> list[DueItem]:
    """Every post to publish (or reconcile) now, oldest first; optionally one persona's day (what a run does)."""
    where = [
        # a failed post whose attempt an operator requeued straight in the ledger (`Ledger.requeue`) is due too
        or_(PLANNED.c.status == "scheduled", and_(PLANNED.c.status == "failed", ATTEMPTS.c.state == "queued")),
        PLANNED.c.publish_at <= now,
        or_(PLANNED.c.lease_until.is_(None), PLANNED.c.lease_until < now),
        or_(ATTEMPTS.c.lease_until.is_(None), ATTEMPTS.c.lease_until < now),
        or_(ATTEMPTS.c.next_attempt_at.is_(None), ATTEMPTS.c.next_attempt_at <= now),
    ]
    if persona is not None:
        where.append(PLANNED.c.persona == persona)
    if day is not None:
        where.append(PLANNED.c.day == day)
    query = _joined(and_(*where)).order_by(PLANNED.c.publish_at, PLANNED.c.id)
    with ledger.engine.begin() as connection:
        rows = list(connection.execute(query).mappings())
    items, finished, requeued = [], [], []
    for row in rows:
        if row["status"] == "failed":
            requeued.append(row["id"])
        if row["a_state"] in TERMINAL:
            finished.append(row["id"])  # its run died between the platform's answer and settling the row
            continue
        version = max(row["updated_at"], row["a_updated_at"] or row["updated_at"])
        items.append(
            DueItem(
                PostKey(row["persona"], row["post_id"], row["platform"]),
                row["day"],
                row["publish_at"],
                row["a_state"],
                version,
            )
        )
    close_finished(ledger, finished, now)
    reopen(ledger, requeued, now)
    return items


def unreported(ledger: Ledger, now: datetime) -> list[DueItem]:
    """Failed or blocked posts that no posts_on_time check has named yet (their run died before its check): each
    day with one gets a run, which publishes nothing new and reports them."""
    query = select(PLANNED).where(
        PLANNED.c.status.in_(("failed", "blocked")),
        PLANNED.c.reported_at.is_(None),
        or_(PLANNED.c.lease_until.is_(None), PLANNED.c.lease_until < now),
    )
    with ledger.engine.begin() as connection:
        rows = list(connection.execute(query).mappings())
    return [
        DueItem(
            PostKey(r["persona"], r["post_id"], r["platform"]), r["day"], r["publish_at"], "report", r["updated_at"]
        )
        for r in rows
    ]


def due_runs(ledger: Ledger, now: datetime, *, stale_after: timedelta = STALE_AFTER) -> list[DueRun]:
    """The runs to request now: one per persona and day with due posts or unreported failures, with its run key."""
    groups: dict[tuple[str, str], list[DueItem]] = defaultdict(list)
    for item in [*due_posts(ledger, now), *unreported(ledger, now)]:
        groups[(item.key.persona, item.day)].append(item)
    return [
        DueRun(persona, day, run_key(persona, day, items, now, stale_after), tuple(items))
        for (persona, day), items in sorted(groups.items())
    ]


def run_key(persona: str, day: str, items: Iterable[DueItem], now: datetime, stale_after: timedelta) -> str:
    """`publish:<day>:<persona>:<digest>` over each item's version (and staleness epoch)."""
    parts = []
    for item in sorted(items, key=lambda i: i.key):
        epoch = int((now - item.version) / stale_after) if now > item.version else 0
        parts.append(f"{item.key.post_id}/{item.key.platform}/{item.attempt_state}/{item.version.isoformat()}/{epoch}")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return f"publish:{day}:{persona}:{digest}"


def _shown(row: RowMapping) -> str:
    if row["status"] == "failed":
        return row["a_state"] or "failed"
    if row["status"] == "scheduled" and row["a_state"] is not None and row["a_state"] not in TERMINAL:
        return "pending"
    return row["status"]


def _status(row: RowMapping) -> PostStatus:
    state = _shown(row)
    error = row["verdict"] if state == "blocked" else row["a_error"]
    return PostStatus(
        persona=row["persona"],
        day=row["day"],
        post_id=row["post_id"],
        platform=row["platform"],
        state=state,
        publish_at=row["publish_at"],
        account_id=row["a_account"] or "",
        next_attempt_at=row["a_next"] if state == "pending" else None,
        attempts=row["a_attempts"] or 0,
        last_error=error or "",
        remote_id=row["a_remote_id"] or "",
        permalink=row["a_permalink"] or "",
    )


def day_statuses(ledger: Ledger, persona: str, day: str) -> list[PostStatus]:
    """Every planned post of a persona's day, in time order, as a person sees it."""
    query = _joined(PLANNED.c.persona == persona, PLANNED.c.day == day).order_by(
        PLANNED.c.publish_at, PLANNED.c.post_id, PLANNED.c.platform
    )
    with ledger.engine.begin() as connection:
        return [_status(row) for row in connection.execute(query).mappings()]


def overdue_posts(ledger: Ledger, now: datetime, grace: timedelta) -> list[PostStatus]:
    """Posts the pipeline owed and has not published: failed, unconfirmed or blocked ones at once (their outcome
    is known and needs a person), scheduled ones (still retrying, or never picked) once they are more than
    `grace` past their time. Drafts, held posts and late approvals wait for a person by design and are listed
    by `waiting_for_review` instead."""
    query = _joined(
        or_(
            PLANNED.c.status.in_(("blocked", "failed")),
            and_(PLANNED.c.status == "scheduled", PLANNED.c.publish_at < now - grace),
        )
    ).order_by(PLANNED.c.publish_at, PLANNED.c.persona, PLANNED.c.post_id, PLANNED.c.platform)
    with ledger.engine.begin() as connection:
        return [s for s in (_status(row) for row in connection.execute(query).mappings()) if s.state != "published"]


def waiting_for_review(ledger: Ledger, now: datetime) -> list[PostStatus]:
    """Posts whose time has passed while they wait for a person (draft, held, approved late)."""
    query = _joined(PLANNED.c.status.in_(("draft", "held", "approved")), PLANNED.c.publish_at < now).order_by(
        PLANNED.c.publish_at, PLANNED.c.persona, PLANNED.c.post_id
    )
    with ledger.engine.begin() as connection:
        return [_status(row) for row in connection.execute(query).mappings()]


def describe(status: PostStatus) -> str:
    """One line naming the post, platform, state and last error (for checks and notifications)."""
    due = f"{status.publish_at:%Y-%m-%d %H:%M} UTC"
    line = f"{status.persona} {status.post_id} on {status.platform}: {status.state} (due {due})"
    if status.next_attempt_at is not None:
        line += f", next attempt {status.next_attempt_at:%Y-%m-%d %H:%M} UTC"
    if status.last_error:
        line += f": {status.last_error}"
    return line
