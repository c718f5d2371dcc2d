"""A month of publishing for five personas on all four platforms, through the real sensor and the real asset.

Plain pytest on a fake clock (`dagster_layer.publishing.CLOCK`/`SLEEP`): every simulated hour the real
`due_posts_sensor` evaluation function ticks (`build_sensor_context` on a real instance) and its run requests are
materialised with the real `published_posts` asset, skipping a run key that already has a run, as Dagster does.
Publishing is live: accounts are linked through the OAuth stand-in with `Accounts.from_env()` (the production provider
table, tokens encrypted in the accounts database), publishers are built by `live_publisher` exactly as in production,
and each persona has its own accounts on the Meta, YouTube and TikTok stand-ins (`<PLATFORM>_API_BASE_URL` is pointed at
the persona's stand-in for its runs: the network of this simulation). Media live in S3 (moto) because Instagram fetches
them by presigned URL.

Faults arrive every hour, in turn: 429 with Retry-After, 5xx, timeouts before and after the commit, an expired
token, a run worker killed during its commit (a BaseException after the platform accepted), sensor ticks while a
run is in flight, a permanent rejection (which a person requeues after the check reported it), and a reel too
small for TikTok whose block the creator fixes by regenerating the content. Two personas need approval; the
creator approves their drafts after each tick.

The verdict comes from the stand-ins' own records: every planned (post, platform) live exactly once on the right
persona's account, 0 missed, 0 duplicated, 0 crossed; every permanent failure named by a failed check.
`SIM_DAYS` shortens the month for a quick local run.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from cryptography.fernet import Fernet
from dagster_aws.s3 import S3Resource
from PIL import Image

from influencer_pipeline.accounts.clock import utcnow
from influencer_pipeline.accounts.providers import provider_for
from influencer_pipeline.accounts.service import Accounts
from influencer_pipeline.content.plan import ContentPlan, PlannedPost
from influencer_pipeline.dagster_layer import publishing as defs
from influencer_pipeline.dagster_layer.partitions import calendar
from influencer_pipeline.dagster_layer.publishing import PublishingResource
from influencer_pipeline.dagster_layer.resources import S3MediaStoreResource
from influencer_pipeline.defs.content.assets import post_videos
from influencer_pipeline.defs.publishing.assets import published_posts
from influencer_pipeline.defs.publishing.sensors import due_posts_sensor
from influencer_pipeline.media import S3MediaStore
from influencer_pipeline.publishing import live, review
from influencer_pipeline.video import ffmpeg
from tests.accounts import oauth_standin
from tests.accounts.oauth_standin import CLIENT_ID, CLIENT_SECRET, Browser, OAuthStandin
from tests.publishing.meta_standin import MetaStandin
from tests.publishing.tiktok_standin import TikTokStandin
from tests.publishing.youtube_standin import YouTubeStandin

pytestmark = pytest.mark.slow

PERSONAS = ("ava", "bea", "cleo", "dina", "eve")
REQUIRED = {"bea", "dina"}  # these two need approval; the others are `approval: auto`
PLATFORMS = ("instagram", "facebook", "youtube", "tiktok")
DAYS = int(os.environ.get("SIM_DAYS", "30"))
START = datetime(2026, 11, 1, tzinfo=UTC)
CALLBACK = "https://studio.example.com/oauth/callback"
SLOTS = (9, 19)  # posting hours (minutes vary): posts of a day share at most two runs, which keeps CI time down
TAG = re.compile(r"\[([a-z]+) (\d{4}-\d{2}-\d{2}-\d+)\]")
FAULTS = ("throttle", "5xx", "timeout-before", "timeout-after", "token", "killed", "tick-in-flight", "permanent")


class WorkerKilled(BaseException):
    """The run worker dies (SIGKILL): nothing in the code under test can catch it."""


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class Persona:
    slug: str
    ig: MetaStandin
    fb: MetaStandin
    yt: YouTubeStandin
    tt: TikTokStandin


@dataclass
class World:
    clock: Clock
    instance: dg.DagsterInstance
    store: S3MediaStore
    resources: dict[str, Any]
    personas: dict[str, Persona]
    oauth: dict[str, OAuthStandin]
    accounts: Accounts
    media: dict[str, bytes]
    rng: random.Random = field(default_factory=lambda: random.Random(20261101))
    cursor: str | None = None
    armed: dict[str, list[str]] = field(default_factory=dict)  # persona -> faults for its next publishes
    planned: set[tuple[str, str, str]] = field(default_factory=set)
    permanent: set[tuple[str, str, str]] = field(default_factory=set)
    regenerate: set[tuple[str, str]] = field(default_factory=set)  # (persona, day) with a too-small reel
    counts: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)

    # -- the sensor and the runs, as the daemon would drive them

    def tick(self) -> list[dg.RunRequest]:
        with dg.build_sensor_context(instance=self.instance, resources=self.resources, cursor=self.cursor) as ctx:
            result = due_posts_sensor(ctx)
        self.counts["ticks"] += 1
        self.cursor = result.cursor
        return list(result.run_requests or [])

    def launch(self, requests: list[dg.RunRequest]) -> None:
        queue = list(requests)
        while queue:
            request = queue.pop(0)
            runs = self.instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": request.run_key}), limit=1)
            if runs:
                self.counts["skipped run keys"] += 1
                continue
            queue.extend(self.run(request))

    def run(self, request: dg.RunRequest) -> list[dg.RunRequest]:
        """Materialise one request; returns the requests of ticks that happened while it was in flight."""
        partition = request.partition_key
        persona = calendar.get_partition_key_from_str(partition) if isinstance(partition, str) else partition
        slug = persona.keys_by_dimension["persona"]
        standins = self.personas[slug]
        env = {
            "INSTAGRAM_API_BASE_URL": standins.ig.url,
            "FACEBOOK_API_BASE_URL": standins.fb.url,
            "YOUTUBE_API_BASE_URL": standins.yt.url,
            "TIKTOK_API_BASE_URL": standins.tt.url,
        }
        in_flight: list[dg.RunRequest] = []
        self.in_flight = in_flight
        os.environ.update(env)
        self.counts["runs"] += 1
        try:
            result = dg.materialize(
                [published_posts],
                partition_key=persona,
                instance=self.instance,
                resources=self.resources,
                tags={"dagster/run_key": request.run_key},
                raise_on_error=False,
            )
        except WorkerKilled:  # Dagster records the step as failed; were it to escape, the run is simply gone
            return in_flight
        if not result.success:
            self.counts["runs failed (check or error)"] += 1
        return in_flight

    # -- what a person does after each tick

    def review(self) -> None:
        ledger = self.resources["publishing"].ledger()
        now = self.clock()
        for slug in REQUIRED:
            for day in self.open_days():
                for row in review.day_posts(ledger, slug, day):
                    if row.status == "draft":
                        review.approve(ledger, row.key, reviewer="creator", now=now)
                        self.counts["approved by the creator"] += 1
        for slug, day in sorted(self.regenerate):
            rows = review.day_posts(ledger, slug, day)
            if any(r.status == "blocked" for r in rows):
                self.render(slug, day, fix=True)
                self.counts["content regenerated after a block"] += 1
                self.regenerate.discard((slug, day))
        for slug in self.personas:
            for day in self.open_days():
                for row in review.day_posts(ledger, slug, day):
                    if row.status == "approved":  # its content was regenerated late: publish it now
                        review.publish_now(ledger, row.key, reviewer="creator", now=now)
                        self.counts["published now by the creator"] += 1

    def requeue_reported_failures(self) -> None:
        """The creator reads the failed checks and requeues the permanently failed posts they name."""
        ledger = self.resources["publishing"].ledger()
        waiting = [
            k for k in self.permanent if getattr(review.get(ledger, review.PostKey(*k)), "status", "") == "failed"
        ]
        if not waiting:
            return
        reported = self.reported()
        for persona, post_id, platform in sorted(self.permanent):
            key = review.PostKey(persona, post_id, platform)
            row = review.get(ledger, key)
            if row is not None and row.status == "failed" and f"{persona} {post_id} on {platform}: failed" in reported:
                review.requeue(ledger, key, operator="creator", now=self.clock(), detail="fixed the media")
                self.counts["requeued after the check reported them"] += 1

    def reported(self) -> str:
        records = self.instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=100_000
        )
        return "\n".join(
            r.event_log_entry.dagster_event.event_specific_data.description or ""
            for r in records
            if not r.event_log_entry.dagster_event.event_specific_data.passed
        )

    def open_days(self) -> list[str]:
        today = self.clock().date()
        return [(today + timedelta(days=d)).isoformat() for d in (-1, 0, 1)]

    # -- the content group's output for a day

    def render(self, slug: str, day: str, *, fix: bool = False) -> None:
        prefix = f"personas/{slug}/content/{day}/"
        plan = ContentPlan.model_validate_json(self.store.read_bytes(prefix + "plan.json"))
        for post in plan.posts:
            if post.format == "reel":
                small = (slug, day) in self.regenerate and not fix and post.id.endswith("-1")
                self.store.write_bytes(prefix + f"videos/{post.id}-9x16.mp4", self.media["small" if small else "reel"])
            else:
                self.store.write_bytes(prefix + f"images/{post.id}-0.png", self.media["image"])
        key = dg.MultiPartitionKey({"date": day, "persona": slug})
        self.instance.report_runless_asset_event(dg.AssetMaterialization(post_videos.key, partition=key))

    def plan_day(self, slug: str, day: str) -> None:
        count = self.rng.randint(1, 5)
        hours = sorted(self.rng.choice(SLOTS) for _ in range(count))
        posts = []
        for i, hour in enumerate(hours):
            post_id = f"{day}-{i + 1}"
            reel = self.rng.random() < 0.3
            platforms = list(PLATFORMS) if reel else ["instagram", "facebook"]
            tag = f"[{slug} {post_id}]"
            posts.append(
                PlannedPost(
                    id=post_id,
                    theme="espresso",
                    format="reel" if reel else "image",
                    image_prompts=["ohwx woman, espresso bar"],
                    captions={p: f"Morning espresso with {slug} {tag}" for p in platforms},
                    title=f"Espresso {tag}" if reel else "",
                    hashtags=["espresso"],
                    platforms=platforms,  # type: ignore[arg-type]
                    publish_at=datetime.fromisoformat(day).replace(
                        hour=hour, minute=self.rng.randrange(60), tzinfo=UTC
                    ),
                    voiceover="Espresso first, then the day." if reel else "",
                )
            )
            self.planned.update((slug, post_id, p) for p in platforms)
        if any(p.format == "reel" and p.id.endswith("-1") for p in posts) and self.rng.random() < 0.25:
            self.regenerate.add((slug, day))  # its first reel is rendered too small for TikTok
        plan = ContentPlan(persona=slug, date=date.fromisoformat(day), posts=posts, writer="simulation")
        self.store.write_bytes(f"personas/{slug}/content/{day}/plan.json", plan.model_dump_json().encode())
        self.render(slug, day)

    # -- faults

    def inject(self, hour: int) -> None:
        fault = FAULTS[hour % len(FAULTS)]
        slug = PERSONAS[(hour // len(FAULTS)) % len(PERSONAS)]
        p = self.personas[slug]
        self.counts[f"fault: {fault}"] += 1
        if fault == "throttle":
            p.ig.fail("media_publish", 4, status=429, message="Application request limit reached",
                      headers={"Retry-After": "600"})  # fmt: skip
            p.tt.fail("init", "429")
        elif fault == "5xx":
            p.fb.http_error("feed", 502)
            p.yt.fail("final", "503")
        elif fault == "timeout-before":
            p.ig.drop("media_publish", after_commit=False)
            p.tt.fail("final", "drop")
        elif fault == "timeout-after":
            p.ig.drop("media_publish", after_commit=True)
            p.fb.drop("feed", after_commit=True)
            p.yt.fail("final", "lost-response")
            p.tt.fail("final", "lost-response")
        elif fault == "token":
            for platform in ("youtube", "tiktok"):
                token = self.accounts.store.read_tokens(self.accounts.account(slug, platform)).access.reveal()
                record = self.oauth[platform].tokens.get(token)
                if record is not None:
                    record.expires_at = self.oauth[platform].now - timedelta(seconds=1)
        else:  # killed, tick-in-flight, permanent: at the persona's next publish
            self.armed.setdefault(slug, []).append(fault)

    def take(self, slug: str, fault: str) -> bool:
        armed = self.armed.get(slug, [])
        if fault in armed:
            armed.remove(fault)
            return True
        return False

    def wrap(self, publisher: Any, platform: str, slug: str) -> Any:
        """The production publisher, with its faults armed and its status polling unpaced (the fake clock runs
        the ledger's retries; a publisher's own waits between status reads would only cost real seconds)."""
        world = self
        for pacing in ("poll_interval_s", "backoff_s"):
            if hasattr(publisher, pacing):
                setattr(publisher, pacing, 0.0)

        class Faulty:
            def __init__(self) -> None:
                self.platform = publisher.platform

            def prepare(self, request: Any, token: str) -> Any:
                if world.take(slug, "tick-in-flight"):
                    world.in_flight.extend(world.tick())
                    world.counts["ticks while a run was in flight"] += 1
                if platform == "instagram" and world.take(slug, "permanent"):
                    world.personas[slug].ig.fail("media", 100, 2207026, message="The video format is not supported")
                    world.permanent.add((slug, request.post_id, platform))
                return publisher.prepare(request, token)

            def wait_ready(self, handle: Any, token: str) -> None:
                publisher.wait_ready(handle, token)

            def commit(self, handle: Any, request: Any, token: str) -> Any:
                published = publisher.commit(handle, request, token)
                if world.take(slug, "killed"):
                    world.counts["workers killed mid-commit"] += 1
                    raise WorkerKilled(f"run worker killed right after {platform} accepted {request.post_id}")
                return published

            def reconcile(self, handle: Any, request: Any, token: str) -> Any:
                return publisher.reconcile(handle, request, token)

        return Faulty()

    # -- the verdict, from the stand-ins' own records

    def live_records(self) -> Counter[tuple[str, str, str, str]]:
        """(account owner persona, persona named in the post, post id, platform) -> times live."""
        seen: Counter[tuple[str, str, str, str]] = Counter()
        for owner, p in self.personas.items():
            for text, platform in (
                *((m.caption, "instagram") for m in p.ig.live_ig()),
                *((post.message, "facebook") for post in p.fb.fb_posts),
                *((v.resource["snippet"]["title"], "youtube") for v in p.yt.videos),
                *((post.post_info.get("title", ""), "tiktok") for post in p.tt.posts),
            ):
                named, post_id = TAG.search(text).groups()  # type: ignore[union-attr]
                seen[(owner, named, post_id, platform)] += 1
        return seen


def make_media(tmp_path: Path) -> dict[str, bytes]:
    image = tmp_path / "image.png"
    Image.new("RGB", (400, 500), (230, 150, 90)).save(image)
    media = {"image": image.read_bytes()}
    for name, size in (("reel", "360x640"), ("small", "216x384")):
        path = tmp_path / f"{name}.mp4"
        video = ["-f", "lavfi", "-i", f"color=c=teal:s={size}:r=30:d=3"]
        audio = ["-f", "lavfi", "-i", "sine=frequency=440:duration=3"]
        codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"]
        ffmpeg.run([*video, *audio, *codecs, "-movflags", "+faststart", str(path)], what=name)
        with open(path, "ab") as stream:  # YouTube and TikTok stand-ins want a few hundred KB
            stream.write(struct.pack(">I4s", 200_008, b"free") + bytes(200_000))
        media[name] = path.read_bytes()
    return media


def link_all(accounts: Accounts, oauth: dict[str, OAuthStandin], monkeypatch: pytest.MonkeyPatch) -> None:
    """`accounts link` for every persona and platform; each persona gets its own ids on the platforms."""
    for n, slug in enumerate(PERSONAS):
        monkeypatch.setattr(oauth_standin, "IG_USER_ID", f"178414000000000{n}")
        monkeypatch.setattr(oauth_standin, "FB_PAGES", ((f"10934567890123{n}", f"{slug} page"),))
        monkeypatch.setattr(oauth_standin, "YT_CHANNEL", f"UCstandin{slug}0000000000000"[:24])
        monkeypatch.setattr(oauth_standin, "TIKTOK_OPEN_ID", f"_000standinOpenId{slug}")
        for platform in PLATFORMS:
            loopback = provider_for(platform).loopback
            browser = Browser(follow=loopback)
            options: dict[str, Any] = {} if loopback else {"callback_url": CALLBACK}
            accounts.link(
                slug,
                platform,
                open_browser=browser.open,
                read_redirect=browser.pasted,
                say=lambda line: None,
                timeout_s=10,
                **options,
            )


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_bucket: tuple[Any, str]) -> Iterator[World]:
    monkeypatch.setenv("INFLUENCER_ACCOUNTS_DB", f"sqlite:///{tmp_path / 'accounts.db'}")
    monkeypatch.setenv("INFLUENCER_TOKEN_KEYS", Fernet.generate_key().decode())
    for prefix in ("INSTAGRAM", "FACEBOOK", "GOOGLE"):
        monkeypatch.setenv(f"{prefix}_CLIENT_ID", CLIENT_ID)
        monkeypatch.setenv(f"{prefix}_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TIKTOK_CLIENT_KEY", CLIENT_ID)
    monkeypatch.setenv("TIKTOK_CLIENT_SECRET", CLIENT_SECRET)
    for name in ("INSTAGRAM", "FACEBOOK", "YOUTUBE", "TIKTOK"):  # restored after the test (run() sets them)
        monkeypatch.setenv(f"{name}_API_BASE_URL", "http://127.0.0.1:9")
    clock = Clock(START)
    monkeypatch.setattr(defs, "CLOCK", clock)
    monkeypatch.setattr(defs, "SLEEP", clock.sleep)
    client, bucket = s3_bucket
    s3 = S3Resource(endpoint_url=client.meta.endpoint_url, region_name="us-east-1")
    media_resource = S3MediaStoreResource(bucket=bucket, prefix="studio", s3=s3)
    store = S3MediaStore(client, bucket, "studio")
    publishing = PublishingResource(
        mode="live",
        outbox_dir=str(tmp_path / "outbox"),
        work_dir=str(tmp_path / "work"),
        grace_minutes=90,
        accounts_url=dg.EnvVar("INFLUENCER_ACCOUNTS_DB"),
        token_keys=dg.EnvVar("INFLUENCER_TOKEN_KEYS"),
    )
    with contextlib.ExitStack() as stack:
        oauth = {p: stack.enter_context(OAuthStandin(p, clock=utcnow)) for p in PLATFORMS}
        for platform, server in oauth.items():
            monkeypatch.setenv(f"{platform.upper()}_OAUTH_BASE_URL", server.base_url)
        personas = {}
        for n, slug in enumerate(PERSONAS):
            ig = stack.enter_context(MetaStandin(ig_user_id=f"178414000000000{n}", ig_login="instagram",
                                                 quota_total=10_000))  # fmt: skip
            fb = stack.enter_context(MetaStandin(page_id=f"10934567890123{n}", quota_total=10_000))
            yt = stack.enter_context(YouTubeStandin(tokens=(), retry_after="60"))
            tt = stack.enter_context(TikTokStandin(tokens=()))
            ig.trust(oauth["instagram"].valid, "instagram")
            fb.trust(oauth["facebook"].valid, "facebook")
            yt.trust(oauth["youtube"].valid)
            tt.trust(oauth["tiktok"].valid)
            personas[slug] = Persona(slug, ig, fb, yt, tt)
            store.write_bytes(
                f"uploads/{slug}/persona.yaml",
                f"approval: {'required' if slug in REQUIRED else 'auto'}\n".encode(),
            )
        accounts = Accounts.from_env()
        link_all(accounts, oauth, monkeypatch)
        instance = dg.DagsterInstance.ephemeral()  # in memory: the month writes ~10k events
        instance.add_dynamic_partitions("personas", list(PERSONAS))
        world = World(
            clock,
            instance,
            store,
            {"media": media_resource, "publishing": publishing},
            personas,
            oauth,
            accounts,
            make_media(tmp_path),
        )
        real = live.live_publisher
        monkeypatch.setattr(
            live,
            "live_publisher",
            lambda platform, account, *a, **kw: world.wrap(
                real(platform, account, *a, **kw), platform, account.persona
            ),
        )
        yield world


def timed(world: World, phase: str, action: Any, *args: Any) -> Any:
    started = time.perf_counter()
    try:
        return action(*args)
    finally:
        world.seconds[phase] += time.perf_counter() - started


def test_a_month_of_posts_goes_out_exactly_once_through_the_sensor(world: World) -> None:
    for day in range(DAYS):
        for hour in range(24):
            world.clock.at = START + timedelta(days=day, hours=hour)
            if hour == 18:  # the content group makes tomorrow's content in the evening
                tomorrow = (world.clock().date() + timedelta(days=1)).isoformat()
                for slug in PERSONAS:
                    timed(world, "content", world.plan_day, slug, tomorrow)
            world.inject(day * 24 + hour)
            requests = timed(world, "ticks", world.tick)
            timed(world, "review", world.review)
            timed(world, "runs", world.launch, requests)
            timed(world, "requeue", world.requeue_reported_failures)
    for extra in range(12):  # the month is over; let retries and recoveries finish
        world.clock.at = START + timedelta(days=DAYS, hours=extra)
        world.launch(world.tick())
        world.review()
        world.requeue_reported_failures()

    live_now = world.live_records()
    due_end = START + timedelta(days=DAYS)
    due = {k for k in world.planned if k[1] < due_end.date().isoformat()}
    published = Counter({(named, post, platform): n for (owner, named, post, platform), n in live_now.items()})
    missed = sorted(k for k in due if published[k] == 0)
    duplicated = sorted(k for k, n in published.items() if n > 1)
    crossed = sorted(k for k in live_now if k[0] != k[1])
    reported = world.reported()
    unreported = sorted(k for k in world.permanent if f"{k[0]} {k[1]} on {k[2]}: failed" not in reported)
    world.counts.update(
        {
            "posts planned (post x platform, due in the month)": len(due),
            "published": sum(published[k] == 1 for k in due),
            "missed": len(missed),
            "duplicated": len(duplicated),
            "crossed personas": len(crossed),
            "permanent failures": len(world.permanent),
            "permanent failures the check named": len(world.permanent) - len(unreported),
        }
    )
    print("\nsimulated month:", *(f"  {k}: {v}" for k, v in sorted(world.counts.items())), sep="\n")
    print("wall seconds:", ", ".join(f"{k} {v:.0f}" for k, v in sorted(world.seconds.items())))
    assert missed == [] and duplicated == [] and crossed == [], (missed[:10], duplicated[:10], crossed[:10])
    assert unreported == []
    assert world.counts["fault: killed"] and world.counts["content regenerated after a block"]
    assert world.counts["ticks while a run was in flight"] and world.counts["permanent failures"]
