"""LoRA training presets: named, validated hyperparameter sets in `influencer_pipeline/data/lora_presets/<name>.yaml`.

A preset is the one place both trainers (kohya sd-scripts and the embedded diffusers trainer) read their settings
from, so a persona, the Dagster launchpad or n8n can say "sd15-standard, but 12 epochs" and get the same checks
everywhere. Ranges are the original project's (epochs 1-1000, learning_rate 1e-6..1, ...); a value outside them, an
unknown field or an unknown preset name is refused before any training starts, with the field and its range named.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from influencer_pipeline.errors import InputError

# Package data (pyproject.toml), so a wheel install has the presets too.
PRESETS_DIR = Path(__file__).resolve().parents[1] / "data" / "lora_presets"

# kohya `--optimizer_type` names (matched case-insensitively, as sd-scripts does); a dotted class path also works.
OPTIMIZERS = (
    "AdamW",
    "AdamW8bit",
    "PagedAdamW",
    "PagedAdamW8bit",
    "PagedAdamW32bit",
    "Lion",
    "Lion8bit",
    "PagedLion8bit",
    "SGDNesterov",
    "SGDNesterov8bit",
    "DAdaptation",
    "DAdaptAdam",
    "DAdaptLion",
    "Prodigy",
    "AdaFactor",
)
LrScheduler = Literal[
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "adafactor"
]


class LoraPreset(BaseModel, extra="forbid", frozen=True):
    """One training recipe. Field names follow sd-scripts where one exists, so the kohya mapping stays obvious."""

    name: str
    description: str = ""
    model_family: Literal["sd15", "sdxl"]
    base_model: str = Field(min_length=1)  # checkpoint file, diffusers folder, cached HF id, or "tiny" (embedded)
    resolution: int = Field(ge=128, le=2048)
    epochs: int = Field(ge=1, le=1000)
    learning_rate: float = Field(ge=1e-6, le=1)
    text_encoder_lr: float | None = Field(default=None, ge=1e-6, le=1)  # None: same as learning_rate
    batch_size: int = Field(ge=1, le=64)
    network_dim: int = Field(ge=1, le=512)
    network_alpha: int = Field(ge=1, le=512)
    optimizer: str
    lr_scheduler: LrScheduler
    repeats: int = Field(ge=1, le=100)
    save_every_n_epochs: int = Field(ge=1)
    seed: int = Field(ge=0, le=2**32 - 1)
    mixed_precision: Literal["no", "fp16", "bf16"]
    network_train_unet_only: bool = False  # recommended for SDXL: text encoders stay frozen
    gradient_checkpointing: bool = False  # trades speed for memory
    cache_latents: bool = False  # encode images once; much faster, disables image augmentation

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if "." in value or value.lower() in {name.lower() for name in OPTIMIZERS}:
            return value
        raise ValueError(f"{value!r} is not a kohya optimizer; use one of {list(OPTIMIZERS)} or a dotted class path")


def list_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    """Names of the presets on disk (file stems), sorted, for error messages and the launchpad."""
    return sorted(path.stem for path in presets_dir.glob("*.yaml"))


def load_preset(name: str, overrides: Mapping[str, Any] | None = None, presets_dir: Path = PRESETS_DIR) -> LoraPreset:
    """Read preset `name`, apply `overrides` field by field, and validate the result.

    Errors name the preset file or override field, the rule (e.g. "5000 is out of range 1-1000") and the fix.
    """
    path = presets_dir / f"{name}.yaml"
    if not path.is_file():
        raise InputError(
            f"LoRA preset {name!r}",
            f"there is no {path.name} in {presets_dir}",
            f"use one of {list_presets(presets_dir)}",
        )
    data = _read_yaml(path)
    if data.get("name", name) != name:
        raise InputError(f"{path}: field 'name'", f"{data['name']!r} differs from the file name", "remove 'name'")
    _validate({**data, "name": name}, where=str(path))
    overrides = dict(overrides or {})
    if "name" in overrides:
        raise InputError(f"preset {name!r} override: field 'name'", "cannot be overridden", "pick another preset")
    return _validate({**data, **overrides, "name": name}, where=f"preset {name!r} override")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(str(path), f"is not valid YAML ({exc})", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise InputError(
            str(path), "must be a YAML mapping of field: value", "see influencer_pipeline/data/lora_presets/"
        )
    return data


def _validate(data: dict[str, Any], where: str) -> LoraPreset:
    """Build the model, turning the first pydantic error into an `InputError` a person can act on."""
    try:
        return LoraPreset(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        raise _field_error(where, field, err) from None


def _field_error(where: str, field: str, err: Mapping[str, Any]) -> InputError:
    at = f"{where}: field '{field}'"
    if err["type"] == "extra_forbidden":
        allowed = sorted(f for f in LoraPreset.model_fields if f != "name")
        return InputError(at, "is not a preset field", f"remove it or use one of {allowed}")
    if err["type"] == "missing":
        return InputError(at, "is required", f"add '{field}' to the preset file")
    low, high = field_range(field)
    if err["type"] in {"greater_than_equal", "less_than_equal"}:
        return InputError(at, f"{err['input']!r} {_range_text(low, high)}", _range_fix(field, low, high))
    message = err["msg"].removeprefix("Value error, ")
    fix = _range_fix(field, low, high) if low is not None else f"see the '{field}' values in docs/SETUP.md"
    return InputError(at, f"{err.get('input')!r} is not valid: {message}", fix)


def field_range(field: str) -> tuple[float | None, float | None]:
    """The (min, max) a numeric preset field accepts, read from the model so messages never drift from it."""
    info = LoraPreset.model_fields.get(field)
    low = high = None
    for rule in info.metadata if info else ():
        if isinstance(rule, annotated_types.Ge):
            low = rule.ge
        elif isinstance(rule, annotated_types.Le):
            high = rule.le
    return low, high


def _range_text(low: float | None, high: float | None) -> str:
    if high is None:
        return f"is below the minimum {low:g}"
    if isinstance(low, int) and isinstance(high, int):
        return f"is out of range {low}-{high}"
    return f"is out of range {low:g} to {high:g}"


def _range_fix(field: str, low: float | None, high: float | None) -> str:
    if high is None:
        return f"set '{field}' to at least {low:g}"
    return f"set '{field}' to a value from {low:g} to {high:g}"
