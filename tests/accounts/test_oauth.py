"""OAuth linking, refresh and revocation, end to end against the stand-in authorization servers.

The "browser" is requests: it opens the authorize URL (the stand-in consents at once) and follows the redirect to
the loopback listener, or, for Meta's public HTTPS callback, stops at the redirect and "pastes" its address.
Assertions read the stand-in's own record of what it was asked.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from cryptography.fernet import Fernet

from influencer_pipeline.accounts.clock import utcnow
from influencer_pipeline.accounts.errors import InvalidGrant, OAuthError, ReconnectNeeded, StateError
from influencer_pipeline.accounts.pkce import code_challenge
from influencer_pipeline.accounts.providers import BUILTIN, GRAPH_API_VERSION, LOGINS, PLATFORMS, provider_for
from influencer_pipeline.accounts.redirect import LoopbackReceiver
from influencer_pipeline.accounts.service import Accounts, account_health
from influencer_pipeline.accounts.state import PendingStates
from influencer_pipeline.accounts.store import AccountStore, Secret, TokenCipher, accounts_table
from influencer_pipeline.errors import InputError
from tests.accounts.oauth_standin import (
    CLIENT_ID,
    CLIENT_SECRET,
    FB_PAGES,
    IG_USER_ID,
    TIKTOK_OPEN_ID,
    YT_CHANNEL,
    Browser,
    FakeClock,
    OAuthStandin,
    Reply,
    ServerError,
    Slow,
    standin_accounts,
    standin_client,
)

CALLBACK = "https://studio.example.com/oauth/callback"
PKCE_PLATFORMS = ("facebook", "youtube", "tiktok")
REFRESHABLE = ("instagram", "youtube", "tiktok")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path) -> AccountStore:
    return AccountStore(f"sqlite:///{tmp_path / 'accounts.db'}", TokenCipher([Fernet.generate_key().decode()]))


@pytest.fixture(params=PLATFORMS)
def standin(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[OAuthStandin]:
    with OAuthStandin(request.param, clock) as server:
        yield server


@pytest.fixture
def accounts(store: AccountStore, standin: OAuthStandin, clock: FakeClock) -> Accounts:
    return standin_accounts(store, [standin], clock)


def link(accounts: Accounts, platform: str, browser: Browser | None = None, **kwargs):
    """Link persona `ava`: loopback where the platform allows it, else Meta's callback with a pasted address."""
    browser = browser or Browser()
    if not BUILTIN[platform].loopback:
        browser.follow = False
        kwargs.setdefault("callback_url", CALLBACK)
    return accounts.link(
        "ava",
        platform,
        open_browser=browser.open,
        read_redirect=browser.pasted,
        say=lambda line: None,
        timeout_s=5,
        **kwargs,
    )


def with_param(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode({**dict(parse_qsl(parts.query)), **changes})))


def refresh_due_time(standin: OAuthStandin, accounts: Accounts) -> None:
    """Move the shared clock to just inside the platform's refresh margin of the stored token."""
    account = accounts.account("ava", standin.platform)
    margin = BUILTIN[standin.platform].refresh_margin
    assert account.expires_at is not None
    standin.clock.now = account.expires_at - margin + timedelta(seconds=1)


# --- linking --------------------------------------------------------------------------------------------------


def test_link_end_to_end(accounts: Accounts, standin: OAuthStandin, store: AccountStore) -> None:
    account = link(accounts, standin.platform)

    expected_id = {"instagram": IG_USER_ID, "facebook": FB_PAGES[0][0], "youtube": YT_CHANNEL, "tiktok": TIKTOK_OPEN_ID}
    assert account.account_id == expected_id[standin.platform]
    assert account.display_name
    assert set(BUILTIN[standin.platform].scopes) <= set(account.scopes)
    tokens = store.read_tokens(account)
    assert standin.valid(tokens.access.reveal())
    stored_kind = standin.tokens[tokens.access.reveal()].kind
    assert (
        stored_kind
        == {"instagram": "long", "facebook": "page", "youtube": "access", "tiktok": "access"}[standin.platform]
    )
    if standin.platform in ("instagram", "facebook"):
        assert standin.count("exchange") == 1  # Meta's short-lived token went through the long-lived exchange
    assert account.expires_at == standin.tokens[tokens.access.reveal()].expires_at  # None for a Page token
    if standin.platform in ("youtube", "tiktok"):
        assert tokens.refresh is not None and standin.valid(tokens.refresh.reveal())
    assert [c.endpoint for c in standin.calls].count("token") == 1


def test_authorize_url_carries_pkce_state_and_platform_parameters(accounts: Accounts, standin: OAuthStandin) -> None:
    link(accounts, standin.platform)
    query = standin.calls[0].params
    provider = BUILTIN[standin.platform]
    assert len(query["state"]) >= 43  # 256 bits, url-safe base64
    assert query["scope"] == provider.scope_separator.join(provider.scopes)
    if standin.platform in PKCE_PLATFORMS:
        assert query["code_challenge_method"] == "S256"
        verifier = next(c for c in standin.calls if c.endpoint == "token").params["code_verifier"]
        assert query["code_challenge"] == code_challenge(verifier, provider.pkce or "base64url")
    else:
        assert "code_challenge" not in query
    if standin.platform == "youtube":
        assert (query["access_type"], query["prompt"]) == ("offline", "consent")
    if standin.platform == "tiktok":
        assert "client_key" in query and "client_id" not in query
        assert urlsplit(query["redirect_uri"]).hostname == "127.0.0.1"


def test_wrong_state_is_refused_before_any_code_exchange(accounts: Accounts, standin: OAuthStandin) -> None:
    forged = Browser(tamper=lambda url: with_param(url, state="forged-state-from-an-attacker"))
    with pytest.raises(StateError, match="matches no sign-in"):
        link(accounts, standin.platform, forged)
    assert standin.count("token") == 0
    assert accounts.store.list() == []


def test_replayed_code_is_refused(accounts: Accounts, standin: OAuthStandin) -> None:
    link(accounts, standin.platform)
    token_call = next(c for c in standin.calls if c.endpoint == "token")
    client = accounts.client(standin.platform)
    pending = client.begin("ava", token_call.params["redirect_uri"], PendingStates(standin.clock))
    if "code_verifier" in token_call.params:  # the same verifier, so only the code's reuse can be the reason
        pending = replace(pending, verifier=Secret(token_call.params["code_verifier"]))

    with pytest.raises(InvalidGrant, match="refused"):
        client.exchange_code(token_call.params["code"], pending)
    assert standin.count("token") == 2


def test_replayed_callback_cannot_reuse_its_state(accounts: Accounts, standin: OAuthStandin) -> None:
    link(accounts, standin.platform)
    used_state = standin.calls[0].params["state"]
    with pytest.raises(StateError, match="matches no sign-in"):
        accounts.client(standin.platform).finish({"state": used_state, "code": "x"}, accounts._states, "ava")
    assert standin.count("token") == 1


@pytest.mark.parametrize("platform", PKCE_PLATFORMS)
def test_pkce_verifier_mismatch_is_refused(platform: str, store: AccountStore, clock: FakeClock) -> None:
    with OAuthStandin(platform, clock) as server:
        client = standin_client(server, clock)
        states = PendingStates(clock)
        with LoopbackReceiver() as receiver:
            pending = client.begin("ava", receiver.redirect_uri, states)
            Browser().open(pending.authorize_url)
            callback = receiver.wait(5)
        other = client.begin("ava", receiver.redirect_uri, states)  # same redirect, different verifier
        with pytest.raises(InvalidGrant, match=r"[Cc]ode verifier"):
            client.exchange_code(callback["code"], other)


def test_expired_code_is_refused(accounts: Accounts, standin: OAuthStandin) -> None:
    class ExpiringBrowser(Browser):
        def _visit(self, url: str) -> None:
            response = requests.get(url, allow_redirects=False, timeout=10)
            standin.expire_codes()  # the person took too long between consent and the exchange
            self.location = response.headers["Location"]
            if self.follow:
                requests.get(self.location, timeout=10)

    with pytest.raises(InvalidGrant, match="expired"):
        link(accounts, standin.platform, ExpiringBrowser())
    assert accounts.store.list() == []


def test_declined_consent_is_reported(accounts: Accounts, standin: OAuthStandin) -> None:
    standin.deny = True
    with pytest.raises(OAuthError, match="not completed: access_denied"):
        link(accounts, standin.platform)
    assert standin.count("token") == 0


def test_partial_grant_fails_the_link(accounts: Accounts, standin: OAuthStandin) -> None:
    standin.granted = BUILTIN[standin.platform].scopes[:1]
    with pytest.raises(OAuthError, match="did not grant"):
        link(accounts, standin.platform)
    assert accounts.store.list() == []


def test_state_is_single_use_and_expires(clock: FakeClock) -> None:
    with OAuthStandin("youtube", clock) as server:
        client, states = standin_client(server, clock), PendingStates(clock)
        first = client.begin("ava", "http://127.0.0.1:1/callback", states)
        assert states.consume(first.state, "ava", "youtube") == first
        with pytest.raises(StateError):
            states.consume(first.state, "ava", "youtube")
        late = client.begin("ava", "http://127.0.0.1:1/callback", states)
        clock.advance(minutes=11)
        with pytest.raises(StateError, match="expired"):
            states.consume(late.state, "ava", "youtube")
        other = client.begin("bob", "http://127.0.0.1:1/callback", states)
        with pytest.raises(StateError, match="bob"):
            states.consume(other.state, "ava", "youtube")


def test_loopback_receiver_captures_once_and_answers_plainly() -> None:
    with LoopbackReceiver("/callback") as receiver:
        assert urlsplit(receiver.redirect_uri).hostname == "127.0.0.1"
        assert requests.get(receiver.redirect_uri.replace("/callback", "/favicon.ico"), timeout=5).status_code == 404
        first = requests.get(f"{receiver.redirect_uri}?code=secret-code-1&state=s1", timeout=5)
        second = requests.get(f"{receiver.redirect_uri}?code=secret-code-2&state=s2", timeout=5)
        assert receiver.wait(1) == {"code": "secret-code-1", "state": "s1"}
    assert first.status_code == 200 and "close this tab" in first.text
    assert "secret-code-1" not in first.text
    assert second.status_code == 409


def test_meta_needs_an_https_callback(store: AccountStore, clock: FakeClock) -> None:
    with OAuthStandin("instagram", clock) as server:
        accounts = standin_accounts(store, [server], clock)
        with pytest.raises(InputError, match=r"--callback-url.*HTTPS"):
            accounts.link("ava", "instagram", open_browser=None, say=lambda line: None)
        with pytest.raises(InputError, match="https URL"):
            accounts.link("ava", "instagram", callback_url="http://studio.example.com/cb", say=lambda line: None)
    assert server.calls == []


def test_public_callback_forwarded_by_a_tunnel_to_listen_port(store: AccountStore, clock: FakeClock) -> None:
    with LoopbackReceiver() as probe:  # find a free port
        port = int(urlsplit(probe.redirect_uri).port or 0)
    with OAuthStandin("facebook", clock) as server:
        accounts = standin_accounts(store, [server], clock)
        browser = Browser(follow=False, forward_to=f"http://127.0.0.1:{port}")
        account = accounts.link(
            "ava", "facebook", callback_url=CALLBACK, listen_port=port, open_browser=browser.open, say=print
        )
    assert account.account_id == FB_PAGES[0][0]
    assert browser.pages[-1].status_code == 200


def test_facebook_page_choice_when_several(store: AccountStore, clock: FakeClock, monkeypatch) -> None:
    pages = (("111", "Ava Travel"), ("222", "Ava Studio"))
    monkeypatch.setattr("tests.accounts.oauth_standin.FB_PAGES", pages)
    with OAuthStandin("facebook", clock) as server:
        accounts = standin_accounts(store, [server], clock)
        with pytest.raises(InputError, match=r"several Pages.*Ava Travel.*--page"):
            link(accounts, "facebook")
        assert link(accounts, "facebook", page="ava studio").account_id == "222"


# --- refresh --------------------------------------------------------------------------------------------------


@pytest.fixture
def linked(accounts: Accounts, standin: OAuthStandin) -> Accounts:
    link(accounts, standin.platform)
    return accounts


def test_no_refresh_while_outside_the_margin(linked: Accounts, standin: OAuthStandin) -> None:
    token = linked.fresh_token("ava", standin.platform)
    assert standin.valid(token)
    assert standin.count("refresh") == 0


@pytest.mark.parametrize("standin", REFRESHABLE, indirect=True)
def test_refresh_ahead_of_expiry(linked: Accounts, standin: OAuthStandin) -> None:
    old = linked.fresh_token("ava", standin.platform)
    refresh_due_time(standin, linked)

    new = linked.fresh_token("ava", standin.platform)

    assert new != old and standin.valid(new)
    assert standin.count("refresh") == 1
    account = linked.account("ava", standin.platform)
    assert account.expires_at is not None and account.expires_at > standin.clock() + timedelta(minutes=30)
    assert linked.fresh_token("ava", standin.platform) == new  # stored: no second refresh
    assert standin.count("refresh") == 1


@pytest.mark.parametrize("standin", ["tiktok"], indirect=True)
def test_rotated_refresh_token_is_stored_and_used_next_time(linked: Accounts, standin: OAuthStandin) -> None:
    before = linked.store.read_tokens(linked.account("ava", "tiktok")).refresh
    refresh_due_time(standin, linked)
    linked.fresh_token("ava", "tiktok")
    after = linked.store.read_tokens(linked.account("ava", "tiktok")).refresh
    assert before is not None and after is not None and after.reveal() != before.reveal()
    assert not standin.valid(before.reveal()) and standin.valid(after.reveal())

    refresh_due_time(standin, linked)
    linked.fresh_token("ava", "tiktok")  # would fail with invalid_grant had the old one been kept
    assert standin.count("refresh") == 2


@pytest.mark.parametrize("standin", ["youtube"], indirect=True)
def test_google_refresh_keeps_the_refresh_token_it_did_not_reissue(linked: Accounts, standin: OAuthStandin) -> None:
    before = linked.store.read_tokens(linked.account("ava", "youtube")).refresh
    refresh_due_time(standin, linked)
    linked.fresh_token("ava", "youtube")
    after = linked.store.read_tokens(linked.account("ava", "youtube")).refresh
    assert before is not None and after is not None and after.reveal() == before.reveal()


@pytest.mark.parametrize("standin", REFRESHABLE, indirect=True)
def test_concurrent_refreshes_make_one_request(linked: Accounts, standin: OAuthStandin) -> None:
    refresh_due_time(standin, linked)
    standin.fail("refresh", Slow(0.3))
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(linked.fresh_token("ava", standin.platform))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert standin.count("refresh") == 1
    assert len(results) == 8 and len(set(results)) == 1 and standin.valid(results[0])


@pytest.mark.parametrize("standin", ["tiktok"], indirect=True)
def test_two_processes_refreshing_make_one_request(
    linked: Accounts, standin: OAuthStandin, store: AccountStore, clock: FakeClock
) -> None:
    """Two `Accounts` on two engines share nothing in memory: only the row lease keeps them apart."""
    other = standin_accounts(AccountStore(store.url, store.cipher), [standin], clock)
    refresh_due_time(standin, linked)
    standin.fail("refresh", Slow(0.3))
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda a=a: results.append(a.fresh_token("ava", "tiktok")))
        for a in (linked, other, linked, other)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert standin.count("refresh") == 1
    assert len(results) == 4 and len(set(results)) == 1


@pytest.mark.parametrize("standin", ["youtube"], indirect=True)
def test_waiter_uses_the_token_another_process_stored(linked: Accounts, standin: OAuthStandin) -> None:
    account = linked.account("ava", "youtube")
    refresh_due_time(standin, linked)
    now = standin.clock()
    assert linked.store.try_lease(account, "other-process", now, now + timedelta(minutes=2))
    results: list[str] = []
    waiter = threading.Thread(target=lambda: results.append(linked.fresh_token("ava", "youtube")))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and standin.count("refresh") == 0

    other_process = standin_accounts(AccountStore(linked.store.url, linked.store.cipher), [standin], standin.clock)
    new = other_process.client("youtube").refresh(linked.store.read_tokens(account))
    linked.store.save_refresh(account, new, "other-process", now)
    waiter.join(5)
    assert results == [new.access.reveal()]


@pytest.mark.parametrize("standin", ["youtube"], indirect=True)
def test_a_crashed_refreshers_lease_expires(linked: Accounts, standin: OAuthStandin) -> None:
    account = linked.account("ava", "youtube")
    refresh_due_time(standin, linked)
    now = standin.clock()
    linked.store.try_lease(account, "crashed-process", now - timedelta(minutes=5), now - timedelta(minutes=3))
    assert standin.valid(linked.fresh_token("ava", "youtube"))
    assert standin.count("refresh") == 1


@pytest.mark.parametrize("standin", ["youtube"], indirect=True)
def test_waiting_on_a_live_lease_gives_up_with_a_transient_error(
    store: AccountStore, standin: OAuthStandin, clock: FakeClock
) -> None:
    accounts = standin_accounts(store, [standin], clock, lease=timedelta(0))
    link(accounts, "youtube")
    accounts.client("youtube").timeout_s = 0.3
    account = accounts.account("ava", "youtube")
    refresh_due_time(standin, accounts)
    store.try_lease(account, "stuck-process", clock(), clock() + timedelta(minutes=2))
    with pytest.raises(OAuthError, match="still refreshing") as caught:
        accounts.fresh_token("ava", "youtube")
    assert caught.value.transient


@pytest.mark.parametrize("standin", REFRESHABLE, indirect=True)
def test_revoked_grant_needs_reconnect_once(linked: Accounts, standin: OAuthStandin, caplog) -> None:
    refresh_due_time(standin, linked)
    standin.revoke_grants()  # the person removed the app
    with caplog.at_level(logging.WARNING), pytest.raises(ReconnectNeeded, match="accounts link") as caught:
        linked.fresh_token("ava", standin.platform)
    assert not caught.value.transient
    account = linked.account("ava", standin.platform)
    assert account.health == "needs_reconnect" and account_health(account, standin.clock()) == "needs reconnect"
    with pytest.raises(ReconnectNeeded):
        linked.fresh_token("ava", standin.platform)
    assert standin.count("refresh") == 1  # no retry storm against a dead grant
    assert sum("must be linked again" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("standin", REFRESHABLE, indirect=True)
def test_refresh_server_error_keeps_the_still_valid_token(linked: Accounts, standin: OAuthStandin, caplog) -> None:
    old = linked.fresh_token("ava", standin.platform)
    refresh_due_time(standin, linked)
    standin.fail("refresh", ServerError(503))
    with caplog.at_level(logging.WARNING):
        assert linked.fresh_token("ava", standin.platform) == old
    assert "refresh failed" in caplog.text
    assert linked.account("ava", standin.platform).health == "ok"
    new = linked.fresh_token("ava", standin.platform)  # the lease was released: the next call refreshes
    assert new != old and standin.count("refresh") == 2


@pytest.mark.parametrize("standin", ["tiktok"], indirect=True)
def test_slow_refresh_of_an_expired_token_is_a_transient_error(linked: Accounts, standin: OAuthStandin) -> None:
    linked.client("tiktok").timeout_s = 0.2
    standin.clock.advance(hours=3)  # past the 2-hour access token
    standin.fail("refresh", Slow(1.0))
    with pytest.raises(OAuthError, match="no answer within") as caught:
        linked.fresh_token("ava", "tiktok")
    assert caught.value.transient and not isinstance(caught.value, ReconnectNeeded)
    assert linked.account("ava", "tiktok").health == "ok"


@pytest.mark.parametrize("standin", ["youtube", "facebook"], indirect=True)
def test_rejected_token_forces_one_shared_refresh(linked: Accounts, standin: OAuthStandin) -> None:
    old = linked.fresh_token("ava", standin.platform)
    if standin.platform == "facebook":  # Page tokens cannot be refreshed: a refused one means relinking
        with pytest.raises(ReconnectNeeded):
            linked.fresh_token("ava", "facebook", rejected=old)
        return
    new = linked.fresh_token("ava", "youtube", rejected=old)
    again = linked.fresh_token("ava", "youtube", rejected=old)  # a second caller that saw the same 401
    assert new != old and again == new
    assert standin.count("refresh") == 1


@pytest.mark.parametrize("standin", ["instagram"], indirect=True)
def test_instagram_refresh_keeps_the_long_lived_token_alive(linked: Accounts, standin: OAuthStandin) -> None:
    """A 60-day token is renewed once 30 days old, so a sweep every day keeps it alive forever."""
    for _ in range(4):
        standin.clock.advance(days=31)
        assert standin.valid(linked.fresh_token("ava", "instagram"))
    assert standin.count("refresh") == 4


# --- unlink ---------------------------------------------------------------------------------------------------


def test_unlink_revokes_at_the_platform(linked: Accounts, standin: OAuthStandin) -> None:
    tokens = linked.store.read_tokens(linked.account("ava", standin.platform))
    note = linked.unlink("ava", standin.platform)
    assert linked.store.list() == []
    if standin.platform == "instagram":  # Instagram Login has no revoke endpoint
        assert standin.count("revoke") == 0 and "Apps and websites" in note
        return
    assert standin.count("revoke") == 1 and note.startswith("revoked")
    assert not standin.valid(tokens.access.reveal())


@pytest.mark.parametrize("standin", ["youtube", "tiktok", "facebook"], indirect=True)
def test_unlink_deletes_locally_when_revocation_fails(linked: Accounts, standin: OAuthStandin) -> None:
    standin.fail("revoke", ServerError(502))
    note = linked.unlink("ava", standin.platform)
    assert "could not revoke" in note and "HTTP 502" in note
    assert linked.store.list() == []


@pytest.mark.parametrize("standin", ["youtube"], indirect=True)
def test_unlink_after_the_person_removed_the_app(linked: Accounts, standin: OAuthStandin) -> None:
    standin.revoke_grants()
    assert "already invalid" in linked.unlink("ava", "youtube")


# --- configuration and hygiene ------------------------------------------------------------------------------------


def test_base_url_override_and_missing_app_credentials(tmp_path, monkeypatch) -> None:
    environ = {"YOUTUBE_OAUTH_BASE_URL": "http://127.0.0.1:9", "TIKTOK_PKCE_ENCODING": "base64url"}
    youtube = provider_for("youtube", environ)
    # the real host stays in the path, so the stand-in or proxy still sees which host the call was meant for
    assert youtube.token_url == "http://127.0.0.1:9/oauth2.googleapis.com/token"
    assert youtube.revoke_url == "http://127.0.0.1:9/oauth2.googleapis.com/revoke"
    assert provider_for("tiktok", environ).pkce == "base64url"
    store = AccountStore(f"sqlite:///{tmp_path / 'a.db'}", TokenCipher([Fernet.generate_key().decode()]))
    monkeypatch.delenv("GOOGLE_CLIENT_ID", raising=False)
    with pytest.raises(InputError, match=r"GOOGLE_CLIENT_ID / GOOGLE_CLIENT_SECRET.*Desktop app"):
        Accounts(store).link("ava", "youtube", open_browser=None, say=lambda line: None, timeout_s=1)


def test_no_secret_reaches_logs_or_errors(store: AccountStore, clock: FakeClock, caplog) -> None:
    """Link, refresh, fail and unlink on every platform with DEBUG logging on (urllib3 logs request lines,
    query strings included); no token, code or app secret may appear in the log or in an error message."""
    caplog.set_level(logging.DEBUG)
    # urllib3's own level too: the kubernetes client (imported by other tests in this process) sets it to WARNING.
    caplog.set_level(logging.DEBUG, logger="urllib3")
    messages: list[str] = []
    with (
        OAuthStandin("instagram", clock) as ig,
        OAuthStandin("facebook", clock) as fb,
        OAuthStandin("youtube", clock) as yt,
        OAuthStandin("tiktok", clock) as tt,
    ):
        servers = [ig, fb, yt, tt]
        accounts = standin_accounts(store, servers, clock)
        for server in servers:
            link(accounts, server.platform)
        clock.advance(days=31)
        for server in servers:
            accounts.fresh_token("ava", server.platform)
        clock.advance(days=31)
        for server in servers:
            server.fail("refresh", ServerError(500))
            server.revoke_grants()
            for _ in range(2):
                try:
                    accounts.fresh_token("ava", server.platform)
                except OAuthError as exc:
                    messages.append(str(exc))
            messages.append(accounts.unlink("ava", server.platform))
        secrets = [secret for server in servers for secret in server.secrets()]
    text = caplog.text + "\n".join(messages) + repr(accounts) + repr(store)
    assert "GET /graph.instagram.com/refresh_access_token" in caplog.text  # urllib3's request line was logged, redacted
    assert len(messages) >= 8
    leaked = [secret for secret in secrets if secret in text]
    assert leaked == []


def test_two_real_processes_refresh_once(tmp_path) -> None:
    """The same race with two interpreters: only the row lease in the shared SQLite file keeps them apart."""
    url, key = f"sqlite:///{tmp_path / 'shared.db'}", Fernet.generate_key().decode()
    store = AccountStore(url, TokenCipher([key]))
    with OAuthStandin("tiktok", clock=utcnow) as server:
        link(standin_accounts(store, [server], utcnow), "tiktok")
        with store.engine.begin() as conn:  # inside TikTok's 10-minute margin
            conn.execute(accounts_table.update().values(expires_at=utcnow() + timedelta(minutes=1)))
        server.fail("refresh", Slow(1.5))
        environ = {
            **os.environ,
            "INFLUENCER_ACCOUNTS_DB": url,
            "INFLUENCER_TOKEN_KEYS": key,
            "TIKTOK_OAUTH_BASE_URL": server.base_url,
            "TIKTOK_CLIENT_KEY": CLIENT_ID,
            "TIKTOK_CLIENT_SECRET": CLIENT_SECRET,
        }
        script = (
            "from influencer_pipeline.accounts import Accounts; print(Accounts.from_env().fresh_token('ava', 'tiktok'))"
        )
        workers = [
            subprocess.Popen([sys.executable, "-c", script], env=environ, stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outputs = [worker.communicate(timeout=30)[0].strip() for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    assert server.count("refresh") == 1
    assert outputs[0] == outputs[1] and server.valid(outputs[0])


# --- Instagram through Facebook Login, hosts and the Graph version --------------------------------------------------


def test_instagram_can_be_linked_through_facebook_login(store: AccountStore, clock: FakeClock) -> None:
    """The Page's connected Instagram account is linked; the Page token is stored; the account remembers the
    login, so publishing uses graph.facebook.com for it."""
    with OAuthStandin("facebook", clock) as fb:
        accounts = standin_accounts(store, [fb], clock)
        account = link(accounts, "instagram", login="facebook")
        pages = [c for c in fb.calls if c.endpoint == "pages"]

    assert (account.platform, account.login, account.account_id) == ("instagram", "facebook", IG_USER_ID)
    assert account.display_name == "ava.virtual"
    assert set(LOGINS[("instagram", "facebook")].scopes) <= set(account.scopes)
    assert "instagram_content_publish" in fb.calls[0].params["scope"]
    assert "instagram_business_account" in pages[0].params["fields"]
    tokens = store.read_tokens(account)
    assert fb.tokens[tokens.access.reveal()].kind == "page" and account.expires_at is None
    assert tokens.refresh is not None and fb.tokens[tokens.refresh.reveal()].kind == "long"  # revokes the grant
    assert accounts.fresh_token("ava", "instagram") == tokens.access.reveal()


def test_a_page_without_a_connected_instagram_account_fails_the_link_clearly(
    store: AccountStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OAuthStandin("facebook", clock) as fb:
        monkeypatch.setattr(fb, "_fb_pages", lambda params, headers: Reply(200, {"data": [{"id": "1", "name": "P"}]}))
        with pytest.raises(OAuthError, match="Instagram professional account connected"):
            link(standin_accounts(store, [fb], clock), "instagram", login="facebook")
    assert store.list() == []


def test_an_unknown_login_is_an_input_error(accounts: Accounts, standin: OAuthStandin) -> None:
    with pytest.raises(InputError, match="--login"):
        accounts.link("ava", standin.platform, login="myspace", open_browser=None, say=lambda line: None)


def test_every_meta_endpoint_uses_the_one_graph_version() -> None:
    for (platform, login), provider in LOGINS.items():
        graph_urls = [v for k, v in vars(provider).items() if k.endswith("_url") and "graph." in v]
        for url in graph_urls:
            version = urlsplit(url).path.split("/")[1]
            assert version == GRAPH_API_VERSION or not version.startswith("v"), (platform, login, url)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_oauth_stand_in_refuses_another_host_or_graph_version(platform: str, clock: FakeClock) -> None:
    """The provider is re-homed with its real host kept in the path; drop or change that and nothing answers."""
    with OAuthStandin(platform, clock) as server:
        provider = BUILTIN[platform].with_base_url(server.base_url)
        _, _, path = urlsplit(provider.token_url).path.removeprefix("/").partition("/")
        method = provider.token_method
        wrong_host = requests.request(method, f"{server.base_url}/example.com/{path}", timeout=5)
        no_host = requests.request(method, f"{server.base_url}/{path}", timeout=5)
        answers = [wrong_host.status_code, no_host.status_code]
        if GRAPH_API_VERSION in provider.token_url:
            old = provider.token_url.replace(GRAPH_API_VERSION, "v23.0")
            answer = requests.request(method, old, timeout=5)
            assert answer.json()["error"]["code"] == 2635
            answers.append(answer.status_code)
    assert all(code in (400, 404) for code in answers), answers
    assert server.count("token") == 0 and server.count("refused") == len(answers)
