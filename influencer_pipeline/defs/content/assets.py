"""The `content` group: a day's plan, its images and its reels, partitioned by date x persona."""

import hashlib
import io
import json
from datetime import date
from pathlib import Path

import dagster as dg
from PIL import Image

from influencer_pipeline.content.plan import ContentPlan
from influencer_pipeline.dagster_layer.errors import check_ranges, user_errors_are_final
from influencer_pipeline.dagster_layer.loras import deploy_lora, resolve_lora
from influencer_pipeline.dagster_layer.metadata import image_preview, table
from influencer_pipeline.dagster_layer.partitions import calendar
from influencer_pipeline.dagster_layer.plans import (
    day_and_persona,
    day_media,
    fetch,
    plan_key,
    post_image_keys,
    published_count,
    read_plan,
)
from influencer_pipeline.dagster_layer.resources import (
    ImageEngineResource,
    MediaStoreResource,
    VoiceResource,
    WriterResource,
)
from influencer_pipeline.dagster_layer.tags import gpu_step
from influencer_pipeline.defs.content.config import ContentPlanConfig, PostImagesConfig, PostVideosConfig
from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import ClipRequest, GenerationRequest, LoraRef
from influencer_pipeline.generation.comfyui import ComfyUIEngine
from influencer_pipeline.generation.grid import render_grid
from influencer_pipeline.generation.workflows import svd_size
from influencer_pipeline.media.keys import content_prefix
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.personas import load_persona
from influencer_pipeline.profile_inputs import plan_digest
from influencer_pipeline.publishing.brand_safety import scan
from influencer_pipeline.video import ReelReport, ReelSpec, aspects_for, check_reel, render_reel, thumbnail
from influencer_pipeline.voice import word_timings


@dg.asset(partitions_def=calendar, group_name="content", kinds={"python", "openai"})
def content_plan(
    context: dg.AssetExecutionContext, config: ContentPlanConfig, media: MediaStoreResource, writer: WriterResource
) -> dg.MaterializeResult:
    """The day's posts: theme, image prompts, caption per platform, hashtags, publish time, voice-over for reels.

    A day that already has a plan keeps it unless `regenerate` is set; a plan written from an older persona.yaml
    (themes, times, platforms, voice) is shown as stale.
    """
    day, slug = day_and_persona(context)
    store = media.get_store()
    with user_errors_are_final():
        persona = load_persona(store, slug)
        current = plan_digest(persona)
        existing = read_plan(store, slug, day) if store.exists(plan_key(slug, day)) else None
        if existing is not None and config.regenerate:
            published = published_count(context.instance, str(context.partition_key))
            if published:
                raise InputError(
                    f"content_plan {day}|{slug}: regenerate",
                    f"{published} post(s) of this day were already published or handed to the outbox; a new plan "
                    "would make the day's media differ from what was posted",
                    "plan another day, or copy the idea into a day that has not been published",
                )
        if existing is not None and not config.regenerate:
            stale = existing.profile_digest != current
            context.log.info(
                f"{day}|{slug} already has a plan: kept"
                + (" (stale: persona.yaml changed since; launch with regenerate: true to rewrite it)" if stale else "")
            )
            return plan_result(existing, kept=True, stale=stale)
        plan, usage = writer.get_writer().plan_day(persona, date.fromisoformat(day), config.posts or None)
    plan = plan.model_copy(update={"profile_digest": current})
    store.write_bytes(plan_key(slug, day), plan.model_dump_json(indent=2).encode())
    result = plan_result(plan, kept=False, stale=False)
    return dg.MaterializeResult(
        metadata={
            **(result.metadata or {}),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_usd": dg.MetadataValue.float(float(usage.cost_usd)),
            "writer_attempts": usage.attempts,
        }
    )


def plan_result(plan: ContentPlan, kept: bool, stale: bool) -> dg.MaterializeResult:
    rows = [
        {
            "time": post.publish_at.strftime("%H:%M %Z"),
            "post": post.id,
            "format": post.format,
            "platforms": ", ".join(post.platforms),
            "theme": post.theme,
            "caption": post.captions[post.platforms[0]],
        }
        for post in sorted(plan.posts, key=lambda p: p.publish_at)
    ]
    columns = [("time", "string"), ("post", "string"), ("format", "string"), ("platforms", "string")]
    return dg.MaterializeResult(
        metadata={
            "calendar": table(rows, [*columns, ("theme", "string"), ("caption", "string")]),
            "posts": len(plan.posts),
            "reels": sum(p.format == "reel" for p in plan.posts),
            "writer": plan.writer,
            "kept_existing": kept,
            "stale": stale,
        }
    )


def digest_of(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def rendered_from(store: MediaStore, manifest_key: str) -> str | None:
    """The input digest a folder of renders was made from (None: never rendered, or from another layout)."""
    if not store.exists(manifest_key):
        return None
    return json.loads(store.read_bytes(manifest_key)).get("inputs")


@dg.asset(
    partitions_def=calendar,
    group_name="content",
    deps=[content_plan, dg.AssetKey("lora_weights")],
    kinds={"pytorch", "image"},
    **gpu_step(),
)
def post_images(
    context: dg.AssetExecutionContext,
    config: PostImagesConfig,
    media: MediaStoreResource,
    image_engine: ImageEngineResource,
) -> dg.MaterializeResult:
    """Every image the plan asks for, rendered with the persona's active LoRA version; parameters (and the
    version) stored beside each one. Images already rendered from the same plan and version are kept."""
    day, slug = day_and_persona(context)
    store = media.get_store()
    prefix = content_prefix(slug, day) + "images/"
    with user_errors_are_final():
        check_ranges(config, "post_images config")
        persona = load_persona(store, slug)
        plan = read_plan(store, slug, day)
        lora_record = resolve_lora(
            store, persona, config.lora_version, "post_images config: lora_version", context.instance
        )
        version = lora_record["version"]
        render_settings = config.model_dump(exclude={"regenerate", "lora_version"})
        inputs = digest_of(plan.model_dump_json(), version, json.dumps(render_settings, sort_keys=True))
        if not config.regenerate and rendered_from(store, prefix + "manifest.json") == inputs:
            context.log.info(f"images of {day}|{slug} were already rendered from this plan with LoRA {version}: kept")
            return images_result(store, prefix, kept=True)
        engine = image_engine.get_engine()
        lora = deploy_lora(store, lora_record, image_engine, engine)
        jobs = [
            (
                post.id,
                n,
                GenerationRequest(
                    prompt=prompt,
                    negative_prompt=config.negative_prompt,
                    steps=config.steps,
                    cfg=config.cfg,
                    width=config.reel_width if post.format == "reel" else config.image_size,
                    height=config.reel_height if post.format == "reel" else config.image_size,
                    loras=(LoraRef(lora, config.lora_strength),),
                ),
            )
            for post in plan.posts
            for n, prompt in enumerate(post.image_prompts)
        ]
        context.log.info(
            f"rendering {len(jobs)} images for {len(plan.posts)} posts with {engine.name}, LoRA version {version}"
        )
        images = engine.generate(
            [request for _, _, request in jobs], progress=lambda done, total: context.log.info(f"image {done}/{total}")
        )
    names = []
    for (post_id, n, _), image in zip(jobs, images, strict=True):
        name = f"{post_id}-{n}"
        params = {**image.params, "lora_version": version}
        store.write_bytes(f"{prefix}{name}.png", image.png)
        store.write_bytes(f"{prefix}{name}.json", json.dumps(params, indent=2, default=str).encode())
        names.append(name)
    manifest = {"inputs": inputs, "lora_version": version, "engine": engine.name, "lora": lora, "images": names}
    store.write_bytes(prefix + "manifest.json", json.dumps(manifest, indent=2).encode())
    return images_result(store, prefix, kept=False)


def images_result(store: MediaStore, prefix: str, kept: bool) -> dg.MaterializeResult:
    """Metadata for a day's images, read back from the store (so a kept folder shows exactly as a new one)."""
    manifest = json.loads(store.read_bytes(prefix + "manifest.json"))
    thumbs, rows = [], []
    for name in manifest["images"]:
        params = json.loads(store.read_bytes(f"{prefix}{name}.json"))
        thumbs.append(Image.open(io.BytesIO(store.read_bytes(f"{prefix}{name}.png"))).convert("RGB"))
        rows.append({"image": name, "seed": params.get("seed"), "prompt": params.get("prompt")})
    return dg.MaterializeResult(
        metadata={
            "images": len(rows),
            "engine": manifest["engine"],
            "lora": manifest["lora"],
            "lora_version": manifest["lora_version"],
            "kept_existing": kept,
            "preview": image_preview(render_grid(thumbs, [r["image"] for r in rows], cell=160), "images"),
            "parameters": table(rows, [("image", "string"), ("seed", "int"), ("prompt", "string")]),
            "folder": dg.MetadataValue.path(store.uri(prefix)),
        },
        tags={"lora_version": manifest["lora_version"]},
    )


@dg.asset(
    partitions_def=calendar,
    group_name="content",
    deps=[post_images],
    kinds={"ffmpeg", "video"},
    check_specs=[
        dg.AssetCheckSpec("reels_valid", asset="post_videos", blocking=True),
        dg.AssetCheckSpec("brand_safety", asset="post_videos", blocking=True),
    ],
)
def post_videos(
    context: dg.AssetExecutionContext,
    config: PostVideosConfig,
    media: MediaStoreResource,
    voice: VoiceResource,
    image_engine: ImageEngineResource,
) -> dg.MaterializeResult:
    """Each reel: Ken Burns over its stills, voice-over, word-timed subtitles, one file per aspect the platforms need,
    -14 LUFS, H.264 High + AAC with faststart; every file re-probed and checked."""
    day, slug = day_and_persona(context)
    store = media.get_store()
    work = Path(image_engine.work_dir) / slug / "reels" / day
    work.mkdir(parents=True, exist_ok=True)
    with user_errors_are_final():
        animator = image_engine.get_animator("post_videos.img2vid_clips") if config.img2vid_clips else None
        persona = load_persona(store, slug)
        plan = read_plan(store, slug, day)
        images_key = content_prefix(slug, day) + "images/manifest.json"
        inputs = digest_of(
            store.read_bytes(images_key) if store.exists(images_key) else b"",
            plan.model_dump_json(),
            config.model_dump_json(exclude={"regenerate"}),
            voice.engine,
            persona.voice,
        )
        if not config.regenerate and rendered_from(store, videos_manifest_key(slug, day)) == inputs:
            context.log.info(f"reels of {day}|{slug} were already cut from these images and plan: kept")
            return stored_videos_result(store, slug, day)
        speaker, aligner = voice.get_voice(persona.voice), voice.get_aligner()
        music = fetch(store, config.music_key, work) if config.music_key else None
        rows, problems, thumb = [], [], b""
        for post in (p for p in plan.posts if p.format == "reel"):
            stills = [fetch(store, key, work) for key in post_image_keys(store, slug, day, post.id)]
            clips = animate(animator, stills[: config.img2vid_clips], config, store, slug, day, post.id, work)
            if clips:
                context.log.info(f"{post.id}: {len(clips)} ComfyUI img2vid clip(s) open the reel")
            track = speaker.speak(post.voiceover, work / f"{post.id}-voice.wav")
            words, timing = word_timings(track, post.voiceover, aligner)
            context.log.info(
                f"{post.id}: {track.duration_s:.1f} s of {track.engine} voice, subtitles timed by {timing}"
            )
            for aspect in aspects_for(post.platforms):
                spec = ReelSpec(
                    stills=stills,
                    voice=track.path,
                    words=words,
                    width=even(aspect.width * config.scale),
                    height=even(aspect.height * config.scale),
                    music=music,
                    seconds_per_still=config.seconds_per_still or None,
                    clips=clips,
                )
                output = work / f"{post.id}-{aspect.slug}.mp4"
                report = render_reel(spec, output, work / "tmp", progress=context.log.info)
                key = content_prefix(slug, day) + f"videos/{output.name}"
                store.write_bytes(key, output.read_bytes())
                problems += [f"{output.name}: {p}" for p in check_reel(report, spec)]
                thumb = thumb or thumbnail(output, at_s=min(1.0, report.duration_s / 2))
                rows.append(reel_row(post.id, aspect.name, timing, report))
    safety = scan(day_media(store, slug, day, work))
    context.log.info(safety.summary())
    if thumb:
        store.write_bytes(content_prefix(slug, day) + "videos/thumbnail.jpg", thumb)
    record = {
        "inputs": inputs,
        "rows": rows,
        "voice": voice.engine,
        "reels_valid": {"passed": not problems, "problems": problems},
        "brand_safety": {
            "passed": safety.passed,
            "max_score": max((f.max_score for f in safety.files), default=0.0),
            "files": len(safety.files),
            "summary": safety.summary()[:2000],
        },
    }
    store.write_bytes(videos_manifest_key(slug, day), json.dumps(record, indent=2).encode())
    return stored_videos_result(store, slug, day, kept=False)


def videos_manifest_key(slug: str, day: str) -> str:
    return content_prefix(slug, day) + "videos/manifest.json"


def stored_videos_result(store: MediaStore, slug: str, day: str, kept: bool = True) -> dg.MaterializeResult:
    """The reels' metadata and checks, from the record written when they were cut: a kept day shows (and is
    checked) exactly as when it was made, and its files stay byte for byte what may have been published."""
    record = json.loads(store.read_bytes(videos_manifest_key(slug, day)))
    rows, valid, safety = record["rows"], record["reels_valid"], record["brand_safety"]
    metadata: dict[str, object] = {
        "reels": len(rows),
        "table": table(rows, REEL_COLUMNS),
        "folder": dg.MetadataValue.path(store.uri(content_prefix(slug, day) + "videos/")),
        "voice": record["voice"],
        "kept_existing": kept,
    }
    thumb_key = content_prefix(slug, day) + "videos/thumbnail.jpg"
    if rows:
        metadata |= {
            "mean_lufs": round(sum(r["lufs"] for r in rows) / len(rows), 2),
            "total_render_s": round(sum(r["render_s"] for r in rows), 1),
        }
        if store.exists(thumb_key):
            metadata["thumbnail"] = image_preview(store.read_bytes(thumb_key), "first reel")
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="reels_valid",
                passed=valid["passed"],
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"problems": len(valid["problems"])},
                description="; ".join(valid["problems"])
                or f"{len(rows)} reels: streams, size, duration and loudness ok",
            ),
            dg.AssetCheckResult(
                check_name="brand_safety",
                passed=safety["passed"],
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"max_score": safety["max_score"], "files": safety["files"]},
                description=safety["summary"],
            ),
        ],
    )


REEL_COLUMNS = [
    ("post", "string"),
    ("aspect", "string"),
    ("subtitles", "string"),
    ("duration_s", "float"),
    ("lufs", "float"),
    ("true_peak_db", "float"),
    ("size_mb", "float"),
    ("render_s", "float"),
]


def animate(
    animator: ComfyUIEngine | None,
    stills: list[Path],
    config: PostVideosConfig,
    store: MediaStore,
    slug: str,
    day: str,
    post_id: str,
    work: Path,
) -> list[Path]:
    """ComfyUI image-to-video for the given stills; each clip is kept in the media store next to the reels."""
    if animator is None or not stills:
        return []
    requests = []
    for path in stills:
        width, height = svd_size(*Image.open(path).size)
        requests.append(
            ClipRequest(
                path.read_bytes(), width=width, height=height, frames=config.img2vid_frames, fps=config.img2vid_fps
            )
        )
    paths = []
    for index, clip in enumerate(animator.animate(requests), start=1):
        name = f"{post_id}-clip-{index}.webp"
        store.write_bytes(content_prefix(slug, day) + f"clips/{name}", clip.webp)
        paths.append(work / name)
        paths[-1].write_bytes(clip.webp)
    return paths


def reel_row(post_id: str, aspect: str, timing: str, report: ReelReport) -> dict[str, object]:
    return {
        "post": post_id,
        "aspect": aspect,
        "subtitles": timing,
        "duration_s": round(report.duration_s, 2),
        "lufs": round(report.integrated_lufs, 2),
        "true_peak_db": round(report.true_peak_db, 2),
        "size_mb": round(report.size_bytes / 1e6, 2),
        "render_s": round(report.render_s, 1),
    }


def even(value: float) -> int:
    """H.264 with yuv420p needs even frame sizes."""
    return max(2, round(value / 2) * 2)
