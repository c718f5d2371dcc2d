"""The kohya trainer and its fake held to what the real sd-scripts (48d368f) was recorded doing (recordings/)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from influencer_pipeline.training.base import TrainingRequest
from influencer_pipeline.training.kohya import (
    KohyaLog,
    KohyaTrainer,
    args_config,
    dataset_config,
    dump_toml,
    error_lines,
    failure_hint,
    is_retryable,
)
from influencer_pipeline.training.presets import list_presets, load_preset
from tests.fakes import accelerate_command, fake_sd_scripts, fake_tokenizers

RECORDINGS = Path(__file__).with_name("recordings")
INTERFACE = json.loads((RECORDINGS / "sd_scripts_interface.json").read_text(encoding="utf-8"))
KOHYA_PRESETS = [name for name in list_presets() if load_preset(name).base_model != "tiny"]


def recorded_lines(name: str) -> list[str]:
    """A recorded log as KohyaLog keeps it (tqdm's `\\r` redraws split like newlines)."""
    log = KohyaLog()
    log.feed((RECORDINGS / name).read_text(encoding="utf-8"))
    log.close()
    return list(log.lines)


def flat(doc: dict[str, Any]) -> dict[str, Any]:
    """sd-scripts' read_config_from_file: every section's keys land in one namespace."""
    merged: dict[str, Any] = {}
    for key, value in doc.items():
        merged.update(value if isinstance(value, dict) else {key: value})
    return merged


def request(preset: str, resolution: int, tmp_path: Path) -> TrainingRequest:
    return TrainingRequest(
        "ava", tmp_path / "dataset", tmp_path / "out", load_preset(preset, {"resolution": resolution}), "ava"
    )


def test_the_recording_is_of_the_tested_commit() -> None:
    assert INTERFACE["sd_scripts_commit"].startswith("48d368f")
    assert "--tokenizer_cache_dir" in INTERFACE["train_network.py"]["option_strings"]
    assert "--initial_epoch" in INTERFACE["train_network.py"]["option_strings"]


@pytest.mark.parametrize("resolution", [128, 512, 1536])
@pytest.mark.parametrize("preset", KOHYA_PRESETS)
def test_every_config_key_is_a_recorded_option(preset: str, resolution: int, tmp_path: Path) -> None:
    """sd-scripts silently ignores an unknown --config_file key, so a misspelt one would simply not apply."""
    req = request(preset, resolution, tmp_path)
    script = "sdxl_train_network.py" if req.preset.model_family == "sdxl" else "train_network.py"
    doc = tomllib.loads(dump_toml(args_config(req, "model.safetensors", tmp_path / "tokenizers")))
    keys = set(flat(doc))
    assert keys <= set(INTERFACE[script]["dests"]), keys - set(INTERFACE[script]["dests"])
    choices = INTERFACE[script]["choices"]
    for key in keys & set(choices):
        assert flat(doc)[key] in choices[key], key


@pytest.mark.parametrize("resolution", [128, 512, 1536])
@pytest.mark.parametrize("preset", KOHYA_PRESETS)
def test_every_dataset_key_is_in_the_recorded_schema(preset: str, resolution: int, tmp_path: Path) -> None:
    doc = tomllib.loads(dump_toml(dataset_config(request(preset, resolution, tmp_path), "ohwx")))
    schema = INTERFACE["dataset_config"]
    assert set(doc) == {"general", "datasets"}
    assert set(doc["general"]) <= set(schema["general"])
    for dataset in doc["datasets"]:
        assert set(dataset) - {"subsets"} <= set(schema["datasets"])
        for subset in dataset["subsets"]:
            assert set(subset) <= set(schema["subsets"])


def test_buckets_bounds_only_where_sd_scripts_asserts_them(tmp_path: Path) -> None:
    """bucket_no_upscale makes sd-scripts ignore min/max_bucket_reso for bucketing, but it still asserts
    min_bucket_reso <= resolution <= max_bucket_reso with its defaults 256/1024 (recordings/min_bucket_reso.log)."""
    bounds = {}
    for resolution in (128, 320, 512, 1024, 1536):
        (dataset,) = dataset_config(request("sd15-standard", resolution, tmp_path), "ohwx")["datasets"]
        assert dataset["bucket_no_upscale"] is True
        bounds[resolution] = (dataset.get("min_bucket_reso"), dataset.get("max_bucket_reso"))
    assert bounds == {128: (128, None), 320: (None, None), 512: (None, None), 1024: (None, None), 1536: (None, 1536)}
    assert "AssertionError: min_bucket_reso must be equal or less than resolution" in "\n".join(
        recorded_lines("min_bucket_reso.log")
    )


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda:1"])
@pytest.mark.parametrize("family_preset", ["sd15-standard", "sdxl-standard"])
def test_every_launch_flag_is_recorded(family_preset: str, device: str, tmp_path: Path) -> None:
    trainer = KohyaTrainer(tmp_path, accelerate=accelerate_command(), device=device)
    preset = load_preset(family_preset)
    script = tmp_path / ("sdxl_train_network.py" if preset.model_family == "sdxl" else "train_network.py")
    state = tmp_path / "out" / "ava-000003-state"
    command = trainer.command(script, preset, tmp_path / "c.toml", tmp_path / "d.toml", state)
    at = command.index(str(script))
    launch_flags = {arg for arg in command[:at] if arg.startswith("--")}
    script_flags = {arg for arg in command[at + 1 :] if arg.startswith("--")}
    assert launch_flags <= set(INTERFACE["accelerate_launch"]["option_strings"])
    assert script_flags <= set(INTERFACE[script.name]["option_strings"])
    assert command[-4:] == ["--resume", str(state), "--initial_epoch", "4"]
    assert ("--cpu" in launch_flags) == (device == "cpu")


def test_recorded_run_parses(tmp_path: Path) -> None:
    """The real run: the bar is created before `epoch 1/2`, redrawn twice per step (loss arrives a redraw later)."""
    text = (RECORDINGS / "run.log").read_text(encoding="utf-8")
    log = KohyaLog()
    rng = random.Random(7)
    at = 0
    while at < len(text):  # the pipe may split anywhere
        size = rng.randint(1, 300)
        log.feed(text[at : at + size])
        at += size
    log.close()
    assert (log.step, log.total_steps, log.epoch, log.total_epochs) == (4, 4, 2, 2)
    assert log.losses == {1: 1.24, 2: 1.22, 3: 1.13, 4: 1.08}
    assert not any("kernels" in line for line in log.tail)  # bitsandbytes' notice is no error line


def test_recorded_resume_parses_with_absolute_steps() -> None:
    """After `--resume --initial_epoch 2` the bar restarts at 0 of the full total; steps stay absolute."""
    lines = recorded_lines("resume.log")
    assert any("steps from the state is ignored because initial_step is specified" in line for line in lines)
    log = KohyaLog()
    log.feed((RECORDINGS / "resume.log").read_text(encoding="utf-8"))
    log.close()
    assert (log.step, log.total_steps, log.epoch, log.total_epochs) == (4, 4, 2, 2)
    assert log.losses == {3: 1.09, 4: 1.12}


def test_recorded_train_state_counts_only_the_launch_that_saved_it() -> None:
    """Why a resume needs --initial_epoch: the step in train_state.json restarts with each launch."""
    states = json.loads((RECORDINGS / "train_states.json").read_text(encoding="utf-8"))
    assert states["run (2 epochs): ava-000001-state"] == {"current_epoch": 1, "current_step": 2}
    assert states["resume from ava-000001-state with --initial_epoch 2: ava-state"] == {
        "current_epoch": 2,
        "current_step": 2,  # not 4: a resume from this state without --initial_epoch would start at epoch 2 again
    }


@pytest.mark.parametrize(
    ("recording", "hint", "retryable"),
    [
        ("sigkill.log", "killed from outside (SIGKILL)", True),
        ("no_tokenizer.log", "could not load the CLIP tokenizer", False),
        ("bad_optimizer.log", "could not create the preset's optimizer", False),
        ("min_bucket_reso.log", "bucket sizes", False),
    ],
)
def test_recorded_failures_get_their_own_hint(recording: str, hint: str, retryable: bool) -> None:
    """Every recorded log carries bitsandbytes' "No module named 'kernels'" notice: it must not decide the hint."""
    lines = recorded_lines(recording)
    assert any("No module named 'kernels'" in line for line in lines)
    assert hint in failure_hint(lines)
    assert "a package is missing" not in failure_hint(lines)
    assert is_retryable(lines) is retryable
    assert not any("kernels" in line for line in error_lines(lines))


def test_error_lines_are_the_trainers_traceback_and_accelerates_verdict() -> None:
    lines = error_lines(recorded_lines("no_tokenizer.log"))
    assert lines[-2] == "TypeError: expected str, bytes or os.PathLike object, not NoneType"
    assert "returned non-zero exit status 1." in lines[-1]
    assert not any("accelerate_cli.py" in line for line in lines)
    (killed,) = error_lines(recorded_lines("sigkill.log"))
    assert killed.endswith("died with <Signals.SIGKILL: 9>.")


def run_fake(out: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> KohyaLog:
    """The fake accelerate on the recorded run's shape (2 images, 128 px, batch 1, 2 epochs), parsed as the trainer
    parses sd-scripts."""
    dataset = tmp_path / "dataset"
    dataset.mkdir(exist_ok=True)
    for i in range(2):
        (dataset / f"ava_{i:02d}.png").write_bytes(b"")  # the fake counts images; it does not decode them
        (dataset / f"ava_{i:02d}.txt").write_text(f"ohwx, a woman, photo {i}\n", encoding="utf-8")
    overrides = {"resolution": 128, "epochs": 2, "batch_size": 1, "repeats": 1, "mixed_precision": "no"}
    req = TrainingRequest("ava", dataset, out, load_preset("sd15-standard", overrides), "ava")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(dump_toml(args_config(req, "sd15.safetensors", fake_tokenizers(tmp_path / "t"))))
    (out / "dataset.toml").write_text(dump_toml(dataset_config(req, "ohwx")))
    script = fake_sd_scripts(tmp_path / "sd-scripts") / "train_network.py"
    command = [*accelerate_command(), "launch", "--cpu", str(script), "--config_file", str(out / "config.toml")]
    command += ["--dataset_config", str(out / "dataset.toml"), *extra]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    log = KohyaLog()
    log.feed(done.stdout + done.stderr)
    log.close()
    return log


def test_the_fake_runs_resumes_and_records_state_as_the_real_one(tmp_path: Path) -> None:
    states = json.loads((RECORDINGS / "train_states.json").read_text(encoding="utf-8"))
    real = KohyaLog()
    real.feed((RECORDINGS / "run.log").read_text(encoding="utf-8"))
    fake = run_fake(tmp_path / "run", tmp_path)
    assert (fake.step, fake.total_steps, fake.epoch, fake.total_epochs) == (real.step, real.total_steps, 2, 2)
    assert set(fake.losses) == set(real.losses)
    for name in ("ava-000001-state", "ava-state"):
        saved = json.loads((tmp_path / "run" / name / "train_state.json").read_text())
        assert saved == states[f"run (2 epochs): {name}"], name

    out = tmp_path / "killed"
    killed = run_fake(out, tmp_path, env={"FAKE_KOHYA_SIGKILL_AT_EPOCH": "2"})
    (fake_verdict,) = error_lines(list(killed.lines))  # as in the recording: no traceback of its own, only this
    (real_verdict,) = error_lines(recorded_lines("sigkill.log"))
    assert fake_verdict.split(" died with ")[1] == real_verdict.split(" died with ")[1] == "<Signals.SIGKILL: 9>."
    resumed = run_fake(out, tmp_path, "--resume", str(out / "ava-000001-state"), "--initial_epoch", "2")
    real_resume = KohyaLog()
    real_resume.feed((RECORDINGS / "resume.log").read_text(encoding="utf-8"))
    assert (resumed.step, resumed.epoch) == (real_resume.step, real_resume.epoch) and set(resumed.losses) == {3, 4}
    saved = json.loads((out / "ava-state" / "train_state.json").read_text())
    assert saved == states["resume from ava-000001-state with --initial_epoch 2: ava-state"]
