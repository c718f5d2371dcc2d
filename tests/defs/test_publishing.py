"""Publishing through Dagster: a day's posts go to the outbox once, and the due-posts sensor follows the ledger."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, date, datetime

import dagster as dg
import imageio_ffmpeg
from cryptography.fernet import Fernet

from influencer_pipeline.accounts.store import AccountStore, Identity, Secret, TokenSet
from influencer_pipeline.content.plan import ContentPlan, PlannedPost
from influencer_pipeline.dagster_layer.publishing import PublishingResource
from influencer_pipeline.dagster_layer.resources import (
    EmbeddedImageEngineResource,
    EspeakVoiceResource,
    TemplateWriterResource,
)
from influencer_pipeline.defs.content.assets import content_plan, post_images, post_videos
from influencer_pipeline.defs.publishing.assets import published_posts
from influencer_pipeline.defs.publishing.sensors import due_posts_sensor
from influencer_pipeline.publishing.base import PostMedia, PublishRequest
from influencer_pipeline.publishing.ledger import Ledger, media_sha256
from tests.defs.conftest import key, media
from tests.defs.test_datasets import failure_text
from tests.publishing.youtube_standin import YouTubeStandin

DAY = "2026-11-19"
FAST = {
    "post_images": {"config": {"steps": 2, "image_size": 256, "reel_width": 256, "reel_height": 448}},
    "post_videos": {"config": {"scale": 0.2}},
    "published_posts": {"config": {"only_due": False}},
}


def test_a_day_is_published_to_the_outbox_once_even_when_run_twice(trained, tmp_path) -> None:
    outbox = tmp_path / "outbox"
    publishing = PublishingResource(outbox_dir=str(outbox), work_dir=str(tmp_path / "work"))
    resources = {
        "media": media(trained),
        "writer": TemplateWriterResource(),
        "image_engine": EmbeddedImageEngineResource(work_dir=str(trained.root.parent / "work")),
        "voice": EspeakVoiceResource(),
        "publishing": publishing,
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        first = dg.materialize(
            [content_plan, post_images, post_videos, published_posts],
            partition_key=key(day=DAY),
            instance=instance,
            resources=resources,
            run_config=dg.RunConfig(ops=FAST),
            raise_on_error=False,
        )
        # The blocked TikTok reel needs a person: the blocking posts_on_time check fails the run, naming it
        # (the day's other posts went out; the materialization with the table is recorded all the same).
        assert not first.success
        [on_time] = [e for e in first.get_asset_check_evaluations() if e.check_name == "posts_on_time"]
        assert not on_time.passed and "on tiktok: blocked" in on_time.description and "360" in on_time.description
        assert [e.step_key for e in first.get_step_failure_events()] == ["published_posts"]
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            after_publish = due_posts_sensor(context)
        again = dg.materialize(
            [published_posts],
            partition_key=key(day=DAY),
            instance=instance,
            resources=resources,
            run_config=dg.RunConfig(ops={"published_posts": FAST["published_posts"]}),
            raise_on_error=False,
        )
    meta = {k: v.value for k, v in first.asset_materializations_for_node("published_posts")[0].metadata.items()}
    plan = json.loads(trained.read_bytes(f"personas/ava/content/{DAY}/plan.json"))
    pairs = {(p["id"], platform) for p in plan["posts"] for platform in p["platforms"]}
    # The drafts are rendered at 216x384: pre-flight blocks the TikTok reel (360 px minimum), posts the rest.
    blocked = {(p["id"], "tiktok") for p in plan["posts"] if p["format"] == "reel" and "tiktok" in p["platforms"]}
    assert blocked and meta["blocked"] == len(blocked)
    reasons = [r.data["error"] for r in meta["posts"].records if r.data["state"] == "blocked"]
    assert all("360" in reason and "Fix:" in reason for reason in reasons)
    pairs -= blocked
    # Released to the outbox is ready_to_post: nobody has posted it yet, so nothing says published.
    assert meta["ready_to_post"] == len(pairs) and meta["published"] == 0
    assert meta["failed"] == 0 and meta["mode"] == "outbox"
    assert meta["brand_safety_max_score"] < 0.5
    bundles = {(d.parent.name, d.name) for d in outbox.glob("ava/*/*") if (d / "READY_TO_POST").exists()}
    assert bundles == pairs
    reel = next(p for p in plan["posts"] if p["format"] == "reel")
    bundle = outbox / "ava" / reel["id"] / reel["platforms"][0]
    assert (bundle / "caption.txt").read_text().startswith(reel["captions"][reel["platforms"][0]].strip()[:20])
    assert any(f.suffix == ".mp4" for f in bundle.iterdir())

    assert again.asset_materializations_for_node("published_posts")
    ledger = Ledger(f"sqlite:///{tmp_path / 'work' / 'post_ledger.db'}")
    views = ledger.attempts()
    assert len(views) == len(pairs)
    assert all(v.state == "published" and v.commit_count == 1 for v in views), "a second run never posts twice"
    assert isinstance(after_publish, dg.SensorResult) and not after_publish.run_requests


def test_due_posts_sensor_waits_for_the_videos_then_requests_due_days(trained, tmp_path) -> None:
    publishing = PublishingResource(outbox_dir=str(tmp_path / "outbox"), work_dir=str(tmp_path / "work"))
    resources = {"media": media(trained), "publishing": publishing}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = due_posts_sensor(context)  # nothing rendered yet
        assert isinstance(result, dg.SensorResult) and not result.run_requests and result.skip_reason
        assert published_posts.key is not None


def test_live_youtube_post_goes_out_once_and_its_token_is_nowhere_in_the_event_log(
    trained, tmp_path, monkeypatch
) -> None:
    """Linked account -> planned reel -> published on the YouTube stand-in -> verified from its own record."""
    token = "ya29.PLANTED-secret-token-4f2c"
    monkeypatch.setenv("INFLUENCER_ACCOUNTS_DB", f"sqlite:///{tmp_path / 'accounts.db'}")
    monkeypatch.setenv("INFLUENCER_TOKEN_KEYS", Fernet.generate_key().decode())
    scopes = ("https://www.googleapis.com/auth/youtube.upload",)
    AccountStore.from_env().save_link(
        "ava",
        "youtube",
        Identity("UC-ava", "Ava", scopes),
        TokenSet(Secret(token), None, None, None),
        datetime.now(UTC),
    )
    day = "2026-11-18"
    video = tmp_path / "reel.mp4"
    make_reel(video)
    reel = PlannedPost(
        id=f"{day}-1",
        theme="espresso",
        format="reel",
        image_prompts=["ohwx woman, espresso bar"],
        captions={"youtube": "Morning espresso ritual"},
        title="Morning espresso ritual",
        hashtags=["espresso"],
        platforms=["youtube"],
        publish_at=datetime(2026, 11, 18, 9, 30, tzinfo=UTC),
        voiceover="Espresso first, then the day.",
    )
    plan = ContentPlan(persona="ava", date=date.fromisoformat(day), posts=[reel], writer="test")
    trained.write_bytes(f"personas/ava/content/{day}/plan.json", plan.model_dump_json().encode())
    trained.write_bytes(f"personas/ava/content/{day}/videos/{reel.id}-9x16.mp4", video.read_bytes())

    publishing = PublishingResource(
        mode="live",
        outbox_dir=str(tmp_path / "outbox"),
        work_dir=str(tmp_path / "w"),
        accounts_url=dg.EnvVar("INFLUENCER_ACCOUNTS_DB"),  # as resources_for passes them: read when the run starts
        token_keys=dg.EnvVar("INFLUENCER_TOKEN_KEYS"),
    )
    with YouTubeStandin(tokens=(token,)) as youtube, dg.instance_for_test() as instance:
        monkeypatch.setenv("YOUTUBE_API_BASE_URL", youtube.url)
        instance.add_dynamic_partitions("personas", ["ava"])
        for _ in range(2):  # a second run (a retry, a duplicate tick) must not post again
            result = dg.materialize(
                [published_posts],
                partition_key=key(day=day),
                instance=instance,
                resources={"media": media(trained), "publishing": publishing},
                run_config=dg.RunConfig(ops={"published_posts": {"config": {"only_due": False}}}),
                raise_on_error=False,
            )
            assert result.success, failure_text(result)
        live = list(youtube.videos)
        logged = "\n".join(
            repr(entry) for run in instance.get_run_records() for entry in instance.all_logs(run.dagster_run.run_id)
        )
    assert len(live) == 1 and live[0].resource["snippet"]["title"] == "Morning espresso ritual"
    assert live[0].resource["status"]["containsSyntheticMedia"] is True
    meta = result.asset_materializations_for_node("published_posts")[0].metadata
    row = meta["posts"].value.records[0].data
    assert (row["state"], row["remote_id"], row["account"]) == ("published", live[0].id, "UC-ava")
    assert "youtube: published" in logged  # the search below covers the publishing run's own log lines
    assert token not in logged and "PLANTED" not in logged, "a platform token leaked into the Dagster event log"
    assert token.encode() not in (tmp_path / "accounts.db").read_bytes(), "tokens are encrypted at rest"


def make_reel(path) -> None:
    """A 2 s vertical H.264 + AAC clip with faststart, made with the bundled ffmpeg."""
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=360x640:rate=30:duration=2",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-movflags",
            "+faststart",
            "-shortest",
            str(path),
        ],
        check=True,
    )


def test_two_personas_with_the_same_post_id_get_their_own_outbox_bundles(tmp_path) -> None:
    """Post ids are per persona and day (`2026-11-19-1`): a second persona's post is its own bundle, not a
    "published" reading of the first persona's marker."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 not really a jpeg, the outbox only copies it")
    publishing = PublishingResource(outbox_dir=str(tmp_path / "outbox"), work_dir=str(tmp_path / "work"))
    released = {}
    for persona in ("ava", "bob"):
        publisher, tokens, account = publishing.publisher_and_token("instagram", persona, store=None)
        token = tokens()
        request = PublishRequest(
            post_id=f"{DAY}-1",
            platform="instagram",
            account_id=account,
            format="image",
            caption=f"{persona}'s caption",
            media=(PostMedia(photo, "image", media_sha256(photo)),),
        )
        handle = publisher.prepare(request, token())
        publisher.wait_ready(handle, token())
        released[persona] = publisher.commit(handle, request, token())
    assert released["ava"].permalink != released["bob"].permalink
    for persona in ("ava", "bob"):
        bundle = tmp_path / "outbox" / persona / f"{DAY}-1" / "instagram"
        assert (bundle / "READY_TO_POST").is_file() and (bundle / "caption.txt").read_text() == f"{persona}'s caption"
