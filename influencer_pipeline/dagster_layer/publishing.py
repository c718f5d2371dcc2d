"""The `publishing` resource (outbox or live accounts, the ledger) and the publishing clock.

`CLOCK` and `SLEEP` are module attributes, read at call time by the publishing group's asset, sensor and review
job, so a simulation (tests, bench) can run a month on a fake clock by setting them here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.publishing.base import PublishError
from influencer_pipeline.publishing.ledger import Ledger, default_url, shared_ledger
from influencer_pipeline.publishing.orchestrator import utc_now
from influencer_pipeline.publishing.outbox import OutboxPublisher, outbox_account

# The clock and sleep of publishing: module attributes so a simulation can run a month on a fake clock.
CLOCK: Callable[[], datetime] = utc_now


SLEEP: Callable[[float], None] = time.sleep


class PublishingResource(dg.ConfigurableResource):
    """Where posts go: `outbox` (a folder per post, posted by a person) or `live` (the linked accounts)."""

    mode: str = Field("outbox", pattern="^(outbox|live)$")
    outbox_dir: str = "outbox"
    ledger_url: str = ""  # empty: SQLite in work_dir; production: postgresql+psycopg2://...
    work_dir: str = "work"
    grace_minutes: float = Field(
        60.0, ge=0, description="How late a post may be before the posts_on_time check fails for it."
    )

    def ledger(self) -> Ledger:
        """The process's shared ledger: one engine per URL, migrated on first use, not on every tick."""
        return shared_ledger(self.ledger_url or default_url(self.work_dir))

    def publisher_and_token(self, platform: str, persona: str, store: MediaStore):
        """(publisher, tokens, account): `tokens()` makes a token provider for one publish (see `TokenSource`)."""
        if self.mode == "outbox":
            # One folder per persona: post ids are per persona and day, so two personas share them.
            outbox = OutboxPublisher(Path(self.outbox_dir) / persona)
            return outbox, (lambda: lambda: ""), outbox_account(persona, platform)
        from influencer_pipeline.accounts import Accounts
        from influencer_pipeline.publishing.live import live_publisher

        accounts = Accounts.from_env()
        account = accounts.account(persona, platform)  # its login decides the API host (Instagram)
        publisher = live_publisher(platform, account, store, Path(self.work_dir) / persona / "publish")
        return publisher, (lambda: TokenSource(accounts, persona, platform)), account.account_id


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
        from influencer_pipeline.accounts.errors import OAuthError
        from influencer_pipeline.accounts.store import AccountNotFound

        try:
            token = self.accounts.fresh_token(self.persona, self.platform, rejected=self.last)
        except AccountNotFound as exc:
            raise PublishError(f"{exc}; link it with `influencer-pipeline accounts link`", "permanent") from None
        except OAuthError as exc:
            raise PublishError(str(exc), "transient" if exc.transient else "auth") from None
        self.last = token
        return token
