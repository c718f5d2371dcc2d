"""The `content` group: a day's plan, its images and its reels, partitioned by date x persona."""

import io
import json
from datetime import date

import dagster as dg
from PIL import Image
from pydantic import Field

from influencer_pipeline.content.plan import ContentPlan
from influencer_pipeline.defs.errors import user_errors_are_final
from influencer_pipeline.defs.metadata import image_preview, table
from influencer_pipeline.defs.partitions import calendar
from influencer_pipeline.defs.resources import ImageEngineResource, MediaStoreResource, WriterResource
from influencer_pipeline.defs.training import GPU_TAGS, deploy_latest_lora, lora_weights
from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import GenerationRequest, LoraRef
from influencer_pipeline.generation.grid import render_grid
from influencer_pipeline.media.keys import content_prefix, lora_manifest_key
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.personas import load_persona


def day_and_persona(context: dg.AssetExecutionContext) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["date"], keys["persona"]


def read_plan(store: MediaStore, persona: str, day: str) -> ContentPlan:
    key = content_prefix(persona, day) + "plan.json"
    if not store.exists(key):
        raise InputError(key, "no content plan for this day", f"materialize content_plan for {day}|{persona} first")
    return ContentPlan.model_validate_json(store.read_bytes(key))


class ContentPlanConfig(dg.Config):
    posts: int = Field(0, ge=0, le=5, description="Posts to plan; 0: one per posting time in persona.yaml.")


@dg.asset(partitions_def=calendar, group_name="content", kinds={"python", "openai"})
def content_plan(
    context: dg.AssetExecutionContext, config: ContentPlanConfig, media: MediaStoreResource, writer: WriterResource
) -> dg.MaterializeResult:
    """The day's posts: theme, image prompts, caption per platform, hashtags, publish time, voice-over for reels."""
    day, slug = day_and_persona(context)
    store = media.get_store()
    with user_errors_are_final():
        persona = load_persona(store, slug)
        plan, usage = writer.get_writer().plan_day(persona, date.fromisoformat(day), config.posts or None)
    store.write_bytes(content_prefix(slug, day) + "plan.json", plan.model_dump_json(indent=2).encode())
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
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_usd": dg.MetadataValue.float(float(usage.cost_usd)),
            "writer_attempts": usage.attempts,
        }
    )


class PostImagesConfig(dg.Config):
    steps: int = Field(25, ge=1, le=150)
    cfg: float = Field(7.0, ge=1, le=30)
    image_size: int = Field(1024, ge=256, le=2048, multiple_of=8, description="Square posts and carousels.")
    reel_width: int = Field(768, ge=256, le=2048, multiple_of=8, description="Stills for reels are 9:16.")
    reel_height: int = Field(1344, ge=256, le=2048, multiple_of=8)
    lora_strength: float = Field(0.9, ge=-10, le=10)
    negative_prompt: str = "lowres, blurry, deformed hands, extra fingers, watermark, text, logo"


@dg.asset(
    partitions_def=calendar,
    group_name="content",
    deps=[content_plan, lora_weights],
    pool="gpu",
    op_tags=GPU_TAGS,
    kinds={"pytorch", "image"},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
)
def post_images(
    context: dg.AssetExecutionContext,
    config: PostImagesConfig,
    media: MediaStoreResource,
    image_engine: ImageEngineResource,
) -> dg.MaterializeResult:
    """Every image the plan asks for, rendered with the persona's latest LoRA; parameters stored beside each one."""
    day, slug = day_and_persona(context)
    store = media.get_store()
    with user_errors_are_final():
        plan = read_plan(store, slug, day)
        if not store.exists(lora_manifest_key(slug)):
            raise InputError(lora_manifest_key(slug), "the persona has no trained LoRA", "materialize lora_weights")
        engine = image_engine.get_engine()
        lora = deploy_latest_lora(store, slug, image_engine, engine)
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
        context.log.info(f"rendering {len(jobs)} images for {len(plan.posts)} posts with {engine.name}")
        images = engine.generate(
            [request for _, _, request in jobs], progress=lambda done, total: context.log.info(f"image {done}/{total}")
        )
    prefix = content_prefix(slug, day) + "images/"
    thumbs, rows = [], []
    for (post_id, n, _), image in zip(jobs, images, strict=True):
        name = f"{post_id}-{n}"
        store.write_bytes(f"{prefix}{name}.png", image.png)
        store.write_bytes(f"{prefix}{name}.json", json.dumps(image.params, indent=2, default=str).encode())
        thumbs.append(Image.open(io.BytesIO(image.png)).convert("RGB"))
        rows.append({"image": name, "seed": image.params.get("seed"), "prompt": image.params.get("prompt")})
    return dg.MaterializeResult(
        metadata={
            "images": len(images),
            "engine": engine.name,
            "lora": lora,
            "preview": image_preview(render_grid(thumbs, [r["image"] for r in rows], cell=160), "images"),
            "parameters": table(rows, [("image", "string"), ("seed", "int"), ("prompt", "string")]),
            "folder": dg.MetadataValue.path(store.uri(prefix)),
        }
    )
