"""Fixtures shared by the accounts tests: an injected clock, an encrypted store, one stand-in per platform, and
`Accounts` wired to them (`linked`: with persona `ava` already linked)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet

from influencer_pipeline.accounts.providers import PLATFORMS
from influencer_pipeline.accounts.service import Accounts
from influencer_pipeline.accounts.store import AccountStore, TokenCipher
from tests.accounts.linking import link
from tests.accounts.oauth_standin import FakeClock, OAuthStandin, standin_accounts


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


@pytest.fixture
def linked(accounts: Accounts, standin: OAuthStandin) -> Accounts:
    link(accounts, standin.platform)
    return accounts
