"""The project's one redaction helper: every message that quotes a server, a URL or a setting goes through it.

Order matters: redact, *then* truncate. Cutting first can split a secret, and a split secret no longer matches
itself: an API key echoed at character 290 of a server's error, cut at 300, leaves its first ten characters in
the message (a key prefix is enough to identify the account and shortens a brute-force search). So `redact` runs
on the whole text (or, for a huge body, on a window long enough to hold any secret that starts in the quoted part)
and only `clip`/`excerpt` shorten.

What is replaced by ``***``:

* each known secret, raw, URL-encoded (RFC 3986 percent-encoding, as in a query string) and JSON-escaped;
* the user information of any URL (``scheme://user:password@host``, RFC 3986 §3.2.1 deprecates passwords there,
  yet database and broker URLs carry them);
* credential-shaped text whatever its value: ``Authorization`` schemes (``Bearer``/``Basic``/``OAuth``),
  query or form parameters and JSON fields named like credentials (``access_token=``, ``"api_key": "..."``), and
  well-known key formats (``sk-...`` API keys, Meta ``EAA...`` tokens, AWS ``AKIA...`` access key ids).

`redact_url` names a URL that is itself the credential (a webhook) without showing any of it. `Secret` holds a
key or token so that no repr can show it. Plain Python, no Dagster import: domain modules use it.
"""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

REDACTED = "***"
# How far past the quoted part `excerpt` reads before redacting, so a secret starting there is whole when matched.
EXCERPT_MARGIN = 4096

SENSITIVE_NAMES = (
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "code",
    "code_verifier",
    "fb_exchange_token",
    "token",
    "api_key",
    "apikey",
    "key",
    "password",
    "secret",
    "signature",
)
_NAMES = "|".join(SENSITIVE_NAMES)
_URL_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s?#\"'<>]*@", re.IGNORECASE)
_AUTH_SCHEME = re.compile(r"\b((?i:bearer|oauth)|Basic)(\s+)[^\s&\"',;)\]}>]+")
_PARAMETER = re.compile(rf"(?<![\w-])((?:{_NAMES})=)[^&\s\"'<>]+", re.IGNORECASE)
_JSON_FIELD = re.compile(rf"(\"(?:{_NAMES})\"\s*:\s*\")(?:[^\"\\]|\\.)*(\")", re.IGNORECASE)
_KEY_SHAPES = re.compile(r"\bsk-[A-Za-z0-9_-]{12,}|\bEAA[A-Za-z0-9]{16,}|\bAKIA[0-9A-Z]{16}\b")


class Secret:
    """A key, token or password that no repr, str, f-string or log line can show; `reveal()` is the only way out.

    `__slots__` leaves no `__dict__`, so `vars()` of an object holding one shows the wrapper, never the value.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def _value(secret: str | Secret | None) -> str:
    if isinstance(secret, Secret):
        return secret.reveal()
    return secret or ""


def _forms(value: str) -> list[str]:
    """The ways a secret shows up in text we quote: as is, percent-encoded (query strings, form bodies), in JSON."""
    forms = {value, quote(value, safe=""), quote_plus(value, safe=""), json.dumps(value)[1:-1]}
    return sorted(forms, key=len, reverse=True)  # longest first: one form may contain another


def redact(text: str, *secrets: str | Secret | None) -> str:
    """`text` with every given secret and anything credential-shaped replaced by ``***``; never shortens on its own."""
    for secret in secrets:
        value = _value(secret)
        if value:
            for form in _forms(value):
                text = text.replace(form, REDACTED)
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _JSON_FIELD.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)
    text = _PARAMETER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _KEY_SHAPES.sub(REDACTED, text)


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """`url` without its `user:password@`, and that (decoded) pair, or None when the URL has none.

    HTTP clients turn a URL's user information into `Authorization: Basic` on their own (`requests` does, and then
    drops an `Authorization: Bearer` header the caller set), so a client that sends an API key strips it first.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
    return bare, (unquote(parts.username or ""), unquote(parts.password or ""))


def url_password(url: str) -> str:
    """The password in a URL's user information (decoded), to redact where it appears on its own; "" if none."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return ""
    return unquote(password) if password else ""


def redact_url(url: str) -> str:
    """A name for a webhook that is safe to log: scheme, host and port (no user:password), and a fingerprint of the
    whole URL so two webhooks on one host can be told apart."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1] or "?"
    fingerprint = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"{parts.scheme}://{host}/… (#{fingerprint})"


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked with an ellipsis when cut. Call on redacted text only."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def redact_and_clip(text: str, limit: int, *secrets: str | Secret | None) -> str:
    """Redact, then truncate: the only safe order (see the module docstring)."""
    return clip(redact(text, *secrets), limit)


def excerpt(data: bytes | str, limit: int, *secrets: str | Secret | None) -> str:
    """The start of a possibly huge body (bytes are decoded leniently), redacted, at most `limit` characters.

    Only a window is decoded, but one long enough that a secret beginning inside the first `limit` characters
    is whole when `redact` looks for it.
    """
    longest = max((len(_value(secret)) for secret in secrets), default=0)
    window = limit + 6 * longest + EXCERPT_MARGIN  # percent-encoding triples a character; JSON \\uXXXX is 6
    head = data[:window]
    text = head.decode(errors="replace") if isinstance(head, bytes) else head
    return redact_and_clip(text, limit, *secrets)
