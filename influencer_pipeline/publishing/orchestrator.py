"""Drive one (post, account) through the ledger's state machine, so that no fault ever posts it twice.

The rules, in the order a publish meets them (each publisher's docstring cites the platform page it relies on):

- A worker works on an attempt only while it holds the lease (`Ledger.claim`); every transition re-checks that,
  so a worker whose lease ran out stops before its next side effect.
- Each transition is written before the side effect it announces: `uploading` before `prepare`, the remote handle
  and `processing` before `wait_ready`, `publishing` (with `commit_count` + 1) before `commit`.
- `commit` is the one call that can make a post public, and it is never sent twice on one handle unless a
  `reconcile` in between found that handle unpublished. `CommitOutcomeUnknown` (or any unexpected exception)
  from it may have published, so the same call reads the platform instead of committing again; a row found in
  `publishing` by a later call (its worker crashed mid-commit) is reconciled the same way. A `PublishError` is
  definite by contract and is retried like any other error, but the retry still reads before it commits: a
  publisher that raises after its post went out (a failed permalink fetch) must not cause a second post.
- Reconcile: the post is live -> `published`; it provably is not -> back to `queued` for a retry that commits the
  same handle while it is valid or prepares a new one; undecidable within a small budget -> `unconfirmed`, never
  retried automatically, and the `notify` callback tells a person to check the account.
- A handle is valid until its `extra[EXPIRES_AT]` (when the publisher knows it) and until it has failed
  `handle_max_failures` times in a row (a definite error from `wait_ready`/`commit`, or a reconcile that found it
  unpublished): platforms report a dead handle (an expired container, a gone upload session) only as a transient
  error, so a handle that keeps failing is abandoned and the next try prepares a new one. Abandoning is safe: a
  handle that was never committed, or provably did not publish, cannot publish later.
- Errors: transient and throttle -> `queued` with `next_attempt_at` (exponential backoff, full jitter, never
  sooner than the platform's `retry_after`) until `max_attempts`; auth -> one fresh token from `token_provider`,
  then `failed` ("reconnect the account"); permanent -> `failed` with the platform's message.
- Once `commit` has returned, nothing that follows (a failed ledger write, a failing notification) can lead to a
  second commit: the row is still `publishing`, and `publishing` is only ever reconciled.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from influencer_pipeline.publishing.base import (
    ErrorKind,
    Published,
    Publisher,
    PublishError,
    PublishRequest,
    RemoteHandle,
)
from influencer_pipeline.publishing.ledger import (
    TERMINAL,
    AttemptKey,
    AttemptView,
    LeaseLost,
    Ledger,
    content_fingerprint,
)

log = logging.getLogger(__name__)

EXPIRES_AT = "expires_at"  # RemoteHandle.extra key: ISO-8601 time after which the platform forgets the handle
DUPLICATE_WINDOW = timedelta(days=7)
RESUMABLE = ("queued", "preparing", "uploading", "processing")  # safe to pick up again: nothing was committed

T = TypeVar("T")
Clock = Callable[[], datetime]
Notify = Callable[[AttemptView], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between tries, how many to make, and how long a worker may hold an attempt.

    `lease_s` must outlast the slowest single step (a large upload); it is renewed at every transition.
    `reconcile_tries` x `reconcile_delay_s` is the budget for reading an ambiguous commit's outcome.
    """

    base_s: float = 2.0
    cap_s: float = 900.0
    max_attempts: int = 8
    lease_s: float = 1800.0
    handle_max_failures: int = 2
    reconcile_tries: int = 3
    reconcile_delay_s: float = 5.0
    jitter: Callable[[], float] = random.random

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter over an exponential ceiling; the platform's own hint is a floor, even above the cap."""
        ceiling = min(self.cap_s, self.base_s * 2 ** max(attempt - 1, 0))
        return max(self.jitter() * ceiling, retry_after or 0.0)


def due_attempts(ledger: Ledger, now: datetime) -> list[AttemptView]:
    """Attempts to (re)try now: queued and due, or abandoned by a crashed worker before any commit.

    Never `publishing` (see `stalled_attempts`) nor a terminal state, so a sweep cannot re-publish anything.
    An attempt-level view for operators and tests: the due-posts sensor uses `publishing.due.due_posts`, which
    covers these, the stalled ones and planned posts without an attempt, per persona, in one query.
    """
    return ledger.waiting(now, RESUMABLE)


def stalled_attempts(ledger: Ledger, now: datetime) -> list[AttemptView]:
    """Attempts whose worker died during `commit`: `publish_once` on them reconciles, it does not commit."""
    return ledger.waiting(now, ("publishing",))


def publish_once(
    ledger: Ledger,
    publisher: Publisher,
    request: PublishRequest,
    token_provider: Callable[[], str],
    worker: str,
    *,
    now: Clock = utc_now,
    sleep: Callable[[float], None] = time.sleep,
    policy: RetryPolicy = RetryPolicy(),
    notify: Notify | None = None,
    force: bool = False,
    duplicate_window: timedelta = DUPLICATE_WINDOW,
) -> AttemptView:
    """Advance one (post, account) as far as it can go now, and return where it stands.

    Does nothing (and returns the row) when the attempt is finished, not yet due, or held by another worker.
    `worker` must be unique per concurrent caller (host, process, thread): the lease is keyed on it.
    `force` publishes even when the same content went to the same account within `duplicate_window`.
    """
    key = AttemptKey(request.post_id, request.account_id)
    if ledger.get(key) is None:
        ledger.enqueue(request, content_fingerprint(request), now())
    at = now()
    claimed = ledger.claim(key, worker, at, at + timedelta(seconds=policy.lease_s))
    if claimed is None:
        return _current(ledger, key)
    window = None if force else duplicate_window
    run = _Run(ledger, publisher, request, token_provider, worker, now, sleep, policy, notify, window)
    try:
        return run.drive(claimed)
    except LeaseLost:
        log.warning("%s lost the lease on %s mid-publish; the new holder carries on", worker, key)
        return _current(ledger, key)


def _current(ledger: Ledger, key: AttemptKey) -> AttemptView:
    view = ledger.get(key)
    assert view is not None  # rows are never deleted
    return view


def _expired(handle: RemoteHandle, now: datetime) -> bool:
    expires_at = handle.extra.get(EXPIRES_AT)
    return expires_at is not None and datetime.fromisoformat(expires_at) <= now


class _Run:
    """One worker's pass over one claimed attempt: the token it uses, whether it has refreshed it, its clock.

    `duplicate_window` None means forced: the duplicate-content guard is off for this pass.
    """

    def __init__(
        self,
        ledger: Ledger,
        publisher: Publisher,
        request: PublishRequest,
        token_provider: Callable[[], str],
        worker: str,
        now: Clock,
        sleep: Callable[[float], None],
        policy: RetryPolicy,
        notify: Notify | None,
        duplicate_window: timedelta | None,
    ) -> None:
        self.ledger = ledger
        self.publisher = publisher
        self.request = request
        self.token_provider = token_provider
        self.worker = worker
        self.now = now
        self.sleep = sleep
        self.policy = policy
        self.notify = notify
        self.duplicate_window = duplicate_window
        self.token: str | None = None
        self.refreshed = False

    def drive(self, view: AttemptView) -> AttemptView:
        """Step until the attempt is finished or handed back (lease released for a later retry)."""
        steps = {
            "queued": self._start,
            "preparing": self._prepare,
            "uploading": self._upload,
            "processing": self._process,
            "publishing": self._resume_publishing,
        }
        while view.lease_owner == self.worker and view.state not in TERMINAL:
            try:
                view = steps[view.state](view)
            except PublishError as exc:
                view = self._on_error(view, exc)
        return view

    # -- steps, one per state the row is found in

    def _start(self, view: AttemptView) -> AttemptView:
        return self._move(view, "preparing", f"attempt {view.attempts} by {self.worker}")

    def _prepare(self, view: AttemptView) -> AttemptView:
        if self.duplicate_window is not None:
            since = self.now() - self.duplicate_window
            duplicate = self.ledger.find_duplicate(view.key, view.fingerprint, since)
            if duplicate is not None:
                message = (
                    f"the same caption and media went to account {view.account_id} with post {duplicate.post_id} "
                    f"({duplicate.state}, {duplicate.updated_at:%Y-%m-%d %H:%M} UTC); publish with force=True to "
                    "post it again"
                )
                return self._fail(view, "permanent", message)
        self._token()  # an account that needs reconnecting fails here, before anything is uploaded
        if view.handle is not None:
            return self._move(view, "processing", f"resuming with handle {view.handle_value}")
        return self._move(view, "uploading", "uploading media")

    def _upload(self, view: AttemptView) -> AttemptView:
        handle = self._call(lambda token: self.publisher.prepare(self.request, token))
        if _expired(handle, self.now()):
            raise PublishError(f"{self.publisher.platform} returned handle {handle.value} already expired", "permanent")
        return self._move(
            view,
            "processing",
            f"handle {handle.value}",
            handle_value=handle.value,
            handle_extra=handle.extra,
            handle_failures=0,
            handle_committed=False,
        )

    def _process(self, view: AttemptView) -> AttemptView:
        handle = self._handle(view)
        if _expired(handle, self.now()):
            detail = f"handle {handle.value} expired at {handle.extra[EXPIRES_AT]}; preparing a new one"
            return self._move(view, "uploading", detail, handle_value=None, handle_extra=None, handle_committed=False)
        self._call(lambda token: self.publisher.wait_ready(handle, token))
        if view.handle_committed:  # sent before and not shown unpublished since: read before writing again
            found = self._call(lambda token: self.publisher.reconcile(handle, self.request, token))
            if found is not None:
                return self._published(view, found, f"found live before committing again: {found.remote_id}")
        return self._commit(view, handle)

    def _resume_publishing(self, view: AttemptView) -> AttemptView:
        return self._reconcile(view, "a worker stopped during commit")

    # -- commit and reconcile

    def _commit(self, view: AttemptView, handle: RemoteHandle) -> AttemptView:
        view = self._move(
            view,
            "publishing",
            f"commit #{view.commit_count + 1}",
            commit_count=view.commit_count + 1,
            handle_committed=True,
        )
        try:
            published = self.publisher.commit(handle, self.request, self._token())
        except PublishError as exc:
            if exc.kind == "auth" and self._refresh():
                return self._move(view, "processing", f"commit refused ({exc}); retrying with a refreshed token")
            return self._on_error(view, exc)
        except Exception as exc:  # anything but a PublishError may have published: read, never re-commit
            self.sleep(self.policy.reconcile_delay_s)
            return self._reconcile(view, f"commit outcome unknown: {exc!r}")
        return self._published(view, published, "committed")

    def _reconcile(self, view: AttemptView, reason: str) -> AttemptView:
        handle = self._handle(view)
        problem: Exception | None = None
        for attempt in range(self.policy.reconcile_tries):
            if attempt:
                self.sleep(self.policy.reconcile_delay_s)
            try:
                found = self._call(lambda token: self.publisher.reconcile(handle, self.request, token))
            except Exception as exc:  # every failure to read means "cannot decide"
                problem = exc
                continue
            if found is not None:
                return self._published(view, found, f"reconciled after {reason}: live as {found.remote_id}")
            detail = f"reconciled after {reason}: handle {handle.value} did not publish"
            return self._retry(view, detail, "transient", None, {"handle_committed": False, **self._strike(view)})
        return self._unconfirmed(view, f"{reason}; the platform could not be read: {problem}")

    # -- outcomes

    def _on_error(self, view: AttemptView, exc: PublishError) -> AttemptView:
        if exc.kind == "permanent":
            return self._fail(view, "permanent", str(exc))
        if exc.kind == "auth":
            return self._fail(view, "auth", f"reconnect the account: its token is refused even after a refresh ({exc})")
        on_handle = view.state in ("processing", "publishing")  # the step that failed used the handle
        return self._retry(view, str(exc), exc.kind, exc.retry_after, self._strike(view) if on_handle else {})

    def _retry(
        self, view: AttemptView, message: str, kind: ErrorKind, retry_after: float | None, handle: dict[str, Any]
    ) -> AttemptView:
        """Hand the attempt back for later, with `handle` (from `_strike`) saying whether its handle survives."""
        if view.attempts >= self.policy.max_attempts:
            return self._fail(view, kind, f"gave up after {view.attempts} attempts: {message}")
        delay = self.policy.delay(view.attempts, retry_after)
        next_at = self.now() + timedelta(seconds=delay)
        dropped = " (handle abandoned)" if "handle_value" in handle else ""
        detail = f"{kind}: {message}; retry at {next_at:%Y-%m-%d %H:%M:%S} UTC{dropped}"
        return self._move(
            view,
            "queued",
            detail,
            release=True,
            last_error=message,
            error_kind=kind,
            next_attempt_at=next_at,
            **handle,
        )

    def _strike(self, view: AttemptView) -> dict[str, Any]:
        """Count a failure against the handle; past the limit, forget it so the next try prepares a new one."""
        failures = view.handle_failures + 1
        if failures < self.policy.handle_max_failures:
            return {"handle_failures": failures}
        return {"handle_value": None, "handle_extra": None, "handle_failures": 0, "handle_committed": False}

    def _published(self, view: AttemptView, published: Published, detail: str) -> AttemptView:
        return self._move(
            view,
            "published",
            detail,
            release=True,
            remote_id=published.remote_id,
            permalink=published.permalink,
            published_at=self.now(),
            last_error=None,
            error_kind=None,
            next_attempt_at=None,
        )

    def _fail(self, view: AttemptView, kind: ErrorKind, message: str) -> AttemptView:
        view = self._move(
            view, "failed", message, release=True, last_error=message, error_kind=kind, next_attempt_at=None
        )
        self._tell(view)
        return view

    def _unconfirmed(self, view: AttemptView, message: str) -> AttemptView:
        message = f"{message}. Check the account before reposting, then requeue or confirm it in the ledger"
        view = self._move(view, "unconfirmed", message, release=True, last_error=message, next_attempt_at=None)
        self._tell(view)
        return view

    def _tell(self, view: AttemptView) -> None:
        """A failing notification is logged, never raised: it must not disturb a state that is already recorded."""
        if self.notify is None:
            return
        try:
            self.notify(view)
        except Exception:
            log.exception("notification for %s (%s) failed", view.key, view.state)

    # -- helpers

    def _move(
        self, view: AttemptView, to_state: str, detail: str, release: bool = False, **changes: Any
    ) -> AttemptView:
        now = self.now()
        return self.ledger.transition(
            view.key,
            worker=self.worker,
            from_state=view.state,
            to_state=to_state,
            now=now,
            detail=detail,
            lease_until=None if release else now + timedelta(seconds=self.policy.lease_s),
            **changes,
        )

    def _handle(self, view: AttemptView) -> RemoteHandle:
        handle = view.handle
        assert handle is not None, f"{view.key} is {view.state} without a remote handle"  # written before this state
        return handle

    def _token(self) -> str:
        if self.token is None:
            self.token = self.token_provider()
        return self.token

    def _refresh(self) -> bool:
        """One new token per run: a second auth failure means the account itself needs reconnecting."""
        if self.refreshed:
            return False
        self.refreshed = True
        self.token = self.token_provider()
        return True

    def _call(self, step: Callable[[str], T]) -> T:
        """Run a repeatable platform call, once more with a refreshed token if the first is refused for auth."""
        try:
            return step(self._token())
        except PublishError as exc:
            if exc.kind == "auth" and self._refresh():
                return step(self._token())
            raise
