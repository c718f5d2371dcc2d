"""A post's life before and around its publish, recorded in the ledger: the review API.

draft -> approved (or held) -> scheduled -> published / failed / blocked, one `planned_posts` row per
(persona, post, platform). Through the outbox, a released post is `ready_to_post` until a person says they posted
it (`mark_posted`): the pipeline cannot know what a person did by hand, so it never calls that `published`.
The rules a careful creator expects:

- A persona's `approval` policy (persona.yaml) decides where new content starts: `required` (the default) makes a
  `draft` that waits for `approve`; `auto` schedules it at once.
- Only `scheduled` posts go out by themselves, at their time. A post approved (or made, under `auto`) after its
  time had already passed becomes `approved`, never `scheduled`: it waits for `publish_now`. So a backfill of
  yesterday, or content regenerated late, is never published on its own.
- `hold`, `reschedule` and `publish_now` act only before the first publish attempt; after it, the ledger's attempt
  owns the post (`requeue` sends a failed or blocked one round again).
- Regenerated content (a new `content_version` at `register_day`) releases a `blocked` verdict and goes back
  through review under the persona's policy: a person approved the old content, not the new one.

Workers (the `published_posts` asset) `pick` a due row under a lease, then record the outcome with `block` or
`settle`; the lease makes a run that died visible to the due-posts selection again once it runs out.
Every function is one short transaction; times are passed in (`now`), so all of it is testable without a daemon.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.engine import RowMapping

from influencer_pipeline.publishing.ledger import ATTEMPTS, PLANNED, AttemptKey, AttemptView, Ledger
from influencer_pipeline.publishing.outbox import OUTBOX_ACCOUNT_PREFIX, is_outbox_account

APPROVAL_POLICIES = ("required", "auto")
STATUSES = ("draft", "held", "approved", "scheduled", "blocked", "ready_to_post", "published", "failed")
BEFORE_ATTEMPT = ("draft", "held", "approved", "scheduled")  # a person may still change these
AUTO_REVIEWER = "policy:auto"


class PostKey(NamedTuple):
    """A planned post on one platform. Post ids repeat across personas (`<day>-<n>`), so the persona is part of it."""

    persona: str
    post_id: str
    platform: str


@dataclass(frozen=True)
class PlanEntry:
    """What `register_day` needs of one planned (post, platform)."""

    post_id: str
    platform: str
    publish_at: datetime


@dataclass(frozen=True)
class PlannedView:
    """A read-only snapshot of one planned_posts row."""

    id: int
    persona: str
    day: str
    post_id: str
    platform: str
    status: str
    publish_at: datetime
    planned_at: datetime
    rescheduled: bool
    approved_at: datetime | None
    reviewer: str | None
    content_version: str
    verdict: str | None
    attempt_id: int | None
    lease_owner: str | None
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime
    reported_at: datetime | None

    @property
    def key(self) -> PostKey:
        return PostKey(self.persona, self.post_id, self.platform)

    @classmethod
    def from_row(cls, row: RowMapping) -> PlannedView:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


class ReviewError(ValueError):
    """A review action that does not apply to the post as it stands; the message says what to do instead."""


def _match(key: PostKey) -> tuple[Any, ...]:
    return PLANNED.c.persona == key.persona, PLANNED.c.post_id == key.post_id, PLANNED.c.platform == key.platform


def _lease_free(now: datetime) -> Any:
    return or_(PLANNED.c.lease_until.is_(None), PLANNED.c.lease_until < now)


def _label(key: PostKey) -> str:
    return f"post {key.post_id} on {key.platform} for persona {key.persona}"


def arrival_status(approval: str, publish_at: datetime, now: datetime) -> str:
    """Where new (or regenerated) content starts under a persona's approval policy."""
    if approval not in APPROVAL_POLICIES:
        raise ReviewError(f"approval policy {approval!r} is unknown; use one of {list(APPROVAL_POLICIES)}")
    if approval == "required":
        return "draft"
    return "scheduled" if publish_at > now else "approved"


# -- reads


def get(ledger: Ledger, key: PostKey) -> PlannedView | None:
    with ledger.engine.begin() as connection:
        row = connection.execute(select(PLANNED).where(*_match(key))).mappings().first()
    return PlannedView.from_row(row) if row else None


def day_posts(ledger: Ledger, persona: str, day: str) -> list[PlannedView]:
    query = (
        select(PLANNED)
        .where(PLANNED.c.persona == persona, PLANNED.c.day == day)
        .order_by(PLANNED.c.publish_at, PLANNED.c.post_id, PLANNED.c.platform)
    )
    with ledger.engine.begin() as connection:
        return [PlannedView.from_row(row) for row in connection.execute(query).mappings()]


def _require(ledger: Ledger, key: PostKey) -> PlannedView:
    view = get(ledger, key)
    if view is None:
        raise ReviewError(f"{_label(key)} is not planned; materialize the day's content first")
    return view


# -- content arrives


def register_day(
    ledger: Ledger,
    persona: str,
    day: str,
    entries: Iterable[PlanEntry],
    *,
    approval: str,
    content_version: str,
    now: datetime,
) -> list[PlannedView]:
    """Record a day's rendered content (idempotent for the same `content_version`); returns the day's rows.

    New (post, platform) rows start as `arrival_status` says. A row whose content changed (another version) and
    that no attempt has touched goes through review again and loses any blocked verdict; a held row stays held.
    A time from the plan replaces the old one unless a person rescheduled the post.
    """
    with ledger.engine.begin() as connection:
        for entry in entries:
            key = PostKey(persona, entry.post_id, entry.platform)
            row = connection.execute(select(PLANNED).where(*_match(key))).mappings().first()
            if row is None:
                status = arrival_status(approval, entry.publish_at, now)
                connection.execute(
                    insert(PLANNED).values(
                        persona=persona,
                        day=day,
                        post_id=entry.post_id,
                        platform=entry.platform,
                        status=status,
                        publish_at=entry.publish_at,
                        planned_at=entry.publish_at,
                        rescheduled=False,
                        approved_at=now if approval == "auto" else None,
                        reviewer=AUTO_REVIEWER if approval == "auto" else None,
                        content_version=content_version,
                        created_at=now,
                        updated_at=now,
                    )
                )
                continue
            view = PlannedView.from_row(row)
            if view.content_version == content_version:
                continue
            if view.attempt_id is not None or view.status not in (*BEFORE_ATTEMPT, "blocked"):
                continue  # an attempt owns it: the platform may already have the old content
            publish_at = view.publish_at if view.rescheduled else entry.publish_at
            status = "held" if view.status == "held" else arrival_status(approval, publish_at, now)
            connection.execute(
                update(PLANNED)
                .where(PLANNED.c.id == view.id)
                .values(
                    status=status,
                    publish_at=publish_at,
                    planned_at=entry.publish_at,
                    approved_at=now if approval == "auto" else None,
                    reviewer=AUTO_REVIEWER if approval == "auto" else None,
                    content_version=content_version,
                    verdict=None,
                    updated_at=now,
                )
            )
    return day_posts(ledger, persona, day)


# -- a person's decisions


def approve(ledger: Ledger, key: PostKey, *, reviewer: str, now: datetime) -> PlannedView:
    """Approve a draft or held post: `scheduled` if its time is still ahead, else `approved` (see `publish_now`)."""
    view = _require(ledger, key)
    if view.status in ("approved", "scheduled"):
        return view
    if view.status not in ("draft", "held"):
        raise ReviewError(f"{_label(key)} is {view.status}; only a draft or held post can be approved")
    status = "scheduled" if view.publish_at > now else "approved"
    return _decide(ledger, view, now, status=status, approved_at=now, reviewer=reviewer)


def hold(ledger: Ledger, key: PostKey, *, reviewer: str, now: datetime) -> PlannedView:
    """Keep a post from going out until it is approved again."""
    view = _require(ledger, key)
    if view.status == "held":
        return view
    _before_attempt(view, "held")
    return _decide(ledger, view, now, status="held", reviewer=reviewer)


def reschedule(ledger: Ledger, key: PostKey, publish_at: datetime, *, reviewer: str, now: datetime) -> PlannedView:
    """Move a post to a new time in the future (an approved post becomes `scheduled` for it)."""
    if publish_at.tzinfo is None:
        raise ReviewError(f"{_label(key)}: the new time {publish_at.isoformat()} needs a timezone offset")
    if publish_at <= now:
        raise ReviewError(
            f"{_label(key)}: the new time {publish_at:%Y-%m-%d %H:%M %Z} has passed; use publish now to post it at once"
        )
    view = _require(ledger, key)
    _before_attempt(view, "rescheduled")
    status = "scheduled" if view.status in ("approved", "scheduled") else view.status
    return _decide(ledger, view, now, status=status, publish_at=publish_at, rescheduled=True, reviewer=reviewer)


def publish_now(ledger: Ledger, key: PostKey, *, reviewer: str, now: datetime) -> PlannedView:
    """Approve and release a post at once, whatever its time (the one way late content goes out)."""
    view = _require(ledger, key)
    _before_attempt(view, "published now")
    return _decide(
        ledger, view, now, status="scheduled", publish_at=now, rescheduled=True, approved_at=now, reviewer=reviewer
    )


def requeue(ledger: Ledger, key: PostKey, *, operator: str, now: datetime, detail: str) -> PlannedView:
    """Send a `failed` (or `unconfirmed`) or `blocked` post round again, now.

    For an `unconfirmed` one, only after checking on the account that it is not live. A blocked post is checked
    by pre-flight again; regenerating its content is usually the better fix.
    """
    view = _require(ledger, key)
    if view.status == "failed":
        account = _attempt_account(ledger, view)
        ledger.requeue(AttemptKey(view.post_id, account), operator=operator, now=now, detail=detail)
    elif view.status != "blocked":
        raise ReviewError(f"{_label(key)} is {view.status}; only a failed, unconfirmed or blocked post is requeued")
    return _decide(ledger, view, now, status="scheduled", verdict=None, reviewer=operator, reported_at=None)


def _before_attempt(view: PlannedView, action: str) -> None:
    if view.status not in BEFORE_ATTEMPT or view.attempt_id is not None:
        raise ReviewError(
            f"{_label(view.key)} is {view.status} and cannot be {action} any more: "
            + ("its publish has started" if view.status == "scheduled" else "use requeue for a failed or blocked one")
        )


def _decide(ledger: Ledger, view: PlannedView, now: datetime, **values: Any) -> PlannedView:
    """Apply a decision if the row is still as the caller read it (same status, no attempt, not picked)."""
    statement = (
        update(PLANNED)
        .where(
            PLANNED.c.id == view.id,
            PLANNED.c.status == view.status,
            PLANNED.c.updated_at == view.updated_at,
            _lease_free(now),
        )
        .values(updated_at=now, **values)
        .returning(*PLANNED.c)
    )
    with ledger.engine.begin() as connection:
        row = connection.execute(statement).mappings().first()
    if row is None:
        raise ReviewError(f"{_label(view.key)} changed meanwhile (a publish run may hold it); look again and retry")
    return PlannedView.from_row(row)


def mark_posted(ledger: Ledger, key: PostKey, *, now: datetime) -> PlannedView:
    """A person posted an outbox bundle by hand: `ready_to_post` becomes `published` (idempotent)."""
    view = _require(ledger, key)
    if view.status == "published":
        return view
    if view.status != "ready_to_post":
        raise ReviewError(
            f"{_label(key)} is {view.status}; only a post whose outbox bundle is ready_to_post can be marked posted"
        )
    return _decide(ledger, view, now, status="published")


def _attempt_account(ledger: Ledger, view: PlannedView) -> str:
    with ledger.engine.begin() as connection:
        account = connection.execute(
            select(ATTEMPTS.c.account_id).where(ATTEMPTS.c.id == view.attempt_id)
        ).scalar_one_or_none()
    if account is None:
        raise ReviewError(f"{_label(view.key)} is failed but has no attempt; regenerate its content")
    return account


# -- a publish worker's side


def pick(ledger: Ledger, key: PostKey, *, worker: str, now: datetime, lease_until: datetime) -> bool:
    """Take a due `scheduled` row for this run; False when another run holds it or it changed status."""
    statement = (
        update(PLANNED)
        .where(*_match(key), PLANNED.c.status == "scheduled", PLANNED.c.publish_at <= now, _lease_free(now))
        .values(lease_owner=worker, lease_until=lease_until, updated_at=now)
        .returning(PLANNED.c.id)
    )
    with ledger.engine.begin() as connection:
        return connection.execute(statement).first() is not None


def block(ledger: Ledger, key: PostKey, problems: Iterable[str], *, worker: str, now: datetime) -> None:
    """Pre-flight refused this content: record why, so it is neither retried every tick nor silently dropped."""
    _finish(ledger, key, worker, now, status="blocked", verdict="; ".join(problems), reported_at=None)


def settle(ledger: Ledger, key: PostKey, attempt: AttemptView, *, worker: str, now: datetime) -> None:
    """Link the attempt found by (account, post) and follow its state; release this run's lease."""
    status = {"published": "published", "failed": "failed", "unconfirmed": "failed"}.get(attempt.state, "scheduled")
    if status == "published" and is_outbox_account(attempt.account_id):
        status = "ready_to_post"  # released to a folder: a person still has to post it
    attempt_id = (
        select(ATTEMPTS.c.id)
        .where(ATTEMPTS.c.post_id == attempt.post_id, ATTEMPTS.c.account_id == attempt.account_id)
        .scalar_subquery()
    )
    _finish(ledger, key, worker, now, status=status, attempt_id=attempt_id, reported_at=None)


def release(ledger: Ledger, key: PostKey, *, worker: str, now: datetime) -> None:
    """Give a picked row back unchanged (this run did not get to it)."""
    _finish(ledger, key, worker, now)


def close_finished(ledger: Ledger, ids: Iterable[int], now: datetime) -> None:
    """Rows still `scheduled` whose attempt has finished (their run died after the platform answered)."""
    ids = list(ids)
    if not ids:
        return
    finished = select(ATTEMPTS.c.state).where(ATTEMPTS.c.id == PLANNED.c.attempt_id).scalar_subquery()
    account = select(ATTEMPTS.c.account_id).where(ATTEMPTS.c.id == PLANNED.c.attempt_id).scalar_subquery()
    outbox = account.startswith(OUTBOX_ACCOUNT_PREFIX, autoescape=True)
    moves = (
        ("published", "ready_to_post", outbox),
        ("published", "published", ~outbox),
        ("failed", "failed", True),
        ("unconfirmed", "failed", True),
    )
    with ledger.engine.begin() as connection:
        for state, status, which in moves:
            connection.execute(
                update(PLANNED)
                .where(and_(PLANNED.c.id.in_(ids), PLANNED.c.status == "scheduled", finished == state, which))
                .values(status=status, updated_at=now)
            )


def mark_reported(ledger: Ledger, keys: Iterable[PostKey], now: datetime) -> None:
    """A posts_on_time check named these failed or blocked posts: no run of their own is needed to report them."""
    with ledger.engine.begin() as connection:
        for key in keys:
            connection.execute(
                update(PLANNED)
                .where(*_match(key), PLANNED.c.status.in_(("failed", "blocked")), PLANNED.c.reported_at.is_(None))
                .values(reported_at=now)
            )


def reopen(ledger: Ledger, ids: Iterable[int], now: datetime) -> None:
    """Failed rows whose attempt was requeued in the ledger directly: scheduled again, like `requeue` does."""
    ids = list(ids)
    if ids:
        with ledger.engine.begin() as connection:
            connection.execute(
                update(PLANNED)
                .where(PLANNED.c.id.in_(ids), PLANNED.c.status == "failed")
                .values(status="scheduled", updated_at=now)
            )


def _finish(ledger: Ledger, key: PostKey, worker: str, now: datetime, **values: Any) -> None:
    statement = (
        update(PLANNED)
        .where(*_match(key), PLANNED.c.lease_owner == worker)
        .values(lease_owner=None, lease_until=None, updated_at=now, **values)
    )
    with ledger.engine.begin() as connection:
        connection.execute(statement)
