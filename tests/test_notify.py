"""Signed webhook notifications against a real HTTP receiver on loopback (http.server), no Dagster involved."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator

import pytest

from influencer_pipeline.notify import (
    EVENT_FAILURE,
    EVENT_SUCCESS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Failure,
    NotificationError,
    RetryPolicy,
    RunEvent,
    Webhook,
    build_payload,
    build_slack_payload,
    deliver,
    notify,
    redact_url,
    verify_signature,
)
from tests.support.webhooks import Receiver

SECRET = "hmac-secret-do-not-leak"
TIMESTAMP = 1_795_000_000.0  # 2026-11-18T11:06:40Z
FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05, timeout_s=2.0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def success_event() -> RunEvent:
    return RunEvent(
        event=EVENT_SUCCESS,
        run_id="0b1c2d3e-run",
        job="persona_training",
        status="SUCCESS",
        partition="ava",
        assets=("lora_weights", "lora_samples"),
        run_url="https://dagster.example.com/runs/0b1c2d3e-run",
        timestamp=TIMESTAMP,
    )


def failure_event() -> RunEvent:
    failure = Failure(step="lora_weights", message="RuntimeError: CUDA out of memory")
    return RunEvent(EVENT_FAILURE, "9f8e-run", "persona_training", "FAILURE", "ava", (), failure, None, TIMESTAMP)


def test_generic_payload_has_every_field_and_null_failure_on_success() -> None:
    assert build_payload(success_event()) == {
        "event": "run_success",
        "run_id": "0b1c2d3e-run",
        "job": "persona_training",
        "partition": "ava",
        "status": "SUCCESS",
        "assets": ["lora_weights", "lora_samples"],
        "failure": None,
        "run_url": "https://dagster.example.com/runs/0b1c2d3e-run",
        "timestamp": "2026-11-18T11:06:40Z",
    }
    failed = build_payload(failure_event())
    assert failed["status"] == "FAILURE"
    assert failed["failure"] == {"step": "lora_weights", "message": "RuntimeError: CUDA out of memory"}
    assert failed["run_url"] is None


def test_slack_payload_has_fallback_text_and_blocks() -> None:
    ok = build_slack_payload(success_event())
    assert ok["text"] == "✅ persona_training succeeded (ava)"
    assert [block["type"] for block in ok["blocks"]] == ["header", "section", "section", "context"]
    fields = " ".join(field["text"] for field in ok["blocks"][1]["fields"])
    assert "<https://dagster.example.com/runs/0b1c2d3e-run|open in Dagster>" in fields
    assert "`lora_weights`" in ok["blocks"][2]["text"]["text"]

    failed = build_slack_payload(failure_event())
    assert failed["text"].startswith("❌ persona_training failed")
    failure_text = failed["blocks"][2]["text"]["text"]
    assert "step `lora_weights`" in failure_text and "CUDA out of memory" in failure_text


def test_a_receiver_can_verify_the_signature_and_rejects_tampering_and_replays(receiver: Receiver) -> None:
    notify([Webhook(receiver.url)], success_event(), SECRET, policy=FAST)
    _, headers, body = receiver.requests[0]
    timestamp, signature = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]

    # The documented scheme, recomputed independently of the module under test.
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert verify_signature(body, SECRET, signature, timestamp)

    assert not verify_signature(body.replace(b"SUCCESS", b"FAILURE"), SECRET, signature, timestamp)
    assert not verify_signature(body, "another-secret", signature, timestamp)
    assert not verify_signature(body, SECRET, signature, timestamp, now=int(timestamp) + 301)  # replayed later
    assert not verify_signature(body, SECRET, None, timestamp)


def test_each_webhook_gets_its_own_format(receiver: Receiver) -> None:
    notify([Webhook(receiver.url), Webhook(receiver.url, "slack")], failure_event(), SECRET, policy=FAST)
    generic, slack = receiver.bodies()
    assert generic["failure"]["step"] == "lora_weights"
    assert set(slack) == {"text", "blocks"}


def test_5xx_and_429_are_retried_with_exponential_backoff_until_accepted() -> None:
    server = Receiver([503, 429, 502]).start()
    waits: list[float] = []
    try:
        policy = RetryPolicy(attempts=4, base_delay_s=0.5, max_delay_s=8.0, timeout_s=2.0)
        attempts = deliver(Webhook(server.url), b'{"event":"x"}', SECRET, policy=policy, sleep=waits.append)
    finally:
        server.stop()
    assert attempts == 4
    assert waits == [0.5, 1.0, 2.0]
    for _, headers, body in server.requests:  # every attempt carries a valid, fresh signature
        assert verify_signature(body, SECRET, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER])


def test_a_connection_error_is_retried_once_the_receiver_comes_up() -> None:
    down = Receiver()  # bound to a free port, not yet serving: the first POST is refused or times out
    port = down.server.server_port
    down.server.server_close()
    started: list[Receiver] = []

    def sleep_then_start(_: float) -> None:
        started.append(Receiver(port=port).start())

    try:
        attempts = deliver(Webhook(down.url), b"{}", SECRET, policy=FAST, sleep=sleep_then_start)
        assert attempts == 2
        assert len(started[0].requests) == 1
    finally:
        for server in started:
            server.stop()


def test_retries_are_bounded_and_other_4xx_are_not_retried() -> None:
    server = Receiver([503] * 10 + [400]).start()
    try:
        with pytest.raises(NotificationError, match="failed after 4 attempts: HTTP 503"):
            deliver(Webhook(server.url), b"{}", SECRET, policy=FAST)
        assert len(server.requests) == 4
        server.statuses = [400]
        with pytest.raises(NotificationError, match="refused the notification: HTTP 400"):
            deliver(Webhook(server.url), b"{}", SECRET, policy=FAST)
        assert len(server.requests) == 5
    finally:
        server.stop()


def test_one_failing_webhook_does_not_stop_the_others(receiver: Receiver) -> None:
    dead = Receiver([500] * 10).start()
    try:
        with pytest.raises(NotificationError, match=r"127\.0\.0\.1"):
            notify([Webhook(dead.url), Webhook(receiver.url)], success_event(), SECRET, policy=FAST)
    finally:
        dead.stop()
    assert receiver.bodies()[0]["run_id"] == "0b1c2d3e-run"


def test_secrets_never_reach_payloads_logs_or_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    url_token = "url-token-do-not-leak"
    server = Receiver([503] * 10).start()
    refused = Receiver()
    refused.server.server_close()  # nothing listens there: connection errors, whose text includes the URL
    hooks = [
        Webhook(f"{server.url}?token={url_token}"),
        Webhook(f"http://127.0.0.1:{refused.server.server_port}/hook/{url_token}?token={url_token}", "slack"),
    ]
    caplog.set_level(logging.DEBUG, logger="influencer_pipeline")
    try:
        with pytest.raises(NotificationError) as raised:
            notify(hooks, failure_event(), SECRET, policy=FAST)
    finally:
        server.stop()

    exc: BaseException | None = raised.value
    while exc is not None:  # the whole chain: `requests` exceptions name the URL, so none may be attached
        assert url_token not in f"{exc} {exc!r}" and SECRET not in f"{exc} {exc!r}"
        exc = exc.__cause__ or exc.__context__
    assert raised.value.__cause__ is None and raised.value.__context__ is None
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "retrying" in logged
    assert url_token not in logged and SECRET not in logged
    for _, headers, body in server.requests:
        assert SECRET not in body.decode() and SECRET not in json.dumps(headers)
        assert url_token not in body.decode()


def test_redacted_url_keeps_host_and_drops_path_and_query() -> None:
    url = "https://hooks.slack.com/services/T000/B000/XXXXSECRET?token=abc"
    name = redact_url(url)
    assert name.startswith("https://hooks.slack.com/… (#")
    assert "XXXXSECRET" not in name and "abc" not in name
    assert redact_url("https://n8n:pa55word@n8n.example.com:5678/webhook/x").startswith("https://n8n.example.com:5678/")
    assert redact_url(url) != redact_url(url.replace("abc", "abd"))  # tells two webhooks on one host apart
