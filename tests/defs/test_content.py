"""The content group materialised for real: plans from both writers, images with the persona's LoRA, the schedule."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import dagster as dg
import pytest
from dagster._core.definitions.partitions.context import partition_loading_context
from PIL import Image, ImageStat

from influencer_pipeline.content.plan import ContentPlan
from influencer_pipeline.dagster_layer.partitions import calendar, calendar_days
from influencer_pipeline.dagster_layer.resources import (
    ComfyUIImageEngineResource,
    EmbeddedImageEngineResource,
    EspeakVoiceResource,
    OpenAIChatWriterResource,
    TemplateWriterResource,
)
from influencer_pipeline.dagster_layer.settings import CalendarSettings
from influencer_pipeline.definitions import defs
from influencer_pipeline.defs.content.assets import content_plan, post_images, post_videos
from influencer_pipeline.defs.content.schedules import build_content_calendar, plan_persona
from influencer_pipeline.defs.datasets.assets import training_images
from influencer_pipeline.media import LocalMediaStore
from influencer_pipeline.video import thumbnail
from tests.content.llm_standin import LLMStandin, Status
from tests.defs.conftest import DAY, PERSONA_YAML, key, media
from tests.defs.test_datasets import SAMPLE, failure_text
from tests.generation.comfy_standin import ComfyStandin


def run(store, assets, writer=None, run_config=None, partition=None):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        return dg.materialize(
            assets,
            partition_key=partition or key(),
            instance=instance,
            resources={
                "media": media(store),
                "writer": writer or TemplateWriterResource(),
                "image_engine": EmbeddedImageEngineResource(work_dir=str(store.root.parent / "work")),
            },
            run_config=run_config,
            raise_on_error=False,
        )


def test_template_plan_is_written_and_shown_as_a_calendar(trained) -> None:
    result = run(trained, [content_plan])
    assert result.success, failure_text(result)
    plan = ContentPlan.model_validate_json(trained.read_bytes(f"personas/ava/content/{DAY}/plan.json"))
    assert plan.date.isoformat() == DAY and len(plan.posts) == 2
    assert {p.publish_at.utcoffset().total_seconds() for p in plan.posts} == {3600.0}  # Europe/Rome in November
    meta = result.asset_materializations_for_node("content_plan")[0].metadata
    assert meta["posts"].value == 2 and meta["writer"].value == "template"
    assert [r.data["time"][:5] for r in meta["calendar"].value.records] == ["09:30", "18:00"]


def test_openai_writer_usage_is_recorded(trained) -> None:
    with LLMStandin(api_key="sk-test", models=("m",)) as llm:
        result = run(
            trained,
            [content_plan],
            OpenAIChatWriterResource(base_url=llm.url, api_key="sk-test", model="m"),
            run_config=dg.RunConfig(ops={"content_plan": {"config": {"regenerate": True}}}),
        )
        assert len(llm.received) == 1
    assert result.success, failure_text(result)
    meta = result.asset_materializations_for_node("content_plan")[0].metadata
    assert meta["writer"].value.startswith("openai-chat:") and meta["prompt_tokens"].value > 0


def test_failing_writer_api_ends_in_a_clear_error_after_retries(trained) -> None:
    with LLMStandin(api_key="sk-secret-123", models=("m",)) as llm:
        llm.then(*[Status(500)] * 10)
        writer = OpenAIChatWriterResource(
            base_url=llm.url, api_key="sk-secret-123", model="m", max_retries=2, backoff_s=0.01
        )
        result = run(trained, [content_plan], writer, partition=key(day="2026-11-20"))
        attempts = len(llm.received)
    assert not result.success
    text = failure_text(result)
    assert attempts == 3 and "500" in text
    assert "sk-secret-123" not in text
    assert not trained.exists("personas/ava/content/2026-11-20/plan.json"), "never a silently empty plan"


def test_post_images_use_the_persona_lora_and_record_parameters(trained) -> None:
    config = {"steps": 2, "image_size": 256, "reel_width": 256, "reel_height": 448}
    result = run(trained, [content_plan, post_images], run_config=dg.RunConfig(ops={"post_images": {"config": config}}))
    assert result.success, failure_text(result)
    plan = ContentPlan.model_validate_json(trained.read_bytes(f"personas/ava/content/{DAY}/plan.json"))
    expected = sum(len(p.image_prompts) for p in plan.posts)
    pngs = [o.key for o in trained.list(f"personas/ava/content/{DAY}/images/") if o.key.endswith(".png")]
    assert len(pngs) == expected
    params = json.loads(trained.read_bytes(pngs[0].replace(".png", ".json")))
    assert params["loras"] and params["loras"][0]["name"].startswith("ava-") and "seed" in params
    latest = json.loads(trained.read_bytes("personas/ava/manifests/lora_weights.json"))["version"]
    assert params["lora_version"] == latest, "each image records the LoRA version it was rendered with"
    meta = result.asset_materializations_for_node("post_images")[0].metadata
    assert meta["images"].value == expected and "data:image/png;base64," in meta["preview"].value
    assert meta["lora_version"].value == latest and meta["kept_existing"].value is False


def tick(store: LocalMediaStore, instance: dg.DagsterInstance, at: datetime, settings=None) -> list[dg.RunRequest]:
    schedule = build_content_calendar(settings or CalendarSettings())
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=at,
        resources={"media": media(store)},
        repository_def=defs.get_repository_def(),
    ) as context:
        return list(schedule.evaluate_tick(context).run_requests or [])


def plan(store, instance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Run what the schedule asked for (content_plan: the whole job runs in the dev-server test)."""
    return dg.materialize(
        [content_plan],
        partition_key=request.partition_key,
        instance=instance,
        resources={"media": media(store), "writer": TemplateWriterResource()},
        run_config=request.run_config or None,
    )


TICK = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
TOMORROW = "2026-11-24"


def test_schedule_prepares_tomorrow_for_each_persona_and_survives_a_broken_one(trained) -> None:
    """Tomorrow, not today, so there is a review window; a persona.yaml that does not load (a non-string key,
    a bad time zone) or a persona without a LoRA is logged and skipped, and the others are still planned."""
    trained.write_bytes("uploads/bob/persona.yaml", b"active: false\n")
    trained.write_bytes("uploads/cy/persona.yaml", b"timezone: Mars/Base\n")
    trained.write_bytes("uploads/eve/persona.yaml", b"1: 2\n")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava", "bob", "cy", "dee", "eve"])
        requests = tick(trained, instance, TICK)
        for request in requests:
            assert plan(trained, instance, request).success
    assert [r.partition_key for r in requests] == [key("ava", TOMORROW)]
    assert trained.exists(f"personas/ava/content/{TOMORROW}/plan.json")
    assert not trained.exists(f"personas/dee/content/{TOMORROW}/plan.json")  # no dataset, no LoRA: not planned
    assert build_content_calendar(CalendarSettings()).default_status == dg.DefaultScheduleStatus.RUNNING


def test_schedule_keeps_a_planned_day_and_regenerates_it_only_when_stale_and_unpublished(trained) -> None:
    day = "2026-11-26"
    at = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        [first] = tick(trained, instance, at)
        assert plan(trained, instance, first).success
        before = trained.read_bytes(f"personas/ava/content/{day}/plan.json")
        assert tick(trained, instance, at) == [], "a day already planned is not planned again"

        trained.write_bytes("uploads/ava/persona.yaml", PERSONA_YAML.replace(b"espresso", b"sailing"))
        try:
            [stale] = tick(trained, instance, at)
            assert stale.run_config == {"ops": {"content_plan": {"config": {"regenerate": True}}}}
            assert stale.run_key != first.run_key
            regenerated = plan(trained, instance, stale)
            assert regenerated.success
            assert trained.read_bytes(f"personas/ava/content/{day}/plan.json") != before
            assert tick(trained, instance, at) == [], "once regenerated, the day is current again"

            trained.write_bytes("uploads/ava/persona.yaml", PERSONA_YAML.replace(b"espresso", b"hiking"))
            instance.report_runless_asset_event(
                dg.AssetMaterialization("published_posts", partition=str(key("ava", day)), metadata={"published": 1})
            )
            assert tick(trained, instance, at) == [], "a day with published posts is never re-rendered"
        finally:
            trained.write_bytes("uploads/ava/persona.yaml", PERSONA_YAML)


def test_schedule_names_the_real_reason_a_persona_cannot_be_planned(tmp_path) -> None:
    """A 3-photo persona fails min_images: the schedule says so, not "no trained LoRA"."""
    store = LocalMediaStore(tmp_path / "media")
    for i, path in enumerate(sorted(SAMPLE.glob("ava_0*.jpg"))[:3]):
        store.write_bytes(f"uploads/fay/{i}.jpg", path.read_bytes())
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["fay"])
        curated = dg.materialize(
            [training_images],
            partition_key="fay",
            instance=instance,
            resources={"media": media(store)},
            raise_on_error=False,
        )
        assert not curated.success
        request, reason = plan_persona(instance, store, "fay", TOMORROW)
    assert request is None
    assert "min_images" in reason and "3 usable images" in reason and "uploads/fay/" in reason


def test_a_day_with_a_plan_keeps_it_unless_regenerate_is_asked(trained) -> None:
    day = "2026-11-27"
    assert run(trained, [content_plan], partition=key(day=day)).success
    before = trained.read_bytes(f"personas/ava/content/{day}/plan.json")
    with LLMStandin(api_key="sk-test", models=("m",)) as llm:
        writer = OpenAIChatWriterResource(base_url=llm.url, api_key="sk-test", model="m")
        kept = run(trained, [content_plan], writer, partition=key(day=day))
        assert llm.received == [], "no writer call for a day that has its plan"
        regenerate = dg.RunConfig(ops={"content_plan": {"config": {"regenerate": True}}})
        rewritten = run(trained, [content_plan], writer, run_config=regenerate, partition=key(day=day))
        assert len(llm.received) == 1
    assert kept.success and rewritten.success
    assert kept.asset_materializations_for_node("content_plan")[0].metadata["kept_existing"].value is True
    assert trained.read_bytes(f"personas/ava/content/{day}/plan.json") != before

    made = trained.read_bytes(f"personas/ava/content/{day}/plan.json")
    with dg.instance_for_test() as instance:  # the day's bundles went to the outbox: its media are out there
        instance.add_dynamic_partitions("personas", ["ava"])
        instance.report_runless_asset_event(
            dg.AssetMaterialization("published_posts", partition=str(key(day=day)), metadata={"ready_to_post": 2})
        )
        refused = dg.materialize(
            [content_plan],
            partition_key=key(day=day),
            instance=instance,
            resources={"media": media(trained), "writer": TemplateWriterResource()},
            run_config=regenerate,
            raise_on_error=False,
        )
    assert not refused.success and "2 post(s) of this day were already published" in failure_text(refused)
    assert trained.read_bytes(f"personas/ava/content/{day}/plan.json") == made


def test_the_calendar_reaches_the_horizon() -> None:
    """The Materialize dialog must accept tomorrow and the next two weeks, not answer "Could not find partition"."""
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    date_dimension = next(d for d in calendar.partitions_defs if d.name == "date").partitions_def
    with partition_loading_context(effective_dt=now):  # "now", as Dagster's own tests pin it
        assert date_dimension.get_last_partition_key() == "2026-12-20"
        assert calendar_days(3).get_last_partition_key() == "2026-12-09"
    assert CalendarSettings.from_env({"CONTENT_LEAD_DAYS": "2", "CONTENT_TIMEZONE": "Europe/Rome"}).lead_days == 2
    with pytest.raises(ValueError, match="CONTENT_LEAD_DAYS=20"):
        CalendarSettings.from_env({"CONTENT_LEAD_DAYS": "20"})


def test_images_use_the_pinned_lora_version_or_refuse_an_unknown_pin(trained) -> None:
    day = "2026-11-28"
    latest = json.loads(trained.read_bytes("personas/ava/manifests/lora_weights.json"))["version"]
    small = {"steps": 1, "image_size": 256, "reel_width": 256, "reel_height": 448}
    unknown = dict(small, lora_version="abcdef123456")
    result = run(
        trained,
        [content_plan, post_images],
        run_config=dg.RunConfig(ops={"post_images": {"config": unknown}}),
        partition=key(day=day),
    )
    assert not result.success
    text = failure_text(result)
    assert "post_images config: lora_version: LoRA version 'abcdef123456' does not exist" in text and latest in text

    pinned = dict(small, lora_version=latest[:8])
    result = run(
        trained, [post_images], run_config=dg.RunConfig(ops={"post_images": {"config": pinned}}), partition=key(day=day)
    )
    assert result.success, failure_text(result)
    params = json.loads(trained.read_bytes(f"personas/ava/content/{day}/images/{day}-1-0.json"))
    assert params["lora_version"] == latest


def make_day_with_reels(trained, config: dict) -> dg.ExecuteInProcessResult:
    """Plan, images and reels of 2026-11-21 for ava on a fresh instance, as a run (or a backfill) makes them."""
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        return dg.materialize(
            [content_plan, post_images, post_videos],
            partition_key=key(day="2026-11-21"),
            instance=instance,
            resources={
                "media": media(trained),
                "writer": TemplateWriterResource(),
                "image_engine": EmbeddedImageEngineResource(work_dir=str(trained.root.parent / "work")),
                "voice": EspeakVoiceResource(),
            },
            run_config=dg.RunConfig(ops=config),
            raise_on_error=False,
        )


def test_post_videos_render_checked_reels_with_voice_and_subtitles(trained) -> None:
    config = {
        "post_images": {"config": {"steps": 2, "image_size": 256, "reel_width": 256, "reel_height": 448}},
        "post_videos": {"config": {"scale": 0.2}},
    }
    result = make_day_with_reels(trained, config)
    assert result.success, failure_text(result)
    meta = {k: v.value for k, v in result.asset_materializations_for_node("post_videos")[0].metadata.items()}
    plan = ContentPlan.model_validate_json(trained.read_bytes("personas/ava/content/2026-11-21/plan.json"))
    reels = [p for p in plan.posts if p.format == "reel"]
    assert reels, "a persona on tiktok gets at least one reel a day"
    assert meta["reels"] == len(reels)  # instagram + tiktok both take 9:16: one file per reel
    row = meta["table"].records[0].data
    assert row["aspect"] == "9:16" and row["subtitles"] == "engine"
    assert abs(row["lufs"] - -14) <= 1 and row["true_peak_db"] <= -1.4
    assert "data:image/jpeg;base64," in meta["thumbnail"]
    videos = [o.key for o in trained.list("personas/ava/content/2026-11-21/videos/") if o.key.endswith(".mp4")]
    assert videos == [f"personas/ava/content/2026-11-21/videos/{reels[0].id}-9x16.mp4"]
    assert trained.path(videos[0]).stat().st_mode & 0o044 == 0o044, "reels are readable by the group and others"
    cut = trained.read_bytes(videos[0])

    again = make_day_with_reels(trained, config)  # a backfill of a day already made (and maybe published)
    assert again.success, failure_text(again)
    for node in ("content_plan", "post_images", "post_videos"):
        assert again.asset_materializations_for_node(node)[0].metadata["kept_existing"].value is True, node
    assert trained.read_bytes(videos[0]) == cut, "what may have been published is never re-rendered"
    evaluations = [e.event_specific_data for e in again.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert sorted((e.check_name, e.passed) for e in evaluations) == [("brand_safety", True), ("reels_valid", True)]
    evaluations = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert sorted((e.check_name, e.passed) for e in evaluations) == [("brand_safety", True), ("reels_valid", True)]


def test_post_videos_open_reels_with_a_comfyui_img2vid_clip(trained, tmp_path) -> None:
    day = "2026-11-22"
    work = str(trained.root.parent / "work")
    images = {"post_images": {"config": {"steps": 2, "image_size": 256, "reel_width": 256, "reel_height": 448}}}
    made = run(trained, [content_plan, post_images], run_config=dg.RunConfig(ops=images), partition=key(day=day))
    assert made.success, failure_text(made)
    clips = {"img2vid_clips": 1, "img2vid_frames": 12, "img2vid_fps": 6}
    with ComfyStandin(output_dir=tmp_path / "comfy" / "output") as comfy, dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        result = dg.materialize(
            [post_videos],
            partition_key=key(day=day),
            instance=instance,
            resources={
                "media": media(trained),
                "image_engine": ComfyUIImageEngineResource(url=comfy.url, work_dir=work),
                "voice": EspeakVoiceResource(),
            },
            run_config=dg.RunConfig(ops={"post_videos": {"config": {"scale": 0.2, **clips}}}),
            raise_on_error=False,
        )
        [upload] = comfy.received("POST", "/upload/image")
        [run_] = comfy.runs.values()
    assert result.success, failure_text(result)
    plan = ContentPlan.model_validate_json(trained.read_bytes(f"personas/ava/content/{day}/plan.json"))
    reel = next(p for p in plan.posts if p.format == "reel")
    first_still = trained.read_bytes(f"personas/ava/content/{day}/images/{reel.id}-0.png")
    assert first_still in upload.body, "the reel's first still is what ComfyUI animates"
    conditioning = next(n["inputs"] for n in run_.graph.values() if n["class_type"] == "SVD_img2vid_Conditioning")
    assert (conditioning["width"], conditioning["height"], conditioning["video_frames"]) == (576, 1024, 12)
    clip = trained.read_bytes(f"personas/ava/content/{day}/clips/{reel.id}-clip-1.webp")
    clip_colour = Image.open(io.BytesIO(clip)).convert("RGB").getpixel((0, 0))
    video = trained.root / f"personas/ava/content/{day}/videos/{reel.id}-9x16.mp4"
    opening = Image.open(io.BytesIO(thumbnail(video, at_s=0.0))).convert("RGB")
    top = opening.crop((0, 0, opening.width, opening.height // 3))  # above the subtitles
    assert max(abs(a - b) for a, b in zip(ImageStat.Stat(top).mean, clip_colour, strict=True)) < 12, (
        "the reel opens on the clip's frames, not on Ken Burns over the still"
    )
    assert max(ImageStat.Stat(top).stddev) < 6


def test_img2vid_without_comfyui_fails_at_once_with_the_fix(trained) -> None:
    config = {"post_videos": {"config": {"img2vid_clips": 1}}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        result = dg.materialize(
            [post_videos],
            partition_key=key(day="2026-11-20"),
            instance=instance,
            resources={
                "media": media(trained),
                "image_engine": EmbeddedImageEngineResource(work_dir=str(trained.root.parent / "work")),
                "voice": EspeakVoiceResource(),
            },
            run_config=dg.RunConfig(ops=config),
            raise_on_error=False,
        )
    assert not result.success
    text = failure_text(result)
    assert "post_videos.img2vid_clips: image-to-video clips need the ComfyUI engine" in text and "COMFYUI_URL" in text


def test_out_of_range_render_settings_fail_at_once_with_every_range(trained) -> None:
    """A range error is the creator's to fix: one message with every bad field, no retry of a GPU step."""
    bad = {"steps": 500, "image_size": 250}
    result = run(trained, [post_images], run_config=dg.RunConfig(ops={"post_images": {"config": bad}}))
    assert not result.success
    text = failure_text(result)
    assert "'steps': 500 is out of range 1 to 150" in text and "'image_size': 250 is out of range 256 to 2048" in text
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events), "bad input is never retried"
