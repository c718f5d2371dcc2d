"""The verdict of one pre-flight (what to post, what changed, what blocks it) and the wording the checks share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from influencer_pipeline.platforms import MB, RULES


@dataclass
class PreflightReport:
    """The verdict for one (post, platform): what to post, what was changed on the way, and what blocks it."""

    platform: str
    format: str
    media: list[Path]  # fixed copies (under work_dir) or the originals, in the post's order
    caption: str  # the caption as written (never cut)
    hashtags: list[str]  # the hashtags to append, without '#'
    title: str
    changes: list[str] = field(default_factory=list)  # what was changed and why
    problems: list[str] = field(default_factory=list)  # why it cannot be posted: the rule and the fix
    warnings: list[str] = field(default_factory=list)  # it can be posted, but will look worse than it could

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def text(self) -> str:
        """The final caption, hashtags appended: the text the limits were checked against."""
        return compose_caption(self.caption, self.hashtags)

    def summary(self) -> str:
        """Human lines for a run log or an asset check's description."""
        verdict = "ready to post" if self.ok else "CANNOT be posted"
        lines = [f"{RULES[self.platform].name} {self.format}: {verdict}"]
        lines += [f"  problem: {line}" for line in self.problems]
        lines += [f"  changed: {line}" for line in self.changes]
        lines += [f"  warning: {line}" for line in self.warnings]
        return "\n".join(lines)


def compose_caption(caption: str, hashtags: list[str]) -> str:
    """Caption, a blank line, then the hashtags: the one place the final text is assembled, so the length that was
    checked is the length that is posted."""
    if not hashtags:
        return caption
    tags = " ".join(f"#{tag}" for tag in hashtags)
    return f"{caption.rstrip()}\n\n{tags}" if caption.strip() else tags


@dataclass
class Outcome:
    """What checking one media file gave: the path to post, and sentences for the report."""

    path: Path
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def aspect_range(aspect: tuple[float, float]) -> str:
    return f"aspect ratios {aspect[0]:g}:1 to {aspect[1]:g}:1"


def megabytes(size: int) -> str:
    return f"{size / MB:.1f} MB"


def with_suffix(stem: Path, suffix: str) -> Path:
    """`stem` + `suffix`; not `Path.with_suffix`, which would replace a dot-part of the stem ("a.b" -> "a.jpg")."""
    return stem.parent / f"{stem.name}{suffix}"
