"""Output frames for reels and which platform gets which.

Decision (reels, the only video format a content plan has): every platform gets 9:16 1080x1920.
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
from dataclasses import dataclass
from typing import Literal

from influencer_pipeline.errors import InputError

Placement = Literal["reel", "feed"]


@dataclass(frozen=True)
class Aspect:
    name: str  # "9:16"
    width: int
    height: int

    @property
    def slug(self) -> str:
        """File-name friendly ("9x16"), for media keys like `reel-9x16.mp4`."""
        return self.name.replace(":", "x")


VERTICAL = Aspect("9:16", 1080, 1920)
SQUARE = Aspect("1:1", 1080, 1080)
LANDSCAPE = Aspect("16:9", 1920, 1080)
ASPECTS = {aspect.name: aspect for aspect in (VERTICAL, SQUARE, LANDSCAPE)}

PLATFORM_ASPECTS: dict[Placement, dict[str, tuple[Aspect, ...]]] = {
    "reel": {"instagram": (VERTICAL,), "tiktok": (VERTICAL,), "youtube": (VERTICAL,), "facebook": (VERTICAL,)},
    "feed": {"instagram": (VERTICAL,), "tiktok": (VERTICAL,), "youtube": (LANDSCAPE,), "facebook": (SQUARE,)},
}


def aspects_for(platforms: Iterable[str], placement: Placement = "reel") -> list[Aspect]:
    """The distinct frames to render for these platforms, in a stable order (9:16, 1:1, 16:9)."""
    table = PLATFORM_ASPECTS[placement]
    wanted: set[Aspect] = set()
    for platform in platforms:
        if platform not in table:
            raise InputError(f"platform {platform!r}", "has no video aspect", f"use one of {', '.join(table)}")
        wanted.update(table[platform])
    return [aspect for aspect in ASPECTS.values() if aspect in wanted]
