"""Linked social accounts: OAuth linking, encrypted token storage, refresh and revocation.

Publishers get a token with `Accounts.from_env().fresh_token(persona, platform)`; see `oauth.py`.
"""

from influencer_pipeline.accounts.oauth import Accounts, OAuthError, ReconnectNeeded
from influencer_pipeline.accounts.store import Account, AccountNotFound, AccountStore, TokenKeyError

__all__ = ["Account", "AccountNotFound", "AccountStore", "Accounts", "OAuthError", "ReconnectNeeded", "TokenKeyError"]
