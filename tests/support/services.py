"""Real services in tests: a free loopback port, and the skip-locally/fail-under-CI policy for services."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest


def unavailable(reason: str, ci_detail: object = "") -> NoReturn:
    """Skip on a developer's machine that lacks what a test needs; fail under CI=true, where .ci/run provides it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} and CI=true requires it" + (f": {ci_detail}" if ci_detail else ""))
    pytest.skip(reason)


def service_missing(name: str, host: str, port: int, detail: object = "") -> NoReturn:
    unavailable(f"{name} not reachable at {host}:{port}", detail)


def require_service(name: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        service_missing(name, host, port, exc)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
