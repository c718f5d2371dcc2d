"""The embedded template writer: valid, persona-faithful plans for a month of days and several kinds of persona,
the same plan for the same day and a different one the next day."""

from __future__ import annotations

import itertools
import re
from datetime import date, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from influencer_pipeline.content.plan import CAPTION_LIMITS, HASHTAG_LIMITS, ContentPlan
from influencer_pipeline.content.writers import (
    SIGN_OFFS,
    TemplateWriter,
    image_prompt_prefix,
    persona_rule_problems,
    post_count,
    spoken_seconds,
)
from influencer_pipeline.errors import InputError
from influencer_pipeline.personas import Persona, parse_persona

ROOT = Path(__file__).resolve().parents[2]
START = date(2026, 11, 1)
DAYS = [START + timedelta(days=i) for i in range(30)]


def sample_persona() -> Persona:
    """The persona shipped in resources/, so the demo's own profile is covered."""
    text = (ROOT / "resources" / "personas" / "ava" / "persona.yaml").read_text()
    return parse_persona("ava", text, "resources/personas/ava/persona.yaml")


PERSONAS = {
    "ava": sample_persona(),
    "instagram-only": Persona(
        slug="solo", platforms=("instagram",), timezone="America/New_York", posting_times=("08:00",)
    ),
    "all-four": Persona(
        slug="quad",
        trigger_word="sks",
        class_word="man",
        style_notes="35mm film look",
        platforms=("instagram", "facebook", "youtube", "tiktok"),
        timezone="Asia/Tokyo",
        posting_times=("07:00", "12:00", "18:00", "21:00", "23:30"),
        hashtags=tuple(f"tag{i}" for i in range(40)),
        tone="calm and professional",
        themes=("trail running", "mountain huts", "gear checks"),
    ),
    "youtube-only": Persona(slug="tube", platforms=("youtube",), themes=("studio sessions",)),
    "defaults": Persona(slug="plain"),
}


@pytest.fixture(scope="module")
def month() -> dict[str, list[ContentPlan]]:
    writer = TemplateWriter()
    return {key: [writer.plan_day(persona, day)[0] for day in DAYS] for key, persona in PERSONAS.items()}


@pytest.mark.parametrize("key", PERSONAS)
def test_thirty_days_of_plans_keep_every_rule(key: str, month: dict[str, list[ContentPlan]]) -> None:
    persona = PERSONAS[key]
    for day, plan in zip(DAYS, month[key], strict=True):
        assert plan.persona == persona.slug and plan.date == day and plan.writer == "template"
        assert persona_rule_problems(plan, persona, day, post_count(persona, None)) == []
        assert [p.id for p in plan.posts] == [f"{day.isoformat()}-{i}" for i in range(1, len(plan.posts) + 1)]
        for post in plan.posts:
            assert set(post.platforms) <= set(persona.platforms)
            assert len(post.hashtags) <= min(HASHTAG_LIMITS[p] for p in post.platforms) <= 30
            assert all(len(post.captions[p]) <= CAPTION_LIMITS[p] for p in post.platforms)
            assert all(prompt.startswith(image_prompt_prefix(persona)) for prompt in post.image_prompts)
            assert all(persona.style_notes in prompt for prompt in post.image_prompts)
            if "youtube" in post.platforms:
                assert post.format == "reel" and 0 < len(post.title) <= 100


@pytest.mark.parametrize("key", PERSONAS)
def test_publish_times_are_the_posting_times_in_the_personas_timezone(
    key: str, month: dict[str, list[ContentPlan]]
) -> None:
    persona = PERSONAS[key]
    expected = sorted(time.fromisoformat(t) for t in persona.posting_times[:5])
    for day, plan in zip(DAYS, month[key], strict=True):
        for post in plan.posts:
            assert post.publish_at.tzinfo == ZoneInfo(persona.timezone)
            assert post.publish_at.date() == day
        assert [p.publish_at.time() for p in plan.posts] == expected


@pytest.mark.parametrize("key", PERSONAS)
def test_reels_carry_a_short_voiceover(key: str, month: dict[str, list[ContentPlan]]) -> None:
    reels = [post for plan in month[key] for post in plan.posts if post.format == "reel"]
    assert reels
    for reel in reels:
        sentences = re.findall(r"[^.!?]+[.!?]", reel.voiceover)
        assert 2 <= len(sentences) <= 4, reel.voiceover
        assert 10 <= spoken_seconds(reel.voiceover) <= 15, reel.voiceover
        assert len(reel.image_prompts) >= 2


def test_video_platforms_get_a_reel_every_day_and_formats_are_mixed(month: dict[str, list[ContentPlan]]) -> None:
    for key in ("ava", "all-four", "youtube-only"):
        assert all(any(p.format == "reel" for p in plan.posts) for plan in month[key]), key
    for key in ("ava", "instagram-only", "all-four"):
        assert len({post.format for plan in month[key] for post in plan.posts}) == 3, key
    assert {post.format for plan in month["youtube-only"] for post in plan.posts} == {"reel"}


def test_non_video_posts_leave_youtube_out(month: dict[str, list[ContentPlan]]) -> None:
    posts = [post for plan in month["all-four"] for post in plan.posts]
    assert {tuple(p.platforms) for p in posts if p.format == "reel"} == {("instagram", "facebook", "youtube", "tiktok")}
    assert {tuple(p.platforms) for p in posts if p.format != "reel"} == {("instagram", "facebook", "tiktok")}


def test_themes_rotate_through_the_persona_themes(month: dict[str, list[ContentPlan]]) -> None:
    for key in ("ava", "all-four"):
        used = {post.theme for plan in month[key] for post in plan.posts}
        assert used == set(PERSONAS[key].themes)
    assert len({plan.posts[0].theme for plan in month["defaults"]}) > 1  # built-in themes when none are set


def test_hashtags_mix_persona_and_theme_tags_within_the_cap(month: dict[str, list[ContentPlan]]) -> None:
    post = month["ava"][0].posts[0]
    assert post.hashtags[0] == re.sub(r"\W", "", post.theme)
    assert {"travel", "italianstyle", "slowliving"} <= set(post.hashtags)
    crowded = [post for plan in month["all-four"] for post in plan.posts]
    assert {len(p.hashtags) for p in crowded} == {15, 30}  # youtube's cap on reels, everyone else's otherwise


def test_the_same_day_gives_the_same_plan() -> None:
    for persona in PERSONAS.values():
        first = TemplateWriter().plan_day(persona, START)
        assert TemplateWriter().plan_day(persona, START) == first


def test_consecutive_days_differ(month: dict[str, list[ContentPlan]]) -> None:
    for key, plans in month.items():
        contents = [[(p.theme, p.format, p.image_prompts, p.captions) for p in plan.posts] for plan in plans]
        assert all(a != b for a, b in itertools.pairwise(contents)), key


def test_tone_picks_the_sign_off() -> None:
    persona = PERSONAS["ava"].model_copy(update={"platforms": ("facebook",)})  # facebook captions end in one
    captions = [post.captions["facebook"] for day in DAYS for post in TemplateWriter().plan_day(persona, day)[0].posts]
    assert all(caption.endswith(SIGN_OFFS["playful"]) for caption in captions)


def test_posts_can_be_asked_for_and_extra_ones_get_their_own_times() -> None:
    plan, usage = TemplateWriter().plan_day(PERSONAS["instagram-only"], START, posts=5)
    times = [p.publish_at for p in plan.posts]
    assert len(plan.posts) == 5 and len(set(times)) == 5 and times == sorted(times)
    assert times[0].time() == time(8, 0)
    assert (usage.cost_usd, usage.prompt_tokens, usage.completion_tokens) == (0.0, 0, 0)


@pytest.mark.parametrize("posts", [0, 6])
def test_a_post_count_outside_one_to_five_is_refused(posts: int) -> None:
    with pytest.raises(InputError, match="a plan holds 1-5"):
        TemplateWriter().plan_day(PERSONAS["ava"], START, posts=posts)


def test_a_persona_without_platforms_is_refused_with_the_fix() -> None:
    with pytest.raises(InputError, match=r"field 'platforms': is empty.*Fix: list some of"):
        TemplateWriter().plan_day(Persona(slug="nowhere", platforms=()), START)


def test_a_time_skipped_by_daylight_saving_moves_past_the_gap() -> None:
    persona = Persona(slug="night", timezone="Europe/Rome", posting_times=("02:30",))
    plan, _ = TemplateWriter().plan_day(persona, date(2026, 3, 29), posts=1)
    assert plan.posts[0].publish_at.isoformat() == "2026-03-29T03:30:00+02:00"


def test_long_themes_are_cut_to_fit_the_theme_and_title_limits() -> None:
    persona = Persona(slug="wordy", platforms=("youtube",), themes=("a very long theme " * 20,))
    post = TemplateWriter().plan_day(persona, START)[0].posts[0]
    assert len(post.theme) <= 200 and len(post.title) <= 100 and post.title.endswith("…")
