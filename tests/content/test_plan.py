"""`plan.py`'s rules: each broken rule is rejected with a message that names it, and a valid plan passes."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from influencer_pipeline.content.plan import ContentPlan, PlannedPost

ROME = ZoneInfo("Europe/Rome")


def post_data(**overrides: Any) -> dict[str, Any]:
    """A valid reel for every platform; tests break one rule at a time."""
    data: dict[str, Any] = {
        "id": "2026-11-23-1",
        "theme": "city walks",
        "format": "reel",
        "image_prompts": ["ohwx woman, city walks", "ohwx woman, a quiet street"],
        "captions": {p: "A walk through the old town." for p in ("instagram", "facebook", "youtube", "tiktok")},
        "title": "City walks with Ava",
        "hashtags": ["travel", "#citywalks"],
        "platforms": ["instagram", "facebook", "youtube", "tiktok"],
        "publish_at": datetime(2026, 11, 23, 9, 30, tzinfo=ROME),
        "voiceover": "Come with me. This is the old town.",
    }
    data.update(overrides)
    return data


def plan_data(posts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"persona": "ava", "date": date(2026, 11, 23), "posts": posts, "writer": "test"}


def test_a_valid_plan_passes_and_hashtags_lose_their_hash() -> None:
    plan = ContentPlan(
        **plan_data([post_data(), post_data(id="2026-11-23-2", format="carousel", platforms=["tiktok"])])
    )
    assert [p.id for p in plan.posts] == ["2026-11-23-1", "2026-11-23-2"]
    assert plan.posts[0].hashtags == ["travel", "citywalks"]


POST_RULES: list[tuple[str, dict[str, Any], str]] = [
    (
        "instagram caption too long",
        {"captions": {"instagram": "x" * 2201}, "platforms": ["instagram"]},
        "instagram caption is 2201 characters; the limit is 2200",
    ),
    ("tiktok caption too long", {"captions": {"tiktok": "x" * 2201}, "platforms": ["tiktok"]}, "limit is 2200"),
    ("caption missing", {"captions": {"instagram": "hi"}, "platforms": ["instagram", "tiktok"]}, "no caption for"),
    ("blank caption", {"captions": {"instagram": "  "}, "platforms": ["instagram"]}, "no caption for"),
    ("over 30 hashtags", {"hashtags": [f"t{i}" for i in range(31)]}, "at most 30"),
    ("over youtube's 15 hashtags", {"hashtags": [f"t{i}" for i in range(16)]}, "youtube allows 15"),
    ("hashtag with a space", {"hashtags": ["slow living"]}, "hashtags must be letters"),
    ("youtube without title", {"title": ""}, "youtube needs a title"),
    ("youtube title too long", {"title": "x" * 101}, "at most 100 characters"),
    (
        "youtube image",
        {"format": "image", "image_prompts": ["ohwx woman"], "voiceover": ""},
        "youtube only takes videos",
    ),
    ("reel without voiceover", {"voiceover": " "}, "a reel needs a voiceover"),
    ("carousel of one", {"format": "carousel", "image_prompts": ["a"], "platforms": ["tiktok"]}, "carousel needs 2-10"),
    ("blank image prompt", {"image_prompts": ["ohwx woman", " "]}, "must not be blank"),
    ("no image prompts", {"image_prompts": []}, "at least 1 item"),
    ("naive publish_at", {"publish_at": datetime(2026, 11, 23, 9, 30)}, "must include a timezone offset"),
    ("bad id", {"id": "Post 1"}, "should match pattern"),
    ("unknown platform", {"platforms": ["myspace"]}, "platforms"),
    ("no platforms", {"platforms": []}, "at least 1 item"),
    ("unknown field", {"mood": "sunny"}, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("overrides", "message"), [case[1:] for case in POST_RULES], ids=[c[0] for c in POST_RULES])
def test_each_post_rule_is_rejected_by_name(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        PlannedPost(**post_data(**overrides))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("posts", "message"),
    [
        ([post_data(), post_data()], "post ids must be unique"),
        ([], "at least 1 item"),
        ([post_data(id=f"p{i}") for i in range(6)], "at most 5 items"),
    ],
    ids=["duplicate ids", "no posts", "six posts"],
)
def test_each_plan_rule_is_rejected_by_name(posts: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ContentPlan(**plan_data(posts))
    assert message in str(info.value)
