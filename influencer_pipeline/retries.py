"""The one retry loop for every HTTP client here (LLM writer, speech, webhooks, ComfyUI), on `tenacity`.

Why a library: four hand-written loops had drifted (one capped Retry-After, one did not; one jittered, one did
not; one counted attempts from 0, one from 1). `tenacity` (https://tenacity.readthedocs.io/) does the counting,
the stop and the sleeping; what stays here is the policy the clients share:

- only a `Retryable` is retried: the client decides per answer (429, 5xx, dropped connection, timeout) and says why
  in `reason`, which it has already redacted (`influencer_pipeline.redaction`), since it ends up in logs and errors;
- the server's `Retry-After` (RFC 9110 section 10.2.3, parsed by `retry_after.retry_after_seconds`) is the least
  wait; one longer than `max_retry_after_s` is not slept through: `RetryAfterTooLong` is raised at once, so a
  run does not sit for an hour inside one step;
- otherwise exponential backoff, `first_s * 2**retry`, plus up to `jitter_s` of random jitter so that clients
  that failed together do not retry together, capped at `max_backoff_s`;
- `sleep` is injectable: tests record the waits instead of measuring wall-clock time.

When the retries run out the last `Retryable` is raised again, so the client can word its own final error.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

T = TypeVar("T")
log = logging.getLogger(__name__)


class Retryable(Exception):
    """A failure worth another try. `reason` is short, redacted text for logs and the final error."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class RetryAfterTooLong(Exception):
    """The server asked to wait longer than the client is willing to sleep inside one call."""

    def __init__(self, failure: Retryable, wait_s: float, limit_s: float) -> None:
        super().__init__(f"{failure.reason}: asks to wait {wait_s:.0f} s, longer than {limit_s:g} s")
        self.failure = failure
        self.wait_s = wait_s
        self.limit_s = limit_s


@dataclass(frozen=True)
class Backoff:
    """How long to wait before retry number `retry` (0-based) when the server names no time."""

    first_s: float = 1.0
    jitter_s: float = 0.0  # up to this much random time added to each wait
    max_backoff_s: float = 60.0
    max_retry_after_s: float = 300.0

    def wait_s(self, retry: int, failure: Retryable, rng: Callable[[], float] = random.random) -> float:
        """The capped exponential backoff with jitter, or the server's Retry-After when that is longer (it is the
        least time the server wants between tries, not a promise that a sooner retry is welcome)."""
        backoff = min(self.first_s * 2**retry + rng() * self.jitter_s, self.max_backoff_s)
        return backoff if failure.retry_after is None else max(failure.retry_after, backoff)

    def check(self, failure: Retryable) -> None:
        """Refuse a Retry-After longer than `max_retry_after_s` (raises `RetryAfterTooLong`)."""
        if failure.retry_after is not None and failure.retry_after > self.max_retry_after_s:
            raise RetryAfterTooLong(failure, failure.retry_after, self.max_retry_after_s)


OnRetry = Callable[[int, Retryable, float], None]


def call_with_retries(
    attempt: Callable[[], T],
    *,
    retries: int,
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: OnRetry | None = None,
) -> T:
    """`attempt()` until it returns, retrying a raised `Retryable` at most `retries` times (so `retries + 1` calls).

    `on_retry(retry_number, failure, wait_s)` is called before each sleep (1-based number), for the client's log
    line. Anything other than `Retryable` propagates at once; after the last attempt the last `Retryable` does.
    """

    def wait(state: RetryCallState) -> float:
        return backoff.wait_s(state.attempt_number - 1, _failure(state))

    def before_sleep(state: RetryCallState) -> None:  # only when another attempt follows (tenacity checks stop first)
        failure = _failure(state)
        backoff.check(failure)
        if on_retry is not None:
            on_retry(state.attempt_number, failure, state.upcoming_sleep)

    retrying = Retrying(
        retry=retry_if_exception_type(Retryable),
        stop=stop_after_attempt(retries + 1),
        wait=wait,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    return retrying(attempt)


def _failure(state: RetryCallState) -> Retryable:
    failure = state.outcome.exception() if state.outcome is not None else None
    assert isinstance(failure, Retryable)  # retry_if_exception_type lets nothing else through
    return failure
