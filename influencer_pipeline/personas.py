"""Personas: validated slugs and the optional `uploads/<persona>/persona.yaml` profile.

A persona's folder name becomes a Dagster partition key, a media-store prefix and part of file names, so it
is held to a strict slug rule. The profile drives captions (trigger and class words), the content calendar
(themes, posting times, timezone), voice and publishing; every field has a default so a folder of photos
alone is a valid persona.

`persona.yaml` is written by people and sits in an upload folder, so it is read defensively: at most
`MAX_PROFILE_BYTES`, YAML anchors and aliases refused (a few hundred bytes of nested aliases expand to
gigabytes, the "billion laughs" attack), keys must be text, and every problem in the file is reported at
once in a message that never echoes the file's content back.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import time
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from influencer_pipeline.errors import InputError
from influencer_pipeline.media.keys import uploads_prefix
from influencer_pipeline.media.store import TOO_LARGE, MediaStore, UnsafeMediaError
from influencer_pipeline.platforms import PLATFORMS

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?$")
PROFILE_NAME = "persona.yaml"
MAX_PROFILE_BYTES = 64 * 1024  # a full profile is well under 2 KB
MAX_LISTED_PROBLEMS = 20
_SHOWN_CHARS = 200


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

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

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
    lora_version: str | None = None  # pin (or roll back to) a trained LoRA version; unset: the latest
    active: bool = True
    # Publishing review: `required` keeps new posts as drafts until approved; `auto` schedules them at once.
    approval: Literal["required", "auto"] = "required"

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

    @field_validator("lora_version")
    @classmethod
    def _version_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{6,64}", value):
            raise ValueError("must be a LoRA version id (6-64 hex digits) as lora_weights lists it")
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
    "lora_preset": "use a file name (without .yaml) from influencer_pipeline/data/lora_presets/",
    "lora_version": "copy a version id from lora_weights' metadata (Assets > lora_weights > versions)",
    "approval": "write 'required' (posts wait for approval) or 'auto' (posts go out at their time)",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a persona.yaml: where in the file, the rule, the fix."""

    field: str
    rule: str
    fix: str


class PersonaFileError(InputError):
    """Every problem of one persona.yaml. With one problem the message is that problem's, field first."""

    def __init__(self, where: str, problems: list[Problem]) -> None:
        self.problems = problems
        if len(problems) == 1:
            only = problems[0]
            super().__init__(f"{where}: {only.field}" if only.field else where, only.rule, only.fix)
            return
        shown = problems[:MAX_LISTED_PROBLEMS]
        lines = [f"  - {p.field + ': ' if p.field else ''}{p.rule}. Fix: {p.fix}" for p in shown]
        if len(problems) > len(shown):
            lines.append(f"  - ... and {len(problems) - len(shown)} more")
        self.where = where
        self.rule = f"{len(problems)} problems:\n" + "\n".join(lines)
        self.fix = "correct each one, then save the file (the next run reads it again)"
        ValueError.__init__(self, f"{where}: {self.rule}")


class _Refused(Exception):
    """Raised inside the YAML loader for a construct persona.yaml does not accept."""

    def __init__(self, rule: str, fix: str) -> None:
        super().__init__(rule)
        self.rule = rule
        self.fix = fix


class _ProfileLoader(yaml.SafeLoader):
    """`yaml.safe_load` without anchors or aliases, with text keys only and no key given twice."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(
                f"uses a YAML anchor or alias (& or *) at line {event.start_mark.line + 1}",
                "write each value out in full; anchors and aliases are not accepted in persona.yaml",
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _value in node.value:
            line = key_node.start_mark.line + 1
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"):
                shown = _shorten(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "a list or mapping"
                raise _Refused(
                    f"the key {shown} at line {line} is not a field name (YAML reads it as "
                    f"{key_node.tag.rsplit(':', 1)[-1]})",
                    "field names are words such as 'timezone'; quote a key that must be text",
                )
            if key_node.value in seen:
                raise _Refused(
                    f"the key {_shorten(key_node.value)} is given twice (again at line {line})",
                    "keep one of the two",
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _shorten(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...'"


def _read_yaml(text: str) -> tuple[Any, Problem | None]:
    """The parsed document, or the problem that stopped parsing (syntax, alias, key)."""
    try:
        return yaml.load(text, Loader=_ProfileLoader), None  # _ProfileLoader is a SafeLoader
    except _Refused as refused:
        return None, Problem("", refused.rule, refused.fix)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, Problem("", f"is not valid YAML{at}", "fix the YAML syntax (indentation, colons, quotes)")


def _field_problems(errors: list[Any]) -> list[Problem]:
    """Pydantic's errors as problems; built from locations and messages only, never from the input."""
    allowed = sorted(f for f in Persona.model_fields if f != "slug")
    problems = []
    for err in errors:
        field = ".".join(str(p) for p in err["loc"]) or "?"
        top = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(top, allowed, n=1)
            fix = (
                f"did you mean '{close[0]}'? Rename it, or remove it" if close else f"remove it or use one of {allowed}"
            )
            problems.append(Problem(f"field {_shorten(field)}", "is not a persona field", fix))
            continue
        message = err["msg"].removeprefix("Value error, ")
        if len(message) > _SHOWN_CHARS:
            message = message[:_SHOWN_CHARS] + "..."
        fix = FIELD_FIXES.get(top, f"give '{top}' a value of the documented type (see docs/SETUP.md)")
        problems.append(Problem(f"field '{field}'", message, fix))
    return problems


def parse_persona(slug: str, text: str | None, where: str) -> Persona:
    """Build a `Persona` from the YAML text of `where` (None means no profile: all defaults).

    Every problem is collected first and one `PersonaFileError` lists them all; it is raised outside any
    `except` block, so it carries no chained exception holding the parsed input.
    """
    validate_slug(slug, where)
    data: Any = {}
    problems: list[Problem] = []
    if text is not None:
        size = len(text.encode("utf-8"))
        if size > MAX_PROFILE_BYTES:
            raise PersonaFileError(where, [_too_large(size)])
        data, problem = _read_yaml(text)
        if problem is not None:
            raise PersonaFileError(where, [problem])
        data = data or {}
        if not isinstance(data, dict):
            raise PersonaFileError(
                where, [Problem("", "must be a YAML mapping of field: value", "see resources/personas/")]
            )
    if "slug" in data:
        data = {k: v for k, v in data.items() if k != "slug"}
        problems.append(Problem("field 'slug'", "is set by the folder name", "remove the 'slug' field"))
    try:
        persona = Persona(slug=slug, **data)
    except ValidationError as exc:
        problems += _field_problems(exc.errors(include_input=False, include_context=False, include_url=False))
    else:
        if not problems:
            return persona
    raise PersonaFileError(where, problems)


def _too_large(size: int | str) -> Problem:
    return Problem(
        "",
        f"is {size} bytes, above the {MAX_PROFILE_BYTES // 1024} KB limit for a persona profile",
        "keep only the persona's fields in persona.yaml (see resources/personas/)",
    )


def load_persona(store: MediaStore, slug: str) -> Persona:
    """Read and validate `uploads/<slug>/persona.yaml` from the media store (absent means all defaults).

    A linked or special file named persona.yaml is refused by the store (`UnsafeMediaError`), not ignored.
    """
    key = uploads_prefix(slug) + PROFILE_NAME
    where = store.uri(key)
    data: bytes | None = None
    too_large = False
    try:
        data = store.read_bytes(key, max_bytes=MAX_PROFILE_BYTES)
    except FileNotFoundError:
        pass
    except UnsafeMediaError as err:
        if err.reason != TOO_LARGE:
            raise
        too_large = True
    if too_large:
        raise PersonaFileError(where, [_too_large(f"more than {MAX_PROFILE_BYTES}")])
    if data is None:
        return parse_persona(slug, None, where)
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None:
        raise PersonaFileError(where, [Problem("", "is not UTF-8 text", "save persona.yaml as UTF-8")])
    return parse_persona(slug, text, where)
