"""The one wait helper: its scale setting, its failure messages, and its early exit when the awaited process dies."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.waiting import SCALE_ENV, scaled, timeout_scale, wait_until


def test_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", "up"])
    assert wait_until(lambda: next(answers), "the answer", timeout=60, interval=0) == "up"


def test_a_missed_deadline_names_what_was_awaited_and_its_details() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the daemon\nlast log line"):
        wait_until(lambda: False, "the daemon", timeout=0, details=lambda: "last log line")


def test_an_exited_process_fails_at_once_instead_of_at_the_deadline() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    calls: list[int] = []
    with pytest.raises(AssertionError, match=r"exited with 3 while waiting for the server"):
        wait_until(lambda: calls.append(1), "the server", timeout=3600, processes=[proc])
    assert calls == []  # checked before the condition: a dead server's port may be taken by someone else


def test_the_scale_stretches_every_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCALE_ENV, raising=False)
    assert (timeout_scale(), scaled(60)) == (1.0, 60)
    monkeypatch.setenv(SCALE_ENV, "2.5")
    assert scaled(60) == 150


@pytest.mark.parametrize("value", ["fast", "0", "-1"])
def test_a_bad_scale_says_which_variable_and_how_to_fix_it(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(SCALE_ENV, value)
    with pytest.raises(ValueError, match=rf"TEST_TIMEOUT_SCALE='{value}' is not a positive number; set it to"):
        timeout_scale()
