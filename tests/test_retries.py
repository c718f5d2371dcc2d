"""The shared retry loop: bounded attempts, Retry-After as the least wait, too long a wait refused, waits recorded
through the injected sleep (no wall-clock time is measured)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from influencer_pipeline.retries import Backoff, Retryable, RetryAfterTooLong, call_with_retries


def failing(*failures: Exception, result: str = "done") -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return result

    return calls, attempt


def test_backoff_doubles_and_retry_after_is_the_least_wait() -> None:
    calls, attempt = failing(Retryable("HTTP 500"), Retryable("HTTP 503"), Retryable("HTTP 429", 5.0))
    waits: list[float] = []
    said: list[tuple[int, str, float]] = []

    result = call_with_retries(
        attempt,
        retries=3,
        backoff=Backoff(first_s=0.5),
        sleep=waits.append,
        on_retry=lambda number, failure, wait: said.append((number, failure.reason, wait)),
    )

    assert result == "done" and len(calls) == 4
    assert waits == [0.5, 1.0, 5.0]
    assert said == [(1, "HTTP 500", 0.5), (2, "HTTP 503", 1.0), (3, "HTTP 429", 5.0)]


def test_a_short_retry_after_does_not_undercut_the_backoff() -> None:
    _, attempt = failing(Retryable("HTTP 500"), Retryable("HTTP 429", 0.0))
    waits: list[float] = []
    call_with_retries(attempt, retries=2, backoff=Backoff(first_s=0.5), sleep=waits.append)
    assert waits == [0.5, 1.0]


def test_jitter_and_the_cap_bound_each_wait() -> None:
    _, attempt = failing(*[Retryable("drop")] * 5)
    waits: list[float] = []
    call_with_retries(
        attempt, retries=5, backoff=Backoff(first_s=1.0, jitter_s=1.0, max_backoff_s=6.0), sleep=waits.append
    )
    for retry, wait in enumerate(waits):
        assert min(2**retry, 6.0) <= wait <= min(2**retry + 1.0, 6.0)


def test_the_attempts_are_bounded_and_the_last_failure_is_raised() -> None:
    calls, attempt = failing(*[Retryable(f"HTTP 50{n}") for n in range(5)])
    waits: list[float] = []
    with pytest.raises(Retryable, match="HTTP 502"):
        call_with_retries(attempt, retries=2, backoff=Backoff(first_s=0.1), sleep=waits.append)
    assert len(calls) == 3 and len(waits) == 2


def test_a_retry_after_over_the_limit_fails_at_once_without_sleeping() -> None:
    calls, attempt = failing(Retryable("HTTP 429", 3600.0))
    waits: list[float] = []
    with pytest.raises(RetryAfterTooLong, match="asks to wait 3600 s, longer than 60 s") as caught:
        call_with_retries(attempt, retries=3, backoff=Backoff(max_retry_after_s=60.0), sleep=waits.append)
    assert len(calls) == 1 and waits == [] and caught.value.failure.reason == "HTTP 429"


def test_other_errors_are_not_retried() -> None:
    calls, attempt = failing(ValueError("refused key"))
    with pytest.raises(ValueError, match="refused key"):
        call_with_retries(attempt, retries=3, backoff=Backoff(), sleep=lambda _: None)
    assert len(calls) == 1
