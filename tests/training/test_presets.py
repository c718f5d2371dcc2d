"""LoRA presets: the shipped files are valid, and every bad name, field or value is refused before any work."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from influencer_pipeline.errors import InputError
from influencer_pipeline.training.presets import LoraPreset, field_range, list_presets, load_preset

SHIPPED = ["embedded-tiny", "sd15-high-quality", "sd15-standard", "sdxl-standard"]


def test_shipped_presets_are_listed_and_valid() -> None:
    assert list_presets() == SHIPPED
    presets = {name: load_preset(name) for name in SHIPPED}
    assert {name: p.model_family for name, p in presets.items()} == {
        "embedded-tiny": "sd15",
        "sd15-high-quality": "sd15",
        "sd15-standard": "sd15",
        "sdxl-standard": "sdxl",
    }
    assert all(p.name == name and p.description for name, p in presets.items())
    assert presets["sdxl-standard"].resolution == 1024 and presets["sdxl-standard"].network_train_unet_only
    assert presets["sd15-high-quality"].resolution > presets["sd15-standard"].resolution


def test_embedded_tiny_is_cpu_sized() -> None:
    tiny = load_preset("embedded-tiny")
    assert tiny.base_model == "tiny"
    assert tiny.resolution == 128 and tiny.mixed_precision == "no" and tiny.optimizer == "AdamW"
    assert tiny.epochs * tiny.repeats * 16 / tiny.batch_size <= 60  # steps for a 16-image persona


def test_overrides_apply_on_top_of_the_file() -> None:
    preset = load_preset("sd15-standard", {"epochs": 12, "learning_rate": 2e-4, "base_model": "/models/x.safetensors"})
    assert (preset.epochs, preset.learning_rate, preset.base_model) == (12, 2e-4, "/models/x.safetensors")
    assert preset.network_dim == load_preset("sd15-standard").network_dim


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(InputError) as err:
        load_preset("sd15-turbo")
    assert "sd15-turbo" in str(err.value)
    assert all(name in err.value.fix for name in SHIPPED)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("epochs", 5000, "field 'epochs': 5000 is out of range 1-1000"),
        ("epochs", 0, "field 'epochs': 0 is out of range 1-1000"),
        ("learning_rate", 2.0, "field 'learning_rate': 2.0 is out of range 1e-06 to 1"),
        ("learning_rate", 1e-7, "field 'learning_rate': 1e-07 is out of range 1e-06 to 1"),
        ("batch_size", 65, "field 'batch_size': 65 is out of range 1-64"),
        ("resolution", 64, "field 'resolution': 64 is out of range 128-2048"),
        ("resolution", 4096, "field 'resolution': 4096 is out of range 128-2048"),
        ("network_dim", 513, "field 'network_dim': 513 is out of range 1-512"),
        ("network_alpha", 0, "field 'network_alpha': 0 is out of range 1-512"),
        ("repeats", 101, "field 'repeats': 101 is out of range 1-100"),
        ("save_every_n_epochs", 0, "field 'save_every_n_epochs': 0 is below the minimum 1"),
    ],
)
def test_out_of_range_override_names_field_and_range(field: str, value: object, expected: str) -> None:
    with pytest.raises(InputError) as err:
        load_preset("sd15-standard", {field: value})
    assert expected in str(err.value)
    assert err.value.fix.startswith(f"set '{field}' to")


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"epoch": 5}, "epoch", "is not a preset field"),
        ({"epochs": "ten"}, "epochs", "valid integer"),
        ({"optimizer": "Adam"}, "optimizer", "not a kohya optimizer"),
        ({"lr_scheduler": "cosine_annealing"}, "lr_scheduler", "cosine_with_restarts"),
        ({"model_family": "sd3"}, "model_family", "'sd15' or 'sdxl'"),
        ({"mixed_precision": "fp8"}, "mixed_precision", "'bf16'"),
        ({"name": "other"}, "name", "cannot be overridden"),
    ],
)
def test_bad_override_is_refused_with_the_field_named(overrides: dict, field: str, says: str) -> None:
    with pytest.raises(InputError) as err:
        load_preset("sd15-standard", overrides)
    assert f"field '{field}'" in err.value.where
    assert says in str(err.value)


def test_unknown_field_lists_the_allowed_ones() -> None:
    with pytest.raises(InputError) as err:
        load_preset("sdxl-standard", {"max_epochs": 3})
    assert "'epochs'" in err.value.fix and "'network_dim'" in err.value.fix


def test_dotted_optimizer_class_is_accepted() -> None:
    assert load_preset("sd15-standard", {"optimizer": "torch.optim.AdamW"}).optimizer == "torch.optim.AdamW"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("epochs: [1\n", "is not valid YAML"),
        ("- 1\n- 2\n", "must be a YAML mapping"),
        ("name: another\n", "differs from the file name"),
        ("model_family: sd15\n", "is required"),
    ],
)
def test_broken_preset_file_is_reported(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "mine.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_preset("mine", presets_dir=tmp_path)
    assert "mine.yaml" in str(err.value) and says in str(err.value)


def test_presets_are_frozen_and_ranges_come_from_the_model() -> None:
    preset = load_preset("sd15-standard")
    with pytest.raises(pydantic.ValidationError):
        preset.epochs = 3  # type: ignore[misc]
    assert field_range("epochs") == (1, 1000)
    assert field_range("learning_rate") == (1e-6, 1)
    assert isinstance(preset, LoraPreset)
