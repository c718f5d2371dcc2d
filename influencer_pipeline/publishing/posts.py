"""From a day's plan to publish requests: one per (post, platform), with the platform's caption and media."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from influencer_pipeline.content.plan import HASHTAG_LIMITS, ContentPlan, PlannedPost
from influencer_pipeline.publishing.base import PostMedia, PublishRequest


def platform_caption(post: PlannedPost, platform: str) -> str:
    """The platform's caption with its hashtags appended the way each platform's users expect."""
    tags = " ".join(f"#{t}" for t in post.hashtags[: HASHTAG_LIMITS[platform]])
    caption = post.captions[platform].strip()
    if not tags:
        return caption
    return f"{caption}\n\n{tags}" if platform in ("instagram", "facebook", "youtube") else f"{caption} {tags}"


def due(post: PlannedPost, now: datetime) -> bool:
    return post.publish_at <= now


def requests_for(
    plan: ContentPlan,
    account_for: Callable[[str], str],
    media_for: Callable[[PlannedPost, str], list[Path]],
    only_due_at: datetime | None = None,
) -> list[PublishRequest]:
    """Publish requests for every post and platform of the plan (only those due at `only_due_at` when given).

    `account_for(platform)` names the account; `media_for(post, platform)` gives local files in posting order.
    """
    out = []
    for post in plan.posts:
        if only_due_at is not None and not due(post, only_due_at):
            continue
        for platform in post.platforms:
            files = media_for(post, platform)
            media = tuple(
                PostMedia(f, "video" if f.suffix == ".mp4" else "image", hashlib.sha256(f.read_bytes()).hexdigest())
                for f in files
            )
            out.append(
                PublishRequest(
                    post_id=post.id,
                    platform=platform,
                    account_id=account_for(platform),
                    format=post.format,
                    caption=platform_caption(post, platform),
                    media=media,
                    title=post.title,
                    scheduled_for=post.publish_at.isoformat(),
                )
            )
    return out
