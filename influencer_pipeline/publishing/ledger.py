"""The post ledger: one row per (post, account) that makes publishing exactly-once.

Every step of a publish is written here *before* the side effect that follows it, so that after any crash the
row tells the next worker what may already have happened on the platform. Rows are claimed with a lease taken
by a single conditional UPDATE (checked by its returned row), which is atomic on SQLite and PostgreSQL alike: two
workers, threads or processes, can never both hold the same attempt. Every change of state is also appended to
`transitions`, the audit trail an operator reads when a post ends `unconfirmed`.

The schema is owned by the alembic migrations next to this file (`Ledger.upgrade()`); the models below must
match them (a test compares the two).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import ColumnElement, Update

from influencer_pipeline.publishing.base import PublishRequest, RemoteHandle

STATES = ("queued", "preparing", "uploading", "processing", "publishing", "published", "failed", "unconfirmed")
IN_FLIGHT = ("preparing", "uploading", "processing", "publishing")
TERMINAL = ("published", "failed", "unconfirmed")
CLAIMABLE = ("queued", *IN_FLIGHT)  # in-flight rows are claimable only once their holder's lease has run out

# Back-edges exist for retries (-> queued), a refreshed token (publishing -> processing) and an expired handle
# (processing -> uploading); processing -> published is a re-commit found unnecessary by reading first.
# `failed` and `unconfirmed` leave only by an operator's decision.
ALLOWED = {
    "queued": {"preparing"},
    "preparing": {"uploading", "processing", "queued", "failed"},
    "uploading": {"processing", "queued", "failed"},
    "processing": {"publishing", "published", "uploading", "queued", "failed"},
    "publishing": {"published", "processing", "queued", "failed", "unconfirmed"},
    "published": set(),
    "failed": {"queued"},
    "unconfirmed": {"queued", "published"},
}
# Columns a transition may set besides state and lease; anything else is a programming error.
WRITABLE = {
    "handle_value",
    "handle_extra",
    "handle_failures",
    "handle_committed",
    "remote_id",
    "permalink",
    "commit_count",
    "last_error",
    "error_kind",
    "next_attempt_at",
    "published_at",
    "attempts",
}
VERSION_TABLE = "post_ledger_alembic_version"  # not `alembic_version`: Dagster's own storage may share the database
MIGRATIONS = Path(__file__).with_name("migrations")
_PG_MIGRATION_LOCK = 0x1ED6E5  # advisory lock id: concurrent `upgrade()` calls run one after the other


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out on every backend (SQLite stores naive text, PostgreSQL `timestamptz`)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"ledger times must be timezone-aware, got naive {value.isoformat()}")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Attempt(Base):
    """One (post, account): where its publish stands, what the platform knows it as, and who is working on it."""

    __tablename__ = "post_attempts"
    __table_args__ = (
        UniqueConstraint("post_id", "account_id", name="uq_post_attempts_post_account"),
        Index("ix_post_attempts_fingerprint", "fingerprint"),
        Index("ix_post_attempts_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    post_id: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[str] = mapped_column(String(200))
    platform: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20))
    fingerprint: Mapped[str] = mapped_column(String(64))
    handle_value: Mapped[str | None] = mapped_column(Text)
    handle_extra: Mapped[dict[str, Any] | None]
    handle_failures: Mapped[int] = mapped_column(Integer)
    handle_committed: Mapped[bool] = mapped_column(Boolean)
    remote_id: Mapped[str | None] = mapped_column(String(200))
    permalink: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    commit_count: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(20))
    next_attempt_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    published_at: Mapped[datetime | None]


class Transition(Base):
    """One change of state, with who made it and why: the history an operator reads."""

    __tablename__ = "transitions"
    __table_args__ = (Index("ix_transitions_attempt_id", "attempt_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("post_attempts.id", ondelete="CASCADE"))
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime]
    worker: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text)


class Planned(Base):
    """One planned (persona, post, platform): its review status, its time, and the attempt that publishes it.

    `status` is the post's life: `draft` (waits for approval), `held`, `approved` (approved after its time had
    passed: waits for "publish now"), `scheduled` (goes out by itself at `publish_at`, retries included),
    `blocked` (pre-flight refused this content: `verdict` says why), then `published` or `failed` (its attempt
    ended failed or unconfirmed: a person decides). Only `scheduled` rows are read by the due-posts selection, so
    its cost follows the due work, not the history. `content_version` names the rendered content the row was
    registered with; a blocked verdict holds for that version only. The rules live in `publishing/review.py`.
    """

    __tablename__ = "planned_posts"
    __table_args__ = (
        UniqueConstraint("persona", "post_id", "platform", name="uq_planned_posts_persona_post_platform"),
        Index("ix_planned_posts_status_publish_at", "status", "publish_at"),
        Index("ix_planned_posts_persona_day", "persona", "day"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    persona: Mapped[str] = mapped_column(String(100))
    day: Mapped[str] = mapped_column(String(10))
    post_id: Mapped[str] = mapped_column(String(200))
    platform: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20))
    publish_at: Mapped[datetime]
    planned_at: Mapped[datetime]
    rescheduled: Mapped[bool] = mapped_column(Boolean)
    approved_at: Mapped[datetime | None]
    reviewer: Mapped[str | None] = mapped_column(String(200))
    content_version: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str | None] = mapped_column(Text)
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("post_attempts.id"))
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    reported_at: Mapped[datetime | None]  # when a posts_on_time check last named this failed or blocked post


ATTEMPTS = Attempt.__table__
TRANSITIONS = Transition.__table__
PLANNED = Planned.__table__


class AttemptKey(NamedTuple):
    post_id: str
    account_id: str


@dataclass(frozen=True)
class AttemptView:
    """A read-only snapshot of one ledger row, safe to pass around after its transaction is gone."""

    post_id: str
    account_id: str
    platform: str
    state: str
    fingerprint: str
    handle_value: str | None
    handle_extra: dict[str, Any] | None
    handle_failures: int
    handle_committed: bool
    remote_id: str | None
    permalink: str | None
    attempts: int
    commit_count: int
    last_error: str | None
    error_kind: str | None
    next_attempt_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None

    @property
    def key(self) -> AttemptKey:
        return AttemptKey(self.post_id, self.account_id)

    @property
    def handle(self) -> RemoteHandle | None:
        if self.handle_value is None:
            return None
        return RemoteHandle(self.platform, self.handle_value, dict(self.handle_extra or {}))

    @classmethod
    def from_row(cls, row: RowMapping) -> AttemptView:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class TransitionView:
    from_state: str | None
    to_state: str
    at: datetime
    worker: str
    detail: str


class LeaseLost(RuntimeError):
    """This worker no longer holds the attempt (its lease ran out and another worker took it): stop, touch nothing."""


def normalize_caption(caption: str) -> str:
    """Case, Unicode form and spacing differences do not make a different post."""
    return " ".join(unicodedata.normalize("NFKC", caption).split()).casefold()


def media_sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def content_fingerprint(request: PublishRequest) -> str:
    """What makes two posts "the same" for the duplicate guard: platform, account, normalized caption, media bytes."""
    shas = [item.sha256 or media_sha256(item.path) for item in request.media]
    material = [request.platform, request.account_id, normalize_caption(request.caption), shas]
    return hashlib.sha256(json.dumps(material, ensure_ascii=False).encode()).hexdigest()


def _sqlite_engine(url: str) -> Engine:
    """SQLite with every transaction `BEGIN IMMEDIATE`: writers queue on the busy timeout instead of failing."""
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (pysqlite's implicit BEGIN is deferred)
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Ledger:
    """The repository over the ledger tables. Each method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            self.engine = _sqlite_engine(url)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)

    def upgrade(self) -> None:
        """Bring the schema to the latest migration; a no-op when it is already there, safe to call concurrently."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()

    # -- reads

    def get(self, key: AttemptKey) -> AttemptView | None:
        with self.engine.begin() as connection:
            row = connection.execute(select(ATTEMPTS).where(*_match(key))).mappings().first()
        return AttemptView.from_row(row) if row else None

    def attempts(self, post_id: str | None = None) -> list[AttemptView]:
        query = select(ATTEMPTS).order_by(ATTEMPTS.c.id)
        if post_id is not None:
            query = query.where(ATTEMPTS.c.post_id == post_id)
        with self.engine.begin() as connection:
            return [AttemptView.from_row(row) for row in connection.execute(query).mappings()]

    def history(self, key: AttemptKey) -> list[TransitionView]:
        query = (
            select(*(TRANSITIONS.c[name] for name in TransitionView.__dataclass_fields__))
            .join(ATTEMPTS, ATTEMPTS.c.id == TRANSITIONS.c.attempt_id)
            .where(*_match(key))
            .order_by(TRANSITIONS.c.id)
        )
        with self.engine.begin() as connection:
            return [TransitionView(**row) for row in connection.execute(query).mappings()]

    def waiting(self, now: datetime, states: tuple[str, ...]) -> list[AttemptView]:
        """Rows in `states` that nobody holds (lease free or run out) and whose retry time, if any, has come."""
        query = (
            select(ATTEMPTS)
            .where(ATTEMPTS.c.state.in_(states), _lease_free(now), _due(now))
            .order_by(ATTEMPTS.c.next_attempt_at.asc().nulls_first(), ATTEMPTS.c.id)  # never-tried rows first
        )
        with self.engine.begin() as connection:
            return [AttemptView.from_row(row) for row in connection.execute(query).mappings()]

    def find_duplicate(self, key: AttemptKey, fingerprint: str, since: datetime) -> AttemptView | None:
        """Another attempt with the same content that is (or may be, or is about to be) live, touched since `since`."""
        query = (
            select(ATTEMPTS)
            .where(
                ATTEMPTS.c.fingerprint == fingerprint,
                ATTEMPTS.c.state.not_in(("queued", "failed")),
                or_(ATTEMPTS.c.post_id != key.post_id, ATTEMPTS.c.account_id != key.account_id),
                func.coalesce(ATTEMPTS.c.published_at, ATTEMPTS.c.updated_at) >= since,
            )
            .order_by(ATTEMPTS.c.id)
        )
        with self.engine.begin() as connection:
            row = connection.execute(query).mappings().first()
        return AttemptView.from_row(row) if row else None

    # -- writes

    def enqueue(self, request: PublishRequest, fingerprint: str, now: datetime) -> AttemptView:
        """Create the (post, account) row in `queued` unless it exists; either way return the row as it stands."""
        key = AttemptKey(request.post_id, request.account_id)
        values = {
            "post_id": request.post_id,
            "account_id": request.account_id,
            "platform": request.platform,
            "state": "queued",
            "fingerprint": fingerprint,
            "attempts": 0,
            "commit_count": 0,
            "handle_failures": 0,
            "handle_committed": False,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self.engine.begin() as connection:
                attempt_id = connection.execute(insert(ATTEMPTS).values(values).returning(ATTEMPTS.c.id)).scalar_one()
                _record(connection, attempt_id, None, "queued", now, "ledger", f"enqueued for {request.platform}")
        except IntegrityError:
            pass  # another caller created it first: the unique (post_id, account_id) constraint decided
        view = self.get(key)
        assert view is not None  # just inserted, or the conflicting row exists; rows are never deleted
        return view

    def claim(self, key: AttemptKey, worker: str, now: datetime, lease_until: datetime) -> AttemptView | None:
        """Take the lease if nobody holds it and the attempt is due; None when another worker got there first.

        The whole test is in one UPDATE's WHERE clause, so the database, not this process, decides the winner.
        """
        statement = (
            update(ATTEMPTS)
            .where(*_match(key), ATTEMPTS.c.state.in_(CLAIMABLE), _lease_free(now), _due(now))
            .values(lease_owner=worker, lease_until=lease_until, attempts=ATTEMPTS.c.attempts + 1, updated_at=now)
            .returning(*ATTEMPTS.c)
        )
        with self.engine.begin() as connection:
            row = connection.execute(statement).mappings().first()
            if row is None:
                return None
            view = AttemptView.from_row(row)
            _record(connection, row["id"], view.state, view.state, now, worker, f"claimed (attempt {view.attempts})")
        return view

    def transition(
        self,
        key: AttemptKey,
        *,
        worker: str,
        from_state: str,
        to_state: str,
        now: datetime,
        detail: str,
        lease_until: datetime | None,
        **changes: Any,
    ) -> AttemptView:
        """Move a row this worker holds; `lease_until=None` releases it. Raises LeaseLost if it is no longer ours."""
        _check_move(from_state, to_state, changes)
        statement = (
            update(ATTEMPTS)
            .where(*_match(key), ATTEMPTS.c.state == from_state, ATTEMPTS.c.lease_owner == worker)
            .values(
                state=to_state,
                updated_at=now,
                lease_owner=worker if lease_until else None,
                lease_until=lease_until,
                **changes,
            )
            .returning(*ATTEMPTS.c)
        )
        return self._move(statement, from_state, to_state, now, worker, detail, key)

    def requeue(self, key: AttemptKey, *, operator: str, now: datetime, detail: str) -> AttemptView:
        """An operator sends a `failed` or `unconfirmed` attempt round again, from scratch (new handle, new budget).

        For `unconfirmed`, only after checking the account by hand that the post is not live.
        """
        return self._operator_move(
            key,
            ("failed", "unconfirmed"),
            "queued",
            operator,
            now,
            detail,
            handle_value=None,
            handle_extra=None,
            handle_failures=0,
            handle_committed=False,
            attempts=0,
            last_error=None,
            error_kind=None,
            next_attempt_at=None,
        )

    def confirm_published(
        self, key: AttemptKey, *, operator: str, now: datetime, remote_id: str, permalink: str, detail: str
    ) -> AttemptView:
        """An operator found an `unconfirmed` post live on the account: record it so nothing ever re-publishes it."""
        return self._operator_move(
            key,
            ("unconfirmed",),
            "published",
            operator,
            now,
            detail,
            remote_id=remote_id,
            permalink=permalink,
            published_at=now,
            last_error=None,
            error_kind=None,
        )

    def _operator_move(
        self,
        key: AttemptKey,
        from_states: tuple[str, ...],
        to_state: str,
        operator: str,
        now: datetime,
        detail: str,
        **changes: Any,
    ) -> AttemptView:
        current = self.get(key)
        if current is None or current.state not in from_states:
            state = current.state if current else "missing"
            raise ValueError(f"attempt {key}: is {state}, only {' or '.join(from_states)} can move to {to_state}")
        _check_move(current.state, to_state, changes)
        statement = (
            update(ATTEMPTS)
            .where(*_match(key), ATTEMPTS.c.state == current.state, _lease_free(now))
            .values(state=to_state, updated_at=now, lease_owner=None, lease_until=None, **changes)
            .returning(*ATTEMPTS.c)
        )
        return self._move(statement, current.state, to_state, now, operator, detail, key)

    def _move(
        self,
        statement: Update,
        from_state: str,
        to_state: str,
        now: datetime,
        worker: str,
        detail: str,
        key: AttemptKey,
    ) -> AttemptView:
        with self.engine.begin() as connection:
            row = connection.execute(statement).mappings().first()
            if row is None:
                raise LeaseLost(f"attempt {key}: {worker} no longer holds it in state {from_state}")
            _record(connection, row["id"], from_state, to_state, now, worker, detail)
        return AttemptView.from_row(row)


_SHARED: dict[tuple[int, str], Ledger] = {}
_SHARED_LOCK = threading.Lock()


def shared_ledger(url: str) -> Ledger:
    """This process's one `Ledger` for `url`, its schema brought up to date on first use only.

    Sensor ticks and runs call this on every evaluation: a new engine (a new connection pool) and an alembic
    upgrade each time would make every tick pay for the ledger's setup. The key includes the process id, so a
    forked child never shares its parent's pooled connections.
    """
    key = (os.getpid(), url)
    with _SHARED_LOCK:
        ledger = _SHARED.get(key)
        if ledger is None:
            ledger = Ledger(url)
            ledger.upgrade()
            _SHARED[key] = ledger
    return ledger


def default_url(work_dir: str | Path) -> str:
    """The embedded ledger: SQLite in the work folder (production sets `POST_LEDGER_URL`)."""
    path = Path(work_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'post_ledger.db'}"


def _match(key: AttemptKey) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return ATTEMPTS.c.post_id == key.post_id, ATTEMPTS.c.account_id == key.account_id


def _lease_free(now: datetime) -> ColumnElement[bool]:
    return or_(ATTEMPTS.c.lease_until.is_(None), ATTEMPTS.c.lease_until < now)


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(ATTEMPTS.c.next_attempt_at.is_(None), ATTEMPTS.c.next_attempt_at <= now)


def _check_move(from_state: str, to_state: str, changes: dict[str, Any]) -> None:
    if to_state not in ALLOWED[from_state]:
        raise ValueError(f"illegal ledger transition {from_state} -> {to_state}")
    unknown = set(changes) - WRITABLE
    if unknown:
        raise ValueError(f"ledger transition cannot set {sorted(unknown)}")


def _record(
    connection: Connection,
    attempt_id: int,
    from_state: str | None,
    to_state: str,
    now: datetime,
    worker: str,
    detail: str,
) -> None:
    connection.execute(
        insert(TRANSITIONS).values(
            attempt_id=attempt_id, from_state=from_state, to_state=to_state, at=now, worker=worker, detail=detail
        )
    )


def main() -> int:
    """`python -m influencer_pipeline.publishing.ledger`: migrate the ledger at `POST_LEDGER_URL` (or the embedded
    one under `WORK_DIR`) before the daemon starts, as `make dev` / `make demo` do."""
    url = os.environ.get("POST_LEDGER_URL") or default_url(os.environ.get("WORK_DIR", "work"))
    Ledger(url).upgrade()
    print(f"post ledger schema is up to date ({url.split('@')[-1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
