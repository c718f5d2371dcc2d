"""Pre-flight of the files: how many a format takes, which kind each file is, and which check it goes to."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from influencer_pipeline.platforms import FormatRule, MediaKind, PlatformRules
from influencer_pipeline.publishing.preflight.image import check_image
from influencer_pipeline.publishing.preflight.report import Outcome, PreflightReport, with_suffix
from influencer_pipeline.publishing.preflight.video import check_video
from influencer_pipeline.video import ffmpeg, probe


def check_media(
    rules: PlatformRules,
    rule: FormatRule,
    media: list[Path],
    work_dir: Path,
    max_duration_s: float | None,
    report: PreflightReport,
) -> None:
    if not rule.min_items <= len(media) <= rule.max_items:
        wanted = f"{rule.min_items}" if rule.min_items == rule.max_items else f"{rule.min_items}-{rule.max_items}"
        report.problems.append(
            f"{rules.name} {report.format} ({rules.source}): takes {wanted} {rule.kind}(s), got {len(media)}. "
            f"Fix: give {wanted} {rule.kind}(s) or change the post's format"
        )
    outcomes = [_check_one(rules, rule, index, path, work_dir, max_duration_s) for index, path in enumerate(media)]
    report.media = [outcome.path for outcome in outcomes]
    for outcome in outcomes:
        report.changes += outcome.changes
        report.problems += outcome.problems
        report.warnings += outcome.warnings


def _check_one(
    rules: PlatformRules, rule: FormatRule, index: int, path: Path, work_dir: Path, max_duration_s: float | None
) -> Outcome:
    if not path.is_file():
        return Outcome(path, problems=[f"{path}: the file does not exist. Fix: generate or render it again"])
    kind, info = _identify(path)
    if kind is None:
        return Outcome(path, problems=[f"{path}: neither an image nor a video ffmpeg can read. Fix: render it again"])
    if kind != rule.kind:
        found = "an image" if kind == "image" else "a video"
        return Outcome(
            path,
            problems=[f"{path}: is {found}, but this {rules.name} post takes {rule.kind}s. Fix: change the format"],
        )
    stem = work_dir / f"{index:02d}-{path.stem}-{rules.name.lower()}"
    if info is None:
        assert rules.image is not None  # every format that takes images has image rules (RULES)
        return check_image(rules.image, rules.name, path, with_suffix(stem, ".jpg"))
    assert rules.video is not None
    return check_video(rules.video, rules.name, path, info, stem, max_duration_s)


def _identify(path: Path) -> tuple[MediaKind | None, probe.MediaInfo | None]:
    """("image", None) when Pillow opens it, ("video", its probe) when ffmpeg finds a video stream, else None."""
    try:
        with Image.open(path):
            return "image", None
    except UnidentifiedImageError:
        pass
    try:
        info = probe.probe(path)
    except ffmpeg.FFmpegError:
        return None, None
    return ("video", info) if info.video is not None else (None, None)
