"""The embedded LoRA trainer: diffusers + peft on a local SD1.5/SDXL pipeline (default: the tiny one), CPU or CUDA.

It exists so `make demo` and CI train a real LoRA with no GPU, no kohya checkout and no network. It does what
kohya's `train_network.py` does for a UNet-only LoRA (ε-prediction MSE on VAE latents, AdamW, kohya-named epoch
checkpoints and final file) and writes kohya-format safetensors, so ComfyUI loads its output exactly as it loads
kohya's. The frozen half of each step (VAE encoding, text encoding) is computed once per image, as kohya's
`--cache_latents` / `--cache_text_encoder_outputs` do, because it cannot change while only the LoRA trains.

Resume: at each checkpoint epoch (and at the end) the LoRA weights, optimizer, LR schedule and loss history go to
`<name>-<epoch:06d>-state/`. Batch order, noise and timesteps come from a generator seeded by (seed, epoch), so a
retry that resumes from epoch k continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from influencer_pipeline.diffusion import TINY_MODELS, load_pipeline, pick_device
from influencer_pipeline.errors import InputError
from influencer_pipeline.ingest.crop import square_crop
from influencer_pipeline.training.base import TrainingCancelled, TrainingProgress, TrainingRequest, TrainingResult

if TYPE_CHECKING:
    import torch

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections kohya's LoRA also targets
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("adamw", "adamw8bit")  # 8-bit AdamW needs bitsandbytes (CUDA only): plain AdamW stands in for it
MAX_GRAD_NORM = 1.0  # kohya's and diffusers' default gradient clipping
# Preset fields that change what training computes; a saved state made with other values is not resumed.
_TRAINING_FIELDS = (
    "base_model",
    "epochs",
    "learning_rate",
    "batch_size",
    "network_dim",
    "network_alpha",
    "optimizer",
    "lr_scheduler",
    "repeats",
    "seed",
    "mixed_precision",
)


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str


def read_dataset(dataset_dir: Path) -> list[Example]:
    """The image + `.txt` caption pairs in `dataset_dir`, sorted by name; a missing caption is an input error."""
    if not dataset_dir.is_dir():
        raise InputError(str(dataset_dir), "the dataset folder does not exist", "materialize training_images first")
    images = sorted(p for p in dataset_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(
            str(dataset_dir), "the dataset has no images (.png + .txt pairs)", "materialize training_images first"
        )
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise InputError(
            str(missing[0]),
            f"{len(missing)} image(s) have no .txt caption beside them",
            "materialize image_captions first (it writes the kohya .txt sidecars)",
        )
    return [Example(p, p.with_suffix(".txt").read_text(encoding="utf-8").strip()) for p in images]


def training_resolution(base_model: str, requested: int, native: int) -> int:
    """The square size actually trained: a tiny model's native size (64 px; it cannot learn more), else the preset's."""
    if base_model in TINY_MODELS:
        return native
    if requested % 8:
        raise InputError(
            "preset.resolution",
            f"{requested} is not a multiple of 8 (the VAE works in 8-pixel cells)",
            "use a multiple of 64, e.g. 512 for SD1.5 or 1024 for SDXL",
        )
    return requested


@dataclass(frozen=True)
class Plan:
    """How many steps an epoch has and in what order its samples are visited."""

    images: int
    repeats: int
    batch_size: int
    epochs: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.images * self.repeats / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def generator(self, epoch: int) -> torch.Generator:
        """The epoch's own RNG (CPU, so CPU and CUDA runs draw the same numbers): the key to exact resume."""
        import torch

        return torch.Generator().manual_seed(self.seed * 100_003 + epoch)

    def batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        """Sample indices per step: every image `repeats` times per epoch, shuffled, the last batch maybe short."""
        import torch

        indices = torch.arange(self.images).repeat(self.repeats)
        return list(indices[torch.randperm(len(indices), generator=generator)].split(self.batch_size))


@dataclass
class EncodedDataset:
    """The frozen encoders' outputs per image, on the CPU in float32."""

    latent_moments: torch.Tensor  # (N, 2*C, h, w): mean and log-variance of the VAE posterior; sampled per step
    text: torch.Tensor  # (N, tokens, dim)
    pooled: torch.Tensor | None  # SDXL's pooled text embedding (N, dim)
    time_ids: torch.Tensor | None  # SDXL's size/crop conditioning (1, 6)


class EmbeddedTrainer:
    """`Trainer` on diffusers + peft; models are loaded per `train` call so nothing stays in memory between runs."""

    name = "embedded"

    def __init__(self, cache_dir: Path, device: str = "auto") -> None:
        self.cache_dir = cache_dir  # where the tiny models are built once
        self.device = device

    def train(
        self,
        request: TrainingRequest,
        progress: Callable[[TrainingProgress], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> TrainingResult:
        """Train (or resume) the persona's LoRA; files land in `request.output_dir` as kohya names them."""
        started = time.monotonic()
        preset = request.preset
        _check_choice("preset.lr_scheduler", preset.lr_scheduler, LR_SCHEDULERS)
        _check_choice("preset.optimizer", preset.optimizer.lower(), OPTIMIZERS)
        examples = read_dataset(request.dataset_dir)
        device = pick_device(self.device)
        pipe = load_pipeline(preset.base_model, self.cache_dir, device, _weight_dtype(preset.mixed_precision, device))
        _check_family(preset, pipe)
        native = pipe.unet.config.sample_size * pipe.vae_scale_factor
        resolution = training_resolution(preset.base_model, preset.resolution, native)
        plan = Plan(len(examples), preset.repeats, preset.batch_size, preset.epochs, preset.seed)
        session = _Session.open(pipe, preset, plan, _encode(pipe, examples, resolution, preset.batch_size))
        progress(TrainingProgress(0, plan.total_steps, 0, plan.epochs, None, session.describe(plan, resolution)))
        fingerprint = _fingerprint(preset, resolution, examples)
        metadata = _kohya_metadata(preset, resolution, pipe)
        output = _Output(request.output_dir, request.output_name, fingerprint, metadata, preset.network_alpha)
        epoch, losses, resumed_from = _resume(request.resume, output, session, plan, progress)
        deadline = started + request.time_limit_s if request.time_limit_s else None
        while epoch < plan.epochs:
            epoch += 1
            losses += self._epoch(session, plan, epoch, progress, _stopper(should_stop, deadline, output))
            output.end_of_epoch(session, epoch, plan, preset.save_every_n_epochs, losses)
        lora_path = output.save_lora(output.final_path, session, epoch * plan.steps_per_epoch, epoch)
        return TrainingResult(
            engine=self.name,
            base_model=preset.base_model,
            lora_path=lora_path,
            checkpoints=output.checkpoints(plan.epochs),
            steps=plan.total_steps,
            epochs=plan.epochs,
            final_loss=losses[-1][1] if losses else None,
            losses=losses,
            duration_s=time.monotonic() - started,
            resumed_from=resumed_from,
        )

    def _epoch(
        self,
        session: _Session,
        plan: Plan,
        epoch: int,
        progress: Callable[[TrainingProgress], None],
        check_stop: Callable[[int], None],
    ) -> list[tuple[int, float]]:
        """Train one epoch; returns its (global step, loss) pairs and reports every step."""
        losses: list[tuple[int, float]] = []
        generator = plan.generator(epoch)
        for index, batch in enumerate(plan.batches(generator)):
            step = (epoch - 1) * plan.steps_per_epoch + index + 1
            check_stop(step)
            loss = session.step(batch, generator)
            if not math.isfinite(loss):
                raise InputError(
                    "preset.learning_rate",
                    f"training diverged: the loss is {loss} at step {step}",
                    "lower learning_rate (or use mixed_precision 'bf16' or 'no')",
                )
            losses.append((step, loss))
            progress(TrainingProgress(step, plan.total_steps, epoch, plan.epochs, loss))
        return losses


def _resume(
    wanted: bool, output: _Output, session: _Session, plan: Plan, progress: Callable[[TrainingProgress], None]
) -> tuple[int, list[tuple[int, float]], str | None]:
    """Where training starts: (epoch done, losses so far, state name) from the newest matching state, else zero."""
    state = output.latest_state() if wanted else None
    if state is None:
        return 0, [], None
    epoch, losses = session.restore(state)
    step = epoch * plan.steps_per_epoch
    progress(TrainingProgress(step, plan.total_steps, epoch, plan.epochs, None, f"resumed from {state.name}"))
    return epoch, losses, state.name


def _weight_dtype(mixed_precision: str, device: str) -> torch.dtype:
    """The frozen weights' dtype: half precision only on CUDA; the LoRA itself always trains in float32."""
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def _check_family(preset: Any, pipe: Any) -> None:
    """A LoRA trained on one architecture is useless on the other, so a mismatch stops before any work."""
    actual = "sdxl" if hasattr(pipe, "text_encoder_2") else "sd15"
    if preset.model_family != actual:
        raise InputError(
            "preset.model_family",
            f"is {preset.model_family!r} but base model {preset.base_model!r} is an {actual} pipeline",
            f"set model_family to {actual!r} or point base_model at a {preset.model_family} pipeline",
        )


def _encode(pipe: Any, examples: list[Example], resolution: int, chunk: int) -> EncodedDataset:
    """Run the VAE (in float32: SD VAEs overflow in fp16) and text encoder(s) once over the dataset."""
    import torch

    device = pipe.unet.device
    vae = pipe.vae if pipe.vae.dtype == torch.float32 else pipe.vae.to(dtype=torch.float32)
    is_xl = hasattr(pipe, "text_encoder_2")
    moments, texts, pooled = [], [], []
    with torch.no_grad():  # not inference_mode: these tensors feed the LoRA's autograd graph later
        for start in range(0, len(examples), chunk):
            part = examples[start : start + chunk]
            pixels = torch.stack([_pixels(e.image, resolution) for e in part]).to(device)
            moments.append(vae.encode(pixels).latent_dist.parameters.float().cpu())
            encoded = pipe.encode_prompt(
                prompt=[e.caption for e in part],
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )
            texts.append(encoded[0].float().cpu())
            if is_xl:
                pooled.append(encoded[2].float().cpu())
    _offload_encoders(pipe)
    # SDXL size conditioning (original size, crop offset, target size): curated images are already square, no offset.
    size_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)
    return EncodedDataset(
        latent_moments=torch.cat(moments),
        text=torch.cat(texts),
        pooled=torch.cat(pooled) if is_xl else None,
        time_ids=size_ids if is_xl else None,
    )


def _pixels(path: Path, resolution: int) -> torch.Tensor:
    """An image as a (3, res, res) tensor in [-1, 1], square-cropped the way the dataset asset crops."""
    import numpy as np
    import torch

    with Image.open(path) as image:
        square = square_crop(image.convert("RGB"), resolution)
    array = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _offload_encoders(pipe: Any) -> None:
    """The encoders are done after caching: give their GPU memory to the UNet's activations."""
    import torch

    if pipe.unet.device.type != "cuda":
        return
    for name in ("vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).to("cpu")
    torch.cuda.empty_cache()


class _Session:
    """The UNet with its LoRA, the optimizer, the LR schedule and the cached dataset: everything a step touches."""

    def __init__(self, pipe: Any, preset: Any, data: EncodedDataset, optimizer: Any, lr_schedule: Any) -> None:
        import torch
        from diffusers import DDPMScheduler

        self.unet = pipe.unet
        self.data = data
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)  # the schedule SD was trained on
        self.scaling_factor = pipe.vae.config.scaling_factor
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.notes = _optimizer_notes(preset) + _precision_notes(preset, self.device.type) + _scope_notes(preset)

    @classmethod
    def open(cls, pipe: Any, preset: Any, plan: Plan, data: EncodedDataset) -> _Session:
        """Freeze the pipeline, add a seeded LoRA to the UNet, and build AdamW and the LR schedule over it."""
        import torch
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig

        for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if getattr(pipe, part, None) is not None:
                getattr(pipe, part).requires_grad_(False)
        config = LoraConfig(
            r=preset.network_dim,
            lora_alpha=preset.network_alpha,
            init_lora_weights="gaussian",
            target_modules=TARGET_MODULES,
        )
        with _seeded(preset.seed, pipe.unet.device):
            pipe.unet.add_adapter(config)
        if preset.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        params = [p for p in pipe.unet.parameters() if p.requires_grad]
        for param in params:
            param.data = param.data.float()  # LoRA weights train in float32 even on a half-precision base
        optimizer = torch.optim.AdamW(params, lr=preset.learning_rate)
        schedule = get_scheduler(
            preset.lr_scheduler, optimizer, num_warmup_steps=0, num_training_steps=plan.total_steps
        )
        pipe.unet.train()
        return cls(pipe, preset, data, optimizer, schedule)

    def describe(self, plan: Plan, resolution: int) -> str:
        """The run-log line that says what will actually happen (device, precision, size, steps, substitutions)."""
        dtype = str(self.dtype).removeprefix("torch.")
        return " ".join(
            [
                f"embedded LoRA training on {self.device.type} ({dtype}) at {resolution}x{resolution} px:",
                f"{plan.images} images x {plan.repeats} repeats, batch {plan.batch_size},",
                f"{plan.steps_per_epoch} steps/epoch x {plan.epochs} epochs = {plan.total_steps} steps.",
                *self.notes,
            ]
        )

    def step(self, batch: torch.Tensor, generator: torch.Generator) -> float:
        """One optimisation step on the samples `batch`; random draws come from the epoch's `generator`."""
        import torch
        import torch.nn.functional as F

        mean, logvar = self.data.latent_moments[batch].chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        latents = (mean + std * torch.randn(mean.shape, generator=generator)) * self.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, self.noise_schedule.config.num_train_timesteps, (len(batch),), generator=generator)
        latents, noise, timesteps = latents.to(self.device), noise.to(self.device), timesteps.to(self.device)
        noisy = self.noise_schedule.add_noise(latents, noise, timesteps)
        target = noise
        if self.noise_schedule.config.prediction_type == "v_prediction":  # SD2.x 768 models
            target = self.noise_schedule.get_velocity(latents, noise, timesteps)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            prediction = self.unet(
                noisy.to(self.dtype),
                timesteps,
                self.data.text[batch].to(self.device, self.dtype),
                added_cond_kwargs=self._added_conditions(batch),
            ).sample
        loss = F.mse_loss(prediction.float(), target.float())
        self._update(loss)
        return loss.item()

    def _added_conditions(self, batch: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """SDXL's extra UNet inputs (pooled text + size/crop ids); SD1.x has none."""
        if self.data.pooled is None or self.data.time_ids is None:
            return None
        return {
            "text_embeds": self.data.pooled[batch].to(self.device, self.dtype),
            "time_ids": self.data.time_ids.repeat(len(batch), 1).to(self.device, self.dtype),
        }

    def _update(self, loss: torch.Tensor) -> None:
        import torch

        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The LoRA in peft naming (`…to_q.lora_A.weight`), exactly as trained: what a resume reloads."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(self.unet).items()}

    def restore(self, state: Path) -> tuple[int, list[tuple[int, float]]]:
        """Load a saved state; returns its epoch and the loss history up to it."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.unet, load_file(state / "lora.safetensors", device=str(self.device)))
        saved = torch.load(state / "optimizer.pt", map_location=self.device)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_schedule.load_state_dict(saved["lr_schedule"])
        self.scaler.load_state_dict(saved["scaler"])
        info = json.loads((state / "train_state.json").read_text(encoding="utf-8"))
        return int(info["current_epoch"]), [(int(s), float(v)) for s, v in info["losses"]]

    def save_state(self, directory: Path) -> None:
        import torch
        from safetensors.torch import save_file

        save_file(self.lora_state(), directory / "lora.safetensors")
        training = {
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        torch.save(training, directory / "optimizer.pt")


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(
            field,
            f"{value!r} is not supported by the embedded trainer",
            f"use one of {', '.join(allowed)}, or the kohya trainer for other choices",
        )


def _optimizer_notes(preset: Any) -> list[str]:
    if preset.optimizer.lower() == "adamw8bit":
        return ["optimizer AdamW8bit needs bitsandbytes, which the embedded trainer does not use: plain AdamW."]
    return []


def _precision_notes(preset: Any, device_type: str) -> list[str]:
    if preset.mixed_precision != "no" and device_type != "cuda":
        return [f"mixed_precision {preset.mixed_precision} needs CUDA: training in float32 on {device_type}."]
    return []


def _scope_notes(preset: Any) -> list[str]:
    if preset.network_train_unet_only:
        return []
    return ["The embedded trainer trains a UNet-only LoRA (no text-encoder LoRA), as network_train_unet_only does."]


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for the LoRA's initial weights without disturbing the caller's random state."""
    import torch

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _stopper(should_stop: Callable[[], bool], deadline: float | None, output: _Output) -> Callable[[int], None]:
    """A per-step check that raises `TrainingCancelled` on a stop request or past the time limit."""

    def check(step: int) -> None:
        if should_stop():
            raise TrainingCancelled(f"training stopped on request before step {step}; {output.resume_hint()}")
        if deadline is not None and time.monotonic() > deadline:
            raise TrainingCancelled(f"training hit its time limit before step {step}; {output.resume_hint()}")

    return check


def _fingerprint(preset: Any, resolution: int, examples: list[Example]) -> str:
    """What a saved state must match to be resumed: the training settings and the exact dataset."""
    digest = hashlib.sha256()
    settings = {field: getattr(preset, field) for field in _TRAINING_FIELDS}
    digest.update(json.dumps({**settings, "resolution": resolution}, sort_keys=True, default=str).encode())
    for example in examples:
        digest.update(example.image.name.encode() + example.image.read_bytes() + example.caption.encode())
    return digest.hexdigest()


def _kohya_metadata(preset: Any, resolution: int, pipe: Any) -> dict[str, str]:
    """sd-scripts' `ss_*` header fields, so tools that read kohya LoRAs (and people) see how this one was made."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(preset.network_dim),
        "ss_network_alpha": str(preset.network_alpha),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_learning_rate": str(preset.learning_rate),
        "ss_seed": str(preset.seed),
        "ss_base_model_version": base_model_version(preset.base_model, pipe),
        "ss_sd_model_name": str(preset.base_model),
        "ss_training_comment": "influencer-pipeline embedded trainer (diffusers + peft, UNet-only)",
    }


def base_model_version(base_model: str, pipe: Any) -> str:
    """sd-scripts' `ss_base_model_version` for what the LoRA was really trained on, from the UNet's cross-attention
    width (768 SD1.x, 1024 SD2.x, 2048 SDXL). The tiny test models match none of them (32 and 64 wide) and say so:
    claiming `sd_v1` would make tools, and people, load their LoRA on a real SD1.5 checkpoint."""
    width = int(pipe.unet.config.cross_attention_dim)
    sdxl = hasattr(pipe, "text_encoder_2")
    if base_model in TINY_MODELS:
        return f"influencer_{base_model.replace('-', '_')} (test model, cross-attention width {width}; no real base)"
    if sdxl and width == 2048:
        return "sdxl_base_v1-0"
    if width == 768:
        return "sd_v1"
    if width == 1024:
        v_prediction = getattr(pipe.scheduler.config, "prediction_type", "epsilon") == "v_prediction"
        return "sd_v2_768_v" if v_prediction else "sd_v2_512"
    return f"unknown (cross-attention width {width})"


def kohya_state_dict(peft_state: dict[str, torch.Tensor], network_alpha: float) -> dict[str, torch.Tensor]:
    """Convert a UNet LoRA from peft to kohya naming (`lora_unet_…lora_down.weight`, `.alpha`) for ComfyUI.

    diffusers' converter writes `alpha = rank`, right only when alpha equals dim; kohya scales by alpha/dim, so the
    real `network_alpha` is written instead (`convert_state_dict_to_kohya` in
    https://github.com/huggingface/diffusers/blob/main/src/diffusers/utils/state_dict_utils.py).
    """
    import torch
    from diffusers.utils import convert_state_dict_to_kohya

    converted = convert_state_dict_to_kohya({f"unet.{key}": value for key, value in peft_state.items()})
    strays = [key for key in converted if not key.startswith("lora_unet_")]
    if strays:
        raise RuntimeError(f"kohya conversion produced keys ComfyUI would not load: {strays[:3]}")
    return {
        key: torch.tensor(float(network_alpha)) if key.endswith(".alpha") else value for key, value in converted.items()
    }


class _Output:
    """The trainer's files in `output_dir`, named as sd-scripts names them (`EPOCH_FILE_NAME` in
    https://github.com/kohya-ss/sd-scripts/blob/main/library/train_util.py)."""

    def __init__(
        self, directory: Path, name: str, fingerprint: str, metadata: dict[str, str], network_alpha: float
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.name = name
        self.fingerprint = fingerprint
        self.metadata = metadata
        self.network_alpha = network_alpha
        self.saved_epoch = 0

    @property
    def final_path(self) -> Path:
        return self.directory / f"{self.name}.safetensors"

    def checkpoint_path(self, epoch: int) -> Path:
        return self.directory / f"{self.name}-{epoch:06d}.safetensors"

    def checkpoints(self, epochs: int) -> list[Path]:
        return [self.checkpoint_path(e) for e in range(1, epochs) if self.checkpoint_path(e).is_file()]

    def end_of_epoch(
        self,
        session: _Session,
        epoch: int,
        plan: Plan,
        every: int,
        losses: list[tuple[int, float]],
    ) -> None:
        """kohya's rule: a checkpoint every `every` epochs except the last (which is the final file); state too."""
        last = epoch == plan.epochs
        if not every or (epoch % every and not last):
            return
        if not last:
            self.save_lora(self.checkpoint_path(epoch), session, epoch * plan.steps_per_epoch, epoch)
        self.save_state(session, epoch, losses)

    def save_lora(self, path: Path, session: _Session, steps: int, epoch: int) -> Path:
        """Write the kohya-format LoRA atomically, so a watcher never uploads half a file."""
        from safetensors.torch import save_file

        tensors = kohya_state_dict(session.lora_state(), self.network_alpha)
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, partial, metadata={**self.metadata, "ss_epoch": str(epoch), "ss_steps": str(steps)})
        os.replace(partial, path)
        return path

    def save_state(self, session: _Session, epoch: int, losses: list[tuple[int, float]]) -> None:
        """Write `<name>-<epoch>-state/` aside and rename it into place, then drop older states."""
        final = self.directory / f"{self.name}-{epoch:06d}-state"
        scratch = self.directory / f".{final.name}-{uuid.uuid4().hex}"
        scratch.mkdir()
        session.save_state(scratch)
        info = {"current_epoch": epoch, "current_step": losses[-1][0], "losses": losses}
        info["fingerprint"] = self.fingerprint
        (scratch / "train_state.json").write_text(json.dumps(info), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(scratch, final)
        for old in self._states():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        self.saved_epoch = epoch

    def latest_state(self) -> Path | None:
        """The newest complete state made with these settings and this dataset, if any."""
        for state in sorted(self._states(), reverse=True):
            try:
                info = json.loads((state / "train_state.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if info.get("fingerprint") == self.fingerprint:
                self.saved_epoch = int(info["current_epoch"])
                return state
        return None

    def resume_hint(self) -> str:
        if not self.saved_epoch:
            return "no state was saved yet, so a retry starts over"
        return f"a retry resumes from the state saved after epoch {self.saved_epoch}"

    def _states(self) -> list[Path]:
        pattern = re.compile(rf"{re.escape(self.name)}-\d{{6}}-state")
        return [p for p in self.directory.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]
