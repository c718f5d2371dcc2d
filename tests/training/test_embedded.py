"""The embedded trainer on the tiny model: real diffusers + peft training, kohya-format files, exact resume."""

from __future__ import annotations

import io
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, set_peft_model_state_dict
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from influencer_pipeline.diffusion import load_pipeline
from influencer_pipeline.errors import InputError, ModelNotAvailableError
from influencer_pipeline.training.base import TrainingCancelled, TrainingProgress
from influencer_pipeline.training.embedded import TARGET_MODULES, EmbeddedTrainer, Plan
from influencer_pipeline.training.loss_curve import render_loss_curve
from tests.diffusion import Trained, make_dataset, request, trained_once


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return trained_once(tmp_path_factory)


def copy_output(trained: Trained, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained.output, tmp_path / "out"))


def assert_same_lora(path: Path, expected: Path) -> None:
    """Same tensors and header (safetensors may order the header's metadata differently, so not same bytes)."""
    got, want = load_file(path), load_file(expected)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[key], want[key]) for key in want)
    with safe_open(path, "pt") as a, safe_open(expected, "pt") as b:
        assert a.metadata() == b.metadata()


def test_every_step_reports_a_finite_loss(trained: Trained) -> None:
    result = trained.result
    steps = [event for event in trained.progress if event.loss is not None]

    assert result.engine == "embedded" and result.base_model == "tiny"
    assert (result.steps, result.epochs) == (3, 3)  # 2 images x 1 repeat / batch 2 = 1 step per epoch
    assert [step for step, _ in result.losses] == [1, 2, 3]
    assert all(math.isfinite(loss) and loss > 0 for _, loss in result.losses)
    assert result.final_loss == result.losses[-1][1]
    assert [(e.step, e.epoch, e.loss) for e in steps] == [(s, s, v) for s, v in result.losses]
    assert all(e.total_steps == 3 and e.total_epochs == 3 for e in trained.progress)
    assert "64x64 px" in trained.progress[0].message  # the tiny model trains at its native size, not 128
    assert result.resumed_from is None and result.duration_s > 0


def test_checkpoints_and_final_file_are_named_and_keyed_as_kohya_writes_them(trained: Trained) -> None:
    result = trained.result
    assert result.lora_path == trained.output / "ava.safetensors"
    assert result.checkpoints == [trained.output / "ava-000001.safetensors", trained.output / "ava-000002.safetensors"]
    assert not (trained.output / "ava-000003.safetensors").exists()  # the last epoch is the final file
    assert sorted(p.name for p in trained.output.glob("*-state")) == ["ava-000003-state"]  # older states dropped

    for path, epoch in [*zip(result.checkpoints, (1, 2), strict=True), (result.lora_path, 3)]:
        with safe_open(path, "pt") as handle:
            keys = list(handle.keys())
            meta = handle.metadata()
            alphas = {handle.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
        assert keys and all(k.startswith("lora_unet_") for k in keys)
        suffixes = {k.split(".", 1)[1] for k in keys}
        assert suffixes == {"lora_down.weight", "lora_up.weight", "alpha"}
        assert sum(k.endswith("lora_down.weight") for k in keys) == 32  # 8 attention blocks x q, k, v, out
        assert alphas == {2.0}  # the preset's network_alpha, not diffusers' default alpha = dim
        assert meta["ss_epoch"] == str(epoch) and meta["ss_steps"] == str(epoch)
        assert meta["ss_resolution"] == "(64, 64)" and meta["ss_network_dim"] == "4"
        # a tiny test model is no SD 1.5: its LoRA must not claim to load on one (what ComfyUI users go by)
        assert meta["ss_base_model_version"].startswith("influencer_tiny (test model, cross-attention width ")


def test_the_kohya_file_reloads_to_exactly_the_trained_lora(trained: Trained) -> None:
    """diffusers reads the kohya file (alpha folded in) and gives the same UNet as the peft weights trained."""
    state = load_file(trained.output / "ava-000003-state" / "lora.safetensors")
    trained_pipe = load_pipeline("tiny", trained.cache_dir, device="cpu")
    trained_pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=TARGET_MODULES))
    set_peft_model_state_dict(trained_pipe.unet, state)
    fresh = load_pipeline("tiny", trained.cache_dir, device="cpu")
    base = load_pipeline("tiny", trained.cache_dir, device="cpu")
    fresh.load_lora_weights(str(trained.result.lora_path), adapter_name="ava")

    sample = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    step = torch.tensor([500])
    with torch.no_grad():
        expected = trained_pipe.unet(sample, step, text).sample
        loaded = fresh.unet(sample, step, text).sample
        plain = base.unet(sample, step, text).sample

    assert torch.allclose(loaded, expected, atol=1e-5)
    assert (loaded - plain).abs().max() > 1e-4


def test_resume_after_a_crash_continues_from_the_saved_epoch_exactly(trained: Trained, tmp_path: Path) -> None:
    trainer = EmbeddedTrainer(trained.cache_dir, device="cpu")
    output = tmp_path / "out"
    seen: list[TrainingProgress] = []

    def crash_in_epoch_three() -> bool:
        return bool(seen) and seen[-1].step == 2  # stop just before step 3, the one of epoch 3

    with pytest.raises(TrainingCancelled, match="resumes from the state saved after epoch 2"):
        trainer.train(request(trained.dataset, output), seen.append, crash_in_epoch_three)
    assert (output / "ava-000002-state").is_dir() and not (output / "ava.safetensors").exists()

    resumed: list[TrainingProgress] = []
    result = trainer.train(request(trained.dataset, output), resumed.append)

    assert result.resumed_from == "ava-000002-state"
    assert [e.step for e in resumed if e.loss is not None] == [3]  # epochs 1-2 were not trained again
    assert result.losses == trained.result.losses  # same batches, noise and optimizer state as the unbroken run
    assert_same_lora(result.lora_path, trained.result.lora_path)


def test_a_retry_after_training_finished_returns_the_result_without_training(trained: Trained, tmp_path: Path) -> None:
    output = copy_output(trained, tmp_path)
    (output / "ava.safetensors").unlink()  # e.g. the crash came while uploading
    events: list[TrainingProgress] = []

    result = EmbeddedTrainer(trained.cache_dir, device="cpu").train(request(trained.dataset, output), events.append)

    assert [e for e in events if e.loss is not None] == []
    assert result.losses == trained.result.losses and result.resumed_from == "ava-000003-state"
    assert_same_lora(result.lora_path, trained.result.lora_path)


def test_a_state_made_with_other_settings_or_resume_off_starts_over(trained: Trained, tmp_path: Path) -> None:
    output = copy_output(trained, tmp_path)
    trainer = EmbeddedTrainer(trained.cache_dir, device="cpu")

    other = trainer.train(request(trained.dataset, output, epochs=1, learning_rate=1e-3), lambda e: None)
    assert other.resumed_from is None and [s for s, _ in other.losses] == [1]

    events: list[TrainingProgress] = []
    no_resume = replace(request(trained.dataset, copy_output(trained, tmp_path / "second")), resume=False)
    with pytest.raises(TrainingCancelled):
        trainer.train(no_resume, events.append, lambda: len(events) > 1)
    assert [e.step for e in events if e.loss is not None] == [1]  # a matching state was there, and ignored


def test_stop_requests_and_time_limits_raise_training_cancelled(trained: Trained, tmp_path: Path) -> None:
    trainer = EmbeddedTrainer(trained.cache_dir, device="cpu")
    with pytest.raises(TrainingCancelled, match="stopped on request before step 1; no state was saved"):
        trainer.train(request(trained.dataset, tmp_path / "a"), lambda e: None, lambda: True)

    limited = replace(request(trained.dataset, tmp_path / "b"), time_limit_s=1e-6)
    with pytest.raises(TrainingCancelled, match="time limit"):
        trainer.train(limited, lambda e: None)


def test_tiny_sdxl_trains_an_sdxl_kohya_lora(tmp_path_factory: pytest.TempPathFactory) -> None:
    result = trained_once(tmp_path_factory, "sdxl").result

    assert result.steps == 1 and math.isfinite(result.losses[0][1])
    with safe_open(result.lora_path, "pt") as handle:
        assert all(k.startswith("lora_unet_") for k in handle.keys())  # noqa: SIM118 (safe_open is not a dict)
        assert handle.metadata()["ss_base_model_version"].startswith("influencer_tiny_sdxl (test model")


def test_bad_inputs_fail_before_training_with_the_field_and_the_fix(trained: Trained, tmp_path: Path) -> None:
    trainer = EmbeddedTrainer(trained.cache_dir, device="cpu")
    out = tmp_path / "out"

    with pytest.raises(ModelNotAvailableError, match="EMBEDDED_BASE_MODEL"):
        trainer.train(request(trained.dataset, out, base_model=str(tmp_path / "no-model")), lambda e: None)
    with pytest.raises(InputError, match=r"preset\.model_family"):
        trainer.train(request(trained.dataset, out, model_family="sdxl"), lambda e: None)
    with pytest.raises(InputError, match=r"preset\.lr_scheduler.*'adafactor'"):
        trainer.train(request(trained.dataset, out, lr_scheduler="adafactor"), lambda e: None)
    with pytest.raises(InputError, match=r"preset\.optimizer.*'prodigy'"):
        trainer.train(request(trained.dataset, out, optimizer="Prodigy"), lambda e: None)

    uncaptioned = make_dataset(tmp_path / "uncaptioned")
    (uncaptioned / "img01.txt").unlink()
    with pytest.raises(InputError, match=r"img01\.png.*no \.txt caption.*image_captions"):
        trainer.train(request(uncaptioned, out), lambda e: None)
    with pytest.raises(InputError, match="does not exist"):
        trainer.train(request(tmp_path / "nowhere", out), lambda e: None)


def test_the_plan_visits_every_image_repeats_times_per_epoch_in_a_seeded_order() -> None:
    plan = Plan(images=5, repeats=3, batch_size=4, epochs=2, seed=1)
    batches = plan.batches(plan.generator(1))

    assert plan.steps_per_epoch == 4 and plan.total_steps == 8 and len(batches) == 4
    assert sorted(torch.cat(batches).tolist()) == sorted(list(range(5)) * 3)
    assert [b.tolist() for b in plan.batches(plan.generator(1))] == [b.tolist() for b in batches]
    assert [b.tolist() for b in plan.batches(plan.generator(2))] != [b.tolist() for b in batches]


def test_the_loss_curve_is_a_png_for_short_long_and_empty_runs(trained: Trained) -> None:
    noisy = [(step, 1.0 + 0.1 * math.sin(step)) for step in range(1, 301)]
    for losses in (trained.result.losses, noisy, []):
        png = render_loss_curve(losses)
        assert png.startswith(b"\x89PNG")
        with Image.open(io.BytesIO(png)) as image:
            assert image.size == (600, 300)
