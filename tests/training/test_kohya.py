"""The kohya trainer against a fake `accelerate` that prints and writes what sd-scripts does (tests/fakes)."""

from __future__ import annotations

import itertools
import json
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from PIL import Image
from safetensors import safe_open

from influencer_pipeline.errors import InputError
from influencer_pipeline.training.base import TrainingCancelled, TrainingProgress, TrainingRequest
from influencer_pipeline.training.kohya import KohyaLog, KohyaTrainer, KohyaTrainingError, dump_toml
from influencer_pipeline.training.presets import load_preset
from tests.fakes import accelerate_command, fake_sd_scripts, install_accelerate

IMAGES = 5  # x 2 repeats / batch 2 = 5 steps per epoch


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "dataset"
    folder.mkdir()
    for i in range(IMAGES):
        Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(folder / f"ava_{i:02d}.png")
        (folder / f"ava_{i:02d}.txt").write_text(f"ohwx, a woman, photo {i}\n", encoding="utf-8")
    return folder


@pytest.fixture
def sd_scripts(tmp_path: Path) -> Path:
    return fake_sd_scripts(tmp_path / "sd-scripts")


def request_for(dataset: Path, preset: str = "sd15-standard", **fields: Any) -> TrainingRequest:
    overrides = {"epochs": 3, "repeats": 2, "batch_size": 2, "save_every_n_epochs": 1, **fields.pop("overrides", {})}
    output = fields.pop("output_dir", dataset.parent / "out")
    return TrainingRequest("ava", dataset, output, load_preset(preset, overrides), "ava", **fields)


def trainer_for(sd_scripts: Path, env: dict[str, str] | None = None, **options: Any) -> KohyaTrainer:
    options = {"log_interval_s": 1000.0, "kill_grace_s": 2.0, "poll_s": 0.02, **options}
    return KohyaTrainer(sd_scripts, accelerate=accelerate_command(), python_env=env or {}, **options)


class Recorder:
    """A progress callback that keeps every call with the time it came."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, TrainingProgress]] = []

    def __call__(self, progress: TrainingProgress) -> None:
        self.calls.append((time.monotonic(), progress))

    @property
    def updates(self) -> list[TrainingProgress]:
        return [p for _, p in self.calls]

    def plain(self) -> list[tuple[float, TrainingProgress]]:
        """Rate-limited step reports (not checkpoint notices or the final report)."""
        return [(t, p) for t, p in self.calls if p.message.startswith("epoch ")]


def flat(path: Path) -> dict[str, Any]:
    """Read a config TOML the way sd-scripts does: sections flattened into one namespace."""
    merged: dict[str, Any] = {}
    for key, value in tomllib.loads(path.read_text(encoding="utf-8")).items():
        merged.update(value if isinstance(value, dict) else {key: value})
    return merged


def launched(output: Path) -> dict[str, Any]:
    return json.loads((output / "fake_kohya_argv.json").read_text())


def test_trains_and_writes_kohya_configs(dataset: Path, sd_scripts: Path) -> None:
    request = request_for(dataset)
    result = trainer_for(sd_scripts).train(request, Recorder())

    out = request.output_dir.resolve()
    data = tomllib.loads((out / "dataset.toml").read_text(encoding="utf-8"))
    assert data["general"] == {"caption_extension": ".txt", "shuffle_caption": True, "keep_tokens": 1}
    (ds,) = data["datasets"]
    assert (ds["resolution"], ds["batch_size"], ds["enable_bucket"]) == (512, 2, True)
    assert ds["subsets"] == [{"image_dir": str(dataset.resolve()), "num_repeats": 2, "class_tokens": "ohwx"}]

    args = flat(out / "config.toml")
    expected = {
        "pretrained_model_name_or_path": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "output_dir": str(out),
        "output_name": "ava",
        "save_model_as": "safetensors",
        "network_module": "networks.lora",
        "network_dim": 16,
        "network_alpha": 8,
        "learning_rate": 1e-4,
        "text_encoder_lr": 5e-5,
        "optimizer_type": "AdamW8bit",
        "lr_scheduler": "cosine",
        "max_train_epochs": 3,
        "save_every_n_epochs": 1,
        "save_state": True,
        "mixed_precision": "fp16",
        "seed": 42,
    }
    assert {key: args[key] for key in expected} == expected

    argv = launched(out)["argv"]
    assert argv[:3] == ["launch", "--num_cpu_threads_per_process", "1"]
    assert argv[argv.index(str(sd_scripts / "train_network.py")) :][1:] == [
        "--config_file", str(out / "config.toml"), "--dataset_config", str(out / "dataset.toml"),
    ]  # fmt: skip

    assert result.engine == "kohya" and result.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert result.lora_path == out / "ava.safetensors" and result.lora_path.is_file()
    assert [p.name for p in result.checkpoints] == ["ava-000001.safetensors", "ava-000002.safetensors"]
    assert (result.steps, result.epochs, result.resumed_from) == (15, 3, None)
    assert [step for step, _ in result.losses] == list(range(1, 16))
    assert result.final_loss == result.losses[-1][1] and result.duration_s > 0


def test_lora_files_are_kohya_format_safetensors(dataset: Path, sd_scripts: Path) -> None:
    result = trainer_for(sd_scripts).train(request_for(dataset), Recorder())
    for path in [*result.checkpoints, result.lora_path]:
        with safe_open(str(path), framework="numpy") as lora:
            keys = set(lora.keys())
            metadata = lora.metadata()
        assert keys and all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
        modules = {k.rsplit(".", 2)[0] for k in keys if k.endswith(".weight")}
        assert {f"{m}.{part}" for m in modules for part in ("lora_down.weight", "lora_up.weight", "alpha")} == keys
        assert metadata["ss_network_dim"] == "16" and metadata["ss_network_alpha"] == "8"


def test_log_parser_follows_carriage_return_bars_byte_by_byte() -> None:
    stream = (
        "running training / 学習開始\n  total optimization steps / 学習ステップ数: 30\n"
        "\nepoch 2/3\n\n"
        "\rsteps:   0%|          | 0/30 [00:00<?, ?it/s]"
        "\rsteps:   3%|▎         | 1/30 [00:01<00:29,  1.00it/s, avr_loss=0.5]"
        "\rsteps:   7%|▋         | 2/30 [00:02<00:28,  1.00it/s, avr_loss=0.25]"
    )
    log = KohyaLog()
    seen = []
    for char in stream:  # the pipe may split anywhere
        log.feed(char)
        seen.append((log.step, log.loss))
    # resumed at epoch 2 of 3 (10 steps per epoch): sd-scripts restarts its bar at 0, steps stay absolute
    assert (log.epoch, log.total_epochs, log.step, log.total_steps) == (2, 3, 12, 30)
    assert log.losses == {11: 0.5, 12: 0.25}
    assert (11, 0.5) in seen  # the second bar was parsed before the third one started
    log.close()
    assert [line for line in log.tail if line.startswith("steps:")] == [
        "steps:   7%|▋         | 2/30 [00:02<00:28,  1.00it/s, avr_loss=0.25]"
    ]


def test_progress_is_reported_per_epoch_when_the_interval_is_long(dataset: Path, sd_scripts: Path) -> None:
    progress = Recorder()
    trainer_for(sd_scripts, log_interval_s=1000.0).train(request_for(dataset), progress)
    epochs = [p.epoch for _, p in progress.plain()]
    assert epochs == sorted(set(epochs))  # at most one step report per epoch: nothing between epoch changes
    assert {p.epoch for p in progress.updates} == {1, 2, 3}
    final = progress.updates[-1]
    assert (final.message, final.step, final.total_steps, final.epoch, final.total_epochs) == (
        "training finished", 15, 15, 3, 3,
    )  # fmt: skip
    assert final.loss is not None


def test_progress_is_rate_limited(dataset: Path, sd_scripts: Path) -> None:
    progress = Recorder()
    trainer = trainer_for(sd_scripts, {"FAKE_KOHYA_STEP_DELAY": "0.01"}, log_interval_s=0.1)
    trainer.train(request_for(dataset, overrides={"repeats": 10}), progress)  # 25 steps per epoch
    plain = progress.plain()
    assert len(plain) > 3  # reports between epoch changes, not only at them
    for (t0, p0), (t1, p1) in itertools.pairwise(plain):
        assert p1.epoch != p0.epoch or t1 - t0 >= 0.09, (p0, p1)
    steps = [p.step for _, p in progress.calls]
    assert steps == sorted(steps)


def test_checkpoints_are_noticed_while_training_runs(dataset: Path, sd_scripts: Path) -> None:
    progress = Recorder()
    trainer = trainer_for(sd_scripts, {"FAKE_KOHYA_STEP_DELAY": "0.03"})
    trainer.train(request_for(dataset), progress)
    notices = [p for p in progress.updates if p.message.startswith("checkpoint saved:")]
    assert [p.message for p in notices] == [
        "checkpoint saved: ava-000001.safetensors",
        "checkpoint saved: ava-000002.safetensors",
    ]
    assert notices[0].step < 15  # announced while training went on
    assert progress.updates[-1].message == "training finished"


def test_crash_gives_the_log_tail_and_a_retry_resumes_after_the_saved_epoch(dataset: Path, sd_scripts: Path) -> None:
    request = request_for(dataset)
    with pytest.raises(KohyaTrainingError) as err:
        trainer_for(sd_scripts, {"FAKE_KOHYA_CRASH_AT_EPOCH": "2"}).train(request, Recorder())
    message = str(err.value)
    assert err.value.returncode == 1
    assert "DataLoader worker (pid 4242) is killed by signal: Killed." in message
    assert "returned non-zero exit status 1" in message and "Traceback" in message
    assert 0 < len(err.value.tail) <= 20
    out = request.output_dir.resolve()
    assert (out / "ava-000001-state" / "train_state.json").is_file()
    assert not (out / "ava.safetensors").exists()

    progress = Recorder()
    result = trainer_for(sd_scripts).train(request, progress)
    assert result.resumed_from == str(out / "ava-000001-state")
    assert launched(out)["argv"][-2:] == ["--resume", str(out / "ava-000001-state")]
    assert min(p.epoch for p in progress.updates) == 2  # epoch 1 was not trained again
    assert [step for step, _ in result.losses] == list(range(6, 16))
    assert (result.steps, result.epochs) == (15, 3)
    assert [p.name for p in result.checkpoints] == ["ava-000001.safetensors", "ava-000002.safetensors"]
    notices = [p.message for p in progress.updates if p.message.startswith("checkpoint")]
    assert notices == ["checkpoint saved: ava-000002.safetensors"]  # the first was announced by the crashed run


@pytest.mark.parametrize(
    "retry",
    [{"resume": False}, {"overrides": {"learning_rate": 5e-4}}],
    ids=["resume-off", "preset-changed"],
)
def test_fresh_run_discards_an_earlier_attempt(dataset: Path, sd_scripts: Path, retry: dict[str, Any]) -> None:
    """Without resume, or when the settings changed since the crash, the old state and checkpoints go."""
    request = request_for(dataset)
    with pytest.raises(KohyaTrainingError):
        trainer_for(sd_scripts, {"FAKE_KOHYA_CRASH_AT_EPOCH": "2"}).train(request, Recorder())
    progress = Recorder()
    result = trainer_for(sd_scripts).train(request_for(dataset, **retry), progress)
    assert result.resumed_from is None and min(p.epoch for p in progress.updates) == 1
    assert "--resume" not in launched(request.output_dir)["argv"]


def test_out_of_memory_gets_a_hint(dataset: Path, sd_scripts: Path) -> None:
    with pytest.raises(KohyaTrainingError) as err:
        trainer_for(sd_scripts, {"FAKE_KOHYA_OOM": "1"}).train(request_for(dataset), Recorder())
    assert "CUDA out of memory" in str(err.value)
    assert "lower batch_size or resolution" in err.value.hint


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def hang_env(tmp_path: Path, ignore_sigterm: bool = False) -> dict[str, str]:
    env = {"FAKE_KOHYA_HANG": "1", "FAKE_KOHYA_PID_FILE": str(tmp_path / "pids.json")}
    return env | ({"FAKE_KOHYA_IGNORE_SIGTERM": "1"} if ignore_sigterm else {})


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["sigterm", "sigkill-after-grace"])
def test_stop_request_kills_the_whole_process_tree(
    dataset: Path, sd_scripts: Path, tmp_path: Path, ignore_sigterm: bool
) -> None:
    pid_file = tmp_path / "pids.json"
    should_stop: Callable[[], bool] = pid_file.exists  # stop once the hung trainer and its child are up
    trainer = trainer_for(sd_scripts, hang_env(tmp_path, ignore_sigterm), kill_grace_s=0.3)
    started = time.monotonic()
    with pytest.raises(TrainingCancelled, match="the run was terminated"):
        trainer.train(request_for(dataset), Recorder(), should_stop)
    pids = json.loads(pid_file.read_text())
    assert len(pids) == 2 and all(gone(pid) for pid in pids)
    assert time.monotonic() - started < 10


def test_an_exception_in_the_caller_still_kills_the_tree(dataset: Path, sd_scripts: Path, tmp_path: Path) -> None:
    """Dagster interrupts a terminated step by raising in it; the training processes must not outlive that."""
    pid_file = tmp_path / "pids.json"

    def interrupted(_: TrainingProgress) -> None:
        while not pid_file.exists():
            time.sleep(0.01)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer_for(sd_scripts, hang_env(tmp_path), kill_grace_s=0.3).train(request_for(dataset), interrupted)
    assert all(gone(pid) for pid in json.loads(pid_file.read_text()))


def test_time_limit_stops_a_hung_run(dataset: Path, sd_scripts: Path, tmp_path: Path) -> None:
    request = request_for(dataset, time_limit_s=1.0)
    started = time.monotonic()
    with pytest.raises(TrainingCancelled, match=r"time limit of 1 s"):
        trainer_for(sd_scripts, hang_env(tmp_path), kill_grace_s=0.3).train(request, Recorder())
    assert 1.0 <= time.monotonic() - started < 10
    pid_file = tmp_path / "pids.json"  # absent when the limit struck before the fake reached its hang
    assert all(gone(pid) for pid in (json.loads(pid_file.read_text()) if pid_file.exists() else []))


def test_sdxl_runs_sdxl_train_network(dataset: Path, sd_scripts: Path) -> None:
    request = request_for(dataset, "sdxl-standard", overrides={"epochs": 2, "repeats": 1, "batch_size": 1})
    result = trainer_for(sd_scripts).train(request, Recorder())
    out = request.output_dir.resolve()
    assert launched(out)["script"] == "sdxl_train_network.py"
    args = flat(out / "config.toml")
    assert args["network_train_unet_only"] is True and args["mixed_precision"] == "bf16"
    assert launched(out)["argv"][launched(out)["argv"].index("--mixed_precision") + 1] == "bf16"
    with safe_open(str(result.lora_path), framework="numpy") as lora:
        keys = lora.keys()
    assert all(key.startswith(("lora_unet_input_blocks_", "lora_unet_output_blocks_")) for key in keys)


def test_missing_sd_scripts_is_reported_before_launch(dataset: Path, tmp_path: Path) -> None:
    request = request_for(dataset)
    with pytest.raises(InputError, match="KOHYA_SD_SCRIPTS") as err:
        trainer_for(tmp_path / "nowhere").train(request, Recorder())
    assert "git clone https://github.com/kohya-ss/sd-scripts" in err.value.fix
    empty = tmp_path / "empty-checkout"
    empty.mkdir()
    with pytest.raises(InputError, match=r"has no train_network\.py"):
        trainer_for(empty).train(request, Recorder())
    assert not request.output_dir.exists()


def test_default_accelerate_command_is_found_on_path(
    dataset: Path, sd_scripts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(InputError, match="'accelerate' is not an executable on PATH"):
        KohyaTrainer(sd_scripts).train(request_for(dataset), Recorder())
    install_accelerate(tmp_path / "bin")
    result = KohyaTrainer(sd_scripts, log_interval_s=0).train(request_for(dataset), Recorder())
    assert result.lora_path.is_file()


def test_inputs_sd_scripts_would_choke_on_are_refused(dataset: Path, sd_scripts: Path, tmp_path: Path) -> None:
    trainer = trainer_for(sd_scripts)
    with pytest.raises(InputError, match="embedded trainer"):
        trainer.train(request_for(dataset, "embedded-tiny"), Recorder())
    missing = {"base_model": str(tmp_path / "models" / "v1-5.safetensors")}
    with pytest.raises(InputError, match="does not exist"):
        trainer.train(request_for(dataset, overrides=missing), Recorder())
    (dataset / "ava_00.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(InputError, match=r"ava_00\.txt: is empty"):
        trainer.train(request_for(dataset), Recorder())
    with pytest.raises(InputError, match="has no training images"):
        trainer.train(request_for(tmp_path / "no-such-dataset", output_dir=tmp_path / "o"), Recorder())


def test_relative_base_model_is_passed_as_an_absolute_path(
    dataset: Path, sd_scripts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sd-scripts runs inside its own folder, so a path relative to ours must not reach it unresolved."""
    (tmp_path / "models" / "sd15").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    request = request_for(dataset, overrides={"base_model": "models/sd15", "epochs": 1})
    trainer_for(sd_scripts).train(request, Recorder())
    config = flat(request.output_dir / "config.toml")
    assert config["pretrained_model_name_or_path"] == str(tmp_path / "models" / "sd15")


def test_toml_writer_round_trips() -> None:
    doc = {
        "top": 1,
        "table": {"path": 'C:\\data\\"ava"', "flag": False, "rate": 5e-05, "sizes": [512, 768]},
        "items": [{"name": "a", "sub": [{"x": 1}]}, {"name": "b"}],
    }
    assert tomllib.loads(dump_toml(doc)) == doc
