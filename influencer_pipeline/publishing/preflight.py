"""Pre-flight: check a post against one platform's published limits, and fix what can be fixed without judgement.

Why before publishing: a platform rejects a bad post only after the upload and its processing (Instagram's
2207009 for an aspect ratio, TikTok's `frame_rate_check_failed`, ...), as a permanent error the ledger can only
record. Checked here, the same rule costs nothing and the message can say what to change.

What is fixed automatically, and why that is safe (nothing the author wrote, and nothing in frame but the edges of an
image, is lost; every change is reported in a sentence):
- hashtags: duplicates, tags already in the caption, and tags beyond the platform's count (or beyond what fits in the
  caption limit) are dropped **from the end**: writers list the most relevant first, and a dropped tag costs some
  reach, never meaning.
- images: converted to JPEG when the platform does not take their format; cropped (centred) when their aspect ratio is
  outside the platform's range, which cuts the edges and says so; downscaled when larger than the platform's maximum;
  re-compressed when the file is too big; turned upright when an EXIF tag rotates them.
- videos: remuxed with `-c copy -movflags +faststart` when the MP4 index is at the end (lossless); re-encoded
  (H.264 High yuv420p and/or AAC 48 kHz, the reel renderer's settings) when the container, codec, pixel format,
  audio, frame rate, width or bitrate is outside the rules. Only the streams that are wrong are re-encoded.

What is **never** fixed, but reported as a problem that blocks the post:
- a caption (or YouTube title) over the limit is not cut. A cut at a word boundary still drops the end of the text,
  which is where writers put the call to action, the "#ad" or "AI-generated" disclosure and the link hint; a reader
  would see a post the writer never wrote. Shortening it is the writer's job (or the LLM's, asked again).
- a video too short or too long, too small, or in the wrong shape is not trimmed, looped, upscaled or cropped: each
  changes what the viewer sees or hears, so the fix is to render it again.

The originals are never modified: fixed copies go to `work_dir` and `PreflightReport.media` lists what to post.
Limits come from `reference/social-apis.md` (section numbers in `RULES`); where the platform is vague the stricter
reading is used, because a rejected post costs more than a re-encoded one.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from influencer_pipeline.content.plan import CAPTION_LIMITS, HASHTAG_LIMITS, YOUTUBE_TITLE_LIMIT
from influencer_pipeline.errors import InputError
from influencer_pipeline.video import ffmpeg, probe
from influencer_pipeline.video.render import AAC, SAMPLE_RATE, X264

MB = 1000 * 1000
MIB = 1024 * 1024
JPEG_QUALITIES = (92, 85, 75, 60)
MIN_SIDE_PX = 32  # below this a re-compressed image is useless: report instead
EXIF_ORIENTATION = 0x0112
HASHTAG = re.compile(r"(?<![\w#])#(\w+)")
MENTION = re.compile(r"(?<![\w@])@([\w.]+)")
X264_KEPT = ("preset", "crf", "maxrate", "bufsize", "profile:v", "pix_fmt")
ASPECT_TOLERANCE = 0.02  # 1080x1920 vs 9:16 exactly; encoders round sizes to even numbers
MediaKind = Literal["image", "video"]


@dataclass(frozen=True)
class FormatRule:
    """Which media a post format takes on a platform, and how many."""

    kind: MediaKind
    min_items: int
    max_items: int


@dataclass(frozen=True)
class ImageRules:
    formats: frozenset[str]  # PIL format names posted as they are; anything else becomes a JPEG
    max_bytes: int
    aspect: tuple[float, float] | None  # width / height, inclusive
    max_width: int | None
    max_box: tuple[int, int] | None  # (long side, short side)
    source: str


@dataclass(frozen=True)
class VideoRules:
    containers: frozenset[str] | None  # None: anything the platform transcodes
    video_codecs: frozenset[str] | None
    pix_fmts: frozenset[str] | None
    audio_codecs: frozenset[str] | None
    max_audio_hz: int | None
    fps: tuple[float, float] | None
    duration_s: tuple[float | None, float | None]
    min_size: tuple[int, int] | None  # (short side, long side)
    max_width: int | None
    max_side: int | None
    aspect: tuple[float, float] | None  # width / height, inclusive
    max_bytes: int | None
    max_bitrate: int | None  # bits per second, averaged over the file
    faststart: bool
    source: str
    # Advice, not rules: outside these the post goes out, but is cropped, letterboxed or not shown as a reel.
    recommended_aspect: float | None = None
    recommended_duration_s: tuple[float, float] | None = None
    recommended_min_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class PlatformRules:
    name: str
    caption_limit: int
    caption_unit: Literal["characters", "bytes"]
    hashtag_limit: int
    mention_limit: int | None
    formats: dict[str, FormatRule]
    image: ImageRules | None
    video: VideoRules | None
    title_limit: int | None  # None: the platform takes no title
    forbidden_chars: str  # in the caption and the title
    source: str


H264_420 = frozenset({"yuv420p", "yuvj420p"})
RULES: dict[str, PlatformRules] = {
    "instagram": PlatformRules(
        name="Instagram",
        caption_limit=CAPTION_LIMITS["instagram"],
        caption_unit="characters",
        hashtag_limit=HASHTAG_LIMITS["instagram"],
        mention_limit=20,
        formats={
            "image": FormatRule("image", 1, 1),
            "carousel": FormatRule("image", 2, 10),
            "reel": FormatRule("video", 1, 1),
        },
        image=ImageRules(
            formats=frozenset({"JPEG"}),
            max_bytes=8 * MIB,
            aspect=(0.8, 1.91),
            max_width=1440,
            max_box=None,
            source="social-apis.md §1.6",
        ),
        video=VideoRules(
            containers=frozenset({"mp4", "mov"}),
            video_codecs=frozenset({"h264", "hevc"}),
            pix_fmts=H264_420,
            audio_codecs=frozenset({"aac"}),
            max_audio_hz=48000,
            fps=(23, 60),
            duration_s=(3, 15 * 60),
            min_size=None,
            max_width=1920,
            max_side=None,
            aspect=(0.01, 10),
            max_bytes=300 * MB,
            max_bitrate=25 * MB,
            faststart=True,
            source="social-apis.md §1.6",
            recommended_aspect=9 / 16,
            recommended_min_size=(540, 960),
        ),
        title_limit=None,
        forbidden_chars="",
        source="social-apis.md §1.3",
    ),
    "facebook": PlatformRules(
        name="Facebook",
        caption_limit=CAPTION_LIMITS["facebook"],
        caption_unit="characters",
        hashtag_limit=HASHTAG_LIMITS["facebook"],
        mention_limit=None,
        formats={
            "image": FormatRule("image", 1, 1),
            "carousel": FormatRule("image", 2, 10),
            "reel": FormatRule("video", 1, 1),
        },
        image=ImageRules(
            formats=frozenset({"JPEG", "PNG"}),
            max_bytes=4 * MIB,
            aspect=None,
            max_width=None,
            max_box=None,
            source="social-apis.md §2.2",
        ),
        video=VideoRules(
            containers=frozenset({"mp4", "mov"}),
            video_codecs=frozenset({"h264", "hevc", "vp9", "av1"}),
            pix_fmts=None,
            audio_codecs=frozenset({"aac"}),
            max_audio_hz=48000,
            fps=(24, 60),
            duration_s=(None, None),
            min_size=None,
            max_width=None,
            max_side=None,
            aspect=None,
            max_bytes=None,
            max_bitrate=None,
            faststart=True,
            source="social-apis.md §2.3",
            recommended_aspect=9 / 16,
            recommended_duration_s=(3, 90),
            recommended_min_size=(540, 960),
        ),
        title_limit=None,
        forbidden_chars="",
        source="social-apis.md §2.2",
    ),
    "youtube": PlatformRules(
        name="YouTube",
        caption_limit=CAPTION_LIMITS["youtube"],
        caption_unit="bytes",
        hashtag_limit=HASHTAG_LIMITS["youtube"],
        mention_limit=None,
        formats={"reel": FormatRule("video", 1, 1)},
        image=None,
        video=VideoRules(
            containers=None,
            video_codecs=None,
            pix_fmts=None,
            audio_codecs=None,
            max_audio_hz=None,
            fps=None,
            duration_s=(None, 180),
            min_size=None,
            max_width=None,
            max_side=None,
            aspect=(0.0, 1.0),
            max_bytes=256 * 1000 * MB,
            max_bitrate=None,
            faststart=False,
            source="social-apis.md §3.4 (Shorts), §3.2 (256 GB)",
        ),
        title_limit=YOUTUBE_TITLE_LIMIT,
        forbidden_chars="<>",
        source="social-apis.md §3.3",
    ),
    "tiktok": PlatformRules(
        name="TikTok",
        caption_limit=CAPTION_LIMITS["tiktok"],
        caption_unit="characters",
        hashtag_limit=HASHTAG_LIMITS["tiktok"],
        mention_limit=None,
        formats={
            "image": FormatRule("image", 1, 1),
            "carousel": FormatRule("image", 2, 35),
            "reel": FormatRule("video", 1, 1),
        },
        image=ImageRules(
            formats=frozenset({"JPEG", "WEBP"}),
            max_bytes=20 * MB,
            aspect=None,
            max_width=None,
            max_box=(1920, 1080),
            source="social-apis.md §4.8",
        ),
        video=VideoRules(
            containers=frozenset({"mp4", "mov", "webm"}),
            video_codecs=frozenset({"h264"}),
            pix_fmts=H264_420,
            audio_codecs=frozenset({"aac"}),
            max_audio_hz=48000,
            fps=(23, 60),
            duration_s=(3, 600),
            min_size=(360, 360),
            max_width=None,
            max_side=4096,
            aspect=None,
            max_bytes=4000 * MB,
            max_bitrate=None,
            faststart=True,
            source="social-apis.md §4.8",
            recommended_aspect=9 / 16,
        ),
        title_limit=None,
        forbidden_chars="",
        source="social-apis.md §4.8",
    ),
}


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


def preflight(
    platform: str,
    format: str,
    caption: str,
    hashtags: list[str],
    title: str,
    media: list[Path],
    work_dir: Path,
    *,
    max_duration_s: float | None = None,
) -> PreflightReport:
    """Validate a post for `platform` and fix what is safe to fix (module docstring); originals are never touched.

    `max_duration_s` is the account's own video cap when it is shorter than the platform's (TikTok's
    `creator_info.max_video_post_duration_sec`, §4.3). Raises InputError only for an unknown platform or format:
    everything about the post itself goes into the report, so one call lists every problem at once.
    """
    rules = _rules(platform, format)
    report = PreflightReport(platform, format, list(media), caption, [], title)
    _check_title(rules, title, report)
    _check_caption(rules, caption, hashtags, report)
    _check_media(rules, rules.formats[format], [Path(p) for p in media], Path(work_dir), max_duration_s, report)
    return report


def _rules(platform: str, format: str) -> PlatformRules:
    if platform not in RULES:
        raise InputError(
            f"platform {platform!r}", "is not a platform pre-flight knows", f"use one of {', '.join(RULES)}"
        )
    rules = RULES[platform]
    if format not in rules.formats:
        raise InputError(
            f"format {format!r}",
            f"{rules.name} does not take it",
            f"use one of {', '.join(rules.formats)} or leave {platform} out of this post",
        )
    return rules


# --- text -------------------------------------------------------------------------------------------------------


def _check_title(rules: PlatformRules, title: str, report: PreflightReport) -> None:
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


def _check_caption(rules: PlatformRules, caption: str, hashtags: list[str], report: PreflightReport) -> None:
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
    """YouTube counts its description in UTF-8 bytes (§3.3): an emoji is 4 of its 5000."""
    return len(text.encode()) if unit == "bytes" else len(text)


def _tag_list(tags: list[str]) -> str:
    return " ".join(f"#{tag}" for tag in tags)


# --- media ------------------------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    """What checking one media file gave: the path to post, and sentences for the report."""

    path: Path
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _check_media(
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
) -> _Outcome:
    if not path.is_file():
        return _Outcome(path, problems=[f"{path}: the file does not exist. Fix: generate or render it again"])
    kind, info = _identify(path)
    if kind is None:
        return _Outcome(path, problems=[f"{path}: neither an image nor a video ffmpeg can read. Fix: render it again"])
    if kind != rule.kind:
        found = "an image" if kind == "image" else "a video"
        return _Outcome(
            path,
            problems=[f"{path}: is {found}, but this {rules.name} post takes {rule.kind}s. Fix: change the format"],
        )
    stem = work_dir / f"{index:02d}-{path.stem}-{rules.name.lower()}"
    if info is None:
        assert rules.image is not None  # every format that takes images has image rules (RULES)
        return _check_image(rules.image, rules.name, path, _with_suffix(stem, ".jpg"))
    assert rules.video is not None
    return _check_video(rules.video, rules.name, path, info, stem, max_duration_s)


def _with_suffix(stem: Path, suffix: str) -> Path:
    """`stem` + `suffix`; not `Path.with_suffix`, which would replace a dot-part of the stem ("a.b" -> "a.jpg")."""
    return stem.parent / f"{stem.name}{suffix}"


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


# --- images -----------------------------------------------------------------------------------------------------


def _check_image(rules: ImageRules, platform: str, path: Path, target: Path) -> _Outcome:
    outcome = _Outcome(path)
    try:
        fixed = _fixed_image(rules, platform, path, outcome)
    except OSError as error:  # Pillow read the header but not the pixels: a truncated or corrupt file
        outcome.problems.append(f"{path.name}: the image cannot be decoded ({error}). Fix: generate it again")
        return outcome
    if fixed is not None:
        data, reasons = fixed
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        outcome.path = target
        outcome.changes.insert(0, f"{path.name}: posting a fixed JPEG copy {target.name} because {'; '.join(reasons)}")
    return outcome


def _fixed_image(rules: ImageRules, platform: str, path: Path, outcome: _Outcome) -> tuple[bytes, list[str]] | None:
    """The JPEG to post instead of `path` and why, or None when the original is fine (or cannot be fixed)."""
    with Image.open(path) as image:
        if getattr(image, "n_frames", 1) > 1:
            outcome.problems.append(
                f"{path.name}: an animated {image.format}; {platform} would post its first frame only. "
                "Fix: render it as a video (reel) or export one still"
            )
            return None
        reasons = _image_reasons(rules, platform, image, path)
        if not reasons:
            return None
        picture = _flatten(ImageOps.exif_transpose(image))
    picture = _crop_to_aspect(rules, platform, path.name, picture, outcome)
    picture = _downscale_image(rules, platform, path.name, picture, outcome)
    picture = _crop_to_aspect(rules, platform, path.name, picture, _Outcome(path))  # undo rounding, ≤ 1 px
    data = _encode_jpeg(rules, platform, path.name, picture, outcome)
    return None if data is None else (data, reasons)


def _image_reasons(rules: ImageRules, platform: str, image: Image.Image, path: Path) -> list[str]:
    """Why this image cannot go as it is (empty: post the original)."""
    reasons = []
    if image.format not in rules.formats:
        reasons.append(f"{platform} takes {'/'.join(sorted(rules.formats))}, not {image.format} ({rules.source})")
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        reasons.append("its EXIF orientation tag rotates it, which some platforms ignore")
    width, height = _displayed_size(image)
    if rules.aspect and not rules.aspect[0] <= width / height <= rules.aspect[1]:
        reasons.append(
            f"its aspect ratio {width / height:.2f}:1 is outside {platform}'s {_range(rules.aspect)} ({rules.source})"
        )
    if _fit_scale(rules, width, height) < 1:
        reasons.append(f"{width}x{height} is larger than {platform}'s {_size_limit(rules)} ({rules.source})")
    size = path.stat().st_size
    if size > rules.max_bytes:
        reasons.append(f"{_megabytes(size)} is over {platform}'s {_megabytes(rules.max_bytes)} ({rules.source})")
    return reasons


def _displayed_size(image: Image.Image) -> tuple[int, int]:
    """Width and height as a viewer sees them: EXIF orientations 5-8 swap the sides."""
    swapped = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    return (image.height, image.width) if swapped else image.size


def _flatten(image: Image.Image) -> Image.Image:
    """RGB for JPEG: transparency composited on white (what a viewer of a PNG on a light feed would see)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _crop_to_aspect(rules: ImageRules, platform: str, name: str, image: Image.Image, outcome: _Outcome) -> Image.Image:
    """Crop, centred, to the nearest allowed aspect ratio: the least picture lost that makes the platform take it."""
    if rules.aspect is None:
        return image
    low, high = rules.aspect
    width, height = image.size
    if width / height > high:
        new_width = math.floor(height * high)
        box = ((width - new_width) // 2, 0, (width - new_width) // 2 + new_width, height)
        edges = "left and right"
    elif width / height < low:
        new_height = math.floor(width / low)
        box = (0, (height - new_height) // 2, width, (height - new_height) // 2 + new_height)
        edges = "top and bottom"
    else:
        return image
    cropped = image.crop(box)
    outcome.changes.append(
        f"{name}: cropped {width}x{height} ({width / height:.2f}:1) to {cropped.width}x{cropped.height} "
        f"({cropped.width / cropped.height:.2f}:1), centred, cutting the {edges} edges: {platform} accepts "
        f"{_range(rules.aspect)} ({rules.source})"
    )
    return cropped


def _fit_scale(rules: ImageRules, width: int, height: int) -> float:
    scale = 1.0
    if rules.max_width:
        scale = min(scale, rules.max_width / width)
    if rules.max_box:
        long_side, short_side = rules.max_box
        scale = min(scale, long_side / max(width, height), short_side / min(width, height))
    return scale


def _downscale_image(rules: ImageRules, platform: str, name: str, image: Image.Image, outcome: _Outcome) -> Image.Image:
    scale = _fit_scale(rules, image.width, image.height)
    if scale >= 1:
        return image
    size = (max(1, math.floor(image.width * scale)), max(1, math.floor(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    outcome.changes.append(
        f"{name}: downscaled {image.width}x{image.height} to {resized.width}x{resized.height}: {platform}'s maximum "
        f"is {_size_limit(rules)} ({rules.source})"
    )
    return resized


def _encode_jpeg(rules: ImageRules, platform: str, name: str, image: Image.Image, outcome: _Outcome) -> bytes | None:
    """Baseline JPEG at the best quality that fits the byte limit, then at 3/4 the size, until it is useless."""
    original = image.size
    while min(image.size) >= MIN_SIDE_PX:
        for quality in JPEG_QUALITIES:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=quality, optimize=True, progressive=False)
            if buffer.tell() <= rules.max_bytes:
                if quality != JPEG_QUALITIES[0] or image.size != original:
                    outcome.changes.append(
                        f"{name}: saved at JPEG quality {quality}, {image.width}x{image.height}, to fit {platform}'s "
                        f"{_megabytes(rules.max_bytes)} ({rules.source})"
                    )
                return buffer.getvalue()
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)
    outcome.problems.append(
        f"{name}: no JPEG of it fits {platform}'s {_megabytes(rules.max_bytes)} ({rules.source}). "
        "Fix: use a smaller or simpler image"
    )
    return None


def _range(aspect: tuple[float, float]) -> str:
    return f"aspect ratios {aspect[0]:g}:1 to {aspect[1]:g}:1"


def _size_limit(rules: ImageRules) -> str:
    limits = []
    if rules.max_width:
        limits.append(f"{rules.max_width} px wide")
    if rules.max_box:
        limits.append(f"{rules.max_box[0]}x{rules.max_box[1]} px")
    return " and ".join(limits)


def _megabytes(size: int) -> str:
    return f"{size / MB:.1f} MB"


# --- videos -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VideoFindings:
    """One video against the rules: problems block it; the reasons say which streams must be re-encoded."""

    problems: list[str]
    warnings: list[str]
    container: list[str]  # reasons to write a new MP4 (streams may still be copied)
    video: list[str]  # reasons to re-encode the video stream
    audio: list[str]  # reasons to re-encode the audio stream

    @property
    def needs_encode(self) -> bool:
        return bool(self.container or self.video or self.audio)


def _check_video(
    rules: VideoRules, platform: str, path: Path, info: probe.MediaInfo, stem: Path, max_duration_s: float | None
) -> _Outcome:
    findings = _video_findings(rules, platform, path, info, max_duration_s)
    outcome = _Outcome(path, problems=list(findings.problems), warnings=list(findings.warnings))
    if findings.problems:
        return outcome  # fixing the rest would not make it postable: spend no encode on it
    try:
        fixed = _fixed_video(rules, platform, path, info, findings, stem)
    except ffmpeg.FFmpegError as error:
        first_line = str(error).splitlines()[0]
        outcome.problems.append(f"{path.name}: the automatic fix failed ({first_line}). Fix: render it again")
        return outcome
    if fixed is not None:
        outcome.path, change = fixed
        outcome.changes.append(change)
        _verify_fixed(rules, platform, outcome.path, max_duration_s, outcome)
    return outcome


def _fixed_video(
    rules: VideoRules, platform: str, path: Path, info: probe.MediaInfo, findings: _VideoFindings, stem: Path
) -> tuple[Path, str] | None:
    """Re-encode (only the wrong streams) or remux for faststart; the new file and a sentence, or None if fine."""
    if findings.needs_encode:
        fixed = _with_suffix(stem, ".mp4")
        _reencode(rules, path, info, findings, fixed)
        reasons = findings.container + findings.video + findings.audio
        streams = [name for name, wrong in (("video", findings.video), ("audio", findings.audio)) if wrong]
        what = f"re-encoded its {' and '.join(streams)}" if streams else "copied its streams into a new MP4"
        return fixed, f"{path.name}: {what} (faststart) as {fixed.name} because {'; '.join(reasons)} ({rules.source})"
    if rules.faststart and _container(path) in ("mp4", "mov") and not probe.is_faststart(path):
        fixed = _with_suffix(stem, path.suffix.lower() or ".mp4")
        _remux_faststart(path, fixed)
        return fixed, (
            f"{path.name}: moved the MP4 index (moov) to the front as {fixed.name}, a lossless remux: {platform} "
            f"wants faststart ({rules.source}; reference §0.3)"
        )
    return None


def _video_findings(
    rules: VideoRules, platform: str, path: Path, info: probe.MediaInfo, max_duration_s: float | None
) -> _VideoFindings:
    findings = _VideoFindings([], [], [], [], [])
    stream = info.video
    assert stream is not None  # _kind found a video stream
    _duration_findings(rules, platform, path, info.duration_s, max_duration_s, findings)
    _geometry_findings(rules, platform, path, stream, findings)
    _format_findings(rules, platform, path, info, findings)
    return findings


def _duration_findings(
    rules: VideoRules,
    platform: str,
    path: Path,
    duration: float | None,
    max_duration_s: float | None,
    findings: _VideoFindings,
) -> None:
    if duration is None:
        findings.problems.append(f"{path.name}: ffmpeg reads no duration from it. Fix: render it again")
        return
    low, high = rules.duration_s
    source = rules.source
    if max_duration_s is not None and (high is None or max_duration_s < high):
        high, source = max_duration_s, "this account's own limit"
    if low is not None and duration < low:
        findings.problems.append(
            f"{path.name}: {duration:.1f} s long, {platform} needs at least {low:g} s ({source}). "
            "Fix: render a longer video (it is not looped or padded automatically)"
        )
    if high is not None and duration > high:
        findings.problems.append(
            f"{path.name}: {duration:.1f} s long, {platform} takes at most {high:g} s ({source}). "
            "Fix: render a shorter video (it is not trimmed automatically: the end would be lost)"
        )
    advice = rules.recommended_duration_s
    if advice and not advice[0] <= duration <= advice[1]:
        findings.warnings.append(
            f"{path.name}: {duration:.1f} s is outside {platform}'s reel length {advice[0]:g}-{advice[1]:g} s "
            f"({rules.source}): it posts as a regular video, not a reel"
        )


def _geometry_findings(
    rules: VideoRules, platform: str, path: Path, stream: probe.VideoStream, findings: _VideoFindings
) -> None:
    width, height = stream.width, stream.height
    if not width or not height:
        findings.problems.append(f"{path.name}: ffmpeg reads no frame size from it. Fix: render it again")
        return
    short, long = sorted((width, height))
    if rules.min_size and (short < rules.min_size[0] or long < rules.min_size[1]):
        findings.problems.append(
            f"{path.name}: {width}x{height} is smaller than {platform}'s minimum {rules.min_size[0]} px per side "
            f"({rules.source}). Fix: render at a higher resolution (it is not upscaled automatically)"
        )
    if rules.recommended_min_size and (short < rules.recommended_min_size[0] or long < rules.recommended_min_size[1]):
        findings.warnings.append(
            f"{path.name}: {width}x{height} is under {platform}'s recommended minimum "
            f"{rules.recommended_min_size[0]}x{rules.recommended_min_size[1]} ({rules.source}): it will look soft"
        )
    ratio = width / height
    if rules.aspect and not rules.aspect[0] <= ratio <= rules.aspect[1]:
        findings.problems.append(
            f"{path.name}: {width}x{height} ({ratio:.2f}:1) is outside {platform}'s {_range(rules.aspect)} "
            f"({rules.source}){_shorts_hint(platform)}. Fix: render it in a vertical or square frame "
            "(it is not cropped automatically: a video's subject moves)"
        )
    elif rules.recommended_aspect and abs(ratio / rules.recommended_aspect - 1) > ASPECT_TOLERANCE:
        findings.warnings.append(
            f"{path.name}: {ratio:.2f}:1 is not 9:16, which {platform} recommends ({rules.source}): "
            "expect cropping or bars"
        )
    if _video_scale(rules, width, height) < 1:
        findings.video.append(f"{width}x{height} is larger than {platform} takes ({_video_size_limit(rules)})")


def _shorts_hint(platform: str) -> str:
    return ": only a square or vertical video of at most 3 minutes is a Short" if platform == "YouTube" else ""


def _format_findings(
    rules: VideoRules, platform: str, path: Path, info: probe.MediaInfo, findings: _VideoFindings
) -> None:
    stream, audio = info.video, info.audio
    assert stream is not None
    container = _container(path)
    if rules.containers is not None and container not in rules.containers:
        findings.container.append(f"{platform} takes {'/'.join(sorted(rules.containers))}, not {container}")
    if rules.video_codecs is not None and stream.codec not in rules.video_codecs:
        findings.video.append(f"{platform} takes {'/'.join(sorted(rules.video_codecs))} video, not {stream.codec}")
    if rules.pix_fmts is not None and stream.pix_fmt not in rules.pix_fmts:
        findings.video.append(
            f"{platform} takes 4:2:0 video ({'/'.join(sorted(rules.pix_fmts))}), not {stream.pix_fmt}"
        )
    if rules.fps is not None and not rules.fps[0] <= stream.fps <= rules.fps[1]:
        findings.video.append(f"{stream.fps:g} fps is outside {platform}'s {rules.fps[0]:g}-{rules.fps[1]:g} fps")
    size, duration = path.stat().st_size, info.duration_s or 0
    if rules.max_bitrate and duration > 0 and size * 8 / duration > rules.max_bitrate:
        findings.video.append(
            f"{size * 8 / duration / MB:.1f} Mbps is over {platform}'s {rules.max_bitrate / MB:g} Mbps"
        )
    if rules.max_bytes and size > rules.max_bytes:
        findings.problems.append(
            f"{path.name}: {_megabytes(size)} is over {platform}'s {_megabytes(rules.max_bytes)} ({rules.source}). "
            "Fix: render it at a lower bitrate"
        )
    if audio is not None and rules.audio_codecs is not None and audio.codec not in rules.audio_codecs:
        findings.audio.append(f"{platform} takes {'/'.join(sorted(rules.audio_codecs))} audio, not {audio.codec}")
    if audio is not None and rules.max_audio_hz and audio.sample_rate > rules.max_audio_hz:
        findings.audio.append(f"{audio.sample_rate} Hz audio is over {platform}'s {rules.max_audio_hz} Hz")


def _container(path: Path) -> str:
    """The container from the file's first bytes, not its name: 'mp4', 'mov', 'webm', 'mkv' or 'other'."""
    with open(path, "rb") as stream:
        head = stream.read(64)
    if head[4:8] == b"ftyp":
        return "mov" if head[8:12] == b"qt  " else "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in head else "mkv"
    return "other"


def _video_scale(rules: VideoRules, width: int, height: int) -> float:
    scale = 1.0
    if rules.max_width:
        scale = min(scale, rules.max_width / width)
    if rules.max_side:
        scale = min(scale, rules.max_side / max(width, height))
    return scale


def _video_size_limit(rules: VideoRules) -> str:
    limits = [f"{rules.max_width} px wide"] if rules.max_width else []
    limits += [f"{rules.max_side} px per side"] if rules.max_side else []
    return " and ".join(limits)


def _reencode(rules: VideoRules, path: Path, info: probe.MediaInfo, findings: _VideoFindings, target: Path) -> None:
    """One ffmpeg pass to an MP4 with faststart; a stream that was already right is copied, not re-encoded."""
    stream = info.video
    assert stream is not None
    args = ["-i", str(path), "-map", "0:v:0", "-map", "0:a:0?", "-sn", "-dn"]
    if findings.video:
        args += _x264_args(rules, stream)
    else:
        args += ["-c:v", "copy"]
    if findings.audio:
        args += ["-c:a", AAC["acodec"], "-b:a", AAC["b:a"], "-ar", str(SAMPLE_RATE), "-ac", str(AAC["ac"])]
    else:
        args += ["-c:a", "copy"]
    _write_atomically(target, [*args, "-movflags", "+faststart", "-f", "mp4"], f"re-encoding {path.name}")


def _x264_args(rules: VideoRules, stream: probe.VideoStream) -> list[str]:
    """The reel renderer's H.264 settings, scaled down to fit and to even sides (4:2:0), frame rate clamped.

    The renderer's BT.709 tags are left out: they describe its own output, while here ffmpeg carries the source's
    colour tags over, and tagging a BT.601 source as BT.709 would shift its colours."""
    scale = _video_scale(rules, stream.width, stream.height)
    width = max(2, math.floor(stream.width * scale / 2) * 2)
    height = max(2, math.floor(stream.height * scale / 2) * 2)
    filters = [f"scale={width}:{height}"]
    if rules.fps is not None and not rules.fps[0] <= stream.fps <= rules.fps[1]:
        filters.append(f"fps={min(max(stream.fps or 30, rules.fps[0]), rules.fps[1]):g}")
    args = ["-c:v", X264["vcodec"], "-vf", ",".join(filters)]
    for key in X264_KEPT:
        args += [f"-{key}", str(X264[key])]
    return args


def _remux_faststart(path: Path, target: Path) -> None:
    _write_atomically(target, ["-i", str(path), "-map", "0", "-c", "copy", "-movflags", "+faststart"], "remuxing")


def _write_atomically(target: Path, args: list[str], what: str) -> None:
    """Write to a temporary name, then rename: an interrupted run never leaves a half file that looks fixed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.stem}.part{target.suffix}")
    try:
        ffmpeg.run([*args, str(partial.absolute())], what=f"{what} for pre-flight")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _verify_fixed(
    rules: VideoRules, platform: str, fixed: Path, max_duration_s: float | None, outcome: _Outcome
) -> None:
    """Probe the fixed copy against the same rules: a fix is only reported as one if the result passes."""
    findings = _video_findings(rules, platform, fixed, probe.probe(fixed), max_duration_s)
    left = findings.problems + findings.container + findings.video + findings.audio
    if rules.faststart and not probe.is_faststart(fixed):
        left.append("its MP4 index is still at the end")
    if left:
        outcome.problems.append(
            f"{fixed.name}: the automatic fix did not make it postable ({'; '.join(left)}). Fix: render it again "
            "with H.264 High yuv420p, AAC 48 kHz, MP4 with faststart"
        )
