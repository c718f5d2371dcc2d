"""Meta Graph API errors: classification, redaction, and the one request path both Meta publishers use.

Instagram and Facebook Pages share Meta's error envelope, its codes and its rate-limit headers
(https://developers.facebook.com/docs/graph-api/guides/error-handling,
https://developers.facebook.com/docs/instagram-platform/instagram-graph-api/reference/error-codes,
https://developers.facebook.com/docs/graph-api/overview/rate-limiting), so one classifier turns every failure
into a `PublishError` of the right kind with the platform's wait hint. Both publishers must also treat their commit
call alike: a failure that may have happened *after* Meta acted (timeout, dropped connection, 5xx, an unknown
server error) becomes `CommitOutcomeUnknown`, never a retryable error, so the caller reconciles instead of posting
twice.

Tokens travel only in the `Authorization` header, never in a URL, so neither an exception message from
`requests` nor a urllib3 log line can carry one; error bodies are redacted anyway because Meta quotes a bad
token back ("Malformed access token EAAB...").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from urllib3.exceptions import NewConnectionError

from influencer_pipeline.publishing.base import CommitOutcomeUnknown, ErrorKind, PublishError
from influencer_pipeline.redaction import excerpt, redact
from influencer_pipeline.retry_after import retry_after_seconds

log = logging.getLogger(__name__)

# An account blocked for spam or policy (2207051, 368, "posting too fast") must pause for hours, not seconds:
# retry loops on these nearly got accounts disabled (https://github.com/gitroomhq/postiz-app/issues/832).
ANTI_SPAM_PAUSE_S = 6 * 3600.0

ANTI_SPAM_CODES = frozenset({368})
ANTI_SPAM_SUBCODES = frozenset({2207051, 1390008})
PUBLISHING_LIMIT_SUBCODE = 2207042
# Media or content the platform will never take as sent: fix the media, do not retry.
PERMANENT_SUBCODES = frozenset(
    {2207004, 2207005, 2207009, 2207010, 2207023, 2207026, 2207028, 2207050, 1366046, 1346003, 1404102, 1404006}
)
PERMANENT_CODES = frozenset({36000, 36001, 36003})
# Worth another try (possibly with a new container): download timeouts, expired builders, "not ready yet",
# and the intermittent "object does not exist" on reads (100/33).
TRANSIENT_SUBCODES = frozenset(
    {33, 2207001, 2207003, 2207006, 2207008, 2207020, 2207027, 2207032, 2207052, 2207053, 2207077, 2207082}
)
NOT_READY_CODE = 9007
NOT_READY_SUBCODE = 2207027
AUTH_CODES = frozenset({10, 102, 190, *range(200, 300)})
THROTTLE_CODES = frozenset({4, 9, 17, 32, 613, *range(80000, 80015)})
TRANSIENT_CODES = frozenset({-2, -1, 1, 2})


class MetaPublishError(PublishError):
    """A `PublishError` that keeps Meta's code and subcode, so callers and tests can tell causes apart."""

    def __init__(
        self,
        message: str,
        kind: ErrorKind,
        retry_after: float | None = None,
        *,
        code: int | None = None,
        subcode: int | None = None,
    ) -> None:
        super().__init__(message, kind, retry_after)
        self.code = code
        self.subcode = subcode


@dataclass(frozen=True)
class MetaError:
    """Meta's error envelope (or what an answer without one amounts to), as read from one response."""

    http_status: int
    code: int | None = None
    subcode: int | None = None
    message: str = ""
    user_message: str = ""
    fbtrace_id: str = ""
    is_transient: bool = False

    @property
    def not_ready(self) -> bool:
        return is_not_ready(self.code, self.subcode)


def is_not_ready(code: int | None, subcode: int | None) -> bool:
    """Media still processing: poll and publish the same container later, never make a new one."""
    return code == NOT_READY_CODE or subcode == NOT_READY_SUBCODE


def parse_error(response: requests.Response, token: str = "") -> MetaError:
    """Read Meta's `{"error": {...}}` envelope, rupload's `{"debug_info": {...}}`, or just the HTTP status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return MetaError(
            http_status=response.status_code,
            code=_int_or_none(err.get("code")),
            subcode=_int_or_none(err.get("error_subcode")),
            message=str(err.get("message", "")),
            user_message=str(err.get("error_user_msg", "")),
            fbtrace_id=str(err.get("fbtrace_id", "")),
            is_transient=bool(err.get("is_transient", False)),
        )
    if isinstance(body, dict) and isinstance(body.get("debug_info"), dict):
        info = body["debug_info"]
        return MetaError(
            http_status=response.status_code,
            message=f"{info.get('type', 'upload error')}: {info.get('message', '')}",
            is_transient=bool(info.get("retriable", False)),
        )
    return MetaError(http_status=response.status_code, message=excerpt(response.text, 200, token))


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def classify(error: MetaError) -> ErrorKind:
    """Meta's code/subcode → the ledger's error kind; the most specific signal (subcode) wins (error pages above)."""
    code, subcode = error.code, error.subcode
    if subcode in ANTI_SPAM_SUBCODES or code in ANTI_SPAM_CODES or subcode == PUBLISHING_LIMIT_SUBCODE:
        return "throttle"
    if subcode in PERMANENT_SUBCODES or code in PERMANENT_CODES:
        return "permanent"
    if subcode in TRANSIENT_SUBCODES or error.not_ready:
        return "transient"
    if code in AUTH_CODES:
        return "auth"
    if code in THROTTLE_CODES or error.http_status == 429:
        return "throttle"
    if code in TRANSIENT_CODES or error.http_status >= 500 or error.is_transient:
        return "transient"
    return "permanent"


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The longest wait the platform asked for: `Retry-After` (seconds or a date) or the Business Use Case
    header's `estimated_time_to_regain_access` (minutes, see the rate-limiting page above); None when the response
    gives no hint."""
    hints: list[float] = []
    retry_after = headers.get("Retry-After")
    if retry_after:
        hints.append(_retry_after_value(retry_after, time.time() if now is None else now))
    usage = headers.get("X-Business-Use-Case-Usage")
    if usage:
        hints.extend(60.0 * minutes for minutes in _regain_minutes(usage) if minutes > 0)
    hints = [h for h in hints if h >= 0]
    return max(hints) if hints else None


def _retry_after_value(value: str, now: float) -> float:
    seconds = retry_after_seconds(value, datetime.fromtimestamp(now, UTC))
    return -1.0 if seconds is None else seconds


def _regain_minutes(header: str) -> list[float]:
    try:
        usage = json.loads(header)
    except ValueError:
        return []
    if not isinstance(usage, dict):
        return []
    entries = [entry for value in usage.values() if isinstance(value, list) for entry in value]
    return [float(e.get("estimated_time_to_regain_access") or 0) for e in entries if isinstance(e, dict)]


def error_for(response: requests.Response, what: str, token: str) -> MetaPublishError:
    """The classified, redacted error for a failed Meta response."""
    error = parse_error(response, token)
    kind = classify(error)
    retry_after = retry_after_s(response.headers)
    if retry_after is None and kind == "throttle" and _is_anti_spam(error):
        retry_after = ANTI_SPAM_PAUSE_S
    return MetaPublishError(
        redact(describe(error, what), token), kind, retry_after, code=error.code, subcode=error.subcode
    )


def _is_anti_spam(error: MetaError) -> bool:
    return error.subcode in ANTI_SPAM_SUBCODES or error.code in ANTI_SPAM_CODES


def describe(error: MetaError, what: str) -> str:
    """One line a person can act on: what we tried, Meta's code/subcode, its messages and its trace id."""
    codes = f"code {error.code}" + (f"/{error.subcode}" if error.subcode is not None else "")
    parts = [f"{what} failed (HTTP {error.http_status}, {codes if error.code is not None else 'no Meta code'})"]
    if error.message:
        parts.append(error.message)
    if error.user_message and error.user_message != error.message:
        parts.append(error.user_message)
    if error.fbtrace_id:
        parts.append(f"fbtrace_id {error.fbtrace_id}")
    return ": ".join(parts)


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request provably never reached the server (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


class GraphSession:
    """Every Meta HTTP call: token in the header, bounded timeouts, classified and redacted failures.

    `request(..., commit=True)` marks the one call that publishes: any answer that leaves open whether Meta acted
    raises `CommitOutcomeUnknown`; only a definite refusal (throttle, auth, bad media, "not ready") is a
    `PublishError`. No call is retried here: retries are the ledger's decision.
    """

    def __init__(self, timeout_s: tuple[float, float], session: requests.Session | None = None) -> None:
        self.timeout_s = timeout_s
        self.session = session or requests.Session()

    def request(
        self, method: str, url: str, token: str, *, what: str, commit: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        """Send one request and return its JSON object; raise classified errors with the token removed."""
        headers = {**kwargs.pop("headers", {}), "Authorization": f"OAuth {token}"}
        try:
            response = self.session.request(method, url, headers=headers, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise self._transport_error(exc, what, token, commit) from None
        if response.ok:
            return self._json_body(response, what, token, commit)
        error = error_for(response, what, token)
        if commit and self._ambiguous(response, error):
            raise CommitOutcomeUnknown(f"{error} (the post may be live: reconcile, do not retry)")
        log.warning("%s", error)
        raise error

    def cosmetic_field(self, url: str, token: str, field: str, what: str) -> str:
        """One field of a Graph object (a permalink), or "" when it cannot be read: a live post is never failed
        over a value that is only shown to people."""
        try:
            body = self.request("GET", url, token, params={"fields": field}, what=what)
        except PublishError:
            return ""
        return str(body.get(field, ""))

    @staticmethod
    def _ambiguous(response: requests.Response, error: MetaPublishError) -> bool:
        """A 5xx or an unknown/transient server error on the commit may have come after the post went out."""
        if response.status_code >= 500:
            return True
        return error.kind == "transient" and not is_not_ready(error.code, error.subcode)

    @staticmethod
    def _transport_error(
        exc: requests.RequestException, what: str, token: str, commit: bool
    ) -> PublishError | CommitOutcomeUnknown:
        detail = redact(f"{what}: {type(exc).__name__}: {exc}", token)
        if commit and not _never_sent(exc):
            return CommitOutcomeUnknown(f"{detail} (the post may be live: reconcile, do not retry)")
        return MetaPublishError(detail, "transient")

    @staticmethod
    def _json_body(response: requests.Response, what: str, token: str, commit: bool) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            return body
        detail = redact(f"{what}: HTTP {response.status_code} with a body that is not a JSON object", token)
        if commit:
            raise CommitOutcomeUnknown(f"{detail} (reconcile, do not retry)")
        raise MetaPublishError(detail, "transient")
