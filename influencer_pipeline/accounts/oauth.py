"""The OAuth 2.0 client for one platform: the authorize URL, the code exchange (RFC 6749 section 4.1, with PKCE),
Meta's exchange of its short-lived token for a long-lived one
(https://developers.facebook.com/docs/facebook-login/guides/access-tokens/get-long-lived/), the granted-scope check
(a partial grant fails the link instead of failing the first post), the call that names the linked account,
refresh (RFC 6749 section 6) and revocation.

Tokens are `Secret`s everywhere here; error messages quote the platform's words with every secret scrubbed, are
raised `from None` (requests' exceptions quote URLs, and Meta takes tokens in query strings), and a filter on
urllib3's logger redacts token-bearing query values from its DEBUG request lines.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from influencer_pipeline.accounts.clock import Clock, utcnow
from influencer_pipeline.accounts.errors import InvalidGrant, OAuthError
from influencer_pipeline.accounts.pkce import code_challenge, new_verifier
from influencer_pipeline.accounts.providers import FACEBOOK_LOGIN, Provider, provider_for
from influencer_pipeline.accounts.state import STATE_TTL, PendingAuthorization, PendingStates
from influencer_pipeline.accounts.store import Identity, Secret, Tokens, TokenSet
from influencer_pipeline.errors import InputError
from influencer_pipeline.redaction import redact

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
