"""The image-engine contract shared by the ComfyUI and embedded diffusers engines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class LoraRef:
    name: str  # as the engine knows it (ComfyUI: file name in its loras folder)
    strength: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    seed: int | None = None  # None: the engine draws a random seed and records it
    steps: int = 25
    cfg: float = 7.0
    width: int = 512
    height: int = 512
    sampler: str = "euler"
    scheduler: str = "normal"
    loras: tuple[LoraRef, ...] = ()


@dataclass
class GeneratedImage:
    png: bytes
    params: dict[str, Any] = field(default_factory=dict)  # prompt, seed, steps, cfg, sampler, loras, engine, ...


@dataclass(frozen=True)
class ClipRequest:
    """One still to animate (image-to-video). Sizes are the clip's; the renderer crops it to each output aspect."""

    still_png: bytes
    seed: int | None = None
    width: int = 576
    height: int = 1024
    frames: int = 25
    fps: int = 6
    motion: int = 127  # SVD motion_bucket_id: higher moves more
    steps: int = 20


@dataclass
class GeneratedClip:
    webp: bytes  # animated WEBP, as ComfyUI's SaveAnimatedWEBP writes it; ffmpeg reads it directly
    params: dict[str, Any] = field(default_factory=dict)


class ImageEngine(Protocol):
    name: str

    def deploy_lora(self, local_path: Path, name: str, group: str | None = None) -> str:
        """Make a LoRA file available to the engine; returns the name to use in `LoraRef`. `group` (the persona)
        lets the engine retire the group's older deployed versions."""
        ...

    def check_requests(self, requests: list[GenerationRequest]) -> None:
        """Raise `InputError` for the first request the engine would refuse, LoRA names aside (so it can run
        before the LoRA is deployed); touches nothing."""
        ...

    def generate(
        self,
        requests: list[GenerationRequest],
        progress: Callable[[int, int], None] = lambda done, total: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[GeneratedImage]: ...
