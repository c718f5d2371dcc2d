"""The live publisher for a platform, built for one linked account and the login it was linked with.

Instagram's API depends on how the account was linked (`Account.login`): Instagram Login accounts publish on
`graph.instagram.com` (videos as a public URL), Facebook Login accounts on `graph.facebook.com` (videos by
resumable upload); see `publishing/instagram.py`.

`<PLATFORM>_API_BASE_URL` (e.g. `YOUTUBE_API_BASE_URL`) re-homes a publisher's calls to another server: an
egress proxy, a recording proxy, or the stand-in servers the tests use. The real host stays in the path
(`https://graph.instagram.com/v24.0/...` -> `$INSTAGRAM_API_BASE_URL/graph.instagram.com/v24.0/...`, see
`influencer_pipeline.endpoints.rehome`), so the publisher is built exactly as in production and the server still
sees which host the call was meant for. Unset, each publisher talks to the platform itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from influencer_pipeline.accounts.store import Account
from influencer_pipeline.errors import InputError
from influencer_pipeline.media.store import MediaStore, S3MediaStore
from influencer_pipeline.publishing.base import Publisher


def api_base_url(platform: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """`<PLATFORM>_API_BASE_URL`, or None (the platform itself)."""
    return environ.get(f"{platform.upper()}_API_BASE_URL") or None


def live_publisher(
    platform: str, account: Account, store: MediaStore, work_dir: Path, environ: Mapping[str, str] = os.environ
) -> Publisher:
    """Instagram fetches media from a URL, so it needs the S3/MinIO store (presigned links); the others upload."""
    if account.platform != platform:
        raise InputError(
            f"{platform} publishing", f"was given the {account.platform} account {account.label}", "a bug: report it"
        )
    base_url = api_base_url(platform, environ)
    if platform == "instagram":
        from influencer_pipeline.publishing.instagram import InstagramPublisher, StoreMediaHost, s3_presigned_link

        if not isinstance(store, S3MediaStore):
            raise InputError(
                "instagram publishing",
                "Instagram fetches media from a public URL, which a local media folder cannot give",
                "use the S3/MinIO media store (MEDIA_S3_BUCKET) so posts get presigned links",
            )
        host = StoreMediaHost(store, s3_presigned_link(store))
        return InstagramPublisher(account.account_id, host, login=account.login, base_url=base_url, work_dir=work_dir)
    if platform == "facebook":
        from influencer_pipeline.publishing.facebook import FacebookPagePublisher

        return FacebookPagePublisher(account.account_id, base_url=base_url, work_dir=work_dir)
    if platform == "youtube":
        from influencer_pipeline.publishing.youtube import YouTubePublisher

        return YouTubePublisher(base_url=base_url)
    if platform == "tiktok":
        from influencer_pipeline.publishing.tiktok import TikTokPublisher

        return TikTokPublisher(base_url=base_url)
    raise InputError(f"platform {platform!r}", "has no publisher", "use instagram, facebook, youtube or tiktok")
