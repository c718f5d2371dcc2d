"""The accounts package's errors: one `OAuthError` family, so callers catch one type and read `transient`."""

from __future__ import annotations

from influencer_pipeline.accounts.store import Account


class OAuthError(Exception):
    """A failed OAuth step; `transient` says whether trying again later can help (network, timeout, 5xx, 429)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class InvalidGrant(OAuthError):
    """The platform refused a code or token: used, expired, revoked, or the PKCE verifier does not match."""


class StateError(OAuthError):
    """The callback's state is unknown, already used, expired or bound to another sign-in: possibly forged."""


class ReconnectNeeded(OAuthError):
    """The account's tokens are dead and only the person can fix it, by linking again."""

    def __init__(self, account: Account, reason: str) -> None:
        super().__init__(
            f"the {account.platform} account of persona {account.persona!r} must be linked again ({reason}). "
            f"Fix: influencer-pipeline accounts link {account.platform} --persona {account.persona}"
        )
