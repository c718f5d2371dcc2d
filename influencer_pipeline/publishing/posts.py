"""From a day's plan to publish requests: one per (post, platform), pre-flighted with the platform's rules."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from influencer_pipeline.content.plan import ContentPlan, PlannedPost
from influencer_pipeline.errors import InputError
from influencer_pipeline.publishing.base import PostMedia, PublishRequest
from influencer_pipeline.publishing.preflight import PreflightReport, preflight


@dataclass(frozen=True)
class Prepared:
    """One (post, platform): the request to publish, or None when pre-flight found something it cannot fix."""

    post_id: str
    platform: str
    request: PublishRequest | None
    report: PreflightReport


def prepare_posts(
    plan: ContentPlan,
    account_for: Callable[[str], str],
    media_for: Callable[[PlannedPost, str], list[Path]],
    work_dir: Path,
    only: Collection[tuple[str, str]] | None = None,
) -> list[Prepared]:
    """Pre-flight every post and platform of the plan (only the (post id, platform) pairs in `only` when given).

    `account_for(platform)` names the account; `media_for(post, platform)` gives local files in posting order.
    Fixed copies go to `work_dir`; the originals are never changed. Media that cannot be found is a problem of
    that (post, platform) alone, reported like any other pre-flight problem.
    """
    out = []
    for post in plan.posts:
        for platform in post.platforms:
            if only is not None and (post.id, platform) not in only:
                continue
            try:
                media = media_for(post, platform)
            except InputError as exc:
                caption = post.captions[platform]
                report = PreflightReport(platform, post.format, [], caption, list(post.hashtags), post.title)
                report.problems.append(str(exc))
                out.append(Prepared(post.id, platform, None, report))
                continue
            report = preflight(
                platform,
                post.format,
                post.captions[platform],
                list(post.hashtags),
                post.title,
                media,
                work_dir / post.id / platform,
            )
            request = publish_request(post, platform, account_for(platform), report) if report.ok else None
            out.append(Prepared(post.id, platform, request, report))
    return out


def publish_request(post: PlannedPost, platform: str, account: str, report: PreflightReport) -> PublishRequest:
    media = tuple(
        PostMedia(f, "video" if f.suffix == ".mp4" else "image", hashlib.sha256(f.read_bytes()).hexdigest())
        for f in report.media
    )
    return PublishRequest(
        post_id=post.id,
        platform=platform,
        account_id=account,
        format=post.format,
        caption=report.text,
        media=media,
        title=report.title,
        scheduled_for=post.publish_at.isoformat(),
    )
