"""Stand-ins for external programs, so tests drive the real subprocess code paths without the real tools."""

from __future__ import annotations

import shlex
import stat
import sys
from pathlib import Path

FAKE_ACCELERATE = Path(__file__).with_name("accelerate.py")


def accelerate_command() -> list[str]:
    """The fake `accelerate`, run by this interpreter (for `KohyaTrainer(accelerate=...)`)."""
    return [sys.executable, str(FAKE_ACCELERATE)]


def install_accelerate(bin_dir: Path) -> Path:
    """Write an executable `accelerate` wrapper into `bin_dir` (put it on PATH to test the default command)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "accelerate"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(accelerate_command())} "$@"\n', encoding="utf-8")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return wrapper


def fake_sd_scripts(folder: Path) -> Path:
    """A folder shaped like a kohya-ss/sd-scripts checkout (the fake only checks the scripts exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    for script in ("train_network.py", "sdxl_train_network.py"):
        (folder / script).write_text("raise SystemExit('run through the fake accelerate')\n", encoding="utf-8")
    (folder / "networks").mkdir(exist_ok=True)
    (folder / "networks" / "lora.py").write_text("", encoding="utf-8")
    return folder


def fake_tokenizers(folder: Path) -> Path:
    """A `--tokenizer_cache_dir` holding both CLIP tokenizers sd-scripts loads (the fake only checks the files)."""
    for repo in ("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"):
        (folder / repo).mkdir(parents=True, exist_ok=True)
        (folder / repo / "vocab.json").write_text('{"!": 0}', encoding="utf-8")
        (folder / repo / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder
