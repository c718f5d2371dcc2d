"""The live publisher for a platform, built for one linked account.

`<PLATFORM>_API_BASE_URL` (e.g. `YOUTUBE_API_BASE_URL`) points a publisher at another host: an egress proxy, a
recording proxy, or the stand-in servers the tests use. Unset, each publisher talks to the platform itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from influencer_pipeline.errors import InputError
from influencer_pipeline.media.store import MediaStore, S3MediaStore
from influencer_pipeline.publishing.base import Publisher


def _base(platform: str, argument: str) -> dict[str, Any]:
    value = os.environ.get(f"{platform.upper()}_API_BASE_URL")
    return {argument: value} if value else {}


def live_publisher(platform: str, account_id: str, store: MediaStore, work_dir: Path) -> Publisher:
    """Instagram fetches media from a URL, so it needs the S3/MinIO store (presigned links); the others upload."""
    if platform == "instagram":
        from influencer_pipeline.publishing.instagram import InstagramPublisher, StoreMediaHost, s3_presigned_link

        if not isinstance(store, S3MediaStore):
            raise InputError(
                "instagram publishing",
                "Instagram fetches media from a public URL, which a local media folder cannot give",
                "use the S3/MinIO media store (MEDIA_S3_BUCKET) so posts get presigned links",
            )
        host = StoreMediaHost(store, s3_presigned_link(store))
        return InstagramPublisher(account_id, host, work_dir=work_dir, **_base(platform, "graph_base"))
    if platform == "facebook":
        from influencer_pipeline.publishing.facebook import FacebookPagePublisher

        return FacebookPagePublisher(account_id, work_dir=work_dir, **_base(platform, "graph_base"))
    if platform == "youtube":
        from influencer_pipeline.publishing.youtube import YouTubePublisher

        return YouTubePublisher(**_base(platform, "base_url"))
    if platform == "tiktok":
        from influencer_pipeline.publishing.tiktok import TikTokPublisher

        return TikTokPublisher(**_base(platform, "base_url"))
    raise InputError(f"platform {platform!r}", "has no publisher", "use instagram, facebook, youtube or tiktok")
