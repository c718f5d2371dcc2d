"""The content group materialised for real: plans from both writers, images with the persona's LoRA, the schedule."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import dagster as dg
from PIL import Image, ImageStat

from influencer_pipeline.content.plan import ContentPlan
from influencer_pipeline.definitions import defs
from influencer_pipeline.defs.content import content_plan, post_images, post_videos
from influencer_pipeline.defs.resources import (
    ImageEngineResource,
    VoiceResource,
    WriterResource,
)
from influencer_pipeline.defs.schedules import content_calendar
from influencer_pipeline.media import LocalMediaStore
from influencer_pipeline.video import thumbnail
from tests.content.llm_standin import LLMStandin, Status
from tests.defs.conftest import DAY, key, media
from tests.defs.test_datasets import failure_text
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
                "writer": writer or WriterResource(),
                "image_engine": ImageEngineResource(work_dir=str(store.root.parent / "work")),
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
        result = run(trained, [content_plan], WriterResource(base_url=llm.url, api_key="sk-test", model="m"))
        assert len(llm.received) == 1
    assert result.success, failure_text(result)
    meta = result.asset_materializations_for_node("content_plan")[0].metadata
    assert meta["writer"].value.startswith("openai-chat:") and meta["prompt_tokens"].value > 0


def test_failing_writer_api_ends_in_a_clear_error_after_retries(trained) -> None:
    with LLMStandin(api_key="sk-secret-123", models=("m",)) as llm:
        llm.then(*[Status(500)] * 10)
        writer = WriterResource(base_url=llm.url, api_key="sk-secret-123", model="m", max_retries=2, backoff_s=0.01)
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
    meta = result.asset_materializations_for_node("post_images")[0].metadata
    assert meta["images"].value == expected and "data:image/png;base64," in meta["preview"].value


def test_schedule_tick_targets_today_for_every_active_persona(tmp_path) -> None:
    store = LocalMediaStore(tmp_path / "media")
    store.write_bytes("uploads/ava/persona.yaml", b"trigger_word: ohwx\n")
    store.write_bytes("uploads/bob/persona.yaml", b"active: false\n")
    store.write_bytes("uploads/cy/persona.yaml", b"timezone: Mars/Base\n")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava", "bob", "cy", "dee"])
        tick = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=tick,
            resources={"media": media(store)},
            repository_def=defs.get_repository_def(),
        ) as context:
            requests = content_calendar.evaluate_tick(context).run_requests
        for request in requests:  # plan each requested partition (the whole job runs in the dev-server test)
            result = dg.materialize(
                [content_plan],
                partition_key=request.partition_key,
                instance=instance,
                resources={"media": media(store), "writer": WriterResource()},
            )
            assert result.success
    assert [r.partition_key for r in requests] == [key("ava", DAY), key("dee", DAY)]
    assert store.exists(f"personas/ava/content/{DAY}/plan.json")
    assert store.exists(f"personas/dee/content/{DAY}/plan.json")
    assert not store.exists(f"personas/bob/content/{DAY}/plan.json")  # inactive
    assert content_calendar.default_status == dg.DefaultScheduleStatus.RUNNING


def test_post_videos_render_checked_reels_with_voice_and_subtitles(trained) -> None:
    config = {
        "post_images": {"config": {"steps": 2, "image_size": 256, "reel_width": 256, "reel_height": 448}},
        "post_videos": {"config": {"scale": 0.2}},
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        result = dg.materialize(
            [content_plan, post_images, post_videos],
            partition_key=key(day="2026-11-21"),
            instance=instance,
            resources={
                "media": media(trained),
                "writer": WriterResource(),
                "image_engine": ImageEngineResource(work_dir=str(trained.root.parent / "work")),
                "voice": VoiceResource(),
            },
            run_config=dg.RunConfig(ops=config),
            raise_on_error=False,
        )
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
    videos = [o.key for o in trained.list("personas/ava/content/2026-11-21/videos/")]
    assert videos == [f"personas/ava/content/2026-11-21/videos/{reels[0].id}-9x16.mp4"]
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
                "image_engine": ImageEngineResource(comfyui_url=comfy.url, work_dir=work),
                "voice": VoiceResource(),
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
                "image_engine": ImageEngineResource(work_dir=str(trained.root.parent / "work")),
                "voice": VoiceResource(),
            },
            run_config=dg.RunConfig(ops=config),
            raise_on_error=False,
        )
    assert not result.success
    text = failure_text(result)
    assert "post_videos.img2vid_clips: image-to-video clips need the ComfyUI engine" in text and "COMFYUI_URL" in text
