"""The `publishing` group: each planned post goes out at its time, exactly once, through the post ledger."""

import hashlib
import os
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from influencer_pipeline.content.plan import PlannedPost
from influencer_pipeline.defs.content import day_and_persona, day_media, fetch, post_image_keys, post_videos, read_plan
from influencer_pipeline.defs.errors import user_errors_are_final
from influencer_pipeline.defs.metadata import table
from influencer_pipeline.defs.partitions import calendar
from influencer_pipeline.defs.resources import MediaStoreResource
from influencer_pipeline.media.keys import content_prefix
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.publishing.brand_safety import scan
from influencer_pipeline.publishing.ledger import Ledger
from influencer_pipeline.publishing.orchestrator import publish_once
from influencer_pipeline.publishing.outbox import OutboxPublisher
from influencer_pipeline.publishing.posts import prepare_posts
from influencer_pipeline.video import aspects_for

FINAL_STATES = ("published", "failed", "unconfirmed")


class PublishingResource(dg.ConfigurableResource):
    """Where posts go: `outbox` (a folder per post, posted by a person) or `live` (the linked accounts)."""

    mode: str = Field("outbox", pattern="^(outbox|live)$")
    outbox_dir: str = "outbox"
    ledger_url: str = ""  # empty: SQLite in work_dir; production: postgresql+psycopg2://...
    work_dir: str = "work"

    def ledger(self) -> Ledger:
        Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        ledger = Ledger(self.ledger_url or f"sqlite:///{Path(self.work_dir).resolve() / 'post_ledger.db'}")
        ledger.upgrade()
        return ledger

    def publisher_and_token(self, platform: str, persona: str, store: MediaStore):
        if self.mode == "outbox":
            # One folder per persona: post ids are per persona and day, so two personas share them.
            return OutboxPublisher(Path(self.outbox_dir) / persona), (lambda: ""), f"outbox:{persona}:{platform}"
        from influencer_pipeline.accounts import Accounts
        from influencer_pipeline.publishing.live import live_publisher

        accounts = Accounts.from_env()
        account = accounts.account(persona, platform).account_id
        publisher = live_publisher(platform, account, store, Path(self.work_dir) / persona / "publish")
        return publisher, (lambda: accounts.fresh_token(persona, platform)), account


ROW_COLUMNS = ("post", "platform", "account", "state", "remote_id", "permalink", "error", "preflight_changes")


def row(**fields: str | None) -> dict[str, str]:
    return {c: fields.get(c) or "" for c in ROW_COLUMNS}


class PublishedPostsConfig(dg.Config):
    only_due: bool = Field(True, description="Publish only posts whose time has come (false: all of the day now).")


def media_for(store: MediaStore, slug: str, day: str, work: Path):
    def resolve(post: PlannedPost, platform: str) -> list[Path]:
        if post.format == "reel":
            aspect = aspects_for([platform])[0]
            return [fetch(store, content_prefix(slug, day) + f"videos/{post.id}-{aspect.slug}.mp4", work)]
        return [fetch(store, key, work) for key in post_image_keys(store, slug, day, post.id)]

    return resolve


@dg.asset(partitions_def=calendar, group_name="publishing", deps=[post_videos], kinds={"python", "api"})
def published_posts(
    context: dg.AssetExecutionContext,
    config: PublishedPostsConfig,
    media: MediaStoreResource,
    publishing: PublishingResource,
) -> dg.MaterializeResult:
    """What went out where: per post and account, the ledger state, platform id and permalink.

    Every (post, account) runs the ledger's state machine: a retry, a second run or a crash never posts twice.
    """
    day, slug = day_and_persona(context)
    store = media.get_store()
    work = Path(publishing.work_dir) / slug / "publish" / day
    worker = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{context.run_id[:8]}"
    with user_errors_are_final():
        plan = read_plan(store, slug, day)
        ledger = publishing.ledger()
        now = datetime.now(UTC) if config.only_due else None
        safety = scan(day_media(store, slug, day, work))
        context.log.info(safety.summary())
        if not safety.passed:
            raise dg.Failure(description=safety.summary(), allow_retries=False)
        platforms = sorted({p for post in plan.posts for p in post.platforms})
        setups = {p: publishing.publisher_and_token(p, slug, store) for p in platforms}
        prepared = prepare_posts(
            plan, lambda p: setups[p][2], media_for(store, slug, day, work), work / "preflight", now
        )
        rows = []
        for item in prepared:
            publisher, token, account = setups[item.platform]
            context.log.info(item.report.summary())
            if item.request is None:
                problems = "; ".join(item.report.problems)
                rows.append(
                    row(post=item.post_id, platform=item.platform, account=account, state="blocked", error=problems)
                )
                continue
            view = publish_once(ledger, publisher, item.request, token, worker, notify=context.log.warning)
            context.log.info(f"{item.post_id} -> {item.platform}: {view.state}")
            rows.append(
                row(
                    post=view.post_id,
                    platform=item.platform,
                    account=account,
                    state=view.state,
                    remote_id=view.remote_id,
                    permalink=view.permalink,
                    error=view.last_error,
                    preflight_changes="; ".join(item.report.changes),
                )
            )
    states = [r["state"] for r in rows]
    return dg.MaterializeResult(
        metadata={
            "posts": table(rows, [(c, "string") for c in ROW_COLUMNS]),
            "brand_safety_max_score": dg.MetadataValue.float(max((f.max_score for f in safety.files), default=0.0)),
            "published": states.count("published"),
            "failed": states.count("failed"),
            "unconfirmed": states.count("unconfirmed"),
            "blocked": states.count("blocked"),
            "pending": len([s for s in states if s not in (*FINAL_STATES, "blocked")]),
            "mode": publishing.mode,
        }
    )


publish_job = dg.define_asset_job(
    "publish_posts",
    selection=[published_posts],
    description="Publish a day's due posts for one persona through the ledger (requested by due_posts_sensor).",
)


def pending_posts(plan, ledger: Ledger, now: datetime) -> list[str]:
    """(post, platform) pairs that are due and not final in the ledger, with their attempt counts."""
    pending = []
    for post in plan.posts:
        if post.publish_at > now:
            continue
        views = {v.platform: v for v in ledger.attempts(post_id=post.id)}
        for platform in post.platforms:
            view = views.get(platform)
            if view is None:
                pending.append(f"{post.id}/{platform}/0")
            elif view.state not in FINAL_STATES and (view.next_attempt_at is None or view.next_attempt_at <= now):
                pending.append(f"{post.id}/{platform}/{view.attempts}")
    return pending


@dg.sensor(
    job=publish_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Publishes each planned post at its time, once; re-surfaces failed attempts when their retry is due.",
)
def due_posts_sensor(context: dg.SensorEvaluationContext, media: MediaStoreResource, publishing: PublishingResource):
    now = datetime.now(UTC)
    store = media.get_store()
    ledger = publishing.ledger()
    requests = []
    for slug in sorted(context.instance.get_dynamic_partitions("personas")):
        for day in sorted({(now - timedelta(days=1)).date().isoformat(), now.date().isoformat()}):
            partition = dg.MultiPartitionKey({"date": day, "persona": slug})
            if not videos_ready(context.instance, partition):
                continue
            pending = pending_posts(read_plan(store, slug, day), ledger, now)
            if pending:
                digest = hashlib.sha256("|".join(pending).encode()).hexdigest()[:16]
                requests.append(dg.RunRequest(run_key=f"publish:{day}:{slug}:{digest}", partition_key=partition))
    return requests or dg.SkipReason("no post is due")


def videos_ready(instance: dg.DagsterInstance, partition: str) -> bool:
    """A day is publishable once post_videos (the last content step) has materialised for it."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=post_videos.key, asset_partitions=[partition]), limit=1
    )
    return bool(records.records)
