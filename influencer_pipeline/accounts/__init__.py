"""Linked social accounts: OAuth linking, encrypted token storage, refresh and revocation.

Publishers get a token with `Accounts.from_env().fresh_token(persona, platform)`; see `service.py`. The OAuth
client is `oauth.py`; its parts are `pkce.py`, `state.py` and `redirect.py`; `store.py` keeps the tokens.
"""

from influencer_pipeline.accounts.errors import OAuthError, ReconnectNeeded
from influencer_pipeline.accounts.service import Accounts
from influencer_pipeline.accounts.store import Account, AccountNotFound, AccountStore, TokenKeyError

__all__ = ["Account", "AccountNotFound", "AccountStore", "Accounts", "OAuthError", "ReconnectNeeded", "TokenKeyError"]
