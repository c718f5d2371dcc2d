"""kohya-ss/sd-scripts as a trainer: TOML configs in, a streamed `accelerate launch` process, kohya files out.

sd-scripts is a command-line program, so this module is its operator: it writes the dataset and argument TOMLs
(https://github.com/kohya-ss/sd-scripts/blob/main/docs/config_README-en.md), launches `train_network.py` (or
`sdxl_train_network.py`), parses the merged output as it streams (tqdm redraws its bar with `\\r`, so lines are
split on `\\r` as well as `\\n`), reports progress at a bounded rate, notices epoch checkpoints as they land, and
resumes from the newest `<name>-NNNNNN-state/` folder when a crashed attempt is retried. A terminated or overdue run
has its whole process tree stopped (accelerate, the training process, data-loader workers) so no orphan keeps the
GPU.

The flags, TOML keys and output this module relies on were recorded from the real sd-scripts
(https://github.com/kohya-ss/sd-scripts, commit 48d368f) into tests/training/recordings/, and the tests hold the
module to them.
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
from influencer_pipeline.training.base import (
    TrainingCancelled,
    TrainingError,
    TrainingProgress,
    TrainingRequest,
    TrainingResult,
)
from influencer_pipeline.training.presets import LoraPreset

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
TAIL_LINES = 20  # shown in error messages
KEPT_LINES = 200  # enough to hold the trainer's traceback and accelerate's after it
# CLIP tokenizers sd-scripts loads by Hugging Face id (library/strategy_sd.py, strategy_sdxl.py); with
# `--tokenizer_cache_dir DIR` it first looks in DIR/<id with "/" replaced by "_">.
TOKENIZERS = {
    "sd15": ("openai/clip-vit-large-patch14",),
    "sdxl": ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
}
TOKENIZER_FILES = ("vocab.json", "merges.txt")  # what CLIPTokenizer.from_pretrained needs from a folder
# sd-scripts' argparse defaults, which it asserts `resolution` lies between when buckets are on (train_util.py
# `adjust_min_max_bucket_reso_by_steps`), even with `bucket_no_upscale`, which otherwise ignores them.
DEFAULT_MIN_BUCKET_RESO, DEFAULT_MAX_BUCKET_RESO = 256, 1024
SD_SCRIPTS_FIX = (
    "set KOHYA_SD_SCRIPTS to a kohya-ss/sd-scripts checkout (git clone https://github.com/kohya-ss/sd-scripts)"
)

BAR_RE = re.compile(r"^\s*steps:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\[([^\]]*)\]\s*$")
LOSS_RE = re.compile(r"avr_loss=([-+0-9.eE]+|nan|inf)")
EPOCH_RE = re.compile(r"^\s*epoch (\d+)/(\d+)\s*$")
TOTAL_STEPS_RE = re.compile(r"total optimization steps\b.*?[:=]\s*(\d+)")

# Lines that appear in healthy runs and say nothing about a failure: left out of hints and error tails.
HARMLESS: tuple[re.Pattern[str], ...] = (
    # bitsandbytes 0.50 at import on a CPU box: an optional package for its CPU 4-bit kernels (AdamW8bit still works)
    re.compile(r"from kernels-community: No module named 'kernels'"),
)
TRACEBACK = "Traceback (most recent call last):"
ACCELERATE_FRAME = re.compile(r"accelerate/commands/(?:launch|accelerate_cli)\.py")
# accelerate's own last line when the training process ended: `... returned non-zero exit status N.` after a
# Python exit, `... died with <Signals.SIGKILL: 9>.` when a signal killed it (Python's CalledProcessError text).
LAUNCHER_LINE = re.compile(r"CalledProcessError: Command .* (?:returned non-zero exit status -?\d+|died with <[^>]*>)")
# Killed from outside: may well pass on a retry, which resumes from the last saved epoch.
KILLED = re.compile(r"died with <Signals\.SIG(?:KILL|TERM|BUS)|killed by signal|^Killed$")

# (pattern in the trainer's error lines, what the user should do): first match wins, so specific causes come first.
HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"out of memory|OutOfMemoryError", re.IGNORECASE),
        "the GPU ran out of memory: lower batch_size or resolution in the preset, or enable gradient_checkpointing",
    ),
    (
        KILLED,
        "the training process was killed from outside (SIGKILL), usually by the kernel's out-of-memory killer: "
        "give the worker more RAM, lower batch_size or resolution, or enable cache_latents; a retry resumes from the "
        "last saved epoch",
    ),
    (
        re.compile(r"in _?load_tokenizers?\b|TokenizeStrategy|clip-vit-large-patch14|CLIP-ViT-bigG"),
        "sd-scripts could not load the CLIP tokenizer: put it in KOHYA_TOKENIZER_CACHE_DIR (see 'Tokenizer' in "
        "docs/SETUP.md) or in the Hugging Face cache of the training machine",
    ),
    (
        re.compile(r"in get_optimizer\b"),
        "sd-scripts could not create the preset's optimizer: use one of the preset optimizers (AdamW, AdamW8bit, ...)"
        " or the dotted class path of an optimizer installed in the sd-scripts environment; 8-bit optimizers need "
        "bitsandbytes there",
    ),
    (
        re.compile(r"max_train_steps should be greater than initial step"),
        "the saved state is already at the last step: retry without resume, or delete the *-state folders",
    ),
    (
        re.compile(r"voluptuous|MultipleInvalid"),
        "sd-scripts rejected dataset.toml: check the sd-scripts version (commit 48d368f is the tested one)",
    ),
    (
        re.compile(r"bucket_reso must be"),
        "sd-scripts rejected the bucket sizes for this resolution: report it, the trainer should have set them",
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
        re.compile(r"Torch not compiled with CUDA|No CUDA GPUs|CUDA driver", re.IGNORECASE),
        "no usable CUDA GPU: run on a GPU worker or check the NVIDIA driver and the PyTorch build",
    ),
)


class KohyaTrainingError(TrainingError):
    """sd-scripts exited with an error; carries the exit code, the last output lines, a suggested fix and whether
    a retry can help (only when the process was killed from outside)."""

    def __init__(self, returncode: int, tail: Sequence[str], hint: str, retryable: bool = False) -> None:
        self.returncode = returncode
        self.tail = list(tail)
        self.hint = hint
        self.retryable = retryable
        lines = "\n".join(f"  {line}" for line in self.tail)
        super().__init__(f"kohya sd-scripts exited with code {returncode}. Fix: {hint}\nLast output lines:\n{lines}")


def meaningful(lines: Sequence[str]) -> list[str]:
    """The output without the lines healthy runs print too (bitsandbytes' optional-kernel notice)."""
    return [line for line in lines if not any(p.search(line) for p in HARMLESS)]


def tracebacks(lines: Sequence[str]) -> list[list[str]]:
    """Each Python traceback in the output: its frames and its final exception line(s)."""
    found: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        if line.startswith(TRACEBACK):
            current = []
            found.append(current)
        elif current is not None:
            current.append(line)
            if not line.startswith((" ", "\t")):  # the exception line closes the frames
                current = None
    return found


def error_lines(lines: Sequence[str]) -> list[str]:
    """What a failure hint is judged on: the training process's last traceback (not accelerate's, which only says
    that its child failed) and accelerate's verdict line; without a traceback, the last meaningful lines."""
    kept = meaningful(lines)
    blocks = tracebacks(kept)
    trainer = [b for b in blocks if not any(ACCELERATE_FRAME.search(line) for line in b)]
    verdict = [line for line in kept if LAUNCHER_LINE.search(line)][-1:]
    if trainer:
        return trainer[-1] + verdict
    return verdict or kept[-5:]


def failure_hint(lines: Sequence[str]) -> str:
    """The most specific advice for a failed run, judged from the trainer's error lines."""
    text = "\n".join(error_lines(lines))
    for pattern, hint in HINTS:
        if pattern.search(text):
            return hint
    return "read the output lines below; the error is usually in the last one"


def is_retryable(lines: Sequence[str]) -> bool:
    """Only a process killed from outside may pass next time; a Python exception in the trainer or an exit the
    trainer chose (a bad config) recurs, so retrying it only delays the failure."""
    return any(KILLED.search(line) for line in error_lines(lines))


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
        self.lines: deque[str] = deque(maxlen=KEPT_LINES)  # bar redraws collapse into one line
        self._offset: int | None = None
        self._pending = ""

    @property
    def loss(self) -> float | None:
        return self.losses.get(self.step)

    @property
    def tail(self) -> list[str]:
        return meaningful(self.lines)[-TAIL_LINES:]

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
    dataset: dict[str, Any] = {
        "resolution": preset.resolution,
        "batch_size": preset.batch_size,
        "enable_bucket": True,
        "bucket_reso_steps": 64,
        "bucket_no_upscale": True,  # buckets follow each image's size, so min/max_bucket_reso are not used...
    }
    # ...but sd-scripts still asserts min_bucket_reso <= resolution <= max_bucket_reso with its defaults (256, 1024),
    # so a resolution outside them needs the bound moved (a multiple of bucket_reso_steps, as it requires).
    if preset.resolution < DEFAULT_MIN_BUCKET_RESO:
        dataset["min_bucket_reso"] = max(64, preset.resolution // 64 * 64)
    if preset.resolution > DEFAULT_MAX_BUCKET_RESO:
        dataset["max_bucket_reso"] = math.ceil(preset.resolution / 64) * 64
    dataset["subsets"] = [
        {
            "image_dir": str(request.dataset_dir.resolve()),
            "num_repeats": preset.repeats,
            "class_tokens": class_tokens,  # caption for any image without a .txt
        }
    ]
    return {
        "general": {"caption_extension": ".txt", "shuffle_caption": True, "keep_tokens": 1},
        "datasets": [dataset],
    }


def args_config(request: TrainingRequest, base_model: str, tokenizer_cache_dir: Path | None = None) -> dict[str, Any]:
    """The `--config_file` document (sections are cosmetic: sd-scripts flattens them)."""
    preset = request.preset
    model: dict[str, Any] = {"pretrained_model_name_or_path": base_model}
    if tokenizer_cache_dir is not None:
        model["tokenizer_cache_dir"] = str(tokenizer_cache_dir)
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
        "model": model,
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
    """The newest complete-looking epoch state (`<name>-NNNNNN-state/` with train_state.json) of an interrupted run.

    sd-scripts writes the final `<name>-state/` when training is over, just before the final LoRA: with it there,
    the epoch states are leftovers of a finished run, not an interruption (a re-run must start afresh).
    """
    if (output_dir / f"{name}-state").is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(name)}-(\d{{6}})-state$")
    states = [
        (int(match[1]), path)
        for path in output_dir.glob(f"{name}-*-state")
        if (match := pattern.match(path.name)) and (path / "train_state.json").is_file()
    ]
    return max(states)[1] if states else None


def state_epoch(state: Path) -> int:
    """The epoch a `<name>-NNNNNN-state` folder was saved after."""
    return int(state.name.removesuffix("-state").rsplit("-", 1)[1])


def clear_states(output_dir: Path, name: str) -> None:
    """Remove a finished run's state folders (optimizer moments, as large as the LoRA twice over)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:-\d{{6}}|-step\d{{8}})?-state$")
    for path in output_dir.iterdir():
        if pattern.match(path.name) and path.is_dir():
            shutil.rmtree(path)


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


def hf_hub_cache(env: Mapping[str, str]) -> Path:
    """Where huggingface_hub looks for cached repos in the training process's environment (its documented order:
    HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub; https://huggingface.co/docs/huggingface_hub/
    package_reference/environment_variables)."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    return Path(env.get("HF_HOME") or "~/.cache/huggingface").expanduser() / "hub"


def has_tokenizer(folder: Path) -> bool:
    return all((folder / name).is_file() for name in TOKENIZER_FILES)


def check_tokenizers(family: str, cache_dir: Path | None, env: Mapping[str, str]) -> None:
    """Refuse to launch when sd-scripts would look for a CLIP tokenizer online.

    On a machine without internet, sd-scripts fails deep in transformers with a TypeError that names nothing;
    here the missing tokenizer, the folder it belongs in and the way to fill it are named before any work.
    """
    hub = hf_hub_cache(env)
    for repo in TOKENIZERS[family]:
        local = cache_dir / repo.replace("/", "_") if cache_dir else None
        snapshots = (hub / f"models--{repo.replace('/', '--')}" / "snapshots").glob("*")
        if (local and has_tokenizer(local)) or any(has_tokenizer(snapshot) for snapshot in snapshots):
            continue  # (both repos keep the tokenizer files at their root, where sd-scripts reads them)
        target = local or Path("<KOHYA_TOKENIZER_CACHE_DIR>") / repo.replace("/", "_")
        raise InputError(
            "KOHYA_TOKENIZER_CACHE_DIR",
            f"sd-scripts needs the CLIP tokenizer {repo!r} and it is neither in {target} nor in the Hugging Face "
            f"cache {hub}; without it an offline machine fails with a TypeError",
            f'on a machine with internet run: python -c "from transformers import CLIPTokenizer; '
            f"CLIPTokenizer.from_pretrained('{repo}').save_pretrained('{target}')\" and copy that folder to this "
            "machine (see 'Tokenizer' in docs/SETUP.md)",
        )


def device_settings(device: str) -> tuple[list[str], dict[str, str]]:
    """accelerate launch flags and environment for TRAINING_DEVICE: `cpu` forces the CPU (accelerate's `--cpu`,
    no GPU visible), `cuda:N` pins GPU N (CUDA_VISIBLE_DEVICES), `cuda` and `auto` leave the choice to accelerate."""
    if device in {"auto", "cuda"}:
        return [], {}
    if device == "cpu":
        return ["--cpu"], {"CUDA_VISIBLE_DEVICES": ""}
    if match := re.fullmatch(r"cuda:(\d+)", device):
        return [], {"CUDA_VISIBLE_DEVICES": match[1]}
    raise InputError("TRAINING_DEVICE", f"{device!r} is not a device", "use auto, cpu, cuda or cuda:N (N = GPU index)")


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
        tokenizer_cache_dir: Path | None = None,
        device: str = "auto",
    ) -> None:
        """`accelerate` is the command (a list when it needs an interpreter); `python_env` adds environment
        variables for the training process (e.g. HF_HOME); `tokenizer_cache_dir` is sd-scripts'
        `--tokenizer_cache_dir`, where the CLIP tokenizers are read from offline; `device` is TRAINING_DEVICE."""
        self.sd_scripts = Path(sd_scripts).expanduser().absolute()
        self.accelerate = [accelerate] if isinstance(accelerate, str) else list(accelerate)
        self.python_env = dict(python_env or {})
        self.tokenizer_cache_dir = Path(tokenizer_cache_dir).expanduser().absolute() if tokenizer_cache_dir else None
        self.device = device
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
        launch += device_settings(self.device)[0]
        args = [str(script), "--config_file", str(config), "--dataset_config", str(dataset)]
        # sd-scripts takes the start epoch from train_state.json's current_step, which counts only the steps of the
        # launch that saved it: after one resume it is too small and an epoch is trained again. --initial_epoch
        # (1-based, overrides the state's step) puts the start right after the saved epoch every time.
        resume_args = ["--resume", str(resume), "--initial_epoch", str(state_epoch(resume) + 1)] if resume else []
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
        check_tokenizers(preset.model_family, self.tokenizer_cache_dir, {**os.environ, **self.python_env})
        out = request.output_dir.resolve()
        dataset_toml, config_toml = out / "dataset.toml", out / "config.toml"
        configs = {
            dataset_toml: dump_toml(dataset_config(request, class_tokens)),
            config_toml: dump_toml(args_config(request, base_model, self.tokenizer_cache_dir)),
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
        clear_states(out, request.output_name)  # finished: nothing to resume, and a re-run starts afresh
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
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **device_settings(self.trainer.device)[1]}
        env.update(self.trainer.python_env)
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
            lines = list(self.log.lines)
            raise KohyaTrainingError(proc.returncode, self.log.tail, failure_hint(lines), is_retryable(lines))
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
        # `message` is for events (a checkpoint, the end); step, epoch and loss travel in their own fields, and the
        # caller formats them, so a log line never says them twice.
        self.progress(TrainingProgress(log.step, log.total_steps, log.epoch, log.total_epochs, log.loss, message))
        self._reported, self._reported_at = state, time.monotonic()
