"""The embedded image engine: a local diffusers pipeline with the persona's LoRA, behind the ComfyUI engine's interface.

It lets `lora_samples` and `post_images` run with no ComfyUI server: same requests (ComfyUI sampler and scheduler
names, LoRA names with strengths), same recorded parameters. LoRAs are the kohya-format files the trainers write;
diffusers' `load_lora_weights` detects that format itself, so the file ComfyUI would load is the file used here.

Sizes: a real base model renders at the requested size (a multiple of 8). A tiny smoke-test model (`tiny`,
`tiny-sdxl`) is a 64 px model whose pixels are noise, and attention cost grows with the square of the pixel count,
so a request larger than its native size is rendered at the native size (same aspect ratio, multiple of 8) and
resized to the requested size: downstream steps get the size they asked for in a second instead of minutes. The
size actually rendered is recorded as `render_width` / `render_height`. The demo asks for 64x64 from the tiny model.
"""

from __future__ import annotations

import io
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from influencer_pipeline.diffusion import TINY_MODELS, load_pipeline
from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import GeneratedImage, GenerationRequest, LoraRef

SEED_LIMIT = 2**53  # random seeds stay exact in JSON read by JavaScript, as the ComfyUI engine draws them
STEPS_RANGE = (1, 150)
CFG_RANGE = (1.0, 30.0)  # ComfyUI's cfg 1 and diffusers' guidance_scale 1 both mean "no guidance"
SIZE_RANGE = (8, 2048)
SEED_RANGE = (0, 2**64 - 1)  # KSampler's bounds, which torch.Generator shares
LORA_STRENGTH_RANGE = (-100.0, 100.0)  # LoraLoader's bounds
MAX_LORAS = 5
# ComfyUI sampler name -> (diffusers scheduler class, its options): the mapping diffusers documents for A1111 names.
# Left out: samplers with no diffusers counterpart (dpmpp_2s_ancestral, dpmpp_3m_sde, ...) and lms (needs scipy).
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_sde": ("DPMSolverSinglestepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "deis": ("DEISMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
# ComfyUI scheduler (sigma spacing) name -> the closest diffusers option; "normal" keeps the model's own scheduler
# config, which is what ComfyUI's default means in practice. `beta` needs scipy, which is not a dependency.
SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": {},
    "simple": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
}


class GenerationStopped(RuntimeError):
    """The run was terminated while images were being generated."""


class EmbeddedImageEngine:
    """`ImageEngine` on diffusers; the pipeline loads on first use and LoRAs load once, on first use by name."""

    name = "embedded"

    def __init__(self, base_model: str = "tiny", *, cache_dir: Path, device: str = "auto") -> None:
        self.base_model = base_model
        self.cache_dir = cache_dir  # where tiny models are built once
        self.device = device
        self._files: dict[str, Path] = {}  # deployed LoRA name -> file
        self._adapters: dict[str, str] = {}  # LoRA name -> peft adapter name loaded into the pipeline
        self._pipe: Any = None
        self._scheduler_config: Any = None

    def deploy_lora(self, local_path: Path, name: str, group: str | None = None) -> str:
        """Remember the file under `name`; a redeploy drops weights loaded under that name (the file may have been
        retrained in place), so the next use reads the file again. Nothing is copied, so `group` needs no cleanup."""
        if not Path(local_path).is_file():
            raise InputError(str(local_path), "the LoRA file does not exist", "train the LoRA first or fix the path")
        if not name:
            raise InputError("LoRA name", "must not be empty", "use the persona's LoRA file name")
        if name in self._adapters:
            self._pipe.delete_adapters(self._adapters.pop(name))
        self._files[name] = Path(local_path)
        return name

    def generate(
        self,
        requests: list[GenerationRequest],
        progress: Callable[[int, int], None] = lambda done, total: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[GeneratedImage]:
        """Render every request in order; all are validated before the first image, as the ComfyUI engine does."""
        for index, request in enumerate(requests):
            self._validate(request, f"generation request {index + 1}")
        images: list[GeneratedImage] = []
        for request in requests:
            if should_stop():
                raise GenerationStopped(f"generation stopped on request after {len(images)} of {len(requests)}")
            images.append(self._render(request, should_stop))
            progress(len(images), len(requests))
        return images

    def check_requests(self, requests: list[GenerationRequest]) -> None:
        """Every rule but "the LoRA is deployed", so sizes and settings are refused before any LoRA is copied."""
        for index, request in enumerate(requests):
            self._validate(request, f"generation request {index + 1}", check_loras=False)

    def _validate(self, request: GenerationRequest, where: str, *, check_loras: bool = True) -> None:
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise InputError(f"{where}: prompt", "must not be empty", "write what the image should show")
        if request.seed is not None:
            _check_range(request.seed, SEED_RANGE, f"{where}: seed", whole=True)
        _check_range(request.steps, STEPS_RANGE, f"{where}: steps", whole=True)
        _check_range(request.cfg, CFG_RANGE, f"{where}: cfg")
        for field in ("width", "height"):
            value = getattr(request, field)
            _check_range(value, SIZE_RANGE, f"{where}: {field}", whole=True)
            if value % 8:
                raise InputError(f"{where}: {field}", f"{value} is not a multiple of 8", f"use {value // 8 * 8 or 8}")
        _check_name(request.sampler, SAMPLERS, f"{where}: sampler")
        _check_name(request.scheduler, SCHEDULES, f"{where}: scheduler")
        if check_loras:
            self._check_loras(request.loras, where)

    def _check_loras(self, loras: tuple[LoraRef, ...], where: str) -> None:
        if len(loras) > MAX_LORAS:
            raise InputError(f"{where}: loras", f"0-{MAX_LORAS} LoRAs are allowed, got {len(loras)}", "drop some")
        names = [lora.name for lora in loras]
        for index, name in enumerate(names):
            if name not in self._files:
                known = ", ".join(sorted(self._files)) or "none"
                raise InputError(
                    f"{where}: loras[{index}].name",
                    f"the LoRA {name!r} was not deployed to the embedded engine (deployed: {known})",
                    "call deploy_lora(path, name) first",
                )
            if names.count(name) > 1:
                raise InputError(f"{where}: loras", f"the LoRA {name!r} is listed twice", "list it once")
            _check_range(loras[index].strength, LORA_STRENGTH_RANGE, f"{where}: loras[{index}].strength")

    def _render(self, request: GenerationRequest, should_stop: Callable[[], bool]) -> GeneratedImage:
        import torch

        pipe = self._pipeline()
        pipe.scheduler = self._scheduler(request.sampler, request.scheduler)
        self._apply_loras(pipe, request.loras)
        seed = request.seed if request.seed is not None else secrets.randbelow(SEED_LIMIT)
        width, height = self._render_size(pipe, request.width, request.height)

        def interrupt(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if should_stop():
                pipeline._interrupt = True  # diffusers' documented way to end the denoising loop early
            return tensors

        image = pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            num_inference_steps=request.steps,
            guidance_scale=request.cfg,
            width=width,
            height=height,
            generator=torch.Generator("cpu").manual_seed(seed),  # CPU noise: the same image on CPU and CUDA
            callback_on_step_end=interrupt,
        ).images[0]
        if should_stop():
            raise GenerationStopped(f"generation stopped on request while rendering {request.prompt[:40]!r}")
        if image.size != (request.width, request.height):
            image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
        return GeneratedImage(png=_png(image), params=self._params(request, seed, width, height))

    def _pipeline(self) -> Any:
        if self._pipe is None:
            self._pipe = load_pipeline(self.base_model, self.cache_dir, self.device)
            self._scheduler_config = self._pipe.scheduler.config
        return self._pipe

    def _scheduler(self, sampler: str, schedule: str) -> Any:
        """A fresh diffusers scheduler for ComfyUI's (sampler, scheduler) pair, on the model's own noise schedule."""
        import diffusers

        class_name, options = SAMPLERS[sampler]
        wanted = {**options, **SCHEDULES[schedule]}
        scheduler = getattr(diffusers, class_name).from_config(self._scheduler_config, **wanted)
        ignored = [key for key, value in wanted.items() if scheduler.config.get(key) != value]
        if ignored:
            raise InputError(
                "scheduler",
                f"{schedule!r} has no diffusers equivalent for sampler {sampler!r} ({class_name} ignores {ignored})",
                "use scheduler 'normal', or a sampler such as euler or dpmpp_2m",
            )
        return scheduler

    def _apply_loras(self, pipe: Any, loras: tuple[LoraRef, ...]) -> None:
        """Activate exactly the request's LoRAs at their strengths; none means the plain base model."""
        if not loras:
            if self._adapters:
                pipe.disable_lora()
            return
        for lora in loras:
            if lora.name not in self._adapters:
                adapter = _adapter_name(lora.name, len(self._adapters))
                pipe.load_lora_weights(str(self._files[lora.name]), adapter_name=adapter)
                self._adapters[lora.name] = adapter
        pipe.enable_lora()
        pipe.set_adapters([self._adapters[lora.name] for lora in loras], [float(lora.strength) for lora in loras])

    def _render_size(self, pipe: Any, width: int, height: int) -> tuple[int, int]:
        """The requested size, except that tiny models render at most their native size (see the module doc)."""
        native = pipe.unet.config.sample_size * pipe.vae_scale_factor
        if self.base_model not in TINY_MODELS or max(width, height) <= native:
            return width, height
        scale = native / max(width, height)
        return max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8)

    def _params(self, request: GenerationRequest, seed: int, width: int, height: int) -> dict[str, Any]:
        return {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": seed,
            "steps": request.steps,
            "cfg": request.cfg,
            "sampler": request.sampler,
            "scheduler": request.scheduler,
            "width": request.width,
            "height": request.height,
            "render_width": width,
            "render_height": height,
            "loras": [{"name": lora.name, "strength": lora.strength} for lora in request.loras],
            "engine": self.name,
            "base_model": self.base_model,
        }


def _check_range(value: Any, bounds: tuple[float, float], where: str, whole: bool = False) -> None:
    low, high = bounds
    kinds = int if whole else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = f"a whole number from {low} to {high}" if whole else f"a number from {low:g} to {high:g}"
        raise InputError(where, f"must be {what}, got {value!r}", "use a value in range")


def _check_name(value: str, known: dict[str, Any], where: str) -> None:
    if value not in known:
        raise InputError(where, f"{value!r} is not supported by the embedded engine", f"use one of: {', '.join(known)}")


def _adapter_name(name: str, index: int) -> str:
    """peft adapter names become module names, which cannot contain '.': derive a safe, unique one."""
    return f"lora{index}_" + re.sub(r"\W", "_", Path(name).stem)[:40]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
