"""What the studio page shows, assembled from the media store, the post ledger and the accounts: plain data.

One `Overview` lists every persona folder under `uploads/` (valid ones as `PersonaCard`s, invalid names with the
rule they break and the fix), each with its dataset, active LoRA version, the next days' posts (from the ledger
when a day is registered for publishing, else from its plan), linked accounts with token expiry, and its last
failure. No Dagster here: the last failures are handed in by the caller, which reads them from the instance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from influencer_pipeline.errors import InputError
from influencer_pipeline.media.keys import (
    UPLOADS,
    contact_sheet_key,
    content_prefix,
    dataset_manifest_key,
    lora_manifest_key,
    lora_prefix,
)
from influencer_pipeline.media.store import MediaStore, UnsafeMediaError
from influencer_pipeline.personas import load_persona, validate_slug
from influencer_pipeline.publishing.due import PostStatus
from influencer_pipeline.video import aspects_for

DAYS_AHEAD = 14
MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest larger than this is not one of ours


@dataclass(frozen=True)
class Failure:
    """The last failed run of a persona, as the caller found it (the message already says the fix)."""

    job: str
    run_id: str
    at: datetime
    message: str


@dataclass(frozen=True)
class AccountLine:
    platform: str
    name: str
    expires_at: datetime | None
    health: str


@dataclass(frozen=True)
class PostCard:
    """One post of one day: the same content goes to `platforms`, each with its own state."""

    day: str
    post_id: str
    time: datetime
    format: str
    theme: str
    caption: str
    platforms: tuple[str, ...]
    states: dict[str, str]
    image_key: str = ""  # the first image, when rendered
    video_key: str = ""  # the reel, when rendered
    note: str = ""  # the last error of a platform, if any

    @property
    def state(self) -> str:
        """One word for the post: its platforms' state when they agree, else `mixed`."""
        values = set(self.states.values())
        return values.pop() if len(values) == 1 else "mixed"


@dataclass
class PersonaCard:
    slug: str
    name: str = ""
    problem: str = ""  # persona.yaml that does not load: the whole message, with its fixes
    approval: str = ""
    dataset: str = "no dataset yet: drop photos into uploads/<persona>/"
    contact_sheet_key: str = ""
    lora: str = "no LoRA trained yet"
    posts: list[PostCard] = field(default_factory=list)
    accounts: list[AccountLine] = field(default_factory=list)
    failure: Failure | None = None


@dataclass(frozen=True)
class InvalidFolder:
    name: str
    problem: str


@dataclass
class Overview:
    today: date
    days: list[str]
    personas: list[PersonaCard]
    invalid_folders: list[InvalidFolder]


def _json(store: MediaStore, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.read_bytes(key, max_bytes=MANIFEST_BYTES))
    except (FileNotFoundError, UnsafeMediaError, ValueError):
        return None


def persona_folders(store: MediaStore) -> tuple[list[str], list[InvalidFolder]]:
    """The valid persona folder names under uploads/, and every other entry there with why it is ignored."""
    valid, invalid = [], []
    for entry in store.refused(f"{UPLOADS}/", recursive=False):
        name = entry.key.rstrip("/").rsplit("/", 1)[-1]
        invalid.append(InvalidFolder(name, f"ignored: {entry.reason}; replace it with a real folder"))
    for name in store.list_children(f"{UPLOADS}/"):
        try:
            valid.append(validate_slug(name, where=f"{UPLOADS}/{name}/"))
        except InputError as exc:
            invalid.append(InvalidFolder(name, str(exc)))
    return valid, sorted(invalid, key=lambda f: f.name)


def captions_of_day(store: MediaStore, persona: str, day: str) -> dict[tuple[str, str], str]:
    """(post id, platform) -> caption, from the day's plan; empty when the day is not planned."""
    plan = _json(store, content_prefix(persona, day) + "plan.json") or {}
    return {
        (post["id"], platform): text
        for post in plan.get("posts", [])
        for platform, text in (post.get("captions") or {}).items()
    }


def _dataset_line(store: MediaStore, persona: str) -> str:
    manifest = _json(store, dataset_manifest_key(persona))
    if manifest is None:
        return "no dataset yet: drop photos into uploads/<persona>/".replace("<persona>", persona)
    images = manifest.get("images", [])
    kept = sum(1 for i in images if i.get("status") == "kept")
    return f"{kept} images kept, {len(images) - kept} rejected"


def _lora_line(store: MediaStore, persona: str, pin: str | None) -> str:
    latest = _json(store, lora_manifest_key(persona))
    if pin:
        record = _json(store, f"{lora_prefix(persona)}versions/{pin}/manifest.json")
        when = f", trained {record.get('trained_at', '?')[:10]}" if record else " (not found: train it or unpin)"
        return f"version {pin} (pinned in persona.yaml{when})"
    if latest is None:
        return "no LoRA trained yet"
    return f"version {latest.get('version', '?')} (latest, trained {str(latest.get('trained_at', '?'))[:10]})"


def _media_keys(store: MediaStore, persona: str, day: str, post: Mapping[str, Any]) -> tuple[str, str]:
    prefix = content_prefix(persona, day)
    images = sorted(
        o.key for o in store.list(prefix + "images/") if o.key.rsplit("/", 1)[-1].startswith(f"{post['id']}-")
    )
    image = next((k for k in images if k.endswith(".png")), "")
    video = ""
    if post.get("format") == "reel":
        try:
            aspect = aspects_for(post.get("platforms", []))[0]
        except (InputError, IndexError):
            aspect = None
        key = prefix + f"videos/{post['id']}-{aspect.slug}.mp4" if aspect else ""
        video = key if key and store.exists(key) else ""
    return image, video


def _post_cards(store: MediaStore, persona: str, day: str, statuses: list[PostStatus]) -> list[PostCard]:
    plan = _json(store, content_prefix(persona, day) + "plan.json") or {}
    by_post: dict[str, list[PostStatus]] = {}
    for status in statuses:
        by_post.setdefault(status.post_id, []).append(status)
    cards = []
    for post in plan.get("posts", []):
        rows = by_post.pop(post["id"], [])
        platforms = tuple(post.get("platforms", []))
        states = {s.platform: s.state for s in rows} or dict.fromkeys(platforms, "planned")
        time = min((s.publish_at for s in rows), default=None) or datetime.fromisoformat(post["publish_at"])
        captions = post.get("captions") or {}
        image, video = _media_keys(store, persona, day, post)
        cards.append(
            PostCard(
                day=day,
                post_id=post["id"],
                time=time.astimezone(UTC),
                format=post.get("format", ""),
                theme=post.get("theme", ""),
                caption=next(iter(captions.values()), ""),
                platforms=platforms,
                states=states,
                image_key=image,
                video_key=video,
                note="; ".join(f"{s.platform}: {s.last_error}" for s in rows if s.last_error),
            )
        )
    for post_id, rows in by_post.items():  # in the ledger but the plan is gone: still show it
        cards.append(
            PostCard(
                day,
                post_id,
                min(s.publish_at for s in rows),
                "",
                "",
                "",
                tuple(s.platform for s in rows),
                {s.platform: s.state for s in rows},
                note="plan.json missing",
            )
        )
    return sorted(cards, key=lambda c: (c.time, c.post_id))


def build_overview(
    store: MediaStore,
    *,
    today: date,
    statuses: Callable[[str, str], list[PostStatus]],
    accounts: list[AccountLine | Any] | None = None,
    failures: Callable[[list[str]], Mapping[str, Failure]] | None = None,
    days_ahead: int = DAYS_AHEAD,
) -> Overview:
    """Everything the page shows. `statuses(persona, day)` reads the ledger (`due.day_statuses`); `accounts`
    are the linked accounts (anything with persona, platform, display_name, expires_at, health); `failures(slugs)`
    gives the last failure of each persona that has one."""
    days = [(today + timedelta(days=n)).isoformat() for n in range(days_ahead)]
    slugs, invalid = persona_folders(store)
    last_failures = failures(slugs) if failures else {}
    cards = []
    for slug in slugs:
        card = PersonaCard(slug)
        pin = None
        try:
            persona = load_persona(store, slug)
            card.name, card.approval, pin = persona.name, persona.approval, getattr(persona, "lora_version", None)
        except InputError as exc:
            card.problem = str(exc)
        card.dataset = _dataset_line(store, slug)
        card.contact_sheet_key = contact_sheet_key(slug) if store.exists(contact_sheet_key(slug)) else ""
        card.lora = _lora_line(store, slug, pin)
        for day in days:
            card.posts.extend(_post_cards(store, slug, day, statuses(slug, day)))
        card.accounts = [
            AccountLine(a.platform, a.display_name or a.account_id, a.expires_at, a.health)
            for a in (accounts or [])
            if a.persona == slug
        ]
        card.failure = last_failures.get(slug)
        cards.append(card)
    return Overview(today, days, cards, invalid)


def day_for_review(
    store: MediaStore, persona: str, day: str, statuses: Callable[[str, str], list[PostStatus]]
) -> list[dict[str, Any]]:
    """A persona's day as the approval workflow shows it to a person: one entry per post and platform, with its
    state, time, caption and media keys (what `review_posts` and `posts approve` take as post id and platform)."""
    validate_slug(persona, where="persona")
    date.fromisoformat(day)
    captions = captions_of_day(store, persona, day)
    entries = []
    for card in _post_cards(store, persona, day, statuses(persona, day)):
        for platform, state in card.states.items():
            entries.append(
                {
                    "post_id": card.post_id,
                    "platform": platform,
                    "state": state,
                    "time": card.time.isoformat(),
                    "format": card.format,
                    "theme": card.theme,
                    "caption": captions.get((card.post_id, platform), card.caption),
                    "image_key": card.image_key,
                    "video_key": card.video_key,
                }
            )
    return entries
