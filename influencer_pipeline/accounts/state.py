"""Sign-ins in progress, each named by its OAuth `state` parameter (RFC 6749 section 10.12; RFC 9700, the OAuth
2.0 Security Best Current Practice, on CSRF).

The state is 256 random bits, lives 10 minutes, is usable once, is compared in constant time, and is bound to the
persona, the platform, the redirect URI and the PKCE verifier; a callback whose state matches none of them is
refused before any code is exchanged.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from influencer_pipeline.accounts.clock import Clock, utcnow
from influencer_pipeline.accounts.errors import StateError
from influencer_pipeline.accounts.store import Secret

STATE_TTL = timedelta(minutes=10)


@dataclass(frozen=True)
class PendingAuthorization:
    """One sign-in in progress. Its state names it; the verifier stays here, only its challenge is sent."""

    state: str
    persona: str
    platform: str
    redirect_uri: str
    verifier: Secret | None
    expires_at: datetime
    authorize_url: str


class PendingStates:
    """Sign-ins started by this process, each usable once and for `STATE_TTL`."""

    def __init__(self, clock: Clock = utcnow) -> None:
        self._clock = clock
        self._pending: dict[str, PendingAuthorization] = {}
        self._guard = threading.Lock()

    def add(self, pending: PendingAuthorization) -> None:
        with self._guard:
            self._pending[pending.state] = pending

    def consume(self, state: str, persona: str, platform: str) -> PendingAuthorization:
        """Remove and return the sign-in `state` names; refuse unknown, expired or mismatched ones."""
        with self._guard:
            match = None
            for known in self._pending:  # every entry is compared, in constant time
                if hmac.compare_digest(known.encode(), state.encode()):
                    match = known
            pending = self._pending.pop(match) if match is not None else None
        if pending is None:
            raise StateError(
                "the callback's state matches no sign-in started here (forged, replayed, or from another attempt); "
                "run the link command again"
            )
        if pending.expires_at <= self._clock():
            raise StateError("the sign-in expired (10 minutes); run the link command again")
        if (pending.persona, pending.platform) != (persona, platform):
            raise StateError(f"the callback belongs to the {pending.platform} sign-in of persona {pending.persona!r}")
        return pending
