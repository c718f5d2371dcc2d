"""Where the redirect arrives: the loopback listener, Meta's public HTTPS callback, and a tunnel to --listen-port."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests

from influencer_pipeline.accounts.redirect import LoopbackReceiver
from influencer_pipeline.accounts.store import AccountStore
from influencer_pipeline.errors import InputError
from tests.accounts.linking import CALLBACK
from tests.accounts.oauth_standin import FB_PAGES, Browser, FakeClock, OAuthStandin, standin_accounts


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
