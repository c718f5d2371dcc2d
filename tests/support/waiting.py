"""Waiting for an event in a test: the one place a deadline lives, so a slow or busy machine needs one setting.

A test asserts on what happened (a log line, a run's status, a file), never on how long it took. Waiting for it
still needs a bound, or a bug would hang the suite: every wait goes through `wait_until`, whose deadlines are
generous and multiplied by TEST_TIMEOUT_SCALE (default 1; e.g. 3 on a machine shared with other jobs).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
SCALE_ENV = "TEST_TIMEOUT_SCALE"


def timeout_scale() -> float:
    """TEST_TIMEOUT_SCALE as a positive number; a bad value is a user error that names the variable and the fix."""
    raw = os.environ.get(SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not scale > 0:
        raise ValueError(f"{SCALE_ENV}={raw!r} is not a positive number; set it to e.g. 1 (default) or 3, or unset it")
    return scale


def scaled(seconds: float) -> float:
    """A deadline in seconds, stretched by TEST_TIMEOUT_SCALE (for timeouts handed to a client or `wait()`)."""
    return seconds * timeout_scale()


def wait_until(
    condition: Callable[[], T],
    what: str,
    timeout: float = 60.0,
    *,
    interval: float = 0.1,
    processes: Iterable[subprocess.Popen] = (),
    details: Callable[[], str] = lambda: "",
) -> T:
    """Poll `condition` until it returns something truthy, and return that.

    Fails with `what` and `details()` (say, a server's log tail) once `timeout` (scaled) has passed, or at once
    when one of `processes` (the server being waited for) has exited, since it will then never happen.
    """
    deadline = time.monotonic() + scaled(timeout)
    procs = list(processes)
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(
                    f"{_name(proc)} exited with {proc.returncode} while waiting for {what}\n{details()}"
                )
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.0f} s waiting for {what}\n{details()}")
        time.sleep(interval)


def _name(proc: subprocess.Popen) -> str:
    args = proc.args if isinstance(proc.args, list | tuple) else [proc.args]
    return " ".join(str(arg) for arg in args[:3]) or "the process"
