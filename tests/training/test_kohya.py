"""The kohya trainer against a fake `accelerate` that prints and writes what sd-scripts does (tests/fakes)."""

from __future__ import annotations

import itertools
import json
import shutil
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
from influencer_pipeline.training import kohya
from influencer_pipeline.training.base import TrainingCancelled, TrainingProgress, TrainingRequest
from influencer_pipeline.training.kohya import KohyaLog, KohyaTrainer, KohyaTrainingError, dump_toml
from influencer_pipeline.training.presets import load_preset
from tests.fakes import accelerate_command, fake_sd_scripts, fake_tokenizers, install_accelerate
from tests.support.waiting import wait_until

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
    """The trainer on the fake, with the tokenizers in place and an empty Hugging Face cache of its own."""
    tokenizers = fake_tokenizers(sd_scripts.parent / "tokenizers")
    options = {
        "log_interval_s": 1000.0,
        "kill_grace_s": 2.0,
        "poll_s": 0.02,
        "tokenizer_cache_dir": tokenizers,
        **options,
    }
    env = {"HF_HOME": str(sd_scripts.parent / "hf-home"), **(env or {})}
    return KohyaTrainer(sd_scripts, accelerate=accelerate_command(), python_env=env, **options)


class Recorder:
    """A progress callback that keeps every call with the time it came, by the trainer's clock when one is given."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.calls: list[tuple[float, TrainingProgress]] = []

    def __call__(self, progress: TrainingProgress) -> None:
        self.calls.append((self.clock(), progress))

    @property
    def updates(self) -> list[TrainingProgress]:
        return [p for _, p in self.calls]

    def plain(self) -> list[tuple[float, TrainingProgress]]:
        """Rate-limited step reports (not checkpoint notices or the final report)."""
        return [(t, p) for t, p in self.calls if not p.message]


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


def test_progress_is_rate_limited(dataset: Path, sd_scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a clock that moves 0.01 s per reading, a 0.05 s interval allows a report every few polls: unlimited, two
    reports would be 0.03 s apart (the interval check, this recorder, the trainer noting the report)."""
    clock = TickClock(0.01)
    monkeypatch.setattr(kohya, "time", clock)
    progress = Recorder(clock.monotonic)
    trainer = trainer_for(sd_scripts, {"FAKE_KOHYA_STEP_DELAY": "0.01"}, log_interval_s=0.05)
    trainer.train(request_for(dataset, overrides={"repeats": 10}), progress)  # 25 steps per epoch
    plain = progress.plain()
    assert len(plain) > 3  # reports between epoch changes, not only at them
    for (t0, p0), (t1, p1) in itertools.pairwise(plain):
        assert p1.epoch != p0.epoch or t1 - t0 >= 0.05, (p0, p1)
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
    assert launched(out)["argv"][-4:] == ["--resume", str(out / "ava-000001-state"), "--initial_epoch", "2"]
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


class TickClock:
    """The trainer's clock in a test (it replaces `time` in the kohya module): each reading is `tick` seconds after
    the last, so what the trainer does "after an interval" depends on what it did, never on how busy the machine
    is. `sleep` stays real: the fake sd-scripts still runs in real time."""

    def __init__(self, tick: float) -> None:
        self.tick, self.now = tick, 0.0

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds)


class HangClock:
    """The trainer's clock in the time-limit test: frozen until the hung fake has written its pids, then `jump`
    seconds on and running in real time (so kill grace periods still mean something). The limit can therefore
    strike only once the hang is up, however slow the machine, and the test needs no bound on the wall clock."""

    def __init__(self, pid_file: Path, jump: float) -> None:
        self.pid_file, self.jump = pid_file, jump
        self.hung_at: float | None = None

    def monotonic(self) -> float:
        real = time.monotonic()
        if self.hung_at is None:
            if not self.pid_file.exists():
                return 0.0
            self.hung_at = real
        return self.jump + real - self.hung_at

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds)


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
    with pytest.raises(TrainingCancelled, match="the run was terminated"):
        trainer.train(request_for(dataset), Recorder(), should_stop)
    pids = json.loads(pid_file.read_text())
    assert len(pids) == 2 and all(gone(pid) for pid in pids)


def test_an_exception_in_the_caller_still_kills_the_tree(dataset: Path, sd_scripts: Path, tmp_path: Path) -> None:
    """Dagster interrupts a terminated step by raising in it; the training processes must not outlive that."""
    pid_file = tmp_path / "pids.json"

    def interrupted(_: TrainingProgress) -> None:
        wait_until(pid_file.exists, "the hung trainer to write its pids", interval=0.01)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer_for(sd_scripts, hang_env(tmp_path), kill_grace_s=0.3).train(request_for(dataset), interrupted)
    assert all(gone(pid) for pid in json.loads(pid_file.read_text()))


def test_time_limit_stops_a_hung_run(
    dataset: Path, sd_scripts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's clock stands still until the fake hangs: a limit that struck early would find no pid file."""
    pid_file = tmp_path / "pids.json"
    monkeypatch.setattr(kohya, "time", HangClock(pid_file, jump=1.5))
    request = request_for(dataset, time_limit_s=1.0)
    with pytest.raises(TrainingCancelled, match=r"time limit of 1 s"):
        trainer_for(sd_scripts, hang_env(tmp_path), kill_grace_s=0.3).train(request, Recorder())
    pids = json.loads(pid_file.read_text())
    assert len(pids) == 2 and all(gone(pid) for pid in pids)


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
    tokenizers = fake_tokenizers(tmp_path / "tokenizers")
    with pytest.raises(InputError, match="'accelerate' is not an executable on PATH"):
        KohyaTrainer(sd_scripts, tokenizer_cache_dir=tokenizers).train(request_for(dataset), Recorder())
    install_accelerate(tmp_path / "bin")
    trainer = KohyaTrainer(sd_scripts, log_interval_s=0, tokenizer_cache_dir=tokenizers)
    result = trainer.train(request_for(dataset), Recorder())
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


def test_a_killed_process_may_be_retried_but_a_python_exception_may_not(dataset: Path, sd_scripts: Path) -> None:
    """Retrying a traceback only repeats it (minutes lost per try); a SIGKILL from outside may pass next time."""
    request = request_for(dataset)
    with pytest.raises(KohyaTrainingError) as killed:
        trainer_for(sd_scripts, {"FAKE_KOHYA_SIGKILL_AT_EPOCH": "2"}).train(request, Recorder())
    assert killed.value.retryable is True
    assert "killed from outside (SIGKILL)" in killed.value.hint
    assert "died with <Signals.SIGKILL: 9>" in str(killed.value)
    assert not any("kernels" in line for line in killed.value.tail)  # bitsandbytes' notice is left out
    with pytest.raises(KohyaTrainingError) as raised:
        trainer_for(sd_scripts, {"FAKE_KOHYA_OOM": "1"}).train(request_for(dataset, resume=False), Recorder())
    assert raised.value.retryable is False
    with pytest.raises(TrainingCancelled) as cancelled:
        trainer_for(sd_scripts, {"FAKE_KOHYA_HANG": "1"}, kill_grace_s=0.3).train(request, Recorder(), lambda: True)
    assert cancelled.value.retryable is False


def test_an_optimizer_sd_scripts_cannot_create_gets_its_own_hint(dataset: Path, sd_scripts: Path) -> None:
    request = request_for(dataset, overrides={"optimizer": "torch.optim.AdamW9"})  # a dotted path passes the preset
    with pytest.raises(KohyaTrainingError) as err:
        trainer_for(sd_scripts).train(request, Recorder())
    assert "could not create the preset's optimizer" in err.value.hint and not err.value.retryable
    assert "AttributeError: module 'torch.optim' has no attribute 'AdamW9'" in str(err.value)


def test_a_second_resume_continues_after_the_saved_epoch(dataset: Path, sd_scripts: Path) -> None:
    """train_state.json counts only the steps of the launch that saved it; --initial_epoch keeps epochs right."""
    request = request_for(dataset, overrides={"epochs": 4})
    out = request.output_dir.resolve()
    with pytest.raises(KohyaTrainingError):
        trainer_for(sd_scripts, {"FAKE_KOHYA_SIGKILL_AT_EPOCH": "2"}).train(request, Recorder())
    with pytest.raises(KohyaTrainingError):
        trainer_for(sd_scripts, {"FAKE_KOHYA_SIGKILL_AT_EPOCH": "3"}).train(request, Recorder())
    state = json.loads((out / "ava-000002-state" / "train_state.json").read_text())
    assert state == {"current_epoch": 2, "current_step": 5}  # epoch 2 alone, as the real one records
    progress = Recorder()
    result = trainer_for(sd_scripts).train(request, progress)
    assert result.resumed_from == str(out / "ava-000002-state")
    assert launched(out)["argv"][-4:] == ["--resume", str(out / "ava-000002-state"), "--initial_epoch", "3"]
    assert min(p.epoch for p in progress.updates) == 3  # epoch 2 is not trained a second time
    assert [step for step, _ in result.losses] == list(range(11, 21))
    assert (result.steps, result.epochs) == (20, 4)


def test_running_a_finished_config_again_starts_afresh(dataset: Path, sd_scripts: Path) -> None:
    """The epoch state left by a finished run is no interruption: a re-run trains every epoch and resumes nothing."""
    request = request_for(dataset)
    out = request.output_dir.resolve()
    trainer_for(sd_scripts).train(request, Recorder())
    assert not list(out.glob("*-state"))  # a finished run's states are removed (optimizer moments: large)
    progress = Recorder()
    result = trainer_for(sd_scripts).train(request, progress)
    assert result.resumed_from is None and "--resume" not in launched(out)["argv"]
    assert min(p.epoch for p in progress.updates) == 1
    assert (result.steps, result.epochs) == (15, 3)


def test_a_finished_run_whose_states_were_not_removed_is_not_resumed(dataset: Path, sd_scripts: Path) -> None:
    """Killed after sd-scripts finished but before the cleanup: its final `<name>-state` marks the run finished."""
    request = request_for(dataset)
    out = request.output_dir.resolve()
    trainer_for(sd_scripts).train(request, Recorder())
    for name, epoch in (("ava-000002-state", 2), ("ava-state", 3)):  # what sd-scripts leaves after success
        (out / name).mkdir()
        (out / name / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": 5 * epoch}))
    result = trainer_for(sd_scripts).train(request, Recorder())
    assert result.resumed_from is None and "--resume" not in launched(out)["argv"]


def test_checkpoints_of_an_earlier_run_with_more_epochs_do_not_stay(dataset: Path, sd_scripts: Path) -> None:
    trainer_for(sd_scripts).train(request_for(dataset, overrides={"epochs": 4}), Recorder())
    result = trainer_for(sd_scripts).train(request_for(dataset, overrides={"epochs": 2}), Recorder())
    assert [p.name for p in result.checkpoints] == ["ava-000001.safetensors"]
    out = result.lora_path.parent
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["ava-000001.safetensors", "ava.safetensors"]


def test_run_log_lines_say_things_once_and_at_most_every_10_s(dataset: Path, sd_scripts: Path) -> None:
    """Through the Dagster layer's logger, on a clock that moves 3 s per report: a step line at most every 10 s
    within an epoch (plus one per epoch and each event), and no line repeats its step/epoch/loss text."""
    from influencer_pipeline.defs.training.assets import progress_logger

    ticks = itertools.count(0, 3)
    lines: list[tuple[float, str]] = []
    now = {"t": 0.0}

    def clock() -> float:
        now["t"] = float(next(ticks))
        return now["t"]

    report = progress_logger(lambda line: lines.append((now["t"], line)), clock=clock)
    trainer_for(sd_scripts, log_interval_s=0).train(request_for(dataset, overrides={"repeats": 10}), report)
    assert lines
    for _, line in lines:
        assert line.count("epoch") == 1 and line.count("step") == 1, line
    plain = [(t, line) for t, line in lines if "checkpoint" not in line and "finished" not in line]
    for (t0, a), (t1, b) in itertools.pairwise(plain):
        same_epoch = a.split("epoch ")[1].split(",")[0] == b.split("epoch ")[1].split(",")[0]
        assert not same_epoch or t1 - t0 >= 10 or b.startswith("step 75/75"), (a, b)
    assert len(plain) < 75 / 3  # 75 steps, 3 s apart, one line per >= 10 s


def test_missing_tokenizer_is_refused_before_launch(dataset: Path, sd_scripts: Path, tmp_path: Path) -> None:
    """sd-scripts loads the CLIP tokenizer by Hugging Face id; offline it fails with a TypeError naming nothing."""
    empty = tmp_path / "no-tokenizers"
    request = request_for(dataset)
    with pytest.raises(InputError, match="KOHYA_TOKENIZER_CACHE_DIR") as err:
        trainer_for(sd_scripts, tokenizer_cache_dir=empty).train(request, Recorder())
    assert "openai/clip-vit-large-patch14" in str(err.value) and str(empty) in str(err.value)
    assert "save_pretrained" in err.value.fix and "docs/SETUP.md" in err.value.fix
    assert not request.output_dir.exists()
    # SDXL needs the second tokenizer too
    only_clip_l = fake_tokenizers(tmp_path / "partial")
    shutil.rmtree(only_clip_l / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k")
    sdxl = request_for(dataset, "sdxl-standard")
    with pytest.raises(InputError, match="CLIP-ViT-bigG-14"):
        trainer_for(sd_scripts, tokenizer_cache_dir=only_clip_l).train(sdxl, Recorder())


def test_tokenizer_cache_dir_is_passed_and_the_hf_cache_also_counts(
    dataset: Path, sd_scripts: Path, tmp_path: Path
) -> None:
    request = request_for(dataset)
    trainer_for(sd_scripts).train(request, Recorder())
    assert flat(request.output_dir / "config.toml")["tokenizer_cache_dir"] == str(tmp_path / "tokenizers")
    hub = tmp_path / "hf-cache"
    snapshot = hub / "models--openai--clip-vit-large-patch14" / "snapshots" / "0123abc"
    fake_tokenizers(tmp_path / "t")
    shutil.copytree(tmp_path / "t" / "openai_clip-vit-large-patch14", snapshot)
    trainer = trainer_for(sd_scripts, {"HF_HUB_CACHE": str(hub)}, tokenizer_cache_dir=None)
    result = trainer.train(request_for(dataset, resume=False), Recorder())
    assert result.lora_path.is_file()
    assert "tokenizer_cache_dir" not in flat(request.output_dir / "config.toml")


@pytest.mark.parametrize(
    ("device", "flag", "visible"), [("auto", False, None), ("cpu", True, ""), ("cuda:1", False, "1")]
)
def test_training_device_is_honoured(
    dataset: Path, sd_scripts: Path, device: str, flag: bool, visible: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    request = request_for(dataset, overrides={"epochs": 1})
    trainer_for(sd_scripts, device=device).train(request, Recorder())
    seen = launched(request.output_dir)
    assert ("--cpu" in seen["argv"]) is flag and seen["CUDA_VISIBLE_DEVICES"] == visible


def test_an_unknown_training_device_is_refused(dataset: Path, sd_scripts: Path) -> None:
    with pytest.raises(InputError, match="TRAINING_DEVICE"):
        trainer_for(sd_scripts, device="gpu0").train(request_for(dataset), Recorder())
