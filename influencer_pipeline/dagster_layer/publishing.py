"""The `publishing` resource (outbox or live accounts, the ledger) and the publishing clock.

`CLOCK` and `SLEEP` are module attributes, read at call time by the publishing group's asset, sensor and review
job, so a simulation (tests, bench) can run a month on a fake clock by setting them here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr

from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.publishing.base import PublishError
from influencer_pipeline.publishing.ledger import Ledger, default_url, shared_ledger
from influencer_pipeline.publishing.orchestrator import utc_now
from influencer_pipeline.publishing.outbox import OutboxPublisher, outbox_account

if TYPE_CHECKING:
    from influencer_pipeline.accounts import Accounts

# The clock and sleep of publishing: module attributes so a simulation can run a month on a fake clock.
CLOCK: Callable[[], datetime] = utc_now


SLEEP: Callable[[float], None] = time.sleep


class PublishingResource(dg.ConfigurableResource):
    """Where posts go: `outbox` (a folder per post, posted by a person) or `live` (the linked accounts).

    For one execution (a step, a sensor tick) it holds the ledger and, live, the accounts: both are opened in
    `setup_for_execution` and let go in `teardown_after_execution`
    (https://docs.dagster.io/api/dagster/resources#dagster.ConfigurableResource). The ledger is the process's
    shared one (`shared_ledger`: one engine per URL, migrated once), so the resource only borrows it: sensor ticks
    keep reusing the same pool. The accounts database connection is the resource's own and is disposed.
    """

    mode: str = Field("outbox", pattern="^(outbox|live)$")
    outbox_dir: str = "outbox"
    ledger_url: str = ""  # from dg.EnvVar("POST_LEDGER_URL"); empty: SQLite in work_dir
    # Live mode: the linked accounts. From dg.EnvVar("INFLUENCER_ACCOUNTS_DB") (may carry user:password@), else
    # the SQLite file the `influencer-pipeline accounts` command uses; empty: accounts.db in the working directory.
    accounts_url: str = ""
    token_keys: str = ""  # from dg.EnvVar("INFLUENCER_TOKEN_KEYS"): decrypts the linked accounts' tokens
    work_dir: str = "work"
    grace_minutes: float = Field(
        60.0, ge=0, description="How late a post may be before the posts_on_time check fails for it."
    )

    _ledger: Ledger | None = PrivateAttr(default=None)
    _accounts: Accounts | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._ledger = self._shared_ledger()
        if self.mode == "live":
            self._accounts = self._open_accounts()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._accounts is not None:
            self._accounts.store.engine.dispose()
            self._accounts = None
        self._ledger = None  # shared with the rest of the process: not disposed here

    def ledger(self) -> Ledger:
        """The ledger of this execution; outside one (tests, scripts), the process's shared ledger for the URL."""
        return self._ledger if self._ledger is not None else self._shared_ledger()

    def publisher_and_token(self, platform: str, persona: str, store: MediaStore):
        """(publisher, tokens, account): `tokens()` makes a token provider for one publish (see `TokenSource`)."""
        if self.mode == "outbox":
            # One folder per persona: post ids are per persona and day, so two personas share them.
            outbox = OutboxPublisher(Path(self.outbox_dir) / persona)
            return outbox, (lambda: lambda: ""), outbox_account(persona, platform)
        from influencer_pipeline.publishing.live import live_publisher

        accounts = self._accounts
        if accounts is None:
            raise RuntimeError(
                "PublishingResource(mode='live') opens its accounts in setup_for_execution: use it inside a run, "
                "or outside one through `with dg.build_resources({'publishing': resource}) as resources:`"
            )
        account = accounts.account(persona, platform)  # its login decides the API host (Instagram)
        publisher = live_publisher(platform, account, store, Path(self.work_dir) / persona / "publish")
        return publisher, (lambda: TokenSource(accounts, persona, platform)), account.account_id

    def _shared_ledger(self) -> Ledger:
        """One engine per URL per process, migrated on first use, not on every tick (`shared_ledger`)."""
        return shared_ledger(self.ledger_url or default_url(self.work_dir))

    def _open_accounts(self) -> Accounts:
        from influencer_pipeline.accounts import Accounts, AccountStore
        from influencer_pipeline.accounts.store import TokenCipher
        from influencer_pipeline.accounts.store import default_url as accounts_default_url

        keys = [key.strip() for key in self.token_keys.split(",") if key.strip()]
        url = self.accounts_url or accounts_default_url({})
        # No keys: TokenCipher raises its own error (variable, rule, fix) only when a token is read or written.
        return Accounts(AccountStore(url, cipher=TokenCipher(keys) if keys else None))


class TokenSource:
    """The token provider of one publish: the first call gives the stored (or due-for-refresh) token; a second
    call means the platform refused that token, so it forces a refresh of exactly that token.

    Account errors become publish errors the ledger understands: a needed relink fails the post (auth), an
    unreachable token endpoint retries it later (transient), an unlinked account fails it with the fix.
    """

    def __init__(self, accounts, persona: str, platform: str) -> None:
        self.accounts, self.persona, self.platform = accounts, persona, platform
        self.last: str | None = None

    def __call__(self) -> str:
        from influencer_pipeline.accounts import AccountNotFound, OAuthError

        try:
            token = self.accounts.fresh_token(self.persona, self.platform, rejected=self.last)
        except AccountNotFound as exc:
            raise PublishError(f"{exc}; link it with `influencer-pipeline accounts link`", "permanent") from None
        except OAuthError as exc:
            raise PublishError(str(exc), "transient" if exc.transient else "auth") from None
        self.last = token
        return token
