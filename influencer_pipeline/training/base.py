"""The trainer contract shared by the kohya and embedded trainers.

A trainer reads a prepared local dataset folder (curated PNGs + kohya `.txt` captions), writes a LoRA in
kohya `.safetensors` format (what ComfyUI loads) plus epoch checkpoints into a local output folder, and
reports progress through a callback. The Dagster layer moves files between the media store and these
local folders; trainers never see the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from influencer_pipeline.training.presets import LoraPreset


@dataclass(frozen=True)
class TrainingRequest:
    persona: str
    dataset_dir: Path  # <image>.png + <image>.txt pairs
    output_dir: Path  # trainer-owned; may hold state from a previous, crashed attempt
    preset: LoraPreset
    output_name: str  # file stem of the final LoRA, e.g. "ava"
    resume: bool = True  # continue from the last saved state in output_dir when there is one
    time_limit_s: float | None = None


@dataclass(frozen=True)
class TrainingProgress:
    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    loss: float | None
    message: str = ""


@dataclass
class TrainingResult:
    engine: str  # "kohya" | "embedded"
    base_model: str
    lora_path: Path
    checkpoints: list[Path]
    steps: int
    epochs: int
    final_loss: float | None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) for the loss curve
    duration_s: float = 0.0
    resumed_from: str | None = None


class TrainingError(RuntimeError):
    """A training run failed. `retryable` says whether running the same attempt again can succeed.

    A process killed from outside (the kernel's out-of-memory killer, a preempted node) may well finish next time,
    resuming from its last saved epoch; a Python exception in the trainer, a time limit or a termination recurs,
    so retrying it only delays the failure.
    """

    retryable: bool = False


class TrainingCancelled(TrainingError):
    """The run was terminated or hit its time limit; the trainer stopped its processes before raising."""

    retryable = False


class Trainer(Protocol):
    name: str

    def train(
        self,
        request: TrainingRequest,
        progress: Callable[[TrainingProgress], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> TrainingResult: ...
