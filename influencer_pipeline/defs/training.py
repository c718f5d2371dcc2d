"""The `training` group: a LoRA per persona and a validation grid rendered with it, both in the `gpu` pool."""

import hashlib
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
from PIL import Image
from pydantic import Field

from influencer_pipeline.defs.datasets import image_captions
from influencer_pipeline.defs.errors import user_errors_are_final
from influencer_pipeline.defs.metadata import image_preview, table
from influencer_pipeline.defs.partitions import personas
from influencer_pipeline.defs.resources import ImageEngineResource, MediaStoreResource, TrainerResource
from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import GenerationRequest, ImageEngine, LoraRef
from influencer_pipeline.generation.consistency import consistency_score
from influencer_pipeline.generation.grid import render_grid
from influencer_pipeline.media.keys import dataset_prefix, lora_manifest_key, lora_prefix, samples_prefix
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.media.transfer import download_prefix, fingerprint_files
from influencer_pipeline.personas import Persona, load_persona
from influencer_pipeline.training.base import TrainingError, TrainingProgress, TrainingRequest
from influencer_pipeline.training.loss_curve import render_loss_curve
from influencer_pipeline.training.presets import LoraPreset, load_preset

GPU_TAGS = {"gpu": "1"}  # run tag: the instance's run-tag concurrency limit counts GPU runs by it
GPU_OP_TAGS = {
    **GPU_TAGS,
    # dagster-celery: these steps go to the `gpu` queue, which only GPU boxes' workers consume.
    "dagster-celery/queue": "gpu",
    # dagster-k8s (k8s_job_executor): each of these steps runs in a pod that requests one GPU, deep-merged over the
    # executor's step defaults (k8s_executor_from_env).
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                # RAM to load SD/SDXL checkpoints, above the 8Gi step default; a GPU's request defaults to its limit.
                "requests": {"cpu": "2", "memory": "12Gi"},
                "limits": {"memory": "24Gi", "nvidia.com/gpu": "1"},
            }
        },
        # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule (GKE does it itself) so only GPU pods land there.
        "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    },
}
LOG_INTERVAL_S = 10.0


class LoraTrainingConfig(dg.Config):
    """Pick a preset (empty: the persona's `lora_preset`, else the trainer's default) and override its fields.

    Every override is checked against the preset's ranges before any work starts.
    """

    preset: str = ""
    base_model: str | None = None
    resolution: int | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    network_dim: int | None = None
    network_alpha: int | None = None
    optimizer: str | None = None
    lr_scheduler: str | None = None
    repeats: int | None = None
    save_every_n_epochs: int | None = None
    seed: int | None = None
    mixed_precision: str | None = None
    time_limit_s: float | None = Field(None, description="Stop and fail the step after this many seconds.")
    resume: bool = Field(True, description="Continue from the last saved training state of an identical attempt.")

    def overrides(self) -> dict[str, object]:
        skip = {"preset", "time_limit_s", "resume"}
        return {k: v for k, v in self.model_dump().items() if k not in skip and v is not None}


class LoraSamplesConfig(dg.Config):
    prompts: list[str] = Field(default_factory=list, description="1-10 prompts; empty: persona.yaml test_prompts.")
    negative_prompt: str = "lowres, blurry, deformed, watermark, text"
    seed: int = 1234
    steps: int = Field(20, ge=1, le=150)
    cfg: float = Field(7.0, ge=1, le=30)
    size: int = Field(0, description="Square image size; 0: 64 for the embedded tiny model, else 512.")
    lora_strength: float = Field(1.0, ge=-10, le=10)


def choose_preset(config: LoraTrainingConfig, persona: Persona, trainer: TrainerResource) -> LoraPreset:
    return load_preset(config.preset or persona.lora_preset or trainer.default_preset, config.overrides())


def progress_logger(
    log: Callable[[str], None], interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
) -> Callable[[TrainingProgress], None]:
    """Training reports every step; the run log gets a line per epoch and at most one per `interval_s` between
    (events, which carry a `message`, always get theirs)."""
    last = {"time": -float("inf"), "epoch": -1}

    def report(p: TrainingProgress) -> None:
        now = clock()
        if p.message or p.epoch != last["epoch"] or now - last["time"] >= interval_s or p.step == p.total_steps:
            loss = f", loss {p.loss:.4f}" if p.loss is not None else ""
            log(f"step {p.step}/{p.total_steps}, epoch {p.epoch}/{p.total_epochs}{loss} {p.message}".rstrip())
            last.update(time=now, epoch=p.epoch)

    return report


@dg.asset(
    partitions_def=personas,
    group_name="training",
    deps=[image_captions],
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    kinds={"pytorch", "safetensors"},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL),
)
def lora_weights(
    context: dg.AssetExecutionContext,
    config: LoraTrainingConfig,
    media: MediaStoreResource,
    trainer: TrainerResource,
) -> dg.MaterializeResult:
    """The persona's LoRA in kohya `.safetensors` format (loads in ComfyUI), with epoch checkpoints and a loss curve.

    A retry after a crash resumes from the last saved state: the working folder is named after the preset and
    the dataset, so an identical attempt finds it again.
    """
    with user_errors_are_final():
        return train_lora(context, config, media, trainer)


def train_lora(
    context: dg.AssetExecutionContext, config: LoraTrainingConfig, media: MediaStoreResource, trainer: TrainerResource
) -> dg.MaterializeResult:
    slug = context.partition_key
    store = media.get_store()
    persona = load_persona(store, slug)
    preset = choose_preset(config, persona, trainer)  # bad preset or override: fails before any work
    engine = trainer.get_trainer()

    work = Path(trainer.work_dir) / slug
    dataset = download_prefix(store, dataset_prefix(slug), work / "dataset", (".png", ".txt"))
    attempt = hashlib.sha256((preset.model_dump_json() + fingerprint_files(dataset)).encode()).hexdigest()[:16]
    context.log.info(f"training {slug} with {engine.name}, preset {preset.name}, {len(dataset) // 2} images")
    request = TrainingRequest(
        persona=slug,
        dataset_dir=work / "dataset",
        output_dir=work / f"train-{attempt}",
        preset=preset,
        output_name=slug,
        resume=config.resume,
        time_limit_s=config.time_limit_s,
    )
    try:
        result = engine.train(request, progress=progress_logger(context.log.info))
    except TrainingError as err:
        if err.retryable:  # killed from outside (out-of-memory killer, preemption): a retry resumes
            raise
        # a Python exception in the trainer, a time limit or a termination recurs: fail now, not after the retries
        raise dg.Failure(description=str(err), allow_retries=False) from err

    prefix = lora_prefix(slug)
    lora_key = f"{prefix}{slug}.safetensors"
    store.write_bytes(lora_key, result.lora_path.read_bytes())
    for checkpoint in result.checkpoints:
        store.write_bytes(f"{prefix}checkpoints/{checkpoint.name}", checkpoint.read_bytes())
    curve = render_loss_curve(result.losses) if result.losses else b""
    if curve:
        store.write_bytes(f"{prefix}loss_curve.png", curve)
    record = {
        "persona": slug,
        "engine": result.engine,
        "preset": preset.model_dump(),
        "lora_key": lora_key,
        "lora_sha256": hashlib.sha256(result.lora_path.read_bytes()).hexdigest(),
        "checkpoints": [c.name for c in result.checkpoints],
        "steps": result.steps,
        "epochs": result.epochs,
        "final_loss": result.final_loss,
        "duration_s": result.duration_s,
        "resumed_from": result.resumed_from,
    }
    store.write_bytes(lora_manifest_key(slug), json.dumps(record, indent=2).encode())
    metadata: dict[str, object] = {
        "engine": result.engine,
        "base_model": result.base_model,
        "preset": preset.name,
        "steps": result.steps,
        "epochs": result.epochs,
        "final_loss": dg.MetadataValue.float(float(result.final_loss or 0.0)),
        "duration_s": round(result.duration_s, 1),
        "file_size_bytes": result.lora_path.stat().st_size,
        "checkpoints": len(result.checkpoints),
        "lora": dg.MetadataValue.path(store.uri(lora_key)),
    }
    if curve:
        metadata["loss_curve"] = image_preview(curve, "loss curve")
    if result.resumed_from:
        metadata["resumed_from"] = result.resumed_from
    return dg.MaterializeResult(metadata=metadata)


def deploy_latest_lora(store: MediaStore, slug: str, image_engine: ImageEngineResource, engine: ImageEngine) -> str:
    """Copy the persona's current LoRA to the engine under a content-derived name, so no cache serves a stale one."""
    record = json.loads(store.read_bytes(lora_manifest_key(slug)))
    local = Path(image_engine.work_dir) / slug / "deploy" / f"{slug}-{record['lora_sha256'][:8]}.safetensors"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(store.read_bytes(record["lora_key"]))
    return engine.deploy_lora(local, local.name, group=slug)  # group: the persona's older versions are retired


def sample_prompts(config: LoraSamplesConfig, persona: Persona) -> list[str]:
    prompts = list(config.prompts or persona.test_prompts) or [
        f"{persona.trigger} {persona.class_word}, portrait photo, natural light",
        f"{persona.trigger} {persona.class_word}, full body, city street",
    ]
    if not 1 <= len(prompts) <= 10:
        raise InputError("lora_samples config: prompts", f"{len(prompts)} prompts given; 1 to 10 allowed", "give 1-10")
    return prompts


@dg.asset(
    partitions_def=personas,
    group_name="training",
    deps=[lora_weights],
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    kinds={"pytorch", "image"},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
)
def lora_samples(
    context: dg.AssetExecutionContext,
    config: LoraSamplesConfig,
    media: MediaStoreResource,
    image_engine: ImageEngineResource,
) -> dg.MaterializeResult:
    """A validation grid of test prompts rendered with the new LoRA, and how close the renders are to the dataset."""
    with user_errors_are_final():
        return render_samples(context, config, media, image_engine)


def render_samples(
    context: dg.AssetExecutionContext,
    config: LoraSamplesConfig,
    media: MediaStoreResource,
    image_engine: ImageEngineResource,
) -> dg.MaterializeResult:
    slug = context.partition_key
    store = media.get_store()
    persona = load_persona(store, slug)
    prompts = sample_prompts(config, persona)
    engine = image_engine.get_engine()
    size = config.size or (64 if image_engine.engine == "embedded" and image_engine.base_model == "tiny" else 512)

    def sample_requests(lora_name: str) -> list[GenerationRequest]:
        return [
            GenerationRequest(
                prompt=prompt,
                negative_prompt=config.negative_prompt,
                seed=config.seed + i,
                steps=config.steps,
                cfg=config.cfg,
                width=size,
                height=size,
                loras=(LoraRef(lora_name, config.lora_strength),),
            )
            for i, prompt in enumerate(prompts)
        ]

    engine.check_requests(sample_requests(f"{slug}.safetensors"))  # sizes refused before any LoRA is copied
    lora_name = deploy_latest_lora(store, slug, image_engine, engine)
    requests = sample_requests(lora_name)
    context.log.info(f"rendering {len(requests)} samples with {engine.name} at {size}x{size}")
    images = engine.generate(requests, progress=lambda done, total: context.log.info(f"sample {done}/{total}"))

    prefix = samples_prefix(slug)
    rendered = []
    for i, image in enumerate(images):
        store.write_bytes(f"{prefix}{i:02d}.png", image.png)
        store.write_bytes(f"{prefix}{i:02d}.json", json.dumps(image.params, indent=2, default=str).encode())
        rendered.append(Image.open(io.BytesIO(image.png)).convert("RGB"))
    grid = render_grid(rendered, [f"seed {img.params.get('seed')}" for img in images])
    store.write_bytes(f"{prefix}grid.png", grid)
    dataset = [
        Image.open(io.BytesIO(store.read_bytes(o.key))).convert("RGB")
        for o in store.list(dataset_prefix(slug))
        if o.key.endswith(".png")
    ]
    embedder = image_engine.get_embedder()
    score = consistency_score(rendered, dataset, embedder)
    rows = [{"prompt": img.params.get("prompt"), "seed": img.params.get("seed")} for img in images]
    return dg.MaterializeResult(
        metadata={
            "engine": engine.name,
            "samples": len(images),
            "consistency_score": round(score, 4),
            "consistency_embedding": embedder.name,
            "grid": image_preview(grid, "sample grid"),
            "prompts": table(rows, [("prompt", "string"), ("seed", "int")]),
            "lora": lora_name,
            "samples_folder": dg.MetadataValue.path(store.uri(prefix)),
        }
    )


persona_training_job = dg.define_asset_job(
    "persona_training",
    selection=dg.AssetSelection.groups("training"),
    tags=GPU_TAGS,
    description="Train the persona's LoRA and render its sample grid (GPU pool).",
)


persona_pipeline_job = dg.define_asset_job(
    "persona_pipeline",
    selection=dg.AssetSelection.groups("datasets", "training"),
    tags=GPU_TAGS,
    description="Dataset, captions, LoRA and samples for one persona: what a new or changed upload folder starts.",
)
