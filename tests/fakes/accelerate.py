#!/usr/bin/env python3
"""A fake `accelerate launch <sd-scripts>/train_network.py --config_file X --dataset_config Y [--resume DIR]`.

It behaves like kohya-ss/sd-scripts as far as an operator can see (`comfyui-kohya.md` B6/B7): it reads both
TOMLs, checks the image folder, prints the startup block and `epoch k/E` on stdout and a tqdm `steps` bar redrawn
with `\\r` on stderr, writes `<name>-NNNNNN.safetensors` checkpoints (real safetensors, kohya LoRA keys) and
`<name>-NNNNNN-state/` folders, then `<name>.safetensors`; `--resume` continues after the saved epoch, restarting
the bar at 0 as sd-scripts does. Misbehaviour on demand, through environment variables:

- FAKE_KOHYA_CRASH_AT_EPOCH=N: exit 1 with a traceback halfway through epoch N.
- FAKE_KOHYA_OOM=1: print a CUDA out-of-memory traceback at the first step and exit 1.
- FAKE_KOHYA_HANG=1: start a child process, then sleep forever (tests the process-tree kill).
- FAKE_KOHYA_IGNORE_SIGTERM=1: with HANG, both processes ignore SIGTERM (tests the SIGKILL escalation).
- FAKE_KOHYA_PID_FILE=path: write this process's and the child's pids there (JSON list).
- FAKE_KOHYA_STEP_DELAY=seconds: sleep per step (default 0).
"""

from __future__ import annotations

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


def out(text: str = "") -> None:
    print(text, flush=True)


def fail(lines: list[str], launch_argv: list[str]) -> int:
    """Print a Python traceback like the training process, then accelerate's own, and exit 1 as accelerate does."""
    frames = ["Traceback (most recent call last):", '  File "train_network.py", line 1536, in <module>']
    print("\n".join([*frames, "    trainer.train(args)", *lines]), file=sys.stderr, flush=True)
    command = [sys.executable, *launch_argv]
    accelerate = [
        "Traceback (most recent call last):",
        '  File "/venv/bin/accelerate", line 8, in <module>',
        "    sys.exit(main())",
        '  File "/venv/lib/python3.10/site-packages/accelerate/commands/launch.py", line 1168, in launch_command',
        "    simple_launcher(args)",
        f"subprocess.CalledProcessError: Command '{command}' returned non-zero exit status 1.",
    ]
    print("\n".join(accelerate), file=sys.stderr, flush=True)
    return 1


def parse_launch(argv: list[str]) -> tuple[Path, dict[str, str]]:
    """Split `launch [accelerate options] script.py [script args]`; only the script args matter here."""
    if not argv or argv[0] != "launch":
        raise SystemExit("usage: accelerate launch [options] script.py [args]")
    index = next(i for i, arg in enumerate(argv) if arg.endswith(".py"))
    rest = argv[index + 1 :]
    return Path(argv[index]), {rest[i].removeprefix("--"): rest[i + 1] for i in range(0, len(rest) - 1, 2)}


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
        tensors[f"{module}.lora_down.weight"] = rng.standard_normal((rank, 8)).astype(np.float16)
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
    out(f"train_state.json: save train state to {folder / 'train_state.json'} at epoch {epoch} step {step}")
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


def main(argv: list[str]) -> int:
    script, args = parse_launch(argv)
    launch_argv = argv[argv.index(str(script)) :]
    if not script.is_file():
        print(f"{sys.executable}: can't open file '{script}': [Errno 2] No such file or directory", file=sys.stderr)
        return 2
    config_file, dataset_file = Path(args["config_file"]), Path(args["dataset_config"])
    out(f"Loading settings from {config_file}...")
    config = flatten(tomllib.loads(config_file.read_text(encoding="utf-8")))
    datasets = tomllib.loads(dataset_file.read_text(encoding="utf-8"))
    family = "sdxl" if script.name.startswith("sdxl_") else "sd15"
    output, name = Path(config["output_dir"]), config["output_name"]
    output.mkdir(parents=True, exist_ok=True)
    (output / "fake_kohya_argv.json").write_text(json.dumps({"script": script.name, "argv": argv}))

    dataset = datasets["datasets"][0]
    subset = dataset["subsets"][0]
    general = datasets.get("general", {})
    out("prepare tokenizer")
    out("Using DreamBooth method.")
    out("prepare images.")
    images, problems = count_images(subset, general)
    if problems:
        return fail(problems[:1], launch_argv)
    out(f"found directory {subset['image_dir']} contains {images} image files")
    samples = images * int(subset.get("num_repeats", 1))
    out(f"{samples} train images with repeating.")
    batch = int(dataset.get("batch_size", 1))
    out(f"loading model for process 0/1\nload Diffusers pretrained models: {config['pretrained_model_name_or_path']}")
    out(f"import network module: {config['network_module']}")
    out(f"create LoRA network. base dim (rank): {config['network_dim']}, alpha: {config['network_alpha']}")
    out("prepare optimizer, data loader etc.")
    out(f"use {config.get('optimizer_type') or 'AdamW'} optimizer | {{}}")

    per_epoch = math.ceil(samples / batch)
    epochs = int(config["max_train_epochs"])
    total = per_epoch * epochs
    out(f"override steps. steps for {epochs} epochs is / 指定エポックまでのステップ数: {total}")
    start_epoch = 0
    if resume := args.get("resume"):
        out(f"resume training from local state: {resume}")
        state = json.loads((Path(resume) / "train_state.json").read_text())
        out(f"load train state from {Path(resume) / 'train_state.json'}: {state}")
        start_epoch = int(state["current_step"]) // per_epoch
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
    bar = Bar(total)  # as in sd-scripts, a resumed run's bar starts again at 0
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
    save_lora(output / f"{name}.safetensors", config, family, epochs, global_step)
    if config.get("save_state"):
        save_state(output / f"{name}-state", config, family, epochs, global_step)
    out("model saved.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
