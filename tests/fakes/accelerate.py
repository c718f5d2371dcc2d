#!/usr/bin/env python3
"""A fake `accelerate launch <sd-scripts>/train_network.py --config_file X --dataset_config Y [--resume DIR]`.

It behaves like kohya-ss/sd-scripts (commit 48d368f) as far as an operator can see, as recorded from the real
program in tests/training/recordings/: it reads both TOMLs, checks the image folder, prints the startup block and
`epoch k/E` on stdout and a tqdm `steps` bar redrawn with `\\r` on stderr, writes `<name>-NNNNNN.safetensors`
checkpoints (real safetensors, kohya LoRA keys) and `<name>-NNNNNN-state/` folders, then the final `<name>-state/`
and `<name>.safetensors`. `--resume` restores a state whose train_state.json counts the steps of the launch that
saved it; the start epoch comes from that step count unless `--initial_epoch` is given, and the bar restarts at 0.

It is stricter than sd-scripts: an accelerate or script option, a `--config_file` key or a dataset TOML key that the
recorded argparse/schema does not have is refused (sd-scripts silently ignores unknown config keys). Like the real
one, it needs the CLIP tokenizer in `tokenizer_cache_dir` or the Hugging Face cache (there is no network), asserts
min_bucket_reso <= resolution <= max_bucket_reso, and fails in `get_optimizer` on an unknown optimizer.

Misbehaviour on demand, through environment variables:

- FAKE_KOHYA_CRASH_AT_EPOCH=N: exit 1 with a traceback halfway through epoch N (a data-loader worker killed).
- FAKE_KOHYA_SIGKILL_AT_EPOCH=N: the training process dies of SIGKILL halfway through epoch N (what the
  out-of-memory killer does): no traceback of its own, only accelerate's `died with <Signals.SIGKILL: 9>`.
- FAKE_KOHYA_OOM=1: print a CUDA out-of-memory traceback at the first step and exit 1.
- FAKE_KOHYA_HANG=1: start a child process, then sleep forever (tests the process-tree kill).
- FAKE_KOHYA_IGNORE_SIGTERM=1: with HANG, both processes ignore SIGTERM (tests the SIGKILL escalation).
- FAKE_KOHYA_PID_FILE=path: write this process's and the child's pids there (JSON list).
- FAKE_KOHYA_STEP_DELAY=seconds: sleep per step (default 0).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
RECORDING = Path(__file__).resolve().parents[1] / "training" / "recordings" / "sd_scripts_interface.json"
INTERFACE = json.loads(RECORDING.read_text(encoding="utf-8"))
# sd-scripts' own optimizer names (library/train_util.py get_optimizer), matched case-insensitively
OPTIMIZERS = {
    name.lower()
    for name in (
        "AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit", "PagedLion8bit",
        "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdamPreprint", "DAdaptAdaGrad", "DAdaptAdam",
        "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy", "AdaFactor", "RAdamScheduleFree",
        "AdamWScheduleFree", "SGDScheduleFree",
    )
}  # fmt: skip
TOKENIZER_IDS = {"sd15": ["openai/clip-vit-large-patch14"]}
TOKENIZER_IDS["sdxl"] = [*TOKENIZER_IDS["sd15"], "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"]
BNB_NOTICE = (
    "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make sure you "
    "already `pip install kernels` and the kernels >= 0.11.1"
)
PARTIAL_BLOCKS = " ▏▎▍▌▋▊▉"
SD15_MODULES = (
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k",
    "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v",
)
SDXL_MODULES = (
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
    "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_v",
)
TE_MODULES = {
    "sd15": ("lora_te_text_model_encoder_layers_0_self_attn_q_proj",),
    "sdxl": ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "lora_te2_text_model_encoder_layers_0_mlp_fc1"),
}

# In-widths of those modules in the real models: cross-attention (attn2 to_k/to_v) takes the text encoder's width
# (768 SD1.5, 2048 SDXL), which is how a LoRA's base family is told apart (ComfyUI's model detection reads the same).
IN_WIDTHS = {
    "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v": 768,
    "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_v": 2048,
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": 768,
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": 768,
    "lora_te2_text_model_encoder_layers_0_mlp_fc1": 1280,
}


def out(text: str = "") -> None:
    print(text, flush=True)


def fail(lines: list[str], launch_argv: list[str], frames: list[str] | None = None) -> int:
    """Print a Python traceback like the training process, then accelerate's own, and exit 1 as accelerate does."""
    frames = frames or ['  File "/sd-scripts/train_network.py", line 1536, in <module>', "    trainer.train(args)"]
    print("\n".join(["Traceback (most recent call last):", *frames, *lines]), file=sys.stderr, flush=True)
    return launcher_fails(launch_argv, "returned non-zero exit status 1.")


def launcher_fails(launch_argv: list[str], verdict: str) -> int:
    """accelerate's simple_launcher: a CalledProcessError traceback for a child that failed, then exit 1."""
    command = [sys.executable, *launch_argv]
    accelerate = [
        "Traceback (most recent call last):",
        '  File "/venv/bin/accelerate", line 8, in <module>',
        "    sys.exit(main())",
        '  File "/venv/lib/python3.10/site-packages/accelerate/commands/launch.py", line 1168, in launch_command',
        "    simple_launcher(args)",
        f"subprocess.CalledProcessError: Command '{command}' {verdict}",
    ]
    print("\n".join(accelerate), file=sys.stderr, flush=True)
    return 1


def parse_launch(argv: list[str]) -> tuple[Path, dict[str, str]]:
    """Split `launch [accelerate options] script.py [script args]`, refusing options the recording lacks."""
    if not argv or argv[0] != "launch":
        raise SystemExit("usage: accelerate launch [options] script.py [args]")
    index = next(i for i, arg in enumerate(argv) if arg.endswith(".py"))
    script = Path(argv[index])
    unknown = [
        a for a in argv[1:index] if a.startswith("--") and a not in INTERFACE["accelerate_launch"]["option_strings"]
    ]
    rest = argv[index + 1 :]
    recorded = INTERFACE.get(script.name, INTERFACE["train_network.py"])["option_strings"]
    unknown += [a for a in rest if a.startswith("--") and a not in recorded]
    if unknown:
        print(f"accelerate launch: error: unrecognized arguments: {' '.join(unknown)}", file=sys.stderr)
        raise SystemExit(2)
    return script, {rest[i].removeprefix("--"): rest[i + 1] for i in range(0, len(rest) - 1, 2)}


def check_keys(config: dict[str, Any], datasets: dict[str, Any], script: str) -> list[str]:
    """Keys sd-scripts would not use: config keys that are no argparse dest, dataset keys outside the schema."""
    dests = set(INTERFACE.get(script, INTERFACE["train_network.py"])["dests"])
    schema = INTERFACE["dataset_config"]
    problems = [f"config key {k!r} is no option of {script}" for k in config if k not in dests]
    problems += [f"[general] key {k!r} is unknown" for k in datasets.get("general", {}) if k not in schema["general"]]
    for dataset in datasets.get("datasets", []):
        problems += [f"dataset key {k!r} is unknown" for k in dataset if k != "subsets" and k not in schema["datasets"]]
        for subset in dataset.get("subsets", []):
            problems += [f"subset key {k!r} is unknown" for k in subset if k not in schema["subsets"]]
    return problems


def has_tokenizer(folder: Path) -> bool:
    return (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()


def missing_tokenizer(config: dict[str, Any], family: str) -> str | None:
    """The first CLIP tokenizer found neither in tokenizer_cache_dir nor in the Hugging Face cache."""
    cache = config.get("tokenizer_cache_dir")
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    for repo in TOKENIZER_IDS[family]:
        if cache and has_tokenizer(Path(cache) / repo.replace("/", "_")):
            continue
        snapshots = (hub.expanduser() / f"models--{repo.replace('/', '--')}" / "snapshots").glob("*")
        if not any(has_tokenizer(s) for s in snapshots):
            return repo
    return None


def optimizer_error(name: str) -> list[str] | None:
    """What sd-scripts' get_optimizer raises for a name it does not know (torch.optim lookup or a dotted import)."""
    if not name or name.lower() in OPTIMIZERS:
        return None
    if "." not in name:
        return [f"AttributeError: module 'torch.optim' has no attribute '{name}'"]
    module, attribute = name.rsplit(".", 1)
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return [f"ModuleNotFoundError: No module named '{module.split('.')[0]}'"]
    if not hasattr(importlib.import_module(module), attribute):
        return [f"AttributeError: module '{module}' has no attribute '{attribute}'"]
    return None


def flatten(doc: dict[str, Any]) -> dict[str, Any]:
    """sd-scripts' read_config_from_file: sections are cosmetic, every key lands in one namespace."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def count_images(subset: dict[str, Any], general: dict[str, Any]) -> tuple[int, list[str]]:
    """Images in the subset folder, and the problems sd-scripts would stop on."""
    folder = Path(subset["image_dir"])
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    extension = subset.get("caption_extension", general.get("caption_extension", ".caption"))
    problems = []
    for image in images:
        caption = image.with_suffix(extension)
        if caption.is_file() and not caption.read_text(encoding="utf-8").strip():
            problems.append(f"AssertionError: caption file is empty / キャプションファイルが空です: {caption}")
        elif not caption.is_file() and not subset.get("class_tokens"):
            problems.append(f"ValueError: neither caption file nor class tokens are found / {image}")
    if not images:
        problems.append(f"AssertionError: no image / 画像がありません: {folder}")
    return len(images), problems


def lora_tensors(config: dict[str, Any], family: str) -> dict[str, np.ndarray]:
    """A few tiny tensors in sd-scripts' key format (lora_down / lora_up / alpha per module)."""
    rank = int(config["network_dim"])
    modules = list(SDXL_MODULES if family == "sdxl" else SD15_MODULES)
    if not config.get("network_train_unet_only"):
        modules += TE_MODULES[family]
    rng = np.random.default_rng(int(config.get("seed", 0)))
    tensors = {}
    for module in modules:
        width = IN_WIDTHS.get(module, 8)  # what real sd-scripts writes: the module's input width
        tensors[f"{module}.lora_down.weight"] = rng.standard_normal((rank, width)).astype(np.float16)
        tensors[f"{module}.lora_up.weight"] = np.zeros((8, rank), dtype=np.float16)
        tensors[f"{module}.alpha"] = np.array(float(config["network_alpha"]), dtype=np.float16)
    return tensors


def save_lora(path: Path, config: dict[str, Any], family: str, epoch: int, step: int) -> None:
    out(f"\nsaving checkpoint: {path}")
    metadata = {
        "ss_network_module": config["network_module"],
        "ss_network_dim": str(config["network_dim"]),
        "ss_network_alpha": str(config["network_alpha"]),
        "ss_epoch": str(epoch),
        "ss_steps": str(step),
        "ss_output_name": config["output_name"],
        "ss_base_model_version": "sdxl_base_v1-0" if family == "sdxl" else "sd_v1",
    }
    save_file(lora_tensors(config, family), str(path), metadata=metadata)


def save_state(folder: Path, config: dict[str, Any], family: str, epoch: int, step: int) -> None:
    """An accelerate state folder; like sd-scripts, current_step counts the steps of this launch only."""
    folder.mkdir(exist_ok=True)
    out(f"save train state to {folder / 'train_state.json'} at epoch {epoch} step {step}")
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
    save_file(lora_tensors(config, family), str(folder / "model.safetensors"))
    (folder / "optimizer.bin").write_bytes(b"fake optimizer state")
    (folder / "random_states_0.pkl").write_bytes(b"fake rng state")


def remove_old_state(output: Path, config: dict[str, Any], epoch: int) -> None:
    keep = config.get("save_last_n_epochs_state")
    if keep:
        old = output / f"{config['output_name']}-{epoch - int(config['save_every_n_epochs']) * int(keep):06d}-state"
        if old.is_dir():
            out(f"removing old state: {old}")
            for file in old.iterdir():
                file.unlink()
            old.rmdir()


class Bar:
    """tqdm's `steps` bar as sd-scripts draws it: redrawn in place with `\\r` on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.started, self.postfix = total, 0, time.monotonic(), ""
        self.draw()

    def update(self, avr_loss: float) -> None:
        self.n += 1
        self.postfix = f", avr_loss={avr_loss:.4g}"
        self.draw()

    def draw(self) -> None:
        elapsed = time.monotonic() - self.started
        fraction = self.n / self.total
        full, part = divmod(int(fraction * 80), 8)
        blocks = ("█" * full + (PARTIAL_BLOCKS[part] if full < 10 else "")).ljust(10)
        if self.n:
            rate = self.n / max(elapsed, 1e-6)
            timing = f"{clock(elapsed)}<{clock((self.total - self.n) / rate)}, {rate:5.2f}it/s{self.postfix}"
        else:
            timing = "00:00<?, ?it/s"
        sys.stderr.write(f"\rsteps: {int(fraction * 100):3d}%|{blocks}| {self.n}/{self.total} [{timing}]")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def hang(ignore_sigterm: bool) -> None:
    """Sleep forever with a child, the way a wedged data loader or NCCL wait looks from outside."""
    code = "import signal, time\n"
    if ignore_sigterm:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", code + "time.sleep(600)"])
    if pid_file := os.environ.get("FAKE_KOHYA_PID_FILE"):
        Path(pid_file).write_text(json.dumps([os.getpid(), child.pid]))
    while True:
        time.sleep(60)


def check_buckets(dataset: dict[str, Any]) -> list[str]:
    """sd-scripts' adjust_min_max_bucket_reso_by_steps: with buckets on, the argparse defaults 256/1024 apply."""
    if not dataset.get("enable_bucket"):
        return []
    resolution = dataset.get("resolution", 512)
    low, high = (resolution, resolution) if isinstance(resolution, int) else (min(resolution), max(resolution))
    if low < dataset.get("min_bucket_reso", 256):
        return ["AssertionError: min_bucket_reso must be equal or less than resolution / min_bucket_resoは最小解像度"]
    if high > dataset.get("max_bucket_reso", 1024):
        return [
            "AssertionError: max_bucket_reso must be equal or greater than resolution / max_bucket_resoは最大解像度"
        ]
    return []


def tokenizer_failure(repo: str, launch_argv: list[str]) -> int:
    """The real failure offline: transformers finds no vocab file and CLIPTokenizer opens None (recorded)."""
    frames = [
        '  File "/sd-scripts/library/strategy_sd.py", line 32, in __init__',
        "    self.tokenizer = self._load_tokenizer(CLIPTokenizer, TOKENIZER_ID, "
        "tokenizer_cache_dir=tokenizer_cache_dir)",
        '  File "/sd-scripts/library/strategy_base.py", line 65, in _load_tokenizer',
        "    tokenizer = model_class.from_pretrained(model_id, subfolder=subfolder)",
        '  File "/venv/lib/python3.10/site-packages/transformers/models/clip/tokenization_clip.py", line 309, '
        "in __init__",
        '    with open(vocab_file, encoding="utf-8") as vocab_handle:',
    ]
    out(f"Using v1 tokenizer\nload tokenizer: {repo}")
    return fail(["TypeError: expected str, bytes or os.PathLike object, not NoneType"], launch_argv, frames)


def main(argv: list[str]) -> int:
    print(BNB_NOTICE, file=sys.stderr, flush=True)  # bitsandbytes' import-time notice on a box without `kernels`
    script, args = parse_launch(argv)
    launch_argv = argv[argv.index(str(script)) :]
    if not script.is_file():
        print(f"{sys.executable}: can't open file '{script}': [Errno 2] No such file or directory", file=sys.stderr)
        return 2
    config_file, dataset_file = Path(args["config_file"]), Path(args["dataset_config"])
    out(f"Loading settings from {config_file}...")
    config = flatten(tomllib.loads(config_file.read_text(encoding="utf-8")))
    datasets = tomllib.loads(dataset_file.read_text(encoding="utf-8"))
    if problems := check_keys(config, datasets, script.name):
        print(f"fake sd-scripts (stricter than the real one): {'; '.join(problems)}", file=sys.stderr)
        return 2
    family = "sdxl" if script.name.startswith("sdxl_") else "sd15"
    output, name = Path(config["output_dir"]), config["output_name"]
    output.mkdir(parents=True, exist_ok=True)
    launched = {"script": script.name, "argv": argv, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    (output / "fake_kohya_argv.json").write_text(json.dumps(launched))
    if repo := missing_tokenizer(config, family):
        return tokenizer_failure(repo, launch_argv)

    dataset = datasets["datasets"][0]
    subset = dataset["subsets"][0]
    general = datasets.get("general", {})
    out("Using DreamBooth method.")
    out("prepare images.")
    images, problems = count_images(subset, general)
    if problems:
        return fail(problems[:1], launch_argv)
    out(f"found directory {subset['image_dir']} contains {images} image files")
    if problems := check_buckets(dataset):
        return fail(problems, launch_argv)
    samples = images * int(subset.get("num_repeats", 1))
    out(f"{samples} train images with repeats.")
    batch = int(dataset.get("batch_size", 1))
    out(f"loading model for process 0/1\nload StableDiffusion checkpoint: {config['pretrained_model_name_or_path']}")
    out(f"import network module: {config['network_module']}")
    out(f"create LoRA network. base dim (rank): {config['network_dim']}, alpha: {config['network_alpha']}")
    out("prepare optimizer, data loader etc.")
    optimizer = config.get("optimizer_type") or "AdamW"
    if error := optimizer_error(optimizer):
        frames = [
            '  File "/sd-scripts/train_network.py", line 739, in train',
            "    optimizer_name, optimizer_args, optimizer = train_util.get_optimizer(args, trainable_params)",
            '  File "/sd-scripts/library/train_util.py", line 5132, in get_optimizer',
            "    optimizer_class = getattr(optimizer_module, case_sensitive_optimizer_type)",
        ]
        return fail(error, launch_argv, frames)
    out(f"use {optimizer} optimizer | {{}}")

    per_epoch = math.ceil(samples / batch)
    epochs = int(config["max_train_epochs"])
    total = per_epoch * epochs
    out(f"override steps. steps for {epochs} epochs is / 指定エポックまでのステップ数: {total}")
    initial_step = 0
    if resume := args.get("resume"):
        out(f"resume training from local state: {resume}")
        state = json.loads((Path(resume) / "train_state.json").read_text())
        out(f"load train state from {Path(resume) / 'train_state.json'}: {state}")
        initial_step = int(state["current_step"])
    if "initial_epoch" in args:  # train_network.py: overrides the state's step count
        if resume:
            out("steps from the state is ignored because initial_step is specified")
        initial_step = (int(args["initial_epoch"]) - 1) * per_epoch
    if initial_step > 0 and not total > initial_step:
        message = f"max_train_steps should be greater than initial step: {total} vs {initial_step}"
        return fail([f"AssertionError: {message}"], launch_argv)
    start_epoch = initial_step // per_epoch
    out("running training / 学習開始")
    out(f"  num train images * repeats / 学習画像の数×繰り返し回数: {samples}")
    out("  num reg images / 正則化画像の数: 0")
    out(f"  num batches per epoch / 1epochのバッチ数: {per_epoch}")
    out(f"  num epochs / epoch数: {epochs}")
    out(f"  batch size per device / バッチサイズ: {batch}")
    out("  gradient accumulation steps / 勾配を合計するステップ数 = 1")
    out(f"  total optimization steps / 学習ステップ数: {total}")

    delay = float(os.environ.get("FAKE_KOHYA_STEP_DELAY", "0"))
    crash_at = int(os.environ.get("FAKE_KOHYA_CRASH_AT_EPOCH", "0"))
    kill_at = int(os.environ.get("FAKE_KOHYA_SIGKILL_AT_EPOCH", "0"))
    bar = Bar(total)  # as in sd-scripts, a resumed run's bar starts again at 0, before the first epoch line
    global_step, losses = 0, []
    for epoch in range(start_epoch, epochs):
        out(f"\nepoch {epoch + 1}/{epochs}\n")
        for step in range(per_epoch):
            if os.environ.get("FAKE_KOHYA_HANG"):
                hang(bool(os.environ.get("FAKE_KOHYA_IGNORE_SIGTERM")))
            if os.environ.get("FAKE_KOHYA_OOM"):
                oom = (
                    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                    "capacity of 23.64 GiB of which 1.12 GiB is free."
                )
                return fail([oom], launch_argv)
            if epoch + 1 == crash_at and step == per_epoch // 2:
                bar.close()
                return fail(["RuntimeError: DataLoader worker (pid 4242) is killed by signal: Killed."], launch_argv)
            if epoch + 1 == kill_at and step == per_epoch // 2:
                bar.close()
                return launcher_fails(launch_argv, "died with <Signals.SIGKILL: 9>.")
            time.sleep(delay)
            global_step += 1
            losses.append(0.08 + 0.1 * math.exp(-(epoch * per_epoch + step) / max(total, 1)))
            bar.update(sum(losses[-10:]) / len(losses[-10:]))
        saved = epoch + 1
        if saved < epochs and saved % int(config["save_every_n_epochs"]) == 0:
            save_lora(output / f"{name}-{saved:06d}.safetensors", config, family, saved, global_step)
            if config.get("save_state"):
                save_state(output / f"{name}-{saved:06d}-state", config, family, saved, global_step)
                remove_old_state(output, config, saved)
    bar.close()
    if config.get("save_state"):  # train_network.py saves the last state before the last LoRA
        out("saving last state.")
        save_state(output / f"{name}-state", config, family, epochs, global_step)
    save_lora(output / f"{name}.safetensors", config, family, epochs, global_step)
    out("model saved.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
