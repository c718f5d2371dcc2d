"""The `training` group: a LoRA per persona and a validation grid rendered with it, both in the `gpu` pool."""

import hashlib
import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image

from influencer_pipeline.dagster_layer.errors import check_ranges, user_errors_are_final
from influencer_pipeline.dagster_layer.loras import deploy_lora, resolve_lora
from influencer_pipeline.dagster_layer.metadata import image_preview, table
from influencer_pipeline.dagster_layer.partitions import personas
from influencer_pipeline.dagster_layer.resources import ImageEngineResource, MediaStoreResource, TrainerResource
from influencer_pipeline.dagster_layer.tags import gpu_step
from influencer_pipeline.defs.training.config import LoraSamplesConfig, LoraTrainingConfig
from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import GenerationRequest, LoraRef
from influencer_pipeline.generation.consistency import consistency_score
from influencer_pipeline.generation.grid import render_grid
from influencer_pipeline.media.keys import (
    dataset_prefix,
    lora_file_key,
    lora_version_prefix,
    samples_prefix,
)
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.media.transfer import download_prefix, fingerprint_files
from influencer_pipeline.personas import Persona, load_persona
from influencer_pipeline.training.base import TrainingError, TrainingProgress, TrainingRequest
from influencer_pipeline.training.loss_curve import render_loss_curve
from influencer_pipeline.training.presets import (
    LoraPreset,
    load_preset,
)
from influencer_pipeline.training.versions import list_versions, read_version, save_version, version_id

LOG_INTERVAL_S = 10.0


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
    deps=[dg.AssetKey("image_captions")],
    kinds={"pytorch", "safetensors"},
    **gpu_step(retry_delay_s=30),
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
    version = version_id(preset.model_dump_json(), fingerprint_files(dataset))
    existing = read_version(store, slug, version)
    if existing and not config.retrain:
        context.log.info(f"version {version} was trained from these exact images, captions and preset: reusing it")
        save_version(store, slug, existing)  # it becomes the latest again (e.g. after trying another preset)
        return version_result(store, existing, reused=True)
    context.log.info(
        f"training {slug} version {version} with {engine.name}, preset {preset.name}, {len(dataset) // 2} images"
    )
    request = TrainingRequest(
        persona=slug,
        dataset_dir=work / "dataset",
        output_dir=work / f"train-{version}",
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

    prefix = lora_version_prefix(slug, version)
    lora_key = lora_file_key(slug, version)
    store.write_bytes(lora_key, result.lora_path.read_bytes())
    for checkpoint in result.checkpoints:
        store.write_bytes(f"{prefix}checkpoints/{checkpoint.name}", checkpoint.read_bytes())
    curve = render_loss_curve(result.losses) if result.losses else b""
    if curve:
        store.write_bytes(f"{prefix}loss_curve.png", curve)
    record = {
        "persona": slug,
        "version": version,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine": result.engine,
        "base_model": result.base_model,
        "preset": preset.model_dump(),
        "lora_key": lora_key,
        "lora_sha256": hashlib.sha256(result.lora_path.read_bytes()).hexdigest(),
        "file_size_bytes": result.lora_path.stat().st_size,
        "checkpoints": [c.name for c in result.checkpoints],
        "loss_curve_key": f"{prefix}loss_curve.png" if curve else None,
        "images": len(dataset) // 2,
        "steps": result.steps,
        "epochs": result.epochs,
        "final_loss": result.final_loss,
        "duration_s": result.duration_s,
        "resumed_from": result.resumed_from,
    }
    save_version(store, slug, record)  # written last: a version with a manifest is complete
    return version_result(store, record, reused=False, curve=curve)


def version_result(store: MediaStore, record: dict[str, Any], reused: bool, curve: bytes = b"") -> dg.MaterializeResult:
    """What lora_weights shows: the version it made (or reused), its numbers, and every version kept."""
    slug, version = record["persona"], record["version"]
    versions = list_versions(store, slug)
    rows = [
        {
            "version": r["version"],
            "trained_at": r.get("trained_at", ""),
            "preset": r.get("preset", {}).get("name", ""),
            "epochs": r.get("epochs"),
            "final_loss": r.get("final_loss"),
            "latest": "yes" if r["version"] == version else "",
        }
        for r in reversed(versions)
    ]
    metadata: dict[str, object] = {
        "version": version,
        "reused": reused,
        "engine": record["engine"],
        "base_model": record.get("base_model", ""),
        "preset": record["preset"]["name"],
        "steps": record["steps"],
        "epochs": record["epochs"],
        "final_loss": dg.MetadataValue.float(float(record["final_loss"] or 0.0)),
        "duration_s": round(record["duration_s"], 1),
        "file_size_bytes": record.get("file_size_bytes", 0),
        "checkpoints": len(record["checkpoints"]),
        "lora": dg.MetadataValue.path(store.uri(record["lora_key"])),
        "version_folder": dg.MetadataValue.path(store.uri(lora_version_prefix(slug, version))),
        "versions": table(
            rows,
            [
                ("version", "string"),
                ("trained_at", "string"),
                ("preset", "string"),
                ("epochs", "int"),
                ("final_loss", "float"),
                ("latest", "string"),
            ],
        ),
    }
    if curve:
        metadata["loss_curve"] = image_preview(curve, "loss curve")
    if record.get("resumed_from"):
        metadata["resumed_from"] = record["resumed_from"]
    return dg.MaterializeResult(metadata=metadata, tags={"lora_version": version})


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
    kinds={"pytorch", "image"},
    **gpu_step(),
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
    check_ranges(config, "lora_samples config")
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
    record = resolve_lora(store, persona, "", "lora_samples")  # the latest version: what was just trained
    lora_name = deploy_lora(store, record, image_engine, engine)
    requests = sample_requests(lora_name)
    context.log.info(f"rendering {len(requests)} samples with {engine.name} at {size}x{size}")
    images = engine.generate(requests, progress=lambda done, total: context.log.info(f"sample {done}/{total}"))

    prefix = samples_prefix(slug, record["version"])
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
            "lora_version": record["version"],
            "samples_folder": dg.MetadataValue.path(store.uri(prefix)),
        }
    )
