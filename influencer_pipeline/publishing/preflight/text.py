"""Pre-flight of the words: title, caption and hashtags against one platform's limits.

Hashtags are dropped from the end when they do not fit (writers list the most relevant first); a caption or title
over the limit is a problem, never cut (module docstring of `preflight`).
"""

from __future__ import annotations

import re

from influencer_pipeline.platforms import PlatformRules
from influencer_pipeline.publishing.preflight.report import PreflightReport, compose_caption

HASHTAG = re.compile(r"(?<![\w#])#(\w+)")
MENTION = re.compile(r"(?<![\w@])@([\w.]+)")


def check_title(rules: PlatformRules, title: str, report: PreflightReport) -> None:
    if rules.title_limit is None:
        return
    where = f"{rules.name} title ({rules.source})"
    if not title.strip():
        report.problems.append(f"{where}: a title is required. Fix: give the post a title")
    elif len(title) > rules.title_limit:
        report.problems.append(
            f"{where}: {len(title)} characters, the limit is {rules.title_limit}. Fix: shorten the title "
            "(it is not cut automatically, so it never loses its end)"
        )
    _check_forbidden(rules, "title", title, report)


def _check_forbidden(rules: PlatformRules, what: str, text: str, report: PreflightReport) -> None:
    found = sorted({char for char in text if char in rules.forbidden_chars})
    if found:
        listed = " and ".join(f"'{char}'" for char in found)
        report.problems.append(
            f"{rules.name} {what} ({rules.source}): contains {listed}, which {rules.name} rejects. Fix: remove them"
        )


def check_caption(rules: PlatformRules, caption: str, hashtags: list[str], report: PreflightReport) -> None:
    """Problems for what only a writer can fix; kept hashtags in `report.hashtags`, each drop in `report.changes`."""
    _check_forbidden(rules, "caption", caption, report)
    body_tags = HASHTAG.findall(caption)
    tags = _distinct_tags(hashtags, {tag.lower() for tag in body_tags}, report)
    mentions = len(MENTION.findall(caption))
    if rules.mention_limit is not None and mentions > rules.mention_limit:
        report.problems.append(
            f"{rules.name} caption ({rules.source}): {mentions} @mentions, the limit is {rules.mention_limit}. "
            "Fix: mention fewer accounts"
        )
    if len(body_tags) > rules.hashtag_limit:
        report.problems.append(
            f"{rules.name} caption ({rules.source}): the caption text itself holds {len(body_tags)} hashtags, the "
            f"limit is {rules.hashtag_limit}. Fix: move hashtags out of the caption into the post's hashtag list"
        )
    room = max(rules.hashtag_limit - len(body_tags), 0)
    if len(tags) > room:
        report.changes.append(
            f"dropped {len(tags) - room} hashtag(s) from the end ({_tag_list(tags[room:])}): {rules.name} allows "
            f"{rules.hashtag_limit} per post ({rules.source})"
            + (f" and the caption already holds {len(body_tags)}" if body_tags else "")
        )
        tags = tags[:room]
    report.hashtags = _fit_caption(rules, caption, tags, report)


def _distinct_tags(hashtags: list[str], in_caption: set[str], report: PreflightReport) -> list[str]:
    """Tags without '#', each once (case-insensitive, as the platforms match them), minus those in the caption."""
    kept: list[str] = []
    seen = set(in_caption)
    for raw in hashtags:
        tag = raw.strip().lstrip("#")
        if not tag:
            continue
        if not tag.replace("_", "").isalnum():
            report.problems.append(
                f"hashtag {raw!r}: a hashtag is letters, digits and '_' only (anything else ends it early). "
                "Fix: remove the other characters"
            )
        elif tag.lower() in seen:
            where = "already in the caption" if tag.lower() in in_caption else "listed twice"
            report.changes.append(f"dropped hashtag #{tag}: {where}")
        else:
            seen.add(tag.lower())
            kept.append(tag)
    return kept


def _fit_caption(rules: PlatformRules, caption: str, tags: list[str], report: PreflightReport) -> list[str]:
    """The hashtags that fit after the caption. A caption that alone is too long is a problem, never cut."""
    limit, unit = rules.caption_limit, rules.caption_unit
    size = _text_size(caption, unit)
    if size > limit:
        report.problems.append(
            f"{rules.name} caption ({rules.source}): {size} {unit}, the limit is {limit}. Fix: shorten it by at least "
            f"{size - limit} {unit} (it is not cut automatically: a cut loses the end, where calls to action and "
            "disclosures go)"
        )
        return tags
    kept = list(tags)
    while kept and _text_size(compose_caption(caption, kept), unit) > limit:
        kept.pop()
    if len(kept) < len(tags):
        report.changes.append(
            f"dropped {len(tags) - len(kept)} hashtag(s) from the end ({_tag_list(tags[len(kept) :])}) so the caption "
            f"with its hashtags fits {rules.name}'s {limit} {unit} ({rules.source})"
        )
    return kept


def _text_size(text: str, unit: str) -> int:
    """YouTube counts its description in UTF-8 bytes (platforms.YOUTUBE_VIDEO_DOC): an emoji is 4 of its 5000."""
    return len(text.encode()) if unit == "bytes" else len(text)


def _tag_list(tags: list[str]) -> str:
    return " ".join(f"#{tag}" for tag in tags)
