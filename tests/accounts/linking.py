"""How the accounts tests link persona `ava` against the stand-in servers, and move time to a refresh."""

from __future__ import annotations

from datetime import timedelta

from influencer_pipeline.accounts.providers import BUILTIN
from influencer_pipeline.accounts.service import Accounts
from tests.accounts.oauth_standin import Browser, OAuthStandin

CALLBACK = "https://studio.example.com/oauth/callback"
PKCE_PLATFORMS = ("facebook", "youtube", "tiktok")
REFRESHABLE = ("instagram", "youtube", "tiktok")


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


def refresh_due_time(standin: OAuthStandin, accounts: Accounts) -> None:
    """Move the shared clock to just inside the platform's refresh margin of the stored token."""
    account = accounts.account("ava", standin.platform)
    margin = BUILTIN[standin.platform].refresh_margin
    assert account.expires_at is not None
    standin.clock.now = account.expires_at - margin + timedelta(seconds=1)
