"""The accounts service the pipeline uses: `Accounts` links an account, hands publishers a fresh token, sweeps
refreshes and unlinks.

`Accounts.fresh_token` is what publishers call. It refreshes ahead of expiry with one refresher per account at
a time: a `threading.Lock` per account serialises threads in this process, and a lease on the account's row
(a compare-and-set UPDATE, see `AccountStore.try_lease`) serialises processes, on SQLite and PostgreSQL alike,
without holding a database lock during the HTTP call; a crashed refresher's lease expires after two minutes.
Whoever waits re-reads the row afterwards and uses the token the refresher stored, so a rotating refresh token
(TikTok) is spent exactly once and the new pair is committed before anyone uses it.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
import uuid
import webbrowser
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

from influencer_pipeline.accounts.clock import Clock, utcnow
from influencer_pipeline.accounts.errors import InvalidGrant, OAuthError, ReconnectNeeded
from influencer_pipeline.accounts.oauth import OAuthClient
from influencer_pipeline.accounts.providers import LOGINS, default_login, login_key
from influencer_pipeline.accounts.redirect import callback_channel
from influencer_pipeline.accounts.state import STATE_TTL, PendingStates
from influencer_pipeline.accounts.store import HEALTH_RECONNECT, Account, AccountStore

log = logging.getLogger(__name__)

REFRESH_LEASE = timedelta(minutes=2)
EXPIRY_WARNING = timedelta(days=7)


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
        with callback_channel(client.provider, callback_url, listen_port) as receiver:
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
