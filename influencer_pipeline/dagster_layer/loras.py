"""LoRA versions as the content and training groups read them: which version renders, why none can, deploying one.

Content depends on `lora_weights` by asset key; these helpers read what it stored, so no group imports another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from influencer_pipeline.dagster_layer.resources import ImageEngineResource
from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import ImageEngine
from influencer_pipeline.media.keys import (
    dataset_manifest_key,
    lora_manifest_key,
    uploads_prefix,
)
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.personas import Persona
from influencer_pipeline.training.versions import active_version

MIN_IMAGES = 10  # the fewest curated images LoRA training accepts (training_images' min_images check)


def deploy_lora(
    store: MediaStore, record: dict[str, Any], image_engine: ImageEngineResource, engine: ImageEngine
) -> str:
    """Copy a LoRA version to the engine under a content-derived name, so no cache serves a stale one."""
    slug = record["persona"]
    local = Path(image_engine.work_dir) / slug / "deploy" / f"{slug}-{record['lora_sha256'][:8]}.safetensors"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(store.read_bytes(record["lora_key"]))
    return engine.deploy_lora(local, local.name, group=slug)  # group: the persona's older versions are retired


def resolve_lora(
    store: MediaStore, persona: Persona, pin: str, pinned_by: str, instance: dg.DagsterInstance | None = None
) -> dict[str, Any]:
    """The LoRA version content renders with: the run config's pin, persona.yaml's `lora_version`, else latest."""
    where = pinned_by if pin else f"{store.uri(uploads_prefix(persona.slug) + 'persona.yaml')}: field 'lora_version'"
    record = active_version(store, persona.slug, pin or persona.lora_version, where)
    if record is None:
        cause = lora_blocker(instance, store, persona) if instance is not None else ""
        raise InputError(
            lora_manifest_key(persona.slug),
            f"the persona has no trained LoRA{': ' + cause if cause else ''}",
            "materialize lora_weights (the upload sensor starts it once the dataset passes its checks)",
        )
    return record


def lora_blocker(instance: dg.DagsterInstance, store: MediaStore, persona: Persona) -> str:
    """Why no content can be rendered for the persona yet (empty: a LoRA version is ready), naming the real cause."""
    pin = persona.lora_version
    where = f"{store.uri(uploads_prefix(persona.slug) + 'persona.yaml')}: field 'lora_version'"
    if active_version(store, persona.slug, pin, where) is not None:  # a bad pin raises its own InputError
        return ""
    manifest_key = dataset_manifest_key(persona.slug)
    if store.exists(manifest_key):
        images = json.loads(store.read_bytes(manifest_key)).get("images", [])
        kept = sum(i.get("status") == "kept" for i in images)
        if kept < MIN_IMAGES:
            return (
                f"its dataset failed the min_images check: {kept} usable images, LoRA training needs at least "
                f"{MIN_IMAGES}. Fix: add photos to {uploads_prefix(persona.slug)} (see training_images' rejection "
                "table for why others were refused)"
            )
    failure = last_failure(instance, persona.slug)
    if failure:
        return f"no trained LoRA: its last dataset/training run failed: {failure}"
    if not store.exists(manifest_key):
        return (
            f"no dataset yet: upload at least {MIN_IMAGES} photos to {uploads_prefix(persona.slug)} "
            "(the upload sensor curates them and trains the LoRA)"
        )
    return "no trained LoRA yet: materialize lora_weights (or wait for the persona_pipeline run in progress)"


def last_failure(instance: dg.DagsterInstance, slug: str) -> str:
    """The message of the persona's last failed dataset/training run, if its last such run failed."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            job_name=None,
            tags={"dagster/partition": slug},
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
        ),
        limit=1,
    )
    if not runs or runs[0].status != dg.DagsterRunStatus.FAILURE:
        return ""
    records = instance.get_records_for_run(runs[0].run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.step_failure_data if event else None
        if data and data.user_failure_data and data.user_failure_data.description:
            return f"{event.step_key}: {data.user_failure_data.description}"
        if data and data.error:
            return f"{event.step_key}: {data.error.message.strip()}"
    return f"run {runs[0].run_id} failed (see its log)"
