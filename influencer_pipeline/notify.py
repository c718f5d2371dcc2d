"""Signed run notifications: build the payload, sign it, POST it with bounded retries. No Dagster import.

Wire format (what a receiver such as n8n sees):

* Body: UTF-8 JSON. Generic webhooks get ``{event, run_id, job, partition, status, assets, failure, run_url,
  timestamp}``; Slack incoming webhooks get ``{"text": ..., "blocks": [...]}`` (``text`` is the fallback that
  notifications and screen readers use).
* ``X-Influencer-Timestamp: <unix seconds>`` and ``X-Influencer-Signature: sha256=<hex>``, where the hex digest is
  ``HMAC-SHA256(secret, f"{timestamp}." + raw body bytes)``.

Why the timestamp is inside the signed string: a signature over the body alone stays valid forever, so anyone who
captured one delivery could replay it later. With the timestamp signed, a receiver rejects deliveries older than its
tolerance (`verify_signature`, 5 minutes by default); within that window it drops duplicates by
``(event, run_id)``, which also absorbs our own retries. Every attempt is signed afresh, so a retry after a backoff
is never stale.

Secrets (the HMAC secret, and webhook URLs, whose path or query often *is* the credential: Slack's
``/services/T…/B…/…``, n8n's ``/webhook/<uuid>``, ``?token=``) never appear in payloads, log lines or exception
messages: failures name a webhook by `redact_url` (scheme, host and a short fingerprint of the full URL), and
transport exceptions are reported by class name only, never chained, because `requests` puts the full URL in them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import requests

from influencer_pipeline.redaction import redact_and_clip, redact_url
from influencer_pipeline.retries import Backoff, Retryable, call_with_retries
from influencer_pipeline.retry_after import retry_after_seconds

SIGNATURE_HEADER = "X-Influencer-Signature"
TIMESTAMP_HEADER = "X-Influencer-Timestamp"
EVENT_SUCCESS = "run_success"
EVENT_FAILURE = "run_failure"
MAX_FAILURE_MESSAGE_CHARS = 2000  # a failure message, not a stack trace; Slack sections cap text at 3000
SLACK_MAX_ASSETS = 20

WebhookFormat = Literal["json", "slack"]
log = logging.getLogger(__name__)


class NotificationError(RuntimeError):
    """One or more webhooks did not accept a notification; the message names them by `redact_url` only."""


@dataclass(frozen=True)
class Failure:
    """Where a failed run broke: the failing step (None for a run-level failure such as a crashed worker)."""

    step: str | None
    message: str


@dataclass(frozen=True)
class RunEvent:
    """A finished run as receivers need it: identifiers, outcome, what it produced, and where to look."""

    event: str
    run_id: str
    job: str
    status: str
    partition: str | None = None
    assets: tuple[str, ...] = ()
    failure: Failure | None = None
    run_url: str | None = None
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Webhook:
    """A destination and the body shape it understands."""

    url: str
    format: WebhookFormat = "json"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded: `attempts` tries per webhook, waiting base, 2x base, 4x base... capped at `max_delay_s`.

    With the defaults one unreachable webhook costs at most about 4 x 5 s + 3.5 s, which keeps a sensor tick
    with two webhooks inside Dagster's 60 s sensor evaluation timeout.
    """

    attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    timeout_s: float = 5.0


def build_payload(event: RunEvent) -> dict[str, Any]:
    """The generic JSON body: stable keys, `failure` always present (null on success)."""
    failure = None if event.failure is None else {"step": event.failure.step, "message": event.failure.message}
    return {
        "event": event.event,
        "run_id": event.run_id,
        "job": event.job,
        "partition": event.partition,
        "status": event.status,
        "assets": list(event.assets),
        "failure": failure,
        "run_url": event.run_url,
        "timestamp": _iso(event.timestamp),
    }


def build_slack_payload(event: RunEvent) -> dict[str, Any]:
    """Slack Block Kit: a header, the facts as fields, the failure, the assets, and a context line."""
    ok = event.failure is None and event.status == "SUCCESS"
    title = f"{'✅' if ok else '❌'} {event.job} {'succeeded' if ok else 'failed'}"
    if event.partition:
        title += f" ({event.partition})"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "fields": _slack_fields(event)},
    ]
    if event.failure is not None:
        where = f"step `{event.failure.step}`" if event.failure.step else "the run"
        text = f"*Failed in {where}:*\n```{redact_and_clip(event.failure.message, 2800)}```"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    if event.assets:
        shown = ", ".join(f"`{key}`" for key in event.assets[:SLACK_MAX_ASSETS])
        more = len(event.assets) - SLACK_MAX_ASSETS
        text = f"*Assets materialised:* {shown}" + (f" and {more} more" if more > 0 else "")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    context = f"run `{event.run_id}` · {_iso(event.timestamp)}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": title, "blocks": blocks}


def _slack_fields(event: RunEvent) -> list[dict[str, str]]:
    fields = [f"*Job:*\n{event.job}", f"*Status:*\n{event.status}"]
    if event.partition:
        fields.append(f"*Partition:*\n{event.partition}")
    if event.run_url:
        fields.append(f"*Run:*\n<{event.run_url}|open in Dagster>")
    return [{"type": "mrkdwn", "text": text} for text in fields]


def encode_body(webhook: Webhook, event: RunEvent) -> bytes:
    """The exact bytes that are signed and sent; compact and key-ordered so they are reproducible."""
    payload = build_slack_payload(event) if webhook.format == "slack" else build_payload(event)
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `"<timestamp>." + body`: the value of `SIGNATURE_HEADER`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    body: bytes,
    secret: str,
    signature: str | None,
    timestamp: str | None,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver does: recompute the HMAC over the raw body, compare in constant time, reject stale times."""
    if not signature or not timestamp or not timestamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(body, secret, int(timestamp)), signature)


def signed_headers(body: bytes, secret: str | None, timestamp: int) -> dict[str, str]:
    """Content type plus, when a secret is configured, the timestamp and signature headers."""
    headers = {"Content-Type": "application/json", "User-Agent": "influencer-pipeline-notify/1"}
    if secret:
        headers[TIMESTAMP_HEADER] = str(timestamp)
        headers[SIGNATURE_HEADER] = sign(body, secret, timestamp)
    return headers


def retryable(status: int) -> bool:
    """Worth another try: the receiver is overloaded (429) or broken for now (5xx); other 4xx will not change."""
    return status == 429 or status >= 500


def deliver(
    webhook: Webhook,
    body: bytes,
    secret: str | None,
    *,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """POST `body` until a 2xx; retry 429, 5xx and transport errors per `policy`. Returns the attempts used.

    Raises NotificationError (never chained: the cause would carry the URL) when the webhook answers another
    4xx, or when the attempts run out.
    """
    policy = policy or RetryPolicy()
    name = redact_url(webhook.url)
    attempts = 0

    def attempt() -> int:
        nonlocal attempts
        attempts += 1
        headers = signed_headers(body, secret, int(time.time()))  # signed afresh: a retry is never a stale replay
        try:
            response = requests.post(webhook.url, data=body, headers=headers, timeout=policy.timeout_s)
        except requests.RequestException as exc:
            raise Retryable(type(exc).__name__) from None
        if 200 <= response.status_code < 300:
            return attempts
        outcome = f"HTTP {response.status_code}"
        if not retryable(response.status_code):
            raise NotificationError(f"webhook {name} refused the notification: {outcome}")
        retry_after = _retry_after(response)  # honoured up to max_delay_s: a sensor tick has 60 s in all
        raise Retryable(outcome, None if retry_after is None else min(retry_after, policy.max_delay_s))

    def on_retry(number: int, failure: Retryable, wait: float) -> None:
        log.warning("webhook %s: %s on attempt %d; retrying in %.1f s", name, failure.reason, number, wait)

    backoff = Backoff(first_s=policy.base_delay_s, max_backoff_s=policy.max_delay_s, max_retry_after_s=math.inf)
    try:
        return call_with_retries(attempt, retries=policy.attempts - 1, backoff=backoff, sleep=sleep, on_retry=on_retry)
    except Retryable as failure:
        raise NotificationError(f"webhook {name} failed after {policy.attempts} attempts: {failure.reason}") from None


def notify(
    webhooks: Sequence[Webhook],
    event: RunEvent,
    secret: str | None,
    *,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Send `event` to every webhook; one failing webhook does not stop the others. Returns their redacted names.

    Raises NotificationError listing every webhook that failed, after all were tried.
    """
    errors = []
    for webhook in webhooks:
        body = encode_body(webhook, event)
        try:
            deliver(webhook, body, secret, policy=policy, sleep=sleep)
        except NotificationError as exc:
            errors.append(str(exc))
    if errors:
        raise NotificationError("; ".join(errors))
    return [redact_url(webhook.url) for webhook in webhooks]


def truncate_message(message: str, limit: int = MAX_FAILURE_MESSAGE_CHARS) -> str:
    """Failure messages go to chat and n8n: bounded, and redacted before they are cut (URL credentials, tokens,
    key shapes), so a secret quoted near the limit cannot leave its first characters behind."""
    return redact_and_clip(message.strip(), limit)


def _retry_after(response: requests.Response) -> float | None:
    return retry_after_seconds(response.headers.get("Retry-After"))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
