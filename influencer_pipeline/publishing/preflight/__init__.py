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
Limits come from `influencer_pipeline.platforms` (`RULES`, each with the public page it is from, quoted in every
message); where the platform is vague the stricter reading is used, because a rejected post costs more than a
re-encoded one.

The checks are split along their seams: `text` (title, caption, hashtags), `media` (which file is which kind),
`image` (crop, downscale, JPEG within the byte limit) and `video` (duration, geometry, codecs; remux or re-encode);
`report` holds the verdict they all write into.
"""

from __future__ import annotations

from pathlib import Path

from influencer_pipeline.errors import InputError
from influencer_pipeline.platforms import RULES, PlatformRules
from influencer_pipeline.publishing.preflight.media import check_media
from influencer_pipeline.publishing.preflight.report import PreflightReport, compose_caption
from influencer_pipeline.publishing.preflight.text import check_caption, check_title

__all__ = ["RULES", "PreflightReport", "compose_caption", "preflight"]


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
    `creator_info.max_video_post_duration_sec`, platforms.TIKTOK_CREATOR_INFO_DOC). Raises InputError only for an
    unknown platform or format: everything about the post itself goes into the report, so one call lists every
    problem at once.
    """
    rules = _rules(platform, format)
    report = PreflightReport(platform, format, list(media), caption, [], title)
    check_title(rules, title, report)
    check_caption(rules, caption, hashtags, report)
    check_media(rules, rules.formats[format], [Path(p) for p in media], Path(work_dir), max_duration_s, report)
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
