"""kohya-ss/sd-scripts as a trainer: TOML configs in, a streamed `accelerate launch` process, kohya files out.

sd-scripts is a command-line program, so this module is its operator: it writes the dataset and argument TOMLs
(`comfyui-kohya.md` B3/B4), launches `train_network.py` (or `sdxl_train_network.py`), parses the merged output as
it streams (tqdm redraws its bar with `\\r`, so lines are split on `\\r` as well as `\\n`), reports progress at a
bounded rate, notices epoch checkpoints as they land, and resumes from the newest `<name>-NNNNNN-state/` folder
when a crashed attempt is retried. A terminated or overdue run has its whole process tree stopped (accelerate,
the training process, data-loader workers) so no orphan keeps the GPU.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import psutil

from influencer_pipeline.errors import InputError
from influencer_pipeline.training.base import TrainingCancelled, TrainingProgress, TrainingRequest, TrainingResult
from influencer_pipeline.training.presets import LoraPreset

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
TAIL_LINES = 20  # shown in error messages
HINT_LINES = 200  # searched for a known cause: a long traceback can push the cause out of the tail
SD_SCRIPTS_FIX = (
    "set KOHYA_SD_SCRIPTS to a kohya-ss/sd-scripts checkout (git clone https://github.com/kohya-ss/sd-scripts)"
)

BAR_RE = re.compile(r"^\s*steps:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\[([^\]]*)\]\s*$")
LOSS_RE = re.compile(r"avr_loss=([-+0-9.eE]+|nan|inf)")
EPOCH_RE = re.compile(r"^\s*epoch (\d+)/(\d+)\s*$")
TOTAL_STEPS_RE = re.compile(r"total optimization steps\b.*?[:=]\s*(\d+)")

# (pattern in the output, what the user should do): first match wins, so specific causes come first.
HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"out of memory|OutOfMemoryError", re.IGNORECASE),
        "the GPU ran out of memory: lower batch_size or resolution in the preset, or enable gradient_checkpointing",
    ),
    (
        re.compile(r"bitsandbytes", re.IGNORECASE),
        "8-bit optimizers need bitsandbytes and a CUDA GPU: install bitsandbytes in the sd-scripts environment "
        "or override optimizer to 'AdamW'",
    ),
    (
        re.compile(r"can't open file|No such file or directory: .*train_network"),
        f"the training script could not be started: {SD_SCRIPTS_FIX}",
    ),
    (
        re.compile(r"ModuleNotFoundError|No module named"),
        "a package is missing from the sd-scripts environment: run `pip install -r requirements.txt` there and "
        "make sure the accelerate command belongs to that environment",
    ),
    (
        re.compile(r"max_train_steps should be greater than initial step"),
        "the saved state is already at the last step: retry without resume, or delete the *-state folders",
    ),
    (
        re.compile(r"voluptuous|MultipleInvalid"),
        "sd-scripts rejected dataset.toml: check the sd-scripts version (0.8 or later is expected)",
    ),
    (
        re.compile(r"killed by signal|\bKilled\b"),
        "a process was killed by the system, usually for lack of RAM: lower batch_size or give the worker more "
        "memory; a retry resumes from the last saved epoch",
    ),
    (
        re.compile(r"Torch not compiled with CUDA|No CUDA GPUs|CUDA driver", re.IGNORECASE),
        "no usable CUDA GPU: run on a GPU worker or check the NVIDIA driver and the PyTorch build",
    ),
)


class KohyaTrainingError(RuntimeError):
    """sd-scripts exited with an error; carries the exit code, the last output lines and a suggested fix."""

    def __init__(self, returncode: int, tail: Sequence[str], hint: str) -> None:
        self.returncode = returncode
        self.tail = list(tail)
        self.hint = hint
        lines = "\n".join(f"  {line}" for line in self.tail)
        super().__init__(f"kohya sd-scripts exited with code {returncode}. Fix: {hint}\nLast output lines:\n{lines}")


def failure_hint(lines: Sequence[str]) -> str:
    """The most specific advice for a failed run, judged from its last output lines."""
    text = "\n".join(lines)
    for pattern, hint in HINTS:
        if pattern.search(text):
            return hint
    return "read the output lines below; the error is usually in the last one"


class KohyaLog:
    """Incremental parser of sd-scripts' merged stdout/stderr.

    Step numbers are made absolute: after `--resume`, sd-scripts restarts its bar at 0 but continues the epoch
    count, so the offset is (first epoch seen - 1) x steps per epoch, taken from the output itself.
    """

    def __init__(self, total_epochs: int = 0) -> None:
        self.step = 0
        self.total_steps = 0
        self.epoch = 0
        self.total_epochs = total_epochs
        self.losses: dict[int, float] = {}
        self.lines: deque[str] = deque(maxlen=HINT_LINES)  # bar redraws collapse into one line
        self._offset: int | None = None
        self._pending = ""

    @property
    def loss(self) -> float | None:
        return self.losses.get(self.step)

    @property
    def tail(self) -> list[str]:
        return list(self.lines)[-TAIL_LINES:]

    def feed(self, text: str) -> None:
        """Consume a chunk; a bar still waiting for its next `\\r` is parsed too, so progress is never a frame late."""
        *lines, self._pending = re.split(r"[\r\n]", self._pending + text)
        for line in lines:
            self._line(line)
        if bar := BAR_RE.match(self._pending):
            self._bar(bar)

    def close(self) -> None:
        self._line(self._pending)
        self._pending = ""

    def _line(self, line: str) -> None:
        line = line.rstrip()
        if not line.strip():
            return
        if bar := BAR_RE.match(line):
            self._bar(bar)
            if self.lines and BAR_RE.match(self.lines[-1]):
                self.lines[-1] = line.strip()  # one line per bar, not one per redraw
                return
        elif epoch := EPOCH_RE.match(line):
            self._epoch(int(epoch[1]), int(epoch[2]))
        elif total := TOTAL_STEPS_RE.search(line):
            self.total_steps = int(total[1])
        self.lines.append(line.strip() if bar else line)

    def _epoch(self, epoch: int, total_epochs: int) -> None:
        self.epoch, self.total_epochs = epoch, total_epochs
        if self._offset is None:
            per_epoch = math.ceil(self.total_steps / total_epochs) if self.total_steps else 0
            self._offset = (epoch - 1) * per_epoch
            self.step = self._offset

    def _bar(self, bar: re.Match[str]) -> None:
        self.step = (self._offset or 0) + int(bar[1])
        self.total_steps = self.total_steps or int(bar[2])
        if (loss := LOSS_RE.search(bar[3])) and self.step > 0:
            self.losses[self.step] = float(loss[1])


class _PipeReader:
    """Reads a pipe on a thread so the caller can poll for stop requests while the child is silent."""

    def __init__(self, pipe: BinaryIO) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.eof = False
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: BinaryIO) -> None:
        while chunk := pipe.read(65536):
            self._chunks.put(chunk)
        self._chunks.put(None)

    def read(self, timeout: float) -> str:
        """Everything that arrived, waiting up to `timeout` for the first chunk."""
        data = b""
        try:
            chunk = self._chunks.get(timeout=timeout)
            while True:
                if chunk is None:
                    self.eof = True
                    break
                data += chunk
                chunk = self._chunks.get_nowait()
        except queue.Empty:
            pass
        return self._decoder.decode(data, final=self.eof)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class _CheckpointWatch:
    """Spots `<name>-NNNNNN.safetensors` files once their size has stopped changing (they are written in place)."""

    def __init__(self, folder: Path, name: str) -> None:
        self._folder = folder
        self._pattern = re.compile(rf"^{re.escape(name)}-\d{{6}}\.safetensors$")
        self._sizes: dict[Path, int] = {}
        self.known = set(self.all())  # from an earlier attempt: kept in the result, not announced again

    def all(self) -> list[Path]:
        return sorted(p for p in self._folder.iterdir() if self._pattern.match(p.name))

    def poll(self, final: bool = False) -> list[Path]:
        """New complete checkpoints; with `final` (the process has exited) every file counts as complete."""
        new = []
        for path in self.all():
            if path in self.known:
                continue
            size = path.stat().st_size
            if final or (size and self._sizes.get(path) == size):
                self.known.add(path)
                new.append(path)
            self._sizes[path] = size
        return new


def kill_process_tree(pid: int, grace_s: float) -> None:
    """SIGTERM the process and all its descendants (children first), then SIGKILL what is left after `grace_s`."""
    try:
        root = psutil.Process(pid)
        procs = [*reversed(root.children(recursive=True)), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        _signal(proc.terminate)
    alive = _wait_gone(procs, grace_s)
    for proc in alive + _descendants(root, exclude=alive):  # also those spawned while we waited
        _signal(proc.kill)
    _wait_gone(procs, grace_s)


def _descendants(root: psutil.Process, exclude: list[psutil.Process]) -> list[psutil.Process]:
    try:
        return [p for p in root.children(recursive=True) if p not in exclude]
    except psutil.NoSuchProcess:
        return []


def _signal(send: Callable[[], None]) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        send()


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; a zombie counts as gone (its parent, maybe init, reaps it)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def dump_toml(doc: Mapping[str, Any], prefix: str = "") -> str:
    """Serialize the small TOML subset sd-scripts configs need (scalars, lists, tables, arrays of tables)."""
    parts = ["".join(f"{key} = {_toml_value(value)}\n" for key, value in doc.items() if not _is_table(value))]
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            parts.append(f"\n[{name}]\n{dump_toml(value, name + '.')}")
        elif _is_table(value):
            parts.extend(f"\n[[{name}]]\n{dump_toml(item, name + '.')}" for item in value)
    return "".join(parts).lstrip("\n")


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, list) and bool(value) and isinstance(value[0], Mapping))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dataset_config(request: TrainingRequest, class_tokens: str) -> dict[str, Any]:
    """The `--dataset_config` document: one DreamBooth-style subset over the prepared image + `.txt` folder."""
    preset = request.preset
    return {
        "general": {"caption_extension": ".txt", "shuffle_caption": True, "keep_tokens": 1},
        "datasets": [
            {
                "resolution": preset.resolution,
                "batch_size": preset.batch_size,
                "enable_bucket": True,
                "min_bucket_reso": max(64, preset.resolution // 2 // 64 * 64),
                "max_bucket_reso": preset.resolution * 2,
                "bucket_reso_steps": 64,
                "bucket_no_upscale": True,
                "subsets": [
                    {
                        "image_dir": str(request.dataset_dir.resolve()),
                        "num_repeats": preset.repeats,
                        "class_tokens": class_tokens,  # caption for any image without a .txt
                    }
                ],
            }
        ],
    }


def args_config(request: TrainingRequest, base_model: str) -> dict[str, Any]:
    """The `--config_file` document (sections are cosmetic: sd-scripts flattens them)."""
    preset = request.preset
    optimizer: dict[str, Any] = {
        "optimizer_type": preset.optimizer,
        "learning_rate": preset.learning_rate,
        "unet_lr": preset.learning_rate,
        "lr_scheduler": preset.lr_scheduler,
    }
    if preset.text_encoder_lr is not None:
        optimizer["text_encoder_lr"] = preset.text_encoder_lr
    training: dict[str, Any] = {
        "max_train_epochs": preset.epochs,
        "seed": preset.seed,
        "mixed_precision": preset.mixed_precision,
        "gradient_checkpointing": preset.gradient_checkpointing,
        "cache_latents": preset.cache_latents,
        "sdpa": True,
        "max_data_loader_n_workers": 2,
        "persistent_data_loader_workers": True,
    }
    if preset.model_family == "sdxl" and preset.mixed_precision == "fp16":
        training["no_half_vae"] = True  # the SDXL VAE overflows in fp16
    return {
        "model": {"pretrained_model_name_or_path": base_model},
        "network": {
            "network_module": "networks.lora",
            "network_dim": preset.network_dim,
            "network_alpha": preset.network_alpha,
            "network_train_unet_only": preset.network_train_unet_only,
        },
        "optimizer": optimizer,
        "training": training,
        "saving": {
            "output_dir": str(request.output_dir.resolve()),
            "output_name": request.output_name,
            "save_model_as": "safetensors",
            "save_precision": "fp16",
            "save_every_n_epochs": preset.save_every_n_epochs,
            "save_state": True,
            "save_last_n_epochs_state": 1,  # states hold optimizer moments: keep only the newest
        },
        "logging": {"console_log_simple": True},  # plain log lines instead of Rich's wrapped console
    }


def latest_state(output_dir: Path, name: str) -> Path | None:
    """The newest complete-looking epoch state (`<name>-NNNNNN-state/` with train_state.json), if any.

    The final `<name>-state/` is skipped: it marks a finished run, and sd-scripts refuses to resume from it.
    """
    pattern = re.compile(rf"^{re.escape(name)}-(\d{{6}})-state$")
    states = [
        (int(match[1]), path)
        for path in output_dir.glob(f"{name}-*-state")
        if (match := pattern.match(path.name)) and (path / "train_state.json").is_file()
    ]
    return max(states)[1] if states else None


def clear_previous_outputs(output_dir: Path, name: str) -> None:
    """Remove LoRA files and states of an earlier attempt, so a fresh run never reports stale checkpoints."""
    pattern = re.compile(rf"^{re.escape(name)}(?:-\d{{6}}|-step\d{{8}})?(?:-state|\.safetensors)$")
    for path in output_dir.iterdir():
        if not pattern.match(path.name):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_base_model(preset: LoraPreset) -> str:
    """What to pass as `--pretrained_model_name_or_path`; local paths must exist (nothing is downloaded)."""
    where = f"preset {preset.name!r}: field 'base_model'"
    if preset.base_model == "tiny":
        raise InputError(
            where,
            "'tiny' is the embedded trainer's built-in model, which sd-scripts cannot train",
            "use the embedded trainer for this preset, or a kohya preset such as 'sd15-standard'",
        )
    path = Path(preset.base_model).expanduser()
    looks_local = preset.base_model.startswith((".", "~", "/")) or path.suffix in {".safetensors", ".ckpt"}
    if not (looks_local or path.exists()):
        return preset.base_model  # a Hugging Face id: sd-scripts reads it from the local cache
    if not path.exists():
        raise InputError(
            where,
            f"{path} does not exist",
            "put the checkpoint there, or override base_model with a local file, diffusers folder or cached HF id",
        )
    return str(path.resolve())


def check_dataset(dataset_dir: Path, fallback_tokens: str) -> str:
    """Refuse datasets sd-scripts would fail on; return class tokens (the trigger word that opens the captions)."""
    files = dataset_dir.iterdir() if dataset_dir.is_dir() else ()
    images = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(
            str(dataset_dir),
            f"has no training images ({', '.join(sorted(IMAGE_SUFFIXES))} directly inside)",
            "materialize training_images and image_captions for this persona first",
        )
    captions = [p.with_suffix(".txt") for p in images if p.with_suffix(".txt").is_file()]
    texts = [c.read_text(encoding="utf-8").strip() for c in captions]
    for caption, text in zip(captions, texts, strict=True):
        if not text:
            raise InputError(str(caption), "is empty, and sd-scripts stops on empty captions", "write a caption")
    return texts[0].split()[0].rstrip(",") if texts else fallback_tokens


class KohyaTrainer:
    """The production trainer: kohya-ss/sd-scripts driven through `accelerate launch`."""

    name = "kohya"

    def __init__(
        self,
        sd_scripts: Path,
        accelerate: str | Sequence[str] = "accelerate",
        python_env: Mapping[str, str] | None = None,
        log_interval_s: float = 5.0,
        kill_grace_s: float = 10.0,
        poll_s: float = 0.1,
    ) -> None:
        """`accelerate` is the command (a list when it needs an interpreter); `python_env` adds environment
        variables for the training process (e.g. CUDA_VISIBLE_DEVICES, HF_HOME)."""
        self.sd_scripts = Path(sd_scripts).expanduser().absolute()
        self.accelerate = [accelerate] if isinstance(accelerate, str) else list(accelerate)
        self.python_env = dict(python_env or {})
        self.log_interval_s = log_interval_s
        self.kill_grace_s = kill_grace_s
        self.poll_s = poll_s

    def script_for(self, preset: LoraPreset) -> Path:
        """The sd-scripts entry point for the preset's model family, checked before anything is launched."""
        if not self.sd_scripts.is_dir():
            raise InputError("KOHYA_SD_SCRIPTS", f"{self.sd_scripts} is not a folder", SD_SCRIPTS_FIX)
        script = self.sd_scripts / ("sdxl_train_network.py" if preset.model_family == "sdxl" else "train_network.py")
        if not script.is_file():
            raise InputError("KOHYA_SD_SCRIPTS", f"{self.sd_scripts} has no {script.name}", SD_SCRIPTS_FIX)
        return script

    def command(self, script: Path, preset: LoraPreset, config: Path, dataset: Path, resume: Path | None) -> list[str]:
        """The full launch command; accelerate settings are inline so no `accelerate config` is needed.

        The accelerate executable is resolved to an absolute path here, because the process runs in the
        sd-scripts folder and a missing command should be an `InputError` rather than an OSError at launch.
        """
        executable = shutil.which(self.accelerate[0])
        if executable is None:
            raise InputError(
                "accelerate command",
                f"{self.accelerate[0]!r} is not an executable on PATH",
                "install sd-scripts' requirements and pass the full path of its accelerate, e.g. <venv>/bin/accelerate",
            )
        launch = ["launch", "--num_cpu_threads_per_process", "1", "--num_processes", "1", "--num_machines", "1"]
        launch += ["--mixed_precision", preset.mixed_precision, "--dynamo_backend", "no"]
        args = [str(script), "--config_file", str(config), "--dataset_config", str(dataset)]
        resume_args = ["--resume", str(resume)] if resume else []
        return [str(Path(executable).absolute()), *self.accelerate[1:], *launch, *args, *resume_args]

    def train(
        self,
        request: TrainingRequest,
        progress: Callable[[TrainingProgress], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> TrainingResult:
        """Run sd-scripts to completion; raise `TrainingCancelled`, `KohyaTrainingError` or `InputError`."""
        preset = request.preset
        script = self.script_for(preset)
        base_model = check_base_model(preset)
        class_tokens = check_dataset(request.dataset_dir, request.output_name)
        out = request.output_dir.resolve()
        dataset_toml, config_toml = out / "dataset.toml", out / "config.toml"
        configs = {
            dataset_toml: dump_toml(dataset_config(request, class_tokens)),
            config_toml: dump_toml(args_config(request, base_model)),
        }
        resume = latest_state(out, request.output_name) if request.resume and _unchanged(configs) else None
        command = self.command(script, preset, config_toml, dataset_toml, resume)
        out.mkdir(parents=True, exist_ok=True)
        if resume is None:
            clear_previous_outputs(out, request.output_name)
        for path, text in configs.items():
            path.write_text(text, encoding="utf-8")
        run = _Run(self, request, progress, should_stop)
        run.execute(command)
        lora = out / f"{request.output_name}.safetensors"
        if not lora.is_file():
            raise KohyaTrainingError(0, run.log.tail, f"sd-scripts finished without writing {lora.name}")
        return TrainingResult(
            engine=self.name,
            base_model=preset.base_model,
            lora_path=lora,
            checkpoints=run.checkpoints.all(),
            steps=run.log.step,
            epochs=run.log.epoch,
            final_loss=run.log.loss,
            losses=sorted(run.log.losses.items()),
            duration_s=time.monotonic() - run.started,
            resumed_from=str(resume) if resume else None,
        )


def _unchanged(configs: Mapping[Path, str]) -> bool:
    """Whether an earlier attempt ran with exactly these configs: only then is its saved state worth resuming."""
    return all(path.is_file() and path.read_text(encoding="utf-8") == text for path, text in configs.items())


class _Run:
    """One launch of sd-scripts: streams its output into a `KohyaLog` and turns it into progress calls."""

    def __init__(
        self,
        trainer: KohyaTrainer,
        request: TrainingRequest,
        progress: Callable[[TrainingProgress], None],
        should_stop: Callable[[], bool],
    ) -> None:
        self.trainer = trainer
        self.request = request
        self.progress = progress
        self.should_stop = should_stop
        self.log = KohyaLog(total_epochs=request.preset.epochs)
        self.checkpoints = _CheckpointWatch(request.output_dir.resolve(), request.output_name)
        self.started = time.monotonic()
        self._reported: tuple[int, int, float | None] = (0, 0, None)
        self._reported_at = -math.inf

    def execute(self, command: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.trainer.python_env}
        proc = subprocess.Popen(  # stderr merged into stdout, unbuffered: bytes are parsed as they come
            command,
            cwd=self.trainer.sd_scripts,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,
        )
        try:
            self._follow(proc)
        finally:
            if proc.poll() is None:  # an exception (or a cancel) left it running
                kill_process_tree(proc.pid, self.trainer.kill_grace_s)
            proc.wait()
        self.log.close()
        if proc.returncode != 0:
            raise KohyaTrainingError(proc.returncode, self.log.tail, failure_hint(self.log.lines))
        self._announce(self.checkpoints.poll(final=True))
        self._report(force=True, message="training finished")

    def _follow(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        reader = _PipeReader(proc.stdout)
        while not (reader.eof and proc.poll() is not None):
            if reader.eof:
                time.sleep(self.trainer.poll_s)  # output closed: wait for the exit code
            else:
                self.log.feed(reader.read(self.trainer.poll_s))
            self._stop_if_asked(proc)
            self._announce(self.checkpoints.poll())
            self._report()
        reader.join(timeout=1.0)

    def _stop_if_asked(self, proc: subprocess.Popen[bytes]) -> None:
        limit = self.request.time_limit_s
        if self.should_stop():
            reason = "the run was terminated"
        elif limit is not None and time.monotonic() - self.started > limit:
            reason = f"it exceeded its time limit of {limit:g} s"
        else:
            return
        kill_process_tree(proc.pid, self.trainer.kill_grace_s)
        proc.wait()
        log = self.log
        where = f"epoch {log.epoch}/{log.total_epochs}, step {log.step}/{log.total_steps}"
        state = latest_state(self.request.output_dir.resolve(), self.request.output_name)
        then = f"; a retry resumes from {state.name}" if state else ""
        raise TrainingCancelled(f"kohya training stopped because {reason} (at {where}){then}")

    def _announce(self, checkpoints: list[Path]) -> None:
        for path in checkpoints:
            self._report(force=True, message=f"checkpoint saved: {path.name}")

    def _report(self, force: bool = False, message: str = "") -> None:
        """Call `progress` on new information, at most once per interval unless forced or the epoch changed."""
        log = self.log
        state = (log.step, log.epoch, log.loss)
        epoch_changed = log.epoch != self._reported[1]
        due = time.monotonic() - self._reported_at >= self.trainer.log_interval_s
        if not force and (state == self._reported or not (epoch_changed or due)):
            return
        loss = f", avr_loss {log.loss:.4f}" if log.loss is not None else ""
        text = message or f"epoch {log.epoch}/{log.total_epochs}, step {log.step}/{log.total_steps}{loss}"
        self.progress(TrainingProgress(log.step, log.total_steps, log.epoch, log.total_epochs, log.loss, text))
        self._reported, self._reported_at = state, time.monotonic()
