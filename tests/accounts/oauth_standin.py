"""Stand-in OAuth authorization servers on 127.0.0.1, one per platform, faithful to the parts linking uses.

Each serves its platform's paths (authorize, token, Meta's long-lived exchange, refresh, revoke, the identity
call) with the platform's parameter names, lifetimes and error shapes, and enforces what the real servers do:
client credentials, exact redirect URI, single-use codes that expire, PKCE S256 (hex for TikTok, as its desktop
guide computes it), Google's refresh token only with `access_type=offline`, TikTok's rotating refresh tokens,
Instagram's "at least 24 hours old" refresh rule, and revocation of a whole grant. The authorize endpoint plays
the person too: it consents at once and redirects to the redirect URI with `code` and `state`.

Stricter than the real servers where that catches client mistakes: the client is built from the production
provider table with only the base URL swapped (`Provider.with_base_url`, which keeps the real host as the first
path segment), and every route is served on its real host only (`/api.instagram.com/oauth/access_token`,
`/graph.facebook.com/v24.0/me/accounts`, ...): a call to another host, or a Graph call under another version than
`GRAPH_API_VERSION`, is refused (404 / Graph code 2635). The Facebook server also serves Instagram through
Facebook Login: `/me/accounts` names the Instagram account connected to the Page when asked for
`instagram_business_account`.

Misbehaviours: `fail(endpoint, ServerError(503) | Slow(seconds), ...)` scripts the next answers of an endpoint,
`expire_codes()` ages outstanding codes, `revoke_grants()` is the person removing the app, `deny` declines the
consent, and `granted` grants fewer scopes than asked. Every request is recorded in `calls` with its endpoint:
authorize, token, exchange, refresh, revoke, identity, permissions, pages.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from influencer_pipeline.accounts.oauth import ClientCredentials, OAuthClient
from influencer_pipeline.accounts.providers import FACEBOOK_LOGIN, GRAPH_API_VERSION, LOGINS, default_login
from influencer_pipeline.accounts.service import Accounts
from influencer_pipeline.accounts.store import AccountStore, Secret

V = GRAPH_API_VERSION
CLIENT_ID = "standin-app-1234567890"
CLIENT_SECRET = "standin-app-secret-5c1f9e0a7d"
IG_USER_ID = "17841400000000001"
IG_USERNAME = "ava.virtual"
FB_PAGES = (("109345678901234", "Ava Virtual"),)
YT_CHANNEL = "UCstandinAvaVirtual000001"
TIKTOK_OPEN_ID = "_000standinOpenIdAva"

# lifetimes in seconds, as the platforms document them (None: the token does not expire)
LIFETIMES: dict[str, dict[str, int | None]] = {
    "instagram": {"short": 3600, "long": 5_184_000},
    "facebook": {"short": 7200, "long": 5_183_944, "page": None},
    "youtube": {"access": 3599, "refresh": None},
    "tiktok": {"access": 7200, "refresh": 15_552_000},
}


class FakeClock:
    """A settable 'now' shared by the accounts code and the stand-in, so tests can jump days ahead."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass(frozen=True)
class ServerError:
    status: int = 503


@dataclass(frozen=True)
class Slow:
    """Answer normally, but only after `seconds`."""

    seconds: float


Fault = ServerError | Slow


@dataclass
class Call:
    endpoint: str
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class Code:
    redirect_uri: str
    challenge: str | None
    grant: str
    issued_at: datetime
    offline: bool
    used: bool = False


@dataclass
class Token:
    kind: str
    grant: str
    issued_at: datetime
    expires_at: datetime | None
    revoked: bool = False


@dataclass
class Reply:
    status: int
    body: dict[str, Any] | None = None
    location: str | None = None


# (method, path) -> (endpoint, handler); token endpoints are re-labelled by grant_type (see `_endpoint`)
# (method, /<real host>/<path>) -> (endpoint, handler); token endpoints are re-labelled by grant_type
ROUTES: dict[str, dict[tuple[str, str], tuple[str, str]]] = {
    "instagram": {
        ("GET", "/www.instagram.com/oauth/authorize"): ("authorize", "_authorize"),
        ("POST", "/api.instagram.com/oauth/access_token"): ("token", "_ig_code"),
        ("GET", "/graph.instagram.com/access_token"): ("exchange", "_ig_exchange"),
        ("GET", "/graph.instagram.com/refresh_access_token"): ("refresh", "_ig_refresh"),
        ("GET", f"/graph.instagram.com/{V}/me"): ("identity", "_ig_me"),
    },
    "facebook": {
        ("GET", f"/www.facebook.com/{V}/dialog/oauth"): ("authorize", "_authorize"),
        ("GET", f"/graph.facebook.com/{V}/oauth/access_token"): ("token", "_fb_token"),
        ("GET", f"/graph.facebook.com/{V}/me/permissions"): ("permissions", "_fb_permissions"),
        ("DELETE", f"/graph.facebook.com/{V}/me/permissions"): ("revoke", "_fb_revoke"),
        ("GET", f"/graph.facebook.com/{V}/me/accounts"): ("pages", "_fb_pages"),
    },
    "youtube": {
        ("GET", "/accounts.google.com/o/oauth2/v2/auth"): ("authorize", "_authorize"),
        ("POST", "/oauth2.googleapis.com/token"): ("token", "_google_token"),
        ("POST", "/oauth2.googleapis.com/revoke"): ("revoke", "_google_revoke"),
        ("GET", "/www.googleapis.com/youtube/v3/channels"): ("identity", "_yt_channels"),
    },
    "tiktok": {
        ("GET", "/www.tiktok.com/v2/auth/authorize/"): ("authorize", "_authorize"),
        ("POST", "/open.tiktokapis.com/v2/oauth/token/"): ("token", "_tiktok_token"),
        ("POST", "/open.tiktokapis.com/v2/oauth/revoke/"): ("revoke", "_tiktok_revoke"),
        ("GET", "/open.tiktokapis.com/v2/user/info/"): ("identity", "_tiktok_user"),
    },
}
GRAPH_HOSTS = ("graph.facebook.com", "graph.instagram.com", "www.facebook.com")


@dataclass
class OAuthStandin:
    """Start with `start()` or as a context manager; `base_url` then re-homes the platform's provider."""

    platform: str
    clock: Callable[[], datetime] = field(default_factory=lambda: FakeClock())
    calls: list[Call] = field(default_factory=list)
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    codes: dict[str, Code] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    grants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    granted: tuple[str, ...] | None = None  # None: grant every requested scope
    deny: bool = False
    code_ttl: timedelta = timedelta(minutes=10)
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- control -----------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OAuthStandin:
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                standin._handle(self)

            do_POST = do_DELETE = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> OAuthStandin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fail(self, endpoint: str, *faults: Fault) -> None:
        self.faults[endpoint].extend(faults)

    def count(self, endpoint: str) -> int:
        return sum(1 for call in self.calls if call.endpoint == endpoint)

    def expire_codes(self) -> None:
        for code in self.codes.values():
            code.issued_at -= self.code_ttl + timedelta(seconds=1)

    def revoke_grants(self) -> None:
        for token in self.tokens.values():
            token.revoked = True

    def valid(self, token: str) -> bool:
        record = self.tokens.get(token)
        return record is not None and not record.revoked and (record.expires_at is None or record.expires_at > self.now)

    def secrets(self) -> list[str]:
        """Every secret this stand-in handed out or holds: tokens, codes, the app secret."""
        return [*self.tokens, *self.codes, CLIENT_SECRET]

    @property
    def now(self) -> datetime:
        return self.clock()

    # --- plumbing ----------------------------------------------------------------------------------------------

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        params = dict(parse_qsl(url.query))
        length = int(request.headers.get("Content-Length") or 0)
        if length:
            params |= dict(parse_qsl(request.rfile.read(length).decode()))
        route = ROUTES[self.platform].get((request.command, url.path))
        if route is None:
            with self._lock:
                self.calls.append(Call("refused", request.command, url.path, params, {}))
            self._send(request, _refusal(url.path))
            return
        endpoint = _endpoint(route[0], params)
        headers = {key.lower(): value for key, value in request.headers.items()}
        with self._lock:
            self.calls.append(Call(endpoint, request.command, url.path, params, headers))
            fault = self.faults[endpoint].popleft() if self.faults[endpoint] else None
        if isinstance(fault, ServerError):
            self._send(request, Reply(fault.status, {"error": "server_error"}))
            return
        if isinstance(fault, Slow):
            time.sleep(fault.seconds)
        with self._lock:
            reply = getattr(self, route[1])(params, headers)
        self._send(request, reply)

    @staticmethod
    def _send(request: http.server.BaseHTTPRequestHandler, reply: Reply) -> None:
        body = json.dumps(reply.body).encode() if reply.body is not None else b""
        try:
            request.send_response(reply.status)
            if reply.location:
                request.send_header("Location", reply.location)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass

    def _issue(self, kind: str, grant: str) -> str:
        prefix = {"instagram": "IGAA", "facebook": "EAAB", "youtube": "ya29.", "tiktok": "act."}[self.platform]
        token = f"{prefix}{kind}-{secrets.token_urlsafe(24)}"
        lifetime = self._lifetime(kind)
        expires = self.now + timedelta(seconds=lifetime) if lifetime else None
        self.tokens[token] = Token(kind, grant, self.now, expires)
        return token

    def _lifetime(self, kind: str) -> int | None:
        return LIFETIMES[self.platform][kind]

    def _valid(self, token: str | None, *kinds: str) -> Token | None:
        if token is None or not self.valid(token) or self.tokens[token].kind not in kinds:
            return None
        return self.tokens[token]

    def _revoke_grant(self, grant: str) -> None:
        for token in self.tokens.values():
            if token.grant == grant:
                token.revoked = True

    def _oauth_error(self, error: str, description: str, status: int = 400) -> Reply:
        """The token endpoints' error shapes: OAuth style (Google, TikTok), api.instagram.com's, Graph's."""
        if self.platform == "instagram":
            return Reply(status, {"error_type": "OAuthException", "code": status, "error_message": description})
        if self.platform == "facebook":
            return _graph_error(description, 100)
        body = {"error": error, "error_description": description}
        if self.platform == "tiktok":
            body["log_id"] = "202611200900standin"
        return Reply(status, body)

    def _client_ok(self, params: dict[str, str]) -> bool:
        id_param = "client_key" if self.platform == "tiktok" else "client_id"
        return params.get(id_param) == CLIENT_ID and params.get("client_secret") == CLIENT_SECRET

    def _redeem(self, params: dict[str, str]) -> Code | Reply:
        """A code is good once, for `code_ttl`, for the redirect URI it was issued to, with the PKCE verifier."""
        code = self.codes.get(params.get("code", ""))
        if code is None or code.used:
            return self._oauth_error("invalid_grant", "This authorization code has been used or is unknown.")
        code.used = True
        if self.now - code.issued_at > self.code_ttl:
            return self._oauth_error("invalid_grant", "Authorization code is expired.")
        if code.redirect_uri != params.get("redirect_uri"):
            return self._oauth_error("invalid_grant", "redirect_uri does not match the authorization request.")
        if code.challenge is not None and self._challenge(params.get("code_verifier", "")) != code.challenge:
            error = "invalid_request" if self.platform == "tiktok" else "invalid_grant"
            return self._oauth_error(error, "Code verifier or code challenge is invalid.")
        return code

    def _challenge(self, verifier: str) -> str:
        digest = hashlib.sha256(verifier.encode()).digest()
        if self.platform == "tiktok":
            return digest.hex()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    # --- authorize (the person consents at once) ----------------------------------------------------------------

    def _authorize(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        id_param = "client_key" if self.platform == "tiktok" else "client_id"
        redirect_uri = params.get("redirect_uri", "")
        if params.get(id_param) != CLIENT_ID or not redirect_uri or params.get("response_type") != "code":
            return Reply(400, {"error": "invalid_request"})
        challenge = params.get("code_challenge")
        if challenge is not None and params.get("code_challenge_method") != "S256":
            return Reply(400, {"error": "invalid_request", "error_description": "only S256 is supported"})
        state = params.get("state", "")
        if self.deny:
            return _redirect(self.platform, redirect_uri, {"error": "access_denied", "state": state})
        requested = tuple(params.get("scope", "").replace(",", " ").split())
        grant = secrets.token_hex(8)
        self.grants[grant] = self.granted if self.granted is not None else requested
        code = secrets.token_urlsafe(24)
        offline = params.get("access_type") == "offline"
        self.codes[code] = Code(redirect_uri, challenge, grant, self.now, offline)
        return _redirect(self.platform, redirect_uri, {"code": code, "state": state})

    # --- Instagram Login -----------------------------------------------------------------------------------------

    def _ig_code(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if not self._client_ok(params) or params.get("grant_type") != "authorization_code":
            return self._oauth_error("invalid_client", "Invalid platform app")
        code = self._redeem(params)
        if isinstance(code, Reply):
            return code
        token = self._issue("short", code.grant)
        permissions = ",".join(self.grants[code.grant])
        return Reply(200, {"data": [{"access_token": token, "user_id": "9876543210", "permissions": permissions}]})

    def _ig_exchange(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if params.get("grant_type") != "ig_exchange_token" or params.get("client_secret") != CLIENT_SECRET:
            return _graph_error("Invalid OAuth access token exchange", 100)
        short = self._valid(params.get("access_token"), "short")
        if short is None:
            return _graph_error("Error validating access token: Session has expired", 190)
        token = self._issue("long", short.grant)
        return Reply(200, {"access_token": token, "token_type": "bearer", "expires_in": self._lifetime("long")})

    def _ig_refresh(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        current = self._valid(params.get("access_token"), "long")
        if params.get("grant_type") != "ig_refresh_token" or current is None:
            return _graph_error("Error validating access token: Session has expired", 190)
        if self.now - current.issued_at < timedelta(hours=24):
            return _graph_error("The access token must be at least 24 hours old to be refreshed", 100)
        token = self._issue("long", current.grant)
        return Reply(200, {"access_token": token, "token_type": "bearer", "expires_in": self._lifetime("long")})

    def _ig_me(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if self._valid(params.get("access_token"), "short", "long") is None:
            return _graph_error("Invalid OAuth access token", 190)
        return Reply(200, {"user_id": IG_USER_ID, "username": IG_USERNAME, "id": "9876543210"})

    # --- Facebook Login ------------------------------------------------------------------------------------------

    def _fb_token(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if not self._client_ok(params):
            return _graph_error("Error validating client secret.", 1)
        if params.get("grant_type") == "fb_exchange_token":
            short = self._valid(params.get("fb_exchange_token"), "short")
            if short is None:
                return _graph_error("Error validating access token: Session has expired", 190)
            token = self._issue("long", short.grant)
            return Reply(200, {"access_token": token, "token_type": "bearer", "expires_in": self._lifetime("long")})
        code = self._redeem(params)
        if isinstance(code, Reply):
            return code
        token = self._issue("short", code.grant)
        return Reply(200, {"access_token": token, "token_type": "bearer", "expires_in": self._lifetime("short")})

    def _fb_permissions(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        user = self._valid(params.get("access_token"), "short", "long")
        if user is None:
            return _graph_error("Invalid OAuth access token", 190)
        return Reply(200, {"data": [{"permission": p, "status": "granted"} for p in self.grants[user.grant]]})

    def _fb_revoke(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        user = self._valid(params.get("access_token"), "short", "long")
        if user is None:
            return _graph_error("Invalid OAuth access token", 190)
        self._revoke_grant(user.grant)
        return Reply(200, {"success": True})

    def _fb_pages(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        user = self._valid(params.get("access_token"), "short", "long")
        if user is None:
            return _graph_error("Invalid OAuth access token", 190)
        pages = [
            {"id": page_id, "name": name, "access_token": self._issue("page", user.grant), "tasks": ["CREATE_CONTENT"]}
            for page_id, name in FB_PAGES
        ]
        if "instagram_business_account" in params.get("fields", ""):  # the Page's connected Instagram account
            for page in pages:
                page["instagram_business_account"] = {"id": IG_USER_ID, "username": IG_USERNAME}
        return Reply(200, {"data": pages, "paging": {"cursors": {"before": "QVFI", "after": "QVFI"}}})

    # --- Google ----------------------------------------------------------------------------------------------

    def _google_token(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if not self._client_ok(params):
            return self._oauth_error("invalid_client", "The OAuth client was not found.", 401)
        if params.get("grant_type") == "refresh_token":
            refresh = self._valid(params.get("refresh_token"), "refresh")
            if refresh is None:
                return self._oauth_error("invalid_grant", "Token has been expired or revoked.")
            return Reply(200, self._google_access(refresh.grant))
        code = self._redeem(params)
        if isinstance(code, Reply):
            return code
        body = self._google_access(code.grant)
        if code.offline:
            body["refresh_token"] = self._issue("refresh", code.grant)
        return Reply(200, body)

    def _google_access(self, grant: str) -> dict[str, Any]:
        access = self._issue("access", grant)
        scope = " ".join(self.grants[grant])
        return {"access_token": access, "expires_in": self._lifetime("access"), "scope": scope, "token_type": "Bearer"}

    def _google_revoke(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        token = self._valid(params.get("token"), "access", "refresh")
        if token is None:
            return self._oauth_error("invalid_token", "Token expired or revoked")
        self._revoke_grant(token.grant)
        return Reply(200, {})

    def _yt_channels(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if self._valid(_bearer(headers), "access") is None or params.get("mine") != "true":
            return Reply(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials."}})
        return Reply(200, {"items": [{"id": YT_CHANNEL, "snippet": {"title": "Ava Virtual"}}]})

    # --- TikTok ----------------------------------------------------------------------------------------------

    def _tiktok_token(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if not self._client_ok(params):
            return self._oauth_error("invalid_client", "Client key or secret is incorrect.", 401)
        if params.get("grant_type") == "refresh_token":
            refresh = self._valid(params.get("refresh_token"), "refresh")
            if refresh is None:
                return self._oauth_error("invalid_grant", "Refresh token is invalid or expired.")
            refresh.revoked = True  # refresh tokens rotate: the old one stops working
            return Reply(200, self._tiktok_pair(refresh.grant))
        code = self._redeem(params)
        if isinstance(code, Reply):
            return code
        return Reply(200, self._tiktok_pair(code.grant))

    def _tiktok_pair(self, grant: str) -> dict[str, Any]:
        return {
            "access_token": self._issue("access", grant),
            "expires_in": self._lifetime("access"),
            "open_id": TIKTOK_OPEN_ID,
            "refresh_token": self._issue("refresh", grant),
            "refresh_expires_in": self._lifetime("refresh"),
            "scope": ",".join(self.grants[grant]),
            "token_type": "Bearer",
        }

    def _tiktok_revoke(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if not self._client_ok(params):
            return self._oauth_error("invalid_client", "Client key or secret is incorrect.", 401)
        token = self._valid(params.get("token"), "access")
        if token is None:
            return self._oauth_error("invalid_request", "The access token is invalid.")
        self._revoke_grant(token.grant)
        return Reply(200, {})

    def _tiktok_user(self, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if self._valid(_bearer(headers), "access") is None:
            error = {"code": "access_token_invalid", "message": "The access token is invalid.", "log_id": "x"}
            return Reply(401, {"data": {}, "error": error})
        user = {"open_id": TIKTOK_OPEN_ID, "display_name": "Ava"}
        return Reply(200, {"data": {"user": user}, "error": {"code": "ok", "message": "", "log_id": "x"}})


def _refusal(path: str) -> Reply:
    """Graph's answer to another version (code 2635, "deprecated version"), else a plain 404 for another host."""
    host, _, rest = path.removeprefix("/").partition("/")
    version = rest.split("/", 1)[0]
    if host in GRAPH_HOSTS and version.startswith("v") and version != V:
        return _graph_error(f"Graph API {version} called; this app pins {V}", 2635)
    return Reply(404, {"error": "not_found", "error_description": f"no route {path} (host {host!r})"})


def _endpoint(default: str, params: dict[str, str]) -> str:
    grant_type = params.get("grant_type", "")
    if grant_type in ("refresh_token", "ig_refresh_token"):
        return "refresh"
    if grant_type in ("fb_exchange_token", "ig_exchange_token"):
        return "exchange"
    return default


def _redirect(platform: str, redirect_uri: str, query: dict[str, str]) -> Reply:
    """Meta appends a fragment to its redirects (`#_` Instagram, `#_=_` Facebook); browsers keep it client-side."""
    fragment = {"instagram": "_", "facebook": "_=_"}.get(platform, "")
    url = urlsplit(redirect_uri)
    return Reply(302, None, urlunsplit((url.scheme, url.netloc, url.path, urlencode(query), fragment)))


def _graph_error(message: str, code: int) -> Reply:
    return Reply(400, {"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Astandin"}})


def _bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None


class Browser:
    """Plays the person's browser: `open` (like `webbrowser.open`, returns at once) visits the authorize URL.

    `follow=True` follows the redirect to the loopback listener; `follow=False` stops at the redirect, whose
    address `pasted` returns (the paste-the-address mode); `forward_to` sends that address to a local listener,
    as a tunnel would; `tamper` rewrites the authorize URL first (a forged state)."""

    def __init__(
        self,
        follow: bool = True,
        forward_to: str | None = None,
        tamper: Callable[[str], str] | None = None,
    ) -> None:
        self.follow = follow
        self.forward_to = forward_to
        self.tamper = tamper
        self.location: str | None = None
        self.pages: list[requests.Response] = []
        self._threads: list[threading.Thread] = []

    def open(self, url: str) -> bool:
        thread = threading.Thread(target=self._visit, args=(url,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return True

    def pasted(self, prompt: str) -> str:
        self.join()
        return self.location or ""

    def join(self) -> None:
        for thread in self._threads:
            thread.join(10)

    def _visit(self, url: str) -> None:
        try:
            response = requests.get(self.tamper(url) if self.tamper else url, allow_redirects=self.follow, timeout=10)
            self.pages.append(response)
            self.location = response.headers.get("Location")
            if self.forward_to and self.location:
                redirected = urlsplit(self.location)
                local = urlsplit(self.forward_to)
                target = urlunsplit((local.scheme, local.netloc, redirected.path, redirected.query, ""))
                self.pages.append(requests.get(target, timeout=10))
        except requests.RequestException:  # the listener may be gone already (refused or timed-out links)
            pass


def server_for(platform: str, login: str) -> str:
    """Which stand-in server a (platform, login) signs in with: Facebook Login is always the Facebook server."""
    return "facebook" if login == FACEBOOK_LOGIN else platform


def standin_client(
    standin: OAuthStandin,
    clock: Callable[[], datetime],
    timeout_s: float = 5.0,
    *,
    platform: str | None = None,
    login: str | None = None,
) -> OAuthClient:
    """The real provider for (platform, login) from the production table (default: the stand-in's platform and
    its default login), re-homed to the stand-in, with the stand-in app's credentials."""
    platform = platform or standin.platform
    provider = LOGINS[(platform, login or default_login(platform))].with_base_url(standin.base_url)
    credentials = ClientCredentials(CLIENT_ID, Secret(CLIENT_SECRET))
    return OAuthClient(provider, credentials, timeout_s=timeout_s, clock=clock)


def standin_accounts(
    store: AccountStore, standins: list[OAuthStandin], clock: Callable[[], datetime], **kwargs: Any
) -> Accounts:
    """`Accounts` whose every (platform, login) signs in with the matching stand-in among `standins`."""
    servers = {standin.platform: standin for standin in standins}

    def client(platform: str, login: str) -> OAuthClient:
        server = servers[server_for(platform, login)]
        return standin_client(server, clock, platform=platform, login=login)

    return Accounts(store, client, clock=clock, poll_s=0.01, **kwargs)
