"""Which output frames to render for a set of platforms.

Decision (reels, the only video format a content plan has): every platform gets 9:16 1080x1920 (the frames and the
table with their sources are in `influencer_pipeline.platforms`).
- Instagram: since 2023 every single feed video is a Reel; 9:16 1080x1920 is the recommended size.
- TikTok and YouTube Shorts: 9:16 (Shorts are vertical by definition).
- Facebook: reels go through the Page `video_reels` endpoint, which wants 9:16 (>= 540x960, 1080x1920
  recommended). A 1:1 copy for the Facebook feed would be a second post of the same content, not a better reel,
  so it is not made by default.
1:1 (1080x1080) and 16:9 (1920x1080) are available for feed videos: `aspects_for(..., placement="feed")` maps
Facebook to 1:1 (a square video fills the most of a phone's feed) and YouTube to 16:9 (a regular upload, not a
Short); Instagram and TikTok stay 9:16 because they have no other video placement.
"""

from __future__ import annotations

from collections.abc import Iterable

from influencer_pipeline.errors import InputError
from influencer_pipeline.platforms import ASPECTS, LANDSCAPE, PLATFORM_ASPECTS, SQUARE, VERTICAL, Aspect, Placement

__all__ = ["ASPECTS", "LANDSCAPE", "PLATFORM_ASPECTS", "SQUARE", "VERTICAL", "Aspect", "Placement", "aspects_for"]


def aspects_for(platforms: Iterable[str], placement: Placement = "reel") -> list[Aspect]:
    """The distinct frames to render for these platforms, in a stable order (9:16, 1:1, 16:9)."""
    table = PLATFORM_ASPECTS[placement]
    wanted: set[Aspect] = set()
    for platform in platforms:
        if platform not in table:
            raise InputError(f"platform {platform!r}", "has no video aspect", f"use one of {', '.join(table)}")
        wanted.update(table[platform])
    return [aspect for aspect in ASPECTS.values() if aspect in wanted]
