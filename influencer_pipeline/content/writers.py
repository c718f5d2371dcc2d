"""Writers turn a persona profile and a day into a `ContentPlan`; the embedded one works offline.

Every writer returns a plan that `plan.py` has already validated, plus what producing it cost, so the asset
can record usage without knowing which writer ran. The rules that depend on the persona (its platforms, its
timezone, the LoRA trigger at the start of every image prompt, a reel on video platforms) are not in
`plan.py`, which knows no persona; they live here so every writer is held to the same ones.

`TemplateWriter` is deterministic per (persona, day) - a re-run of a partition reproduces its plan - and varied
across days: themes rotate with the date and the wording comes from a generator seeded by (persona, day).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Protocol
from zoneinfo import ZoneInfo

from influencer_pipeline.content.plan import ContentPlan, PlannedPost, PostFormat
from influencer_pipeline.errors import InputError
from influencer_pipeline.personas import Persona
from influencer_pipeline.platforms import CAPTION_LIMITS, HASHTAG_LIMITS, PLATFORMS, YOUTUBE_TITLE_LIMIT

MAX_POSTS = 5
VIDEO_PLATFORMS = frozenset({"tiktok", "youtube"})
VIDEO_ONLY_PLATFORMS = frozenset({"youtube"})
WORDS_PER_SECOND = 2.5  # a relaxed speaking pace (150 words a minute), what the reel timing assumes
VOICEOVER_MIN_SECONDS = 10.0  # scripts stop growing here; 2-4 sentences of the banks below stay under 15 s
# Slots added, in this order, when a day has more posts than the persona has posting times.
EXTRA_SLOTS = ("12:30", "15:00", "20:30", "11:00", "17:30")
DEFAULT_THEMES = ("a day in my life", "favourite places", "outfit of the day", "behind the scenes", "weekend plans")


class WriterError(RuntimeError):
    """A writer could not produce a valid plan; the message says what went wrong and what to do."""


@dataclass
class WriterUsage:
    """What producing one plan cost: summed over every request a writer made (the template writer makes none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    model: str = ""


class Writer(Protocol):
    """Anything that plans a persona's day; `name` is recorded in the plan and in the asset's metadata."""

    name: str

    def plan_day(self, persona: Persona, day: date, posts: int | None = None) -> tuple[ContentPlan, WriterUsage]:
        """Return a validated plan of `posts` posts (default: one per posting time, 1-5) and its usage."""
        ...


def post_count(persona: Persona, posts: int | None) -> int:
    """The number of posts to plan: as asked (1-5), else one per posting time so each slot gets a post.

    Refuses a persona with no platforms too, since none of its posts could be valid.
    """
    if not persona.platforms:
        where = f"persona {persona.slug!r}: field 'platforms'"
        raise InputError(where, "is empty, so no post can go anywhere", f"list some of {list(PLATFORMS)}")
    if posts is None:
        return min(max(len(persona.posting_times), 1), MAX_POSTS)
    if not 1 <= posts <= MAX_POSTS:
        raise InputError("posts", f"{posts} posts asked; a plan holds 1-{MAX_POSTS}", "ask for 1 to 5 posts")
    return posts


def image_prompt_prefix(persona: Persona) -> str:
    """The trigger and class words that activate the persona's LoRA: every image prompt starts with them."""
    return f"{persona.trigger} {persona.class_word}"


def local_time(persona: Persona, day: date, clock: time) -> datetime:
    """`day` at `clock` in the persona's timezone; a wall time skipped by a DST change moves forward past it."""
    zone = ZoneInfo(persona.timezone)
    naive = datetime.combine(day, clock.replace(tzinfo=None))
    return naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)


def publish_slots(persona: Persona, day: date, count: int) -> list[datetime]:
    """`count` distinct publish times on `day`: the persona's posting times first, then `EXTRA_SLOTS`."""
    clocks: list[time] = []
    for text in (*persona.posting_times, *EXTRA_SLOTS):
        clock = time.fromisoformat(text)
        if clock not in clocks:
            clocks.append(clock)
    return sorted(local_time(persona, day, clock) for clock in clocks[:count])


def spoken_seconds(script: str) -> float:
    """Roughly how long `script` takes to say at `WORDS_PER_SECOND`."""
    return len(script.split()) / WORDS_PER_SECOND


def persona_rule_problems(plan: ContentPlan, persona: Persona, day: date, count: int) -> list[str]:
    """The rules a plan must meet for this persona and day beyond `plan.py`'s own; empty when it meets them."""
    problems = [] if len(plan.posts) == count else [f"the plan must hold {count} posts, not {len(plan.posts)}"]
    zone = ZoneInfo(persona.timezone)
    prefix = image_prompt_prefix(persona).lower()
    for post in plan.posts:
        if post.publish_at.astimezone(zone).date() != day:
            problems.append(f"post {post.id}: publish_at {post.publish_at.isoformat()} is not on {day} in {zone.key}")
        foreign = [p for p in post.platforms if p not in persona.platforms]
        if foreign:
            problems.append(f"post {post.id}: {foreign} are not among the persona's platforms {persona.platforms}")
        if any(not prompt.lower().startswith(prefix) for prompt in post.image_prompts):
            problems.append(f"post {post.id}: every image prompt must start with {image_prompt_prefix(persona)!r}")
    if VIDEO_PLATFORMS & set(persona.platforms) and all(post.format != "reel" for post in plan.posts):
        problems.append("at least one post must be a reel: the persona posts to tiktok or youtube")
    return problems


def fit(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters, marked with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    words = text[: limit - 1].rsplit(maxsplit=1)
    return (words[0] if words else "").rstrip(" ,.;:-") + "…"


def hashtag_for(text: str) -> str:
    """`text` as one hashtag body: its words run together, lowercase (e.g. 'city walks' -> 'citywalks')."""
    return "".join(re.findall(r"\w+", text.lower()))[:60]


# Phrase banks for the template writer: `{theme}` (`{Theme}` capitalised) is filled in; tone picks the sign-offs.
SHOTS = (
    "close-up portrait",
    "candid medium shot",
    "full-body shot",
    "over-the-shoulder shot",
    "wide environmental portrait",
    "three-quarter shot",
)
MOMENTS = (
    "relaxed smile",
    "laughing naturally",
    "looking away from the camera",
    "thoughtful expression",
    "mid-stride",
    "glancing back over the shoulder",
)
LIGHTS = (
    "soft morning light",
    "golden hour light",
    "overcast diffuse light",
    "warm late-afternoon sun",
    "blue hour glow",
    "dappled shade",
)
OPENERS = (
    "Today's mood: {theme}.",
    "A little {theme} moment.",
    "Some days are made for {theme}.",
    "Caught in the middle of {theme}.",
    "{Theme}, my way.",
    "Currently obsessed with {theme}.",
)
BODIES = (
    "Slowing down for a moment and noticing all the small things.",
    "This is exactly the kind of place where I recharge.",
    "It never gets old, and honestly I hope it never will.",
    "The simplest plans always turn out to be the best ones.",
    "Sharing this little piece of my day with you felt right.",
    "Every single time it feels a little bit different.",
)
QUESTIONS = (
    "What does your perfect version of this look like?",
    "Would you come along with me next time?",
    "Tell me your own favourite spot for this below.",
    "Have you tried this yet, or is it still on your list?",
)
HOOKS = (
    "Come with me for a little {theme}.",
    "Here is how I like to do {theme}.",
    "Give me ten seconds of your day for {theme}.",
    "This is your sign to try {theme} this week.",
)
SIGN_OFFS: dict[str, tuple[str, ...]] = {
    "playful": ("Catch you in the next one!", "Okay, your turn!", "See you there, bring snacks!"),
    "calm": ("Take a breath and enjoy your day.", "Go gently today."),
    "professional": ("Follow for more ideas like this.", "Save this for your next plan."),
    "": ("See you in the next one.", "Follow along for more.", "Save this for later."),
}


@dataclass(frozen=True)
class _Slot:
    """What the template writer decided for one post before writing it."""

    index: int
    theme: str
    format: PostFormat
    platforms: list[str]
    publish_at: datetime


@dataclass(frozen=True)
class _Lines:
    """The sentences drawn for one post, shared by its captions, title and voice-over so they tell one story."""

    opener: str
    body: str
    question: str
    sign_off: str
    hook: str

    @classmethod
    def draw(cls, theme: str, tone: str, rng: random.Random) -> _Lines:
        return cls(
            opener=rng.choice(OPENERS).format(theme=theme, Theme=theme[:1].upper() + theme[1:]),
            body=rng.choice(BODIES),
            question=rng.choice(QUESTIONS),
            sign_off=rng.choice(_sign_offs(tone)),
            hook=rng.choice(HOOKS).format(theme=theme),
        )


class TemplateWriter:
    """The embedded writer: plans from `persona.yaml` alone, offline and free, the same plan for the same day."""

    name = "template"

    def plan_day(self, persona: Persona, day: date, posts: int | None = None) -> tuple[ContentPlan, WriterUsage]:
        count = post_count(persona, posts)
        rng = random.Random(hashlib.sha256(f"{persona.slug}|{day.isoformat()}".encode()).digest())
        planned = [_post(persona, day, slot, rng) for slot in _slots(persona, day, count, rng)]
        plan = ContentPlan(persona=persona.slug, date=day, posts=planned, writer=self.name)
        return plan, WriterUsage(attempts=1, model=self.name)


def _slots(persona: Persona, day: date, count: int, rng: random.Random) -> list[_Slot]:
    """Themes rotate with the date; formats are drawn, then fixed up so the platforms' rules hold."""
    themes = tuple(theme for theme in persona.themes if hashtag_for(theme)) or DEFAULT_THEMES
    start = day.toordinal() % len(themes)
    formats: list[PostFormat] = rng.choices(["image", "carousel", "reel"], weights=[4, 3, 3], k=count)
    platforms = list(persona.platforms)
    if VIDEO_PLATFORMS & set(platforms) and "reel" not in formats:
        formats[rng.randrange(count)] = "reel"
    if not set(platforms) - VIDEO_ONLY_PLATFORMS:
        formats = ["reel"] * count
    times = publish_slots(persona, day, count)
    return [
        _Slot(
            index=i,
            theme=fit(themes[(start + i) % len(themes)], 200),
            format=formats[i],
            platforms=[p for p in platforms if formats[i] == "reel" or p not in VIDEO_ONLY_PLATFORMS],
            publish_at=times[i],
        )
        for i in range(count)
    ]


def _post(persona: Persona, day: date, slot: _Slot, rng: random.Random) -> PlannedPost:
    prompts = {"image": 1, "carousel": rng.randint(2, 4), "reel": 3}[slot.format]
    lines = _Lines.draw(slot.theme, persona.tone, rng)
    youtube = "youtube" in slot.platforms
    return PlannedPost(
        id=f"{day.isoformat()}-{slot.index + 1}",
        theme=slot.theme,
        format=slot.format,
        image_prompts=[_image_prompt(persona, slot.theme, rng) for _ in range(prompts)],
        captions={p: _caption(p, persona, slot.theme, lines) for p in slot.platforms},
        title=fit(f"{lines.opener.rstrip('.')} | {persona.name}", YOUTUBE_TITLE_LIMIT) if youtube else "",
        hashtags=_hashtags(persona, slot.theme, slot.platforms),
        platforms=slot.platforms,
        publish_at=slot.publish_at,
        voiceover=_voiceover(lines) if slot.format == "reel" else "",
    )


def _sign_offs(tone: str) -> tuple[str, ...]:
    """The sign-off bank for the first tone keyword the persona's `tone` mentions (the neutral bank otherwise)."""
    words = set(re.findall(r"[a-z]+", tone.lower()))
    return next((bank for key, bank in SIGN_OFFS.items() if key in words), SIGN_OFFS[""])


def _image_prompt(persona: Persona, theme: str, rng: random.Random) -> str:
    parts = [image_prompt_prefix(persona), theme, rng.choice(SHOTS), rng.choice(MOMENTS), rng.choice(LIGHTS)]
    if persona.style_notes.strip():
        parts.append(persona.style_notes.strip())
    return ", ".join(parts)


def _caption(platform: str, persona: Persona, theme: str, lines: _Lines) -> str:
    """Platform-shaped text: TikTok short, Instagram with a question, Facebook chatty, YouTube a description."""
    texts = {
        "tiktok": f"{lines.opener} {lines.question}",
        "instagram": f"{lines.opener} {lines.body}\n\n{lines.question}",
        "facebook": f"{lines.opener} {lines.body} {lines.question} {lines.sign_off}",
        "youtube": f"{lines.opener} {lines.body}\n\n{persona.name} shares a little {theme}. {lines.sign_off}",
    }
    return fit(texts[platform], CAPTION_LIMITS[platform])


def _hashtags(persona: Persona, theme: str, platforms: list[str]) -> list[str]:
    """The theme's tag, the persona's tags, then the theme's words; no duplicates, within every platform's cap."""
    words = [w for w in re.findall(r"\w+", theme.lower()) if len(w) > 3]
    cap = min(HASHTAG_LIMITS[p] for p in platforms)
    tags: list[str] = []
    for tag in (hashtag_for(theme), *persona.hashtags, *words):
        if tag and tag.lower() not in {t.lower() for t in tags}:
            tags.append(tag)
    return tags[:cap]


def _voiceover(lines: _Lines) -> str:
    """The hook, then sentences until the script lasts `VOICEOVER_MIN_SECONDS` (2-4 sentences in all)."""
    sentences = [lines.hook]
    for extra in (lines.body, lines.question, lines.sign_off):
        if len(sentences) >= 2 and spoken_seconds(" ".join(sentences)) >= VOICEOVER_MIN_SECONDS:
            break
        sentences.append(extra)
    return " ".join(sentences)
