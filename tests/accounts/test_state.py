"""The sign-in `state`: single use, 10 minutes, bound to its persona, and checked before any code exchange."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from influencer_pipeline.accounts.errors import StateError
from influencer_pipeline.accounts.service import Accounts
from influencer_pipeline.accounts.state import PendingStates
from tests.accounts.linking import link
from tests.accounts.oauth_standin import Browser, FakeClock, OAuthStandin, standin_client


def with_param(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode({**dict(parse_qsl(parts.query)), **changes})))


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


def test_wrong_state_is_refused_before_any_code_exchange(accounts: Accounts, standin: OAuthStandin) -> None:
    forged = Browser(tamper=lambda url: with_param(url, state="forged-state-from-an-attacker"))
    with pytest.raises(StateError, match="matches no sign-in"):
        link(accounts, standin.platform, forged)
    assert standin.count("token") == 0
    assert accounts.store.list() == []


def test_replayed_callback_cannot_reuse_its_state(accounts: Accounts, standin: OAuthStandin) -> None:
    link(accounts, standin.platform)
    used_state = standin.calls[0].params["state"]
    with pytest.raises(StateError, match="matches no sign-in"):
        accounts.client(standin.platform).finish({"state": used_state, "code": "x"}, accounts._states, "ava")
    assert standin.count("token") == 1
