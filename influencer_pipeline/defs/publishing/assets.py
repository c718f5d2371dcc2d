"""The `publishing` group: each approved post goes out at its time, exactly once, through the post ledger.

Thin on purpose: which posts are due, their run keys and their review states are decided by the publishing
package (`publishing/due.py`, `publishing/review.py`) from the ledger; this module registers rendered days,
turns due runs into run requests, and records what happened as metadata and a check.
"""

import hashlib
import os
import socket
import threading
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg

from influencer_pipeline.content.plan import ContentPlan, PlannedPost
from influencer_pipeline.dagster_layer import publishing as shared
from influencer_pipeline.dagster_layer.errors import user_errors_are_final
from influencer_pipeline.dagster_layer.metadata import table
from influencer_pipeline.dagster_layer.partitions import calendar
from influencer_pipeline.dagster_layer.plans import day_and_persona, fetch, post_image_keys, read_plan
from influencer_pipeline.dagster_layer.publishing import PublishingResource
from influencer_pipeline.dagster_layer.resources import MediaStoreResource
from influencer_pipeline.defs.publishing.config import PublishedPostsConfig
from influencer_pipeline.errors import InputError
from influencer_pipeline.media.keys import content_prefix
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.personas import load_persona
from influencer_pipeline.publishing import review
from influencer_pipeline.publishing.brand_safety import scan
from influencer_pipeline.publishing.due import day_statuses, describe, due_posts, overdue_posts
from influencer_pipeline.publishing.ledger import Ledger
from influencer_pipeline.publishing.orchestrator import RetryPolicy, publish_once
from influencer_pipeline.publishing.posts import prepare_posts
from influencer_pipeline.studio import studio_url
from influencer_pipeline.video import aspects_for

CHECK_NAME = "posts_on_time"


ROW_COLUMNS = ("time", "post", "platform", "account", "state", "next_attempt", "remote_id", "permalink", "error")


def media_for(store: MediaStore, slug: str, day: str, work: Path):
    def resolve(post: PlannedPost, platform: str) -> list[Path]:
        if post.format == "reel":
            aspect = aspects_for([platform])[0]
            return [fetch(store, content_prefix(slug, day) + f"videos/{post.id}-{aspect.slug}.mp4", work)]
        return [fetch(store, key, work) for key in post_image_keys(store, slug, day, post.id)]

    return resolve


def content_version(instance: dg.DagsterInstance, slug: str, day: str, plan: ContentPlan) -> str:
    """Names the rendered content of a day: the post_videos materialization that made it (or the plan itself)."""
    partition = dg.MultiPartitionKey({"date": day, "persona": slug})
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("post_videos"), asset_partitions=[partition]), limit=1
    ).records
    if records:
        return f"videos:{records[0].storage_id}"
    return "plan:" + hashlib.sha256(plan.model_dump_json().encode()).hexdigest()[:32]


def register(ledger: Ledger, store: MediaStore, slug: str, day: str, plan: ContentPlan, version: str, now: datetime):
    """Record a rendered day in the ledger under the persona's approval policy (idempotent per version)."""
    approval = load_persona(store, slug).approval
    entries = [review.PlanEntry(p.id, platform, p.publish_at) for p in plan.posts for platform in p.platforms]
    return review.register_day(ledger, slug, day, entries, approval=approval, content_version=version, now=now)


@dg.asset(
    partitions_def=calendar,
    group_name="publishing",
    deps=[dg.AssetKey("post_videos")],
    kinds={"python", "api"},
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset="published_posts",
            blocking=True,
            description="Fails when a post of the day failed, is unconfirmed or blocked, or is scheduled and more "
            "than the grace period past its time without being published.",
        )
    ],
)
def published_posts(
    context: dg.AssetExecutionContext,
    config: PublishedPostsConfig,
    media: MediaStoreResource,
    publishing: PublishingResource,
) -> dg.MaterializeResult:
    """What went out where, per post and platform: review state or ledger state, platform id and permalink.

    Publishes the day's due posts (scheduled and their time come, or retries due); every (post, account) runs the
    ledger's state machine, so a retry, a second run or a crash never posts twice.

    Every persona's coming posts, in a week grid with thumbnails and playable reels: [open the studio](/studio).
    """
    day, slug = day_and_persona(context)
    store = media.get_store()
    work = Path(publishing.work_dir) / slug / "publish" / day
    worker = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{context.run_id[:8]}"
    policy = RetryPolicy()
    ledger = publishing.ledger()
    now = shared.CLOCK()
    safety_score = 0.0
    with user_errors_are_final():
        plan = read_plan(store, slug, day)
        register(ledger, store, slug, day, plan, content_version(context.instance, slug, day, plan), now)
        if not config.only_due:
            for row in review.day_posts(ledger, slug, day):
                if row.status in review.BEFORE_ATTEMPT and row.attempt_id is None:
                    review.publish_now(ledger, row.key, reviewer=f"run {context.run_id[:8]}", now=now)
        lease_until = now + timedelta(seconds=policy.lease_s)
        picked = [
            item.key
            for item in due_posts(ledger, now, persona=slug, day=day)
            if review.pick(ledger, item.key, worker=worker, now=now, lease_until=lease_until)
        ]
        if picked:
            safety_score = publish_picked(context, publishing, store, ledger, plan, picked, work, worker, policy)
    return day_result(context, ledger, slug, day, publishing, safety_score)


def publish_picked(
    context: dg.AssetExecutionContext,
    publishing: PublishingResource,
    store: MediaStore,
    ledger: Ledger,
    plan: ContentPlan,
    picked: list[review.PostKey],
    work: Path,
    worker: str,
    policy: RetryPolicy,
) -> float:
    """Brand safety over the day's media, pre-flight, then the ledger's publish for each picked (post, platform)."""
    slug, day = picked[0].persona, plan.date.isoformat()
    safety = scan(posts_media(store, slug, day, {key.post_id for key in picked}, work))
    context.log.info(safety.summary())
    if not safety.passed:
        for key in picked:
            review.block(ledger, key, [safety.summary()], worker=worker, now=shared.CLOCK())
        raise dg.Failure(description=safety.summary(), allow_retries=False)
    setups = {}
    for platform in sorted({key.platform for key in picked}):
        try:
            setups[platform] = publishing.publisher_and_token(platform, slug, store)
        except (InputError, LookupError) as exc:  # no linked account (AccountNotFound), no S3 store for Instagram
            for key in (k for k in picked if k.platform == platform):
                review.block(ledger, key, [f"cannot publish to {platform}: {exc}"], worker=worker, now=shared.CLOCK())
    picked = [key for key in picked if key.platform in setups]
    only = {(key.post_id, key.platform) for key in picked}
    prepared = prepare_posts(plan, lambda p: setups[p][2], media_for(store, slug, day, work), work / "preflight", only)
    for item in prepared:
        key = review.PostKey(slug, item.post_id, item.platform)
        context.log.info(item.report.summary())
        if item.request is None:
            review.block(ledger, key, item.report.problems, worker=worker, now=shared.CLOCK())
            continue
        publisher, tokens, _ = setups[item.platform]
        view = publish_once(
            ledger, publisher, item.request, tokens(), worker, now=shared.CLOCK, sleep=shared.SLEEP, policy=policy,
            notify=lambda v: context.log.warning(f"{v.post_id} -> {v.platform}: {v.state}: {v.last_error}"),
        )  # fmt: skip
        review.settle(ledger, key, view, worker=worker, now=shared.CLOCK())
        context.log.info(f"{item.post_id} -> {item.platform}: {view.state}")
    return max((f.max_score for f in safety.files), default=0.0)


def posts_media(store: MediaStore, slug: str, day: str, post_ids: set[str], work: Path) -> list[Path]:
    """The images and reels of these posts, as local files: what brand safety scans before they are posted
    (media of the day's other posts were scanned by the runs that published them)."""
    keys = [o.key for o in store.list(content_prefix(slug, day)) if o.key.endswith((".png", ".mp4"))]
    mine = [k for k in keys if any(k.rsplit("/", 1)[-1].startswith(f"{post_id}-") for post_id in post_ids)]
    return [fetch(store, key, work / "scan") for key in sorted(mine)]


def day_result(
    context: dg.AssetExecutionContext,
    ledger: Ledger,
    slug: str,
    day: str,
    publishing: PublishingResource,
    safety_score: float,
) -> dg.MaterializeResult:
    """Per-day metadata (numeric counts, which Dagster plots, and the table) and the on-time check."""
    now = shared.CLOCK()
    statuses = day_statuses(ledger, slug, day)
    rows = [
        {
            "time": s.publish_at.strftime("%Y-%m-%d %H:%M UTC"),
            "post": s.post_id,
            "platform": s.platform,
            "account": s.account_id,
            "state": s.state,
            "next_attempt": s.next_attempt_at.strftime("%Y-%m-%d %H:%M UTC") if s.next_attempt_at else "",
            "remote_id": s.remote_id,
            "permalink": s.permalink,
            "error": s.last_error,
        }
        for s in statuses
    ]
    counts = Counter(s.state for s in statuses)
    grace = timedelta(minutes=publishing.grace_minutes)
    late = [s for s in overdue_posts(ledger, now, grace) if (s.persona, s.day) == (slug, day)]
    next_attempts = [s.next_attempt_at for s in statuses if s.next_attempt_at is not None]
    metadata: dict[str, object] = {
        "posts": table(rows, [(c, "string") for c in ROW_COLUMNS]),
        **{state: counts.get(state, 0) for state in ("published", "pending", "failed", "unconfirmed", "blocked")},
        **{state: counts.get(state, 0) for state in ("draft", "held", "approved", "scheduled", "ready_to_post")},
        "next_attempt": min(next_attempts).strftime("%Y-%m-%d %H:%M UTC") if next_attempts else "",
        "brand_safety_max_score": dg.MetadataValue.float(safety_score),
        "mode": publishing.mode,
        "studio": dg.MetadataValue.url(studio_url(slug)),  # served beside the UI by ops/webserver_auth.py
    }
    lines = [describe(s) for s in late]
    review.mark_reported(ledger, [s.key for s in late], now)
    check = dg.AssetCheckResult(
        check_name=CHECK_NAME,
        passed=not late,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"{len(late)} post(s) not published: " + "; ".join(lines))
        if late
        else f"no post of {day} failed or was blocked, and none is more than {publishing.grace_minutes:g} min late",
        metadata={"late": len(late), "late_posts": dg.MetadataValue.text("\n".join(lines))},
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])
