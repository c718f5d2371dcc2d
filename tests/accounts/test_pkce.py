"""PKCE (RFC 7636): the challenge matches the RFC's own example, and a code cannot be redeemed with another
sign-in's verifier."""

from __future__ import annotations

import re

import pytest

from influencer_pipeline.accounts.errors import InvalidGrant
from influencer_pipeline.accounts.pkce import code_challenge, new_verifier
from influencer_pipeline.accounts.redirect import LoopbackReceiver
from influencer_pipeline.accounts.state import PendingStates
from influencer_pipeline.accounts.store import AccountStore
from tests.accounts.linking import PKCE_PLATFORMS
from tests.accounts.oauth_standin import Browser, FakeClock, OAuthStandin, standin_client

# RFC 7636 Appendix B: the verifier, and the SHA-256 of it as octets (hex here) and base64url
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_DIGEST_HEX = "13d31e961a1ad8ec2f16b10c4c982e0876a878ad6df144566ee1894acb70f9c3"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_challenge_matches_the_rfc_example() -> None:
    assert code_challenge(RFC_VERIFIER, "base64url") == RFC_CHALLENGE
    assert code_challenge(RFC_VERIFIER, "hex") == RFC_DIGEST_HEX  # TikTok's desktop form of the same digest


def test_verifier_is_unreserved_characters_within_the_rfc_length_and_never_repeats() -> None:
    verifiers = {new_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128
        assert re.fullmatch(r"[A-Za-z0-9\-._~]+", verifier)


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
