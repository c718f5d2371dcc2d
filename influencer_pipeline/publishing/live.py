"""The live publisher for a platform, built for one linked account."""

from __future__ import annotations

from pathlib import Path

from influencer_pipeline.errors import InputError
from influencer_pipeline.media.store import MediaStore, S3MediaStore
from influencer_pipeline.publishing.base import Publisher


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
        return InstagramPublisher(account_id, StoreMediaHost(store, s3_presigned_link(store)), work_dir=work_dir)
    if platform == "facebook":
        from influencer_pipeline.publishing.facebook import FacebookPagePublisher

        return FacebookPagePublisher(account_id, work_dir=work_dir)
    if platform == "youtube":
        from influencer_pipeline.publishing.youtube import YouTubePublisher

        return YouTubePublisher()
    if platform == "tiktok":
        from influencer_pipeline.publishing.tiktok import TikTokPublisher

        return TikTokPublisher()
    raise InputError(f"platform {platform!r}", "has no publisher", "use instagram, facebook, youtube or tiktok")
