"""PKCE (RFC 7636, https://www.rfc-editor.org/rfc/rfc7636): the code verifier that never leaves this process and
the S256 challenge sent in its place, so a stolen authorization code is useless without the verifier."""

from __future__ import annotations

import base64
import hashlib
import secrets

from influencer_pipeline.accounts.providers import PkceEncoding


def new_verifier() -> str:
    """A PKCE code verifier: 64 characters of the RFC 7636 unreserved set (section 4.1 allows 43 to 128)."""
    return secrets.token_urlsafe(48)


def code_challenge(verifier: str, encoding: PkceEncoding) -> str:
    """The S256 challenge: SHA-256 of the verifier, base64url without padding (RFC 7636 section 4.2) or hex
    (TikTok, https://developers.tiktok.com/doc/login-kit-desktop)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    if encoding == "hex":
        return digest.hex()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
