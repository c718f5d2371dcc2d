"""A day's content plan for one persona: the contract between writers, renderers and publishers.

A writer's output is validated once, where it is produced, against the platforms' limits (kept with every other
platform fact in `influencer_pipeline.platforms`), instead of failing at publish time.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from influencer_pipeline.platforms import CAPTION_LIMITS, HASHTAG_LIMITS, YOUTUBE_TITLE_LIMIT, Platform

__all__ = ["CAPTION_LIMITS", "HASHTAG_LIMITS", "YOUTUBE_TITLE_LIMIT", "ContentPlan", "PlannedPost", "Platform"]

PostFormat = Literal["image", "carousel", "reel"]


class PlannedPost(BaseModel):
    """One post. `captions` holds the text per platform (hashtags appended by the publisher, not here)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    theme: str = Field(min_length=1, max_length=200)
    format: PostFormat
    image_prompts: list[str] = Field(min_length=1, max_length=10)
    captions: dict[Platform, str]
    title: str = Field("", max_length=YOUTUBE_TITLE_LIMIT)  # YouTube needs one; others ignore it
    hashtags: list[str] = Field(default_factory=list, max_length=30)
    platforms: list[Platform] = Field(min_length=1)
    publish_at: datetime  # timezone-aware, in the persona's timezone
    voiceover: str = ""  # the reel's spoken script

    @field_validator("image_prompts")
    @classmethod
    def _prompts_not_blank(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("image prompts must not be blank")
        return value

    @field_validator("hashtags")
    @classmethod
    def _hashtags(cls, value: list[str]) -> list[str]:
        tags = [t.lstrip("#") for t in value]
        bad = [t for t in tags if not t or not t.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"hashtags must be letters, digits or '_': {bad}")
        return tags

    @field_validator("publish_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("publish_at must include a timezone offset")
        return value

    @model_validator(mode="after")
    def _per_platform_rules(self) -> PlannedPost:
        for platform in self.platforms:
            caption = self.captions.get(platform)
            if not caption or not caption.strip():
                raise ValueError(f"no caption for platform {platform!r}")
            if len(caption) > CAPTION_LIMITS[platform]:
                raise ValueError(
                    f"{platform} caption is {len(caption)} characters; the limit is {CAPTION_LIMITS[platform]}"
                )
            if len(self.hashtags) > HASHTAG_LIMITS[platform]:
                raise ValueError(f"{len(self.hashtags)} hashtags; {platform} allows {HASHTAG_LIMITS[platform]}")
        if "youtube" in self.platforms and not self.title.strip():
            raise ValueError("youtube needs a title (at most 100 characters)")
        if "youtube" in self.platforms and self.format != "reel":
            raise ValueError("youtube only takes videos: use format 'reel' or drop youtube")
        if self.format == "reel" and not self.voiceover.strip():
            raise ValueError("a reel needs a voiceover script")
        if self.format == "carousel" and len(self.image_prompts) < 2:
            raise ValueError("a carousel needs 2-10 image prompts")
        return self


class ContentPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    persona: str
    date: date
    posts: list[PlannedPost] = Field(min_length=1, max_length=5)
    writer: str = ""  # which writer produced it, e.g. "template" or "openrouter:<model>"
    # Digest of the persona.yaml fields the plan was written from (profile_inputs.plan_digest): when the
    # profile changes (a theme, a posting time), the plan is stale and can be regenerated.
    profile_digest: str = ""

    @model_validator(mode="after")
    def _unique_ids(self) -> ContentPlan:
        ids = [p.id for p in self.posts]
        if len(set(ids)) != len(ids):
            raise ValueError(f"post ids must be unique within a plan: {ids}")
        return self
