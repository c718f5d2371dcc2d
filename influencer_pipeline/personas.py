"""Personas: validated slugs and the optional `uploads/<persona>/persona.yaml` profile.

A persona's folder name becomes a Dagster partition key, a media-store prefix and part of file names, so it
is held to a strict slug rule. The profile drives captions (trigger and class words), the content calendar
(themes, posting times, timezone), voice and publishing; every field has a default so a folder of photos
alone is a valid persona.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from influencer_pipeline.errors import InputError
from influencer_pipeline.media.keys import uploads_prefix
from influencer_pipeline.media.store import MediaStore

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?$")
PLATFORMS = ("instagram", "facebook", "youtube", "tiktok")
PROFILE_NAME = "persona.yaml"


def validate_slug(name: str, where: str = "persona") -> str:
    """Return `name` if it is a valid persona key, else raise an `InputError` that says how to rename it."""
    if not SLUG_RE.match(name):
        suggestion = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")[:40] or "my-persona"
        raise InputError(
            where,
            f"{name!r} is not a valid persona key (1-40 characters: lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit)",
            f"rename the folder to {suggestion!r}",
        )
    return name


class Persona(BaseModel):
    """A persona profile. Unknown fields are refused so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slug: str
    display_name: str = ""
    trigger_word: str = ""
    class_word: str = "person"
    style_notes: str = ""
    voice: str = "en-us"
    platforms: tuple[str, ...] = ("instagram",)
    timezone: str = "UTC"
    posting_times: tuple[str, ...] = ("09:00",)
    hashtags: tuple[str, ...] = ()
    tone: str = "friendly"
    themes: tuple[str, ...] = ()
    test_prompts: tuple[str, ...] = ()
    lora_preset: str | None = None
    active: bool = True

    @field_validator("trigger_word")
    @classmethod
    def _one_token(cls, value: str) -> str:
        if value and (len(value.split()) != 1 or "," in value):
            raise ValueError("must be a single token with no spaces or commas, e.g. 'ohwx'")
        return value

    @field_validator("platforms")
    @classmethod
    def _known_platforms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [p for p in value if p not in PLATFORMS]
        if unknown:
            raise ValueError(f"unknown platform(s) {unknown}; choose from {list(PLATFORMS)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone, e.g. 'Europe/Rome' or 'UTC'") from None
        return value

    @field_validator("posting_times")
    @classmethod
    def _clock_times(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                time.fromisoformat(item)
            except ValueError:
                raise ValueError(f"{item!r} is not a 24-hour HH:MM time, e.g. '09:30'") from None
        return value

    @field_validator("hashtags")
    @classmethod
    def _hashtags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = []
        for tag in value:
            body = tag.lstrip("#")
            if not body or not re.fullmatch(r"\w+", body):
                raise ValueError(f"{tag!r} is not a hashtag: letters, digits and '_' only, no spaces")
            cleaned.append(body)
        return tuple(cleaned)

    @field_validator("lora_preset")
    @classmethod
    def _preset_name(cls, value: str | None) -> str | None:
        if value is not None and not SLUG_RE.match(value):
            raise ValueError("must be a preset name such as 'sd15-standard'")
        return value

    @property
    def trigger(self) -> str:
        """The token every caption starts with; defaults to the slug so captions are never trigger-less."""
        return self.trigger_word or self.slug.replace("-", "").replace("_", "")

    @property
    def name(self) -> str:
        return self.display_name or self.slug.replace("-", " ").replace("_", " ").title()


FIELD_FIXES: dict[str, str] = {
    "trigger_word": "use one rare token such as 'ohwx' or 'sks'",
    "platforms": f"list some of {list(PLATFORMS)}",
    "timezone": "use an IANA name from `python -c 'import zoneinfo; print(zoneinfo.available_timezones())'`",
    "posting_times": "write times as quoted 'HH:MM' strings, e.g. ['09:00', '18:30']",
    "hashtags": "write tags like 'travel' or '#travel', one per list item",
    "lora_preset": "use a file name (without .yaml) from resources/lora_presets/",
}


def parse_persona(slug: str, text: str | None, where: str) -> Persona:
    """Build a `Persona` from the YAML text of `where` (None means no profile: all defaults)."""
    validate_slug(slug, where)
    data: Any = {}
    if text is not None:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            fix = "fix the YAML syntax (indentation, colons, quotes)"
            raise InputError(where, f"is not valid YAML{at}", fix) from None
        if not isinstance(data, dict):
            raise InputError(where, "must be a YAML mapping of field: value", "see resources/personas/")
    if "slug" in data:
        raise InputError(f"{where}: field 'slug'", "is set by the folder name", "remove the 'slug' field")
    try:
        return Persona(slug=slug, **data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "?"
        top = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            allowed = sorted(f for f in Persona.model_fields if f != "slug")
            raise InputError(
                f"{where}: field '{field}'", "is not a persona field", f"remove it or use one of {allowed}"
            ) from None
        message = err["msg"].removeprefix("Value error, ")
        fix = FIELD_FIXES.get(top, f"give '{top}' a value of the documented type (see docs/SETUP.md)")
        raise InputError(f"{where}: field '{field}'", message, fix) from None


def load_persona(store: MediaStore, slug: str) -> Persona:
    """Read and validate `uploads/<slug>/persona.yaml` from the media store (absent means all defaults)."""
    key = uploads_prefix(slug) + PROFILE_NAME
    text = store.read_bytes(key).decode("utf-8") if store.exists(key) else None
    return parse_persona(slug, text, where=store.uri(key))
