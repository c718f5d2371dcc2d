"""Launchpad config of the training group's assets: every field described, with its range.

A module of its own, importing only dagster, pydantic and the presets, so the instance's run coordinator
(`influencer_pipeline/admin/run_coordinator.py`) can check a launch's values before the run is queued without
loading the code location.
"""

from typing import Any, Literal, get_args

import dagster as dg
from pydantic import Field

from influencer_pipeline.dagster_layer.errors import ranged
from influencer_pipeline.training.presets import OPTIMIZERS, LrScheduler, field_range, list_presets

PRESET_NAMES = tuple(list_presets())
PresetChoice = Literal.__getitem__(("", *PRESET_NAMES))  # the launchpad's choice list, read from the presets folder


def _override(field: str, what: str) -> Any:
    """An optional override of a preset field, with the preset's own range, so the schema shows it."""
    low, high = field_range(field)
    bounds = f" ({low:g} to {high:g})" if high is not None else f" (at least {low:g})" if low is not None else ""
    # Checked before the run is queued (the run coordinator reads this range) and again by the preset when the step
    # starts, as an InputError that fails at once; a pydantic bound would fail config construction in the step,
    # which Dagster retries like a crash.
    return Field(
        None,
        description=f"{what}{bounds}; unset: the preset's value.",
        json_schema_extra={"range": [low, high, None]} if low is not None or high is not None else None,
    )


class LoraTrainingConfig(dg.Config):
    """Pick a preset (empty: the persona's `lora_preset`, else the trainer's default) and override its fields.

    Every override is checked against the preset's ranges before any work starts.
    """

    preset: PresetChoice = Field(  # type: ignore[valid-type]
        "",
        description=f"One of {list(PRESET_NAMES)} (influencer_pipeline/data/lora_presets/); empty: the persona's "
        "lora_preset, else the trainer's default (embedded-tiny, or sd15-standard with kohya).",
    )
    base_model: str | None = Field(
        None, description="Checkpoint file, diffusers folder or 'tiny' (embedded); unset: the preset's."
    )
    resolution: int | None = _override("resolution", "Training resolution in pixels")
    epochs: int | None = _override("epochs", "Passes over the dataset")
    learning_rate: float | None = _override("learning_rate", "UNet learning rate")
    batch_size: int | None = _override("batch_size", "Images per step")
    network_dim: int | None = _override("network_dim", "LoRA rank")
    network_alpha: int | None = _override("network_alpha", "LoRA alpha")
    optimizer: str | None = Field(
        None, description=f"A kohya optimizer, one of {list(OPTIMIZERS)}; unset: the preset's."
    )
    lr_scheduler: str | None = Field(None, description=f"One of {list(get_args(LrScheduler))}; unset: the preset's.")
    repeats: int | None = _override("repeats", "Repeats of each image per epoch")
    save_every_n_epochs: int | None = _override("save_every_n_epochs", "Keep a checkpoint every N epochs")
    seed: int | None = _override("seed", "Random seed")
    mixed_precision: str | None = Field(None, description="'no', 'fp16' or 'bf16'; unset: the preset's.")
    time_limit_s: float | None = Field(None, description="Stop and fail the step after this many seconds.")
    resume: bool = Field(True, description="Continue from the last saved training state of an identical attempt.")
    retrain: bool = Field(
        False,
        description="Train again even when this exact version (same images, captions and preset) already exists; "
        "otherwise the existing version is reused and made the latest.",
    )

    def overrides(self) -> dict[str, object]:
        skip = {"preset", "time_limit_s", "resume", "retrain"}
        return {k: v for k, v in self.model_dump().items() if k not in skip and v is not None}


class LoraSamplesConfig(dg.Config):
    prompts: list[str] = Field(default_factory=list, description="1-10 prompts; empty: persona.yaml test_prompts.")
    negative_prompt: str = Field("lowres, blurry, deformed, watermark, text", description="What to keep out.")
    seed: int = Field(1234, description="Seed of the first sample; each next prompt adds 1.")
    steps: int = ranged(20, 1, 150, "Sampling steps")
    cfg: float = ranged(7.0, 1, 30, "Classifier-free guidance scale")
    size: int = Field(0, description="Square image size; 0: 64 for the embedded tiny model, else 512.")
    lora_strength: float = ranged(1.0, -10, 10, "How strongly the new LoRA applies")
