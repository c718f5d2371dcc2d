"""OAuth 2.0 account linking and token upkeep for the publishers.

Linking is the authorization-code flow with PKCE (S256) and a single-use `state` (reference section 5.1): the
state is 256 random bits, lives 10 minutes, is compared in constant time, and is bound to the persona, the
platform, the redirect URI and the PKCE verifier, which never leaves this process. The redirect comes back to a
one-shot listener on 127.0.0.1 where the platform allows loopback redirects (Google, TikTok), or to a public
HTTPS callback the person registers with Meta (a tunnel or reverse proxy forwards it to `--listen-port`, or the
person pastes the address the browser landed on). Meta's short-lived tokens are exchanged for long-lived ones
and the granted scopes are checked: a partial grant fails the link instead of failing the first post.

`Accounts.fresh_token` is what publishers call. It refreshes ahead of expiry with one refresher per account at
a time: a `threading.Lock` per account serialises threads in this process, and a lease on the account's row
(a compare-and-set UPDATE, see `AccountStore.try_lease`) serialises processes, on SQLite and PostgreSQL alike,
without holding a database lock during the HTTP call; a crashed refresher's lease expires after two minutes.
Whoever waits re-reads the row afterwards and uses the token the refresher stored, so a rotating refresh token
(TikTok) is spent exactly once and the new pair is committed before anyone uses it.

Tokens are `Secret`s everywhere here; error messages quote the platform's words with every secret scrubbed, are
raised `from None` (requests' exceptions quote URLs, and Meta takes tokens in query strings), and a filter on
urllib3's logger redacts token-bearing query values from its DEBUG request lines.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import logging
import os
import re
import secrets
import threading
import time
import uuid
import webbrowser
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests

from influencer_pipeline.accounts.providers import (
    FACEBOOK_LOGIN,
    LOGINS,
    PkceEncoding,
    Provider,
    default_login,
    login_key,
    provider_for,
)
from influencer_pipeline.accounts.store import (
    HEALTH_RECONNECT,
    Account,
    AccountStore,
    Identity,
    Secret,
    Tokens,
    TokenSet,
)
from influencer_pipeline.errors import InputError
from influencer_pipeline.redaction import redact

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
STATE_TTL = timedelta(minutes=10)
REFRESH_LEASE = timedelta(minutes=2)
EXPIRY_WARNING = timedelta(days=7)
SENSITIVE_PARAMS = (
    "access_token",
    "refresh_token",
    "client_secret",
    "code",
    "code_verifier",
    "fb_exchange_token",
    "token",
)
CONFIG_ERRORS = {"invalid_client", "unauthorized_client", "unsupported_grant_type", "invalid_scope"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def scrub(text: str, hidden: Iterable[str] = ()) -> str:
    """`text` safe to show: the given secret values, and any `access_token=...`-style values, replaced by ***."""
    return redact(text, *hidden)


class _RedactQueryStrings(logging.Filter):
    """urllib3 logs each request line at DEBUG with its query string, and Meta takes tokens in query strings."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def _install_log_filter() -> None:
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(existing, _RedactQueryStrings) for existing in logger.filters):
        logger.addFilter(_RedactQueryStrings())


_install_log_filter()


class OAuthError(Exception):
    """A failed OAuth step; `transient` says whether trying again later can help (network, timeout, 5xx, 429)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class InvalidGrant(OAuthError):
    """The platform refused a code or token: used, expired, revoked, or the PKCE verifier does not match."""


class StateError(OAuthError):
    """The callback's state is unknown, already used, expired or bound to another sign-in: possibly forged."""


class ReconnectNeeded(OAuthError):
    """The account's tokens are dead and only the person can fix it, by linking again."""

    def __init__(self, account: Account, reason: str) -> None:
        super().__init__(
            f"the {account.platform} account of persona {account.persona!r} must be linked again ({reason}). "
            f"Fix: influencer-pipeline accounts link {account.platform} --persona {account.persona}"
        )


def new_verifier() -> str:
    """A PKCE code verifier: 64 characters of the RFC 7636 unreserved set (the RFC allows 43 to 128)."""
    return secrets.token_urlsafe(48)


def code_challenge(verifier: str, encoding: PkceEncoding) -> str:
    """The S256 challenge: SHA-256 of the verifier, base64url without padding (RFC 7636) or hex (TikTok desktop)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    if encoding == "hex":
        return digest.hex()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class PendingAuthorization:
    """One sign-in in progress. Its state names it; the verifier stays here, only its challenge is sent."""

    state: str
    persona: str
    platform: str
    redirect_uri: str
    verifier: Secret | None
    expires_at: datetime
    authorize_url: str


class PendingStates:
    """Sign-ins started by this process, each usable once and for `STATE_TTL`."""

    def __init__(self, clock: Clock = utcnow) -> None:
        self._clock = clock
        self._pending: dict[str, PendingAuthorization] = {}
        self._guard = threading.Lock()

    def add(self, pending: PendingAuthorization) -> None:
        with self._guard:
            self._pending[pending.state] = pending

    def consume(self, state: str, persona: str, platform: str) -> PendingAuthorization:
        """Remove and return the sign-in `state` names; refuse unknown, expired or mismatched ones."""
        with self._guard:
            match = None
            for known in self._pending:  # every entry is compared, in constant time
                if hmac.compare_digest(known.encode(), state.encode()):
                    match = known
            pending = self._pending.pop(match) if match is not None else None
        if pending is None:
            raise StateError(
                "the callback's state matches no sign-in started here (forged, replayed, or from another attempt); "
                "run the link command again"
            )
        if pending.expires_at <= self._clock():
            raise StateError("the sign-in expired (10 minutes); run the link command again")
        if (pending.persona, pending.platform) != (persona, platform):
            raise StateError(f"the callback belongs to the {pending.platform} sign-in of persona {pending.persona!r}")
        return pending


_PAGES = {
    200: "Authorization received. You can close this tab and return to the terminal.",
    400: "This address is not a sign-in callback.",
    404: "Not found.",
    409: "This sign-in was already received. Return to the terminal.",
}


class LoopbackReceiver:
    """A one-shot listener on 127.0.0.1 for the platform's redirect (RFC 8252 loopback redirect).

    It captures the first request on its path that carries a `state` or an `error`, answers the browser with a
    plain page, and refuses every later callback. Request lines are never logged: they carry the code."""

    def __init__(self, path: str = "/callback", port: int = 0) -> None:
        self.path = path
        self._params: dict[str, str] | None = None
        self._captured = threading.Event()
        self._guard = threading.Lock()
        try:
            self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        except OSError as exc:
            raise InputError(
                "--listen-port", f"cannot listen on 127.0.0.1:{port} ({exc.strerror})", "pick a free port"
            ) from None
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def wait(self, timeout_s: float) -> dict[str, str]:
        """The callback's query parameters, once the browser delivers them."""
        if not self._captured.wait(timeout_s) or self._params is None:
            raise OAuthError(f"no sign-in came back within {timeout_s:g} s; run the link command again", transient=True)
        return dict(self._params)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _answer(self, target: str) -> int:
        url = urlsplit(target)
        if url.path != self.path:
            return 404
        params = dict(parse_qsl(url.query))
        if "state" not in params and "error" not in params:
            return 400
        with self._guard:
            if self._params is not None:
                return 409
            self._params = params
        self._captured.set()
        return 200

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = receiver._answer(self.path)
                body = f"<!doctype html><title>influencer-pipeline</title><p>{_PAGES[status]}</p>\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Referrer-Policy", "no-referrer")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Silenced: the request line carries the authorization code."""

        return Handler


@dataclass(frozen=True)
class ClientCredentials:
    """The app registered with the platform (client id, or TikTok's client key, and the secret)."""

    client_id: str
    client_secret: Secret


class OAuthClient:
    """Talks to one platform's authorization server, and makes the one call that names the linked account."""

    def __init__(
        self,
        provider: Provider,
        credentials: ClientCredentials | None,
        *,
        session: requests.Session | None = None,
        timeout_s: float = 30.0,
        clock: Clock = utcnow,
    ) -> None:
        self.provider = provider
        self.credentials = credentials
        self.session = session or requests.Session()
        self.timeout_s = timeout_s
        self.clock = clock

    @classmethod
    def from_env(
        cls, platform: str, environ: Mapping[str, str] = os.environ, login: str | None = None, **kwargs: Any
    ) -> OAuthClient:
        """The provider for `login` (re-homed by `<PLATFORM>_OAUTH_BASE_URL`) and app credentials from the
        environment. Missing credentials only fail the calls that need them (Instagram refresh and Google revoke
        do not)."""
        provider = provider_for(platform, environ, login)
        client_id, secret = environ.get(provider.client_id_env, ""), environ.get(provider.client_secret_env, "")
        credentials = ClientCredentials(client_id, Secret(secret)) if client_id and secret else None
        return cls(provider, credentials, **kwargs)

    def __repr__(self) -> str:
        return f"OAuthClient(platform={self.provider.platform!r}, token_url={self.provider.token_url!r})"

    def begin(self, persona: str, redirect_uri: str, states: PendingStates) -> PendingAuthorization:
        """Register a pending sign-in and build the authorize URL the person opens."""
        provider, credentials = self.provider, self._credentials()
        state = secrets.token_urlsafe(32)
        params = {
            provider.client_id_param: credentials.client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": provider.scope_separator.join(provider.scopes),
            "state": state,
            **dict(provider.authorize_extras),
        }
        verifier = None
        if provider.pkce:
            verifier = new_verifier()
            params |= {"code_challenge": code_challenge(verifier, provider.pkce), "code_challenge_method": "S256"}
        pending = PendingAuthorization(
            state=state,
            persona=persona,
            platform=provider.platform,
            redirect_uri=redirect_uri,
            verifier=Secret(verifier) if verifier else None,
            expires_at=self.clock() + STATE_TTL,
            authorize_url=f"{provider.authorize_url}?{urlencode(params)}",
        )
        states.add(pending)
        return pending

    def finish(self, callback: Mapping[str, str], states: PendingStates, persona: str) -> TokenSet:
        """Check the callback's state, then exchange its code (and Meta's short token) and check the scopes."""
        platform = self.provider.platform
        pending = states.consume(callback.get("state", ""), persona, platform)
        if "error" in callback:
            reason = callback.get("error_description") or callback.get("error_reason") or ""
            raise OAuthError(f"{platform} sign-in was not completed: {scrub(callback['error'])} {scrub(reason)}")
        if not callback.get("code"):
            raise OAuthError(f"{platform} sign-in: the callback carries no code")
        tokens = self.exchange_code(callback["code"], pending)
        if self.provider.long_lived:
            tokens = self.exchange_long_lived(tokens)
        return self.verify_scopes(tokens)

    def exchange_code(self, code: str, pending: PendingAuthorization) -> TokenSet:
        provider, credentials = self.provider, self._credentials()
        fields = {
            provider.client_id_param: credentials.client_id,
            "client_secret": credentials.client_secret.reveal(),
            "redirect_uri": pending.redirect_uri,
            "code": code,
        }
        if provider.token_method == "POST":  # Facebook's GET exchange takes no grant_type
            fields["grant_type"] = "authorization_code"
        if pending.verifier is not None:
            fields["code_verifier"] = pending.verifier.reveal()
        if provider.token_method == "GET":
            payload = self._call("GET", provider.token_url, "code exchange", query=fields)
        else:
            payload = self._call("POST", provider.token_url, "code exchange", form=fields)
        return self._token_set(payload, "code exchange")

    def exchange_long_lived(self, short: TokenSet) -> TokenSet:
        """Meta's short-lived (1-2 h) token for a long-lived (60-day) one; server-side only (app secret)."""
        provider, credentials = self.provider, self._credentials()
        secret = credentials.client_secret.reveal()
        if provider.long_lived == "ig_exchange_token":
            query = {"grant_type": "ig_exchange_token", "client_secret": secret, "access_token": short.access.reveal()}
        else:
            query = {
                "grant_type": "fb_exchange_token",
                "client_id": credentials.client_id,
                "client_secret": secret,
                "fb_exchange_token": short.access.reveal(),
            }
        payload = self._call("GET", provider.long_lived_url, "long-lived exchange", query=query)
        return replace(self._token_set(payload, "long-lived exchange"), scopes=short.scopes)

    def verify_scopes(self, tokens: TokenSet) -> TokenSet:
        """Fail on a partial grant (the person unticked a permission): better now than at the first post."""
        granted = self._permissions(tokens) if self.provider.permissions_url else tokens.scopes
        if granted is None:  # the platform did not report them: its consent screen showed what we asked for
            granted = self.provider.scopes
        missing = [scope for scope in self.provider.scopes if scope not in granted]
        if missing:
            raise OAuthError(
                f"{self.provider.platform}: the account did not grant {', '.join(missing)}. Fix: link again and "
                "allow every requested permission (Meta: the person needs a role on the app, or App Review)"
            )
        return replace(tokens, scopes=tuple(granted))

    def identify(self, tokens: TokenSet, page: str | None = None) -> tuple[Identity, TokenSet]:
        """Who the tokens belong to, and the tokens to store (for Facebook: the Page token)."""
        scopes = tokens.scopes or ()
        if self.provider.platform == "facebook":
            return self._identify_page(tokens, page)
        if self.provider.platform == "instagram" and self.provider.login_type == FACEBOOK_LOGIN:
            return self._identify_instagram_page(tokens, page)
        if self.provider.platform == "instagram":
            query = {"fields": "user_id,username", "access_token": tokens.access.reveal()}
            me = self._call("GET", self.provider.identity_url, "identity", query=query)
            return Identity(_field(me, "user_id", "instagram"), str(me.get("username", "")), scopes), tokens
        if self.provider.platform == "youtube":
            query = {"part": "snippet", "mine": "true"}
            items = self._call("GET", self.provider.identity_url, "identity", query=query, bearer=tokens.access)
            channel = _first(items.get("items"), "this Google account has no YouTube channel; create one, link again")
            title = str(channel.get("snippet", {}).get("title", ""))
            return Identity(_field(channel, "id", "youtube"), title, scopes), tokens
        query = {"fields": "open_id,display_name"}
        info = self._call("GET", self.provider.identity_url, "identity", query=query, bearer=tokens.access)
        user = info.get("data", {}).get("user", {})
        return Identity(_field(user, "open_id", "tiktok"), str(user.get("display_name", "")), scopes), tokens

    def refresh(self, stored: Tokens) -> TokenSet:
        """A new access token (and, where the platform rotates them, a new refresh token)."""
        provider = self.provider
        if provider.refresh == "ig_refresh_token":
            query = {"grant_type": "ig_refresh_token", "access_token": stored.access.reveal()}
            return self._token_set(self._call("GET", provider.refresh_url, "refresh", query=query), "refresh")
        if provider.refresh is None or stored.refresh is None:
            raise InvalidGrant(f"{provider.platform}: no refresh token to renew the access token with")
        credentials = self._credentials()
        form = {
            "grant_type": "refresh_token",
            "refresh_token": stored.refresh.reveal(),
            provider.client_id_param: credentials.client_id,
            "client_secret": credentials.client_secret.reveal(),
        }
        return self._token_set(self._call("POST", provider.refresh_url, "refresh", form=form), "refresh")

    def revoke(self, stored: Tokens) -> None:
        """End the grant at the platform (Google: the refresh token ends all of it; Meta: the user token's)."""
        provider = self.provider
        grant_token = (stored.refresh or stored.access).reveal()
        if provider.revoke == "token":
            self._call("POST", provider.revoke_url, "revoke", query={"token": grant_token})
        elif provider.revoke == "client_token":
            credentials = self._credentials()
            form = {
                provider.client_id_param: credentials.client_id,
                "client_secret": credentials.client_secret.reveal(),
                "token": stored.access.reveal(),
            }
            self._call("POST", provider.revoke_url, "revoke", form=form)
        elif provider.revoke == "meta_permissions":
            self._call("DELETE", provider.revoke_url, "revoke", query={"access_token": grant_token})

    def _identify_page(self, tokens: TokenSet, page: str | None) -> tuple[Identity, TokenSet]:
        """Facebook posts as a Page: store its (non-expiring) token, and keep the user token for revocation."""
        query = {"fields": "id,name,access_token", "access_token": tokens.access.reveal()}
        pages = self._call("GET", self.provider.identity_url, "pages", query=query).get("data") or []
        chosen = _choose_page(pages, page)
        page_tokens = TokenSet(
            access=Secret(_field(chosen, "access_token", "facebook")),
            refresh=tokens.access,
            expires_at=None,
            refresh_expires_at=tokens.expires_at,
            scopes=tokens.scopes,
        )
        identity = Identity(_field(chosen, "id", "facebook"), str(chosen.get("name", "")), tokens.scopes or ())
        return identity, page_tokens

    def _identify_instagram_page(self, tokens: TokenSet, page: str | None) -> tuple[Identity, TokenSet]:
        """Instagram through Facebook Login: the Instagram professional account connected to a granted Page.

        The Page's token is what is stored (it does not expire); the user token stays in the refresh slot for
        revocation. https://developers.facebook.com/docs/instagram-platform/instagram-api-with-facebook-login/
        """
        query = {
            "fields": "id,name,access_token,instagram_business_account{id,username}",
            "access_token": tokens.access.reveal(),
        }
        pages = self._call("GET", self.provider.identity_url, "pages", query=query).get("data") or []
        connected = [p for p in pages if isinstance(p.get("instagram_business_account"), dict)]
        if pages and not connected:
            raise OAuthError(
                "instagram: none of the granted Pages has an Instagram professional account connected. Fix: connect "
                "the Instagram account to its Facebook Page (Page settings > Linked accounts), then link again"
            )
        chosen = _choose_page(connected, page)
        instagram = chosen["instagram_business_account"]
        page_tokens = TokenSet(
            access=Secret(_field(chosen, "access_token", "instagram")),
            refresh=tokens.access,
            expires_at=None,
            refresh_expires_at=tokens.expires_at,
            scopes=tokens.scopes,
        )
        identity = Identity(
            _field(instagram, "id", "instagram"), str(instagram.get("username", "")), tokens.scopes or ()
        )
        return identity, page_tokens

    def _permissions(self, tokens: TokenSet) -> tuple[str, ...]:
        query = {"access_token": tokens.access.reveal()}
        listing = self._call("GET", self.provider.permissions_url, "permissions", query=query).get("data") or []
        return tuple(item["permission"] for item in listing if item.get("status") == "granted")

    def _credentials(self) -> ClientCredentials:
        if self.credentials is None:
            provider = self.provider
            raise InputError(
                f"{provider.client_id_env} / {provider.client_secret_env}",
                f"the {provider.login} app credentials are not set",
                f"{provider.setup_hint}; then export both variables with the app's values",
            )
        return self.credentials

    def _token_set(self, payload: dict[str, Any], endpoint: str) -> TokenSet:
        body = payload["data"][0] if isinstance(payload.get("data"), list) and payload["data"] else payload
        access, refresh = body.get("access_token"), body.get("refresh_token")
        if not access:
            raise OAuthError(f"{self.provider.platform} {endpoint}: the answer carries no access_token")
        now = self.clock()
        return TokenSet(
            access=Secret(str(access)),
            refresh=Secret(str(refresh)) if refresh else None,
            expires_at=_after(now, body.get("expires_in")),
            refresh_expires_at=_after(now, body.get("refresh_expires_in")),
            scopes=_scopes(body.get("scope", body.get("permissions"))),
        )

    def _call(
        self,
        method: str,
        url: str,
        endpoint: str,
        *,
        query: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        bearer: Secret | None = None,
    ) -> dict[str, Any]:
        """One HTTP call; errors come back classified and scrubbed, never with a URL or token in them."""
        hidden = [value for key, value in {**(query or {}), **(form or {})}.items() if key in SENSITIVE_PARAMS]
        headers = {"Authorization": f"Bearer {bearer.reveal()}"} if bearer else {}
        hidden += [bearer.reveal()] if bearer else []
        where = f"{self.provider.platform} {endpoint}"
        try:
            response = self.session.request(
                method, url, params=query, data=form, headers=headers, timeout=self.timeout_s, allow_redirects=False
            )
        except requests.Timeout:
            raise OAuthError(f"{where}: no answer within {self.timeout_s:g} s; try again", transient=True) from None
        except requests.RequestException as exc:
            reason = f"cannot reach {urlsplit(url).netloc} ({type(exc).__name__})"
            raise OAuthError(f"{where}: {reason}; try again", transient=True) from None
        return _payload(response, where, hidden)


def _payload(response: requests.Response, where: str, hidden: list[str]) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    problem = _error_of(payload) if isinstance(payload, dict) else None
    detail = "".join(f": {scrub(part, hidden)[:300]}" for part in problem or () if part)
    status = response.status_code
    if status >= 500 or status == 429:
        raise OAuthError(f"{where}: HTTP {status}{detail}; try again later", transient=True)
    if status >= 400 or problem:
        error = OAuthError if problem and problem[0] in CONFIG_ERRORS else InvalidGrant
        raise error(f"{where} refused (HTTP {status}{detail})")
    return payload if isinstance(payload, dict) else {}


def _error_of(payload: dict[str, Any]) -> tuple[str, str] | None:
    """(code, message) from the error shapes in use: OAuth (`error` string), Graph/Google/TikTok APIs (`error`
    object; TikTok's says `ok` on success), and api.instagram.com's `error_type`."""
    error = payload.get("error")
    if isinstance(error, str):
        return error, str(payload.get("error_description") or "")
    if isinstance(error, dict) and error.get("code") not in (None, "ok"):
        return str(error.get("code")), str(error.get("message") or "")
    if "error_type" in payload:
        return str(payload["error_type"]), str(payload.get("error_message") or "")
    return None


def _after(now: datetime, seconds: object) -> datetime | None:
    return now + timedelta(seconds=float(seconds)) if isinstance(seconds, int | float | str) and seconds else None


def _scopes(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list):
        return tuple(str(item) for item in value)
    if isinstance(value, str) and value.strip():
        return tuple(re.split(r"[,\s]+", value.strip()))
    return None


def _field(payload: Mapping[str, Any], name: str, platform: str) -> str:
    value = payload.get(name)
    if not value:
        raise OAuthError(f"{platform}: unexpected answer from the platform (no {name!r})")
    return str(value)


def _first(items: object, message: str) -> Mapping[str, Any]:
    if not isinstance(items, list) or not items:
        raise OAuthError(message)
    return items[0]


def _choose_page(pages: list[dict[str, Any]], wanted: str | None) -> dict[str, Any]:
    names = ", ".join(f"{page.get('name')!r} ({page.get('id')})" for page in pages)
    if wanted is not None:
        for page in pages:
            if wanted in (page.get("id"), page.get("name")) or wanted.casefold() == str(page.get("name")).casefold():
                return page
        raise InputError("--page", f"no Page {wanted!r} among those granted: {names or 'none'}", "use a name or id")
    if not pages:
        raise OAuthError("facebook: no Page was granted; link again and tick the Page to post as")
    if len(pages) > 1:
        raise InputError("--page", f"the account manages several Pages: {names}", "link again with --page NAME_OR_ID")
    return pages[0]


def account_health(account: Account, now: datetime) -> str:
    """What `accounts list` shows: ok, expires soon (within 7 days, unless the refresh sweep renews it first),
    expired, or needs reconnect (the platform refused the tokens)."""
    if account.health == HEALTH_RECONNECT:
        return "needs reconnect"
    provider = LOGINS[(account.platform, account.login or default_login(account.platform))]
    dies_at = account.refresh_expires_at if provider.refresh == "refresh_token" else account.expires_at
    if dies_at is None or dies_at - now > EXPIRY_WARNING:
        return "ok"
    return "expired" if dies_at <= now else "expires soon"


class Accounts:
    """The accounts API for the pipeline: `link`, `fresh_token` (publishers), `refresh_due` (a sweep), `unlink`."""

    def __init__(
        self,
        store: AccountStore,
        clients: Callable[[str, str], OAuthClient] | None = None,
        *,
        clock: Clock = utcnow,
        lease: timedelta = REFRESH_LEASE,
        poll_s: float = 0.05,
    ) -> None:
        self.store = store
        self.clock = clock
        self.lease = lease
        self.poll_s = poll_s
        self._make_client = clients or (
            lambda platform, login: OAuthClient.from_env(platform, login=login, clock=clock)
        )
        self._clients: dict[tuple[str, str], OAuthClient] = {}
        self._states = PendingStates(clock)
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Accounts:
        """Accounts on `INFLUENCER_ACCOUNTS_DB` (default: SQLite next to the Dagster instance)."""
        return cls(AccountStore.from_env(environ))

    def __repr__(self) -> str:
        return f"Accounts(store={self.store!r})"

    def client(self, platform: str, login: str | None = None) -> OAuthClient:
        """The OAuth client for linking `platform` with `login` (default: the platform's own login)."""
        key = login_key(platform, login)
        with self._guard:
            if key not in self._clients:
                self._clients[key] = self._make_client(*key)
            return self._clients[key]

    def account(self, persona: str, platform: str) -> Account:
        return self.store.get(persona, platform)

    def link(
        self,
        persona: str,
        platform: str,
        *,
        callback_url: str | None = None,
        listen_port: int | None = None,
        page: str | None = None,
        login: str | None = None,
        open_browser: Callable[[str], object] | None = webbrowser.open,
        read_redirect: Callable[[str], str] = input,
        say: Callable[[str], None] = print,
        timeout_s: float = STATE_TTL.total_seconds(),
    ) -> Account:
        """Run the sign-in and store the account. The redirect arrives at a loopback listener, at `listen_port`
        behind a public `callback_url`, or (public callback without a listener) is pasted by the person.
        `login` picks how (Instagram: `instagram`, the default, or `facebook`); the account records it."""
        client = self.client(platform, login)
        with _callback_channel(client.provider, callback_url, listen_port) as receiver:
            redirect_uri = callback_url or (receiver.redirect_uri if receiver else "")
            pending = client.begin(persona, redirect_uri, self._states)
            say(f"Sign in with {client.provider.login} to link {platform} for persona {persona!r}:")
            say(f"  {pending.authorize_url}")
            if open_browser is not None:
                open_browser(pending.authorize_url)
            if receiver is not None:
                callback = receiver.wait(timeout_s)
            else:
                pasted = read_redirect("After approving, paste the full address your browser was sent to: ")
                callback = dict(parse_qsl(urlsplit(pasted.strip()).query))
            tokens = client.finish(callback, self._states, persona)
            identity, tokens = client.identify(tokens, page)
        account = self.store.save_link(persona, platform, identity, tokens, self.clock(), client.provider.login_type)
        log.info("linked %s account %r (%s) to %s", platform, identity.display_name, identity.account_id, persona)
        return account

    def fresh_token(self, persona: str, platform: str, *, rejected: str | None = None) -> str:
        """An access token for (persona, platform), refreshed first when it is inside the platform's refresh
        margin (Google 5 min, TikTok 10 min, Instagram 30 days; Facebook Page tokens do not expire).

        Pass the token the platform just refused (HTTP 401) as `rejected` to force one refresh; callers that
        refused the same token share that one refresh. Raises `ReconnectNeeded` when only linking again can
        help, `OAuthError(transient=True)` when the platform is unreachable and the stored token has expired,
        and `AccountNotFound` when nothing is linked."""
        token = self._usable(self.store.get(persona, platform), rejected)
        if token is not None:
            return token
        with self._lock(persona, platform):
            return self._refresh_single_flight(persona, platform, rejected)

    def refresh_due(self) -> list[tuple[Account, str]]:
        """The periodic sweep: refresh every account inside its margin; (account, outcome) for each account."""
        outcomes = []
        for account in self.store.list():
            try:
                self.fresh_token(account.persona, account.platform)
            except OAuthError as exc:
                outcomes.append((account, f"failed: {exc}"))
                continue
            after = self.store.get(account.persona, account.platform)
            outcomes.append((after, "refreshed" if after.refreshed_at != account.refreshed_at else "fresh"))
        return outcomes

    def unlink(self, persona: str, platform: str) -> str:
        """Revoke the grant at the platform where it has an endpoint, then delete the row even if that failed."""
        account = self.store.get(persona, platform)
        note = self._revoke(account)
        self.store.delete(persona, platform)
        log.info("unlinked %s from persona %s: %s", platform, persona, note)
        return note

    def _revoke(self, account: Account) -> str:
        client = self.client(account.platform, account.login)
        hint = client.provider.unlink_hint
        if client.provider.revoke is None:
            return f"removed here; {hint}"
        try:
            client.revoke(self.store.read_tokens(account))
        except InvalidGrant:
            return f"the tokens were already invalid at {account.platform}; removed here"
        except OAuthError as exc:
            return f"could not revoke at {account.platform} ({exc}); removed here; to finish, {hint}"
        return f"revoked at {account.platform} and removed here"

    def _lock(self, persona: str, platform: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((persona, platform), threading.Lock())

    def _usable(self, account: Account, rejected: str | None) -> str | None:
        """The stored access token if it needs no refresh, else None; raises if the account needs a relink."""
        if account.health == HEALTH_RECONNECT:
            raise ReconnectNeeded(account, "the platform refused its tokens")
        access = self.store.read_tokens(account).access.reveal()
        if rejected is not None and hmac.compare_digest(access.encode(), rejected.encode()):
            return None
        margin = self.client(account.platform, account.login).provider.refresh_margin
        if account.expires_at is not None and account.expires_at - self.clock() <= margin:
            return None
        return access

    def _refresh_single_flight(self, persona: str, platform: str, rejected: str | None) -> str:
        """Take the row's lease and refresh, or wait for the holder and use what it stored."""
        login = self.store.get(persona, platform).login
        deadline = time.monotonic() + self.lease.total_seconds() + self.client(platform, login).timeout_s
        while True:
            account = self.store.get(persona, platform)
            token = self._usable(account, rejected)
            if token is not None:
                return token
            owner = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
            now = self.clock()
            if self.store.try_lease(account, owner, now, now + self.lease):
                return self._refresh_leased(account, owner, rejected)
            if time.monotonic() > deadline:
                raise OAuthError(f"{account.label}: another process is still refreshing this account", transient=True)
            time.sleep(self.poll_s)

    def _refresh_leased(self, account: Account, owner: str, rejected: str | None) -> str:
        client = self.client(account.platform, account.login)
        stored = self.store.read_tokens(account)
        saved = False
        try:
            if client.provider.refresh is None:
                raise InvalidGrant(f"{account.platform} tokens cannot be refreshed")
            tokens = client.refresh(stored)
            self.store.save_refresh(account, tokens, owner, self.clock())
            saved = True
            log.info("refreshed the %s token (valid until %s)", account.label, _when(tokens.expires_at))
            return tokens.access.reveal()
        except InvalidGrant as exc:
            raise self._needs_reconnect(account, str(exc)) from None
        except OAuthError as exc:
            if rejected is not None or account.expires_at is None or account.expires_at <= self.clock():
                raise
            log.warning(
                "%s: refresh failed (%s); the current token stays valid until %s",
                account.label,
                exc,
                account.expires_at.isoformat(timespec="minutes"),
            )
            return stored.access.reveal()
        finally:
            if not saved:
                self.store.release_lease(account, owner)

    def _needs_reconnect(self, account: Account, reason: str) -> ReconnectNeeded:
        if self.store.set_health(account, HEALTH_RECONNECT):  # warn once, on the transition
            log.warning("%s must be linked again: %s", account.label, reason)
        return ReconnectNeeded(account, reason)


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="minutes") if moment else "no expiry"


@contextlib.contextmanager
def _callback_channel(
    provider: Provider, callback_url: str | None, listen_port: int | None
) -> Iterator[LoopbackReceiver | None]:
    """Where the redirect will arrive: a loopback listener, a listener behind a public callback, or nowhere
    (the person pastes the address)."""
    if callback_url is None:
        if not provider.loopback:
            raise InputError(
                "--callback-url",
                f"{provider.login} does not accept loopback redirects; it needs a public HTTPS callback",
                f"expose this machine through a tunnel or reverse proxy, {provider.setup_hint}, and pass "
                "--callback-url https://HOST/PATH (add --listen-port PORT if the tunnel forwards to 127.0.0.1:PORT; "
                "without it you paste the address the browser lands on)",
            )
        with LoopbackReceiver(provider.loopback_path, listen_port or 0) as receiver:
            yield receiver
        return
    _check_callback_url(provider, callback_url)
    if listen_port is None:
        yield None
        return
    with LoopbackReceiver(urlsplit(callback_url).path or "/", listen_port) as receiver:
        yield receiver


def _check_callback_url(provider: Provider, callback_url: str) -> None:
    url = urlsplit(callback_url)
    schemes = ("https", "http") if provider.loopback else ("https",)
    if url.scheme not in schemes or not url.netloc:
        rule = f"{provider.login} needs an absolute {' or '.join(schemes)} URL"
        raise InputError("--callback-url", rule, provider.setup_hint)
    if url.query or url.fragment:
        raise InputError("--callback-url", "a redirect URI cannot carry a query or fragment", "remove them")
