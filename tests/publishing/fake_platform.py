"""An in-memory social platform that misbehaves on demand, and keeps its own record of what went live.

The record (`commits`, `live`) is the platform's truth, independent of the ledger: tests assert from it that a
post is live exactly once or not at all. Like the worst real platforms (Facebook feed, X), every commit that
lands creates a new live post, even on a handle that was already published, so a double commit shows up as a
double post instead of being silently absorbed.

Faults are queued per operation (`inject`) and consumed one per call. A fault raises before the operation acts
(`after=False`: nothing happened) or after it (`after=True`: the post went live, then the answer was lost), and
may run an `action` first (advance the clock, let another worker in). `WorkerCrash` is a BaseException: it
stands for the process dying, so no `except Exception` in the code under test can swallow it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from influencer_pipeline.publishing.base import (
    CommitOutcomeUnknown,
    Published,
    PublishError,
    PublishRequest,
    RemoteHandle,
)
from influencer_pipeline.publishing.orchestrator import EXPIRES_AT

T = TypeVar("T")
START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OPERATIONS = ("prepare", "wait_ready", "commit", "reconcile")


class WorkerCrash(BaseException):
    """The worker process dies at this exact point (SIGKILL, OOM, power loss)."""


class FakeClock:
    """The one clock shared by the orchestrator and the platform; `sleep` advances it instead of waiting."""

    def __init__(self, start: datetime = START) -> None:
        self.current = start
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)

    def advance_to(self, moment: datetime) -> None:
        self.current = max(self.current, moment)


@dataclass
class Fault:
    error: BaseException | None = None
    after: bool = False
    action: Callable[[], None] | None = None


@dataclass(frozen=True)
class LivePost:
    remote_id: str
    post_id: str
    account_id: str
    caption: str
    handle: str
    at: datetime


@dataclass(frozen=True)
class CommitCall:
    handle: str
    post_id: str
    landed: bool


@dataclass
class _Container:
    request: PublishRequest
    expires_at: datetime


@dataclass
class FakePlatform:
    """Implements the `Publisher` contract. `valid_tokens` are accepted; anything else is an auth error."""

    clock: FakeClock
    valid_tokens: set[str] = field(default_factory=lambda: {"token-1"})
    handle_ttl: timedelta = timedelta(hours=24)
    announce_expiry: bool = True  # put EXPIRES_AT in the handle, as a publisher that knows the TTL would
    platform: str = "fakegram"
    live: list[LivePost] = field(default_factory=list)
    commits: list[CommitCall] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (operation, token) for every call
    _faults: dict[str, deque[Fault]] = field(default_factory=lambda: {op: deque() for op in OPERATIONS})
    _containers: dict[str, _Container] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def inject(self, operation: str, fault: Fault, times: int = 1) -> None:
        self._faults[operation].extend([fault] * times)

    def live_posts(self, post_id: str) -> list[LivePost]:
        return [post for post in self.live if post.post_id == post_id]

    def calls_to(self, operation: str) -> int:
        return sum(1 for name, _ in self.calls if name == operation)

    # -- the Publisher contract

    def prepare(self, request: PublishRequest, token: str) -> RemoteHandle:
        def act() -> RemoteHandle:
            value = f"container-{next(self._ids)}"
            expires_at = self.clock.now() + self.handle_ttl
            self._containers[value] = _Container(request, expires_at)
            extra = {EXPIRES_AT: expires_at.isoformat()} if self.announce_expiry else {}
            return RemoteHandle(self.platform, value, extra)

        return self._operate("prepare", token, act)

    def wait_ready(self, handle: RemoteHandle, token: str) -> None:
        self._operate("wait_ready", token, lambda: self._live_container(handle))

    def commit(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published:
        landed: list[Published] = []

        def act() -> Published:
            container = self._live_container(handle)
            post = LivePost(
                f"media-{next(self._ids)}",
                request.post_id,
                request.account_id,
                container.request.caption,
                handle.value,
                self.clock.now(),
            )
            self.live.append(post)
            landed.append(Published(post.remote_id, f"https://fakegram.test/p/{post.remote_id}"))
            return landed[0]

        try:
            return self._operate("commit", token, act)
        finally:
            self.commits.append(CommitCall(handle.value, request.post_id, bool(landed)))

    def reconcile(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published | None:
        def act() -> Published | None:
            for post in self.live:
                if post.handle == handle.value:
                    return Published(post.remote_id, f"https://fakegram.test/p/{post.remote_id}")
            return None  # never published from this handle (an expired or unknown one cannot publish either)

        return self._operate("reconcile", token, act)

    # -- machinery

    def _operate(self, operation: str, token: str, act: Callable[[], T]) -> T:
        self.calls.append((operation, token))
        if token not in self.valid_tokens:
            raise PublishError("Error validating access token: the session has expired", "auth")
        fault = self._faults[operation].popleft() if self._faults[operation] else None
        if fault and fault.action:
            fault.action()
        if fault and fault.error and not fault.after:
            raise fault.error
        result = act()
        if fault and fault.error:
            raise fault.error
        return result

    def _live_container(self, handle: RemoteHandle) -> _Container:
        """Like Instagram: an expired container is reported as a transient error that asks for a new one."""
        container = self._containers.get(handle.value)
        if container is None or container.expires_at <= self.clock.now():
            raise PublishError(f"container {handle.value} expired: prepare it again", "transient")
        return container


def timeout_after_commit() -> Fault:
    """The double-post trap: the post went live, the answer never came back."""
    return Fault(CommitOutcomeUnknown("read timed out after 30 s"), after=True)


def timeout_before_commit() -> Fault:
    return Fault(CommitOutcomeUnknown("connect timed out after 30 s"))


def server_error(landed: bool) -> Fault:
    return Fault(CommitOutcomeUnknown("HTTP 502 Bad Gateway"), after=landed)


def transient(message: str = "HTTP 503 Service Unavailable") -> Fault:
    return Fault(PublishError(message, "transient"))


def throttled(retry_after: float) -> Fault:
    return Fault(PublishError("HTTP 429 Too Many Requests", "throttle", retry_after=retry_after))


def rejected(message: str) -> Fault:
    return Fault(PublishError(message, "permanent"))


def crash(after: bool = True) -> Fault:
    return Fault(WorkerCrash("worker killed"), after=after)
