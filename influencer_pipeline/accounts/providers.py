"""Per-platform OAuth facts: endpoints, scopes, PKCE, redirect rules, token lifetimes, refresh and revocation.

Everything here is data; the flows that use it live in `oauth.py`. Keeping the rules as data makes the differences
between platforms reviewable in one table and lets tests point every endpoint at a stand-in (`with_base_url`,
which keeps the real host in the path: see `influencer_pipeline.endpoints.rehome`).

Instagram is linked one of two ways, and the account remembers which (`Account.login`), because the publishing
API differs between them:
https://developers.facebook.com/docs/instagram-platform/instagram-api-with-instagram-login/content-publishing
https://developers.facebook.com/docs/instagram-platform/instagram-api-with-facebook-login/content-publishing

- **Instagram Login** (Business Login for Instagram, the default): calls go to `graph.instagram.com` with an
  Instagram user token. It needs no Facebook Page, its 60-day token can be refreshed server-side
  (`ig_refresh_token`) so a linked account keeps working without the person logging in again. The price: it has
  no revocation endpoint (unlinking tells the person where to remove the app), it documents no PKCE (the
  single-use `state`, the app secret and the HTTPS callback protect the exchange) and videos must be pulled from
  a public URL: the resumable upload (`rupload`) is "available only for apps that have implemented Facebook Login
  for Business" (https://developers.facebook.com/docs/instagram-platform/content-publishing/resumable-uploads).
- **Facebook Login** (`--login facebook`): for an Instagram professional account connected to a Facebook Page.
  Calls go to `graph.facebook.com` with the Page's token, found through `/me/accounts`'s
  `instagram_business_account`; videos can be pushed with `rupload`. Page tokens do not expire, and the user token
  they were fetched with is kept in the refresh slot because it is what revokes the grant.

Facebook Pages uses Facebook Login: the stored access token is the Page token (it does not expire), and the
long-lived user token it was fetched with is stored in the refresh slot because it is what revokes the grant
(`DELETE /me/permissions`); Meta has no refresh grant for user tokens, so a dead Page token means linking again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Literal

from influencer_pipeline.endpoints import rehome
from influencer_pipeline.errors import InputError
from influencer_pipeline.platforms import GRAPH_API_VERSION, GRAPH_FACEBOOK, GRAPH_INSTAGRAM, PLATFORMS, TIKTOK_API

INSTAGRAM_LOGIN = "instagram"  # Business Login for Instagram: graph.instagram.com
FACEBOOK_LOGIN = "facebook"  # Facebook Login (for Business): graph.facebook.com

PkceEncoding = Literal["base64url", "hex"]
LongLivedGrant = Literal["ig_exchange_token", "fb_exchange_token"]
RefreshGrant = Literal["refresh_token", "ig_refresh_token"]
RevokeStyle = Literal["token", "client_token", "meta_permissions"]


@dataclass(frozen=True)
class Provider:
    """How one platform's authorization server behaves. URLs are absolute; `with_base_url` re-homes them all."""

    platform: str
    login: str  # the login product's name, for messages
    login_type: str  # what `Account.login` records: which login, hence which API host, the tokens belong to
    client_id_env: str
    client_secret_env: str
    authorize_url: str
    token_url: str
    identity_url: str  # who the token belongs to (account id and display name)
    scopes: tuple[str, ...]
    scope_separator: str
    client_id_param: str = "client_id"  # TikTok calls it client_key
    loopback: bool = False  # accepts http://127.0.0.1:<any port> redirects (RFC 8252); else a public HTTPS callback
    loopback_path: str = "/callback"
    pkce: PkceEncoding | None = None  # None: the platform documents no PKCE, so none is sent
    token_method: Literal["GET", "POST"] = "POST"
    authorize_extras: tuple[tuple[str, str], ...] = ()
    permissions_url: str = ""  # where granted scopes are read when the token response does not list them
    long_lived: LongLivedGrant | None = None
    long_lived_url: str = ""
    refresh: RefreshGrant | None = None
    refresh_url: str = ""
    refresh_margin: timedelta = timedelta(0)  # refresh when less than this is left
    revoke: RevokeStyle | None = None
    revoke_url: str = ""
    unlink_hint: str = ""  # what the person does by hand when the grant cannot be revoked from here
    setup_hint: str = ""  # what to register in the platform's developer console

    def with_base_url(self, base_url: str) -> Provider:
        """The same provider with every endpoint sent to `base_url`, the real host kept in the path (`rehome`)."""
        changes = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_url") and value:
                changes[item.name] = rehome(value, base_url)
        return replace(self, **changes)


_GRAPH_FB = f"{GRAPH_FACEBOOK}/{GRAPH_API_VERSION}"
_GRAPH_IG = GRAPH_INSTAGRAM

BUILTIN: dict[str, Provider] = {
    "instagram": Provider(
        platform="instagram",
        login="Instagram Login (Business Login for Instagram)",
        login_type=INSTAGRAM_LOGIN,
        client_id_env="INSTAGRAM_CLIENT_ID",
        client_secret_env="INSTAGRAM_CLIENT_SECRET",
        authorize_url="https://www.instagram.com/oauth/authorize",
        token_url="https://api.instagram.com/oauth/access_token",
        identity_url=f"{_GRAPH_IG}/{GRAPH_API_VERSION}/me",
        scopes=("instagram_business_basic", "instagram_business_content_publish"),
        scope_separator=",",
        authorize_extras=(("enable_fb_login", "0"),),
        long_lived="ig_exchange_token",
        long_lived_url=f"{_GRAPH_IG}/access_token",
        refresh="ig_refresh_token",
        refresh_url=f"{_GRAPH_IG}/refresh_access_token",
        refresh_margin=timedelta(days=30),  # a 60-day token refreshed once it is 30 days old (rule: >= 24 h old)
        unlink_hint="Instagram Login has no revoke endpoint: remove the app in Instagram, Settings > Apps and websites",
        setup_hint="add the HTTPS callback URL to the app's Instagram > Business login settings > redirect URLs",
    ),
    "facebook": Provider(
        platform="facebook",
        login="Facebook Login",
        login_type=FACEBOOK_LOGIN,
        client_id_env="FACEBOOK_CLIENT_ID",
        client_secret_env="FACEBOOK_CLIENT_SECRET",
        authorize_url=f"https://www.facebook.com/{GRAPH_API_VERSION}/dialog/oauth",
        token_url=f"{_GRAPH_FB}/oauth/access_token",
        identity_url=f"{_GRAPH_FB}/me/accounts",
        scopes=("pages_show_list", "pages_read_engagement", "pages_manage_posts", "publish_video"),
        scope_separator=",",
        pkce="base64url",
        token_method="GET",
        permissions_url=f"{_GRAPH_FB}/me/permissions",
        long_lived="fb_exchange_token",
        long_lived_url=f"{_GRAPH_FB}/oauth/access_token",
        revoke="meta_permissions",
        revoke_url=f"{_GRAPH_FB}/me/permissions",
        unlink_hint="remove the app in Facebook, Settings > Business integrations",
        setup_hint="add the HTTPS callback URL to Facebook Login > Settings > Valid OAuth Redirect URIs",
    ),
    "youtube": Provider(
        platform="youtube",
        login="Google OAuth (desktop client)",
        login_type="google",
        client_id_env="GOOGLE_CLIENT_ID",
        client_secret_env="GOOGLE_CLIENT_SECRET",
        authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
        token_url="https://oauth2.googleapis.com/token",
        identity_url="https://www.googleapis.com/youtube/v3/channels",
        scopes=(
            "https://www.googleapis.com/auth/youtube.upload",
            "https://www.googleapis.com/auth/youtube.readonly",  # the channel id, and reconciling uploads
        ),
        scope_separator=" ",
        loopback=True,
        pkce="base64url",
        authorize_extras=(("access_type", "offline"), ("prompt", "consent")),
        refresh="refresh_token",
        refresh_url="https://oauth2.googleapis.com/token",
        refresh_margin=timedelta(minutes=5),
        revoke="token",
        revoke_url="https://oauth2.googleapis.com/revoke",
        unlink_hint="remove the app at https://myaccount.google.com/permissions",
        setup_hint="create an OAuth client of type 'Desktop app' and set the consent screen to 'In production' "
        "(apps left in 'Testing' get refresh tokens that die after 7 days)",
    ),
    "tiktok": Provider(
        platform="tiktok",
        login="TikTok Login Kit for Desktop",
        login_type="tiktok",
        client_id_env="TIKTOK_CLIENT_KEY",
        client_secret_env="TIKTOK_CLIENT_SECRET",
        authorize_url="https://www.tiktok.com/v2/auth/authorize/",
        token_url=f"{TIKTOK_API}/v2/oauth/token/",
        identity_url=f"{TIKTOK_API}/v2/user/info/",
        scopes=("user.info.basic", "video.publish", "video.upload"),
        scope_separator=",",
        client_id_param="client_key",
        loopback=True,
        loopback_path="/callback/",
        pkce="hex",  # TikTok's desktop guide hex-encodes the SHA-256 challenge; TIKTOK_PKCE_ENCODING overrides
        refresh="refresh_token",
        refresh_url=f"{TIKTOK_API}/v2/oauth/token/",
        refresh_margin=timedelta(minutes=10),
        revoke="client_token",
        revoke_url=f"{TIKTOK_API}/v2/oauth/revoke/",
        unlink_hint="remove the app in TikTok, Settings and privacy > Security > Manage app permissions",
        setup_hint="register the app as Desktop with redirect URI http://127.0.0.1:*/callback/",
    ),
}


# Instagram through Facebook Login: a Facebook app, its Page, and the Instagram account connected to that Page.
# Permissions: https://developers.facebook.com/docs/instagram-platform/instagram-api-with-facebook-login/content-publishing
# The account is found with GET /me/accounts?fields=instagram_business_account (the Page's connected IG user).
_INSTAGRAM_VIA_FACEBOOK = replace(
    BUILTIN["facebook"],
    platform="instagram",
    login="Facebook Login (Instagram API with Facebook Login)",
    scopes=("instagram_basic", "instagram_content_publish", "pages_show_list", "pages_read_engagement"),
    unlink_hint="remove the app in Facebook, Settings > Business integrations",
)

# (platform, login) -> provider; the first login listed for a platform is its default.
LOGINS: dict[tuple[str, str], Provider] = {
    **{(platform, provider.login_type): provider for platform, provider in BUILTIN.items()},
    ("instagram", FACEBOOK_LOGIN): _INSTAGRAM_VIA_FACEBOOK,
}


def default_login(platform: str) -> str:
    """How a platform is linked when nothing else is said (and how rows linked before `login` was recorded were)."""
    return BUILTIN[platform].login_type


def login_key(platform: str, login: str | None) -> tuple[str, str]:
    """(platform, login) checked against `LOGINS`; `login` None means the platform's default login."""
    if platform not in BUILTIN:
        raise InputError("platform", f"{platform!r} is not a supported platform", f"use one of {', '.join(PLATFORMS)}")
    key = (platform, login or default_login(platform))
    if key not in LOGINS:
        choices = ", ".join(kind for p, kind in LOGINS if p == platform)
        raise InputError("--login", f"{platform} cannot be linked with {login!r}", f"use one of: {choices}")
    return key


def provider_for(platform: str, environ: Mapping[str, str] = os.environ, login: str | None = None) -> Provider:
    """The provider for linking `platform` with `login` (default: the platform's own login), re-homed to
    `<PLATFORM>_OAUTH_BASE_URL` when that is set (stand-ins, proxies)."""
    provider = LOGINS[login_key(platform, login)]
    base_url = environ.get(f"{platform.upper()}_OAUTH_BASE_URL")
    if base_url:
        provider = provider.with_base_url(base_url)
    encoding = environ.get("TIKTOK_PKCE_ENCODING") if platform == "tiktok" else None
    if encoding:
        if encoding not in ("base64url", "hex"):
            raise InputError("TIKTOK_PKCE_ENCODING", f"{encoding!r} is not an encoding", "use 'hex' or 'base64url'")
        provider = replace(provider, pkce=encoding)
    return provider
