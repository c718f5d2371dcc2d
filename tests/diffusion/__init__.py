"""Helpers shared by the tests that run the tiny diffusion model: a dataset, a preset, and one trained LoRA.

Training is the expensive part (about half a second per step on 2 CPU cores), so one LoRA is trained once per
test process (`trained_once`) and reused by the training, resume and image-engine tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from influencer_pipeline.training.base import TrainingProgress, TrainingRequest, TrainingResult
from influencer_pipeline.training.embedded import EmbeddedTrainer
from influencer_pipeline.training.presets import LoraPreset
from tests.images import make_photo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)  # what CI and the demo laptop have; keeps timings comparable

# alpha != dim on purpose: the kohya export must carry the real alpha (diffusers' converter writes alpha = dim).
PRESET_FIELDS = {
    "name": "test-tiny",
    "model_family": "sd15",
    "base_model": "tiny",
    "resolution": 128,
    "epochs": 3,
    "learning_rate": 1e-2,
    "batch_size": 2,
    "network_dim": 4,
    "network_alpha": 2,
    "optimizer": "AdamW",
    "lr_scheduler": "constant",
    "repeats": 1,
    "save_every_n_epochs": 1,
    "seed": 7,
    "mixed_precision": "no",
}


def preset(**overrides: object) -> LoraPreset:
    return LoraPreset(**{**PRESET_FIELDS, **overrides})


def make_dataset(directory: Path, count: int = 2) -> Path:
    """`count` photo-like PNGs with kohya `.txt` captions, as `image_captions` leaves a dataset."""
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        make_photo(index, (96, 96)).save(directory / f"img{index:02d}.png")
        (directory / f"img{index:02d}.txt").write_text(f"ohwx woman, photo {index}\n", encoding="utf-8")
    return directory


def request(dataset: Path, output: Path, **overrides: object) -> TrainingRequest:
    return TrainingRequest(
        persona="ava", dataset_dir=dataset, output_dir=output, preset=preset(**overrides), output_name="ava"
    )


@dataclass
class Trained:
    """A finished run (2 images, batch 2, 3 epochs = 3 steps): the reference for resume tests, and the LoRA the
    engine tests load."""

    cache_dir: Path
    dataset: Path
    output: Path
    result: TrainingResult
    progress: list[TrainingProgress]


_TRAINED: dict[str, Trained] = {}
VARIANTS: dict[str, dict[str, object]] = {
    "sd15": {},
    "sdxl": {"model_family": "sdxl", "base_model": "tiny-sdxl", "epochs": 1},
}


def trained_once(factory: pytest.TempPathFactory, variant: str = "sd15") -> Trained:
    """Train the `variant` LoRA the first time a test asks for it in this process; later calls reuse it."""
    if variant not in _TRAINED:
        root = factory.mktemp(f"trained-{variant}")
        dataset = make_dataset(root / "dataset")
        events: list[TrainingProgress] = []
        trainer = EmbeddedTrainer(root / "cache", device="cpu")
        result = trainer.train(request(dataset, root / "out", **VARIANTS[variant]), events.append)
        _TRAINED[variant] = Trained(root / "cache", dataset, root / "out", result, events)
    return _TRAINED[variant]
