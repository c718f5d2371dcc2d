"""`Accounts` after linking: `fresh_token` refreshes ahead of expiry with one refresher per account (threads and
processes), a dead grant needs reconnecting, `unlink` revokes, and no secret reaches a log or an error."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet

from influencer_pipeline.accounts.clock import utcnow
from influencer_pipeline.accounts.errors import OAuthError, ReconnectNeeded
from influencer_pipeline.accounts.service import Accounts, account_health
from influencer_pipeline.accounts.store import AccountStore, TokenCipher, accounts_table
from tests.accounts.linking import REFRESHABLE, link, refresh_due_time
from tests.accounts.oauth_standin import (
    CLIENT_ID,
    CLIENT_SECRET,
    FakeClock,
    OAuthStandin,
    ServerError,
    Slow,
    standin_accounts,
)

# --- refresh --------------------------------------------------------------------------------------------------


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


# --- hygiene --------------------------------------------------------------------------------------------------


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
