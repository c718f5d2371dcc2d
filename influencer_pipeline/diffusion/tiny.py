"""Tiny Stable-Diffusion-architecture pipelines built from config, and loading of any local diffusers SD pipeline.

The embedded trainer and image engine must run on a fresh laptop with no GPU and no network. A random-weight
pipeline with the real SD1.5 (or SDXL) architecture and file layout exercises exactly the code that a real model
does (tokenizer, text encoder, VAE, UNet, scheduler, LoRA injection and kohya export) at about 6 MB and a second
per step, so the demo and the tests need nothing downloaded. Its images are noise; it proves plumbing, not art.

torch, transformers and diffusers are imported on first use, so importing this module (and the Dagster
definitions that reference it) stays fast on machines that never run diffusion.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from influencer_pipeline.errors import ModelNotAvailableError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTokenizer

EXAMPLE_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_SEED = 0
# Every attention projection in these configs is 32 wide (CLIP hidden size); the VAE halves the image once.
_TEXT_HIDDEN = 32


def pick_device(device: str) -> str:
    """`auto` means the GPU when torch sees one, else the CPU; anything else is passed to torch as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_tiny_sd(directory: Path) -> Path:
    """Save a random-weight SD1.5-architecture pipeline (~6 MB, 64x64 px native) into `directory`; return it.

    Weights come from a fixed seed inside a forked RNG, so every build is byte-for-byte the same model (parallel
    builds are interchangeable) and the caller's random state is left alone.
    """
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        tokenizer = _tiny_tokenizer()
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=_TEXT_HIDDEN,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        pipe = StableDiffusionPipeline(
            vae=_tiny_vae(),
            text_encoder=CLIPTextModel(_text_config(tokenizer)),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=DDPMScheduler(**_scheduler_config(), clip_sample=False),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(directory)
    return directory


def build_tiny_sdxl(directory: Path) -> Path:
    """Save a random-weight SDXL-architecture pipeline (two text encoders, size/crop conditioning) into `directory`.

    It exists so the SDXL branches of training and generation (pooled text embeddings, `time_ids`) run offline.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        tokenizer = _tiny_tokenizer()
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=2 * _TEXT_HIDDEN,  # SDXL concatenates both encoders' hidden states
            attention_head_dim=8,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + _TEXT_HIDDEN,  # six size/crop ids + pooled text
            norm_num_groups=32,
        )
        pipe = StableDiffusionXLPipeline(
            vae=_tiny_vae(),
            text_encoder=CLIPTextModel(_text_config(tokenizer)),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer)),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=EulerDiscreteScheduler(**_scheduler_config(), timestep_spacing="leading"),
        )
    pipe.save_pretrained(directory)
    return directory


TINY_MODELS: dict[str, Callable[[Path], Path]] = {"tiny": build_tiny_sd, "tiny-sdxl": build_tiny_sdxl}


def load_pipeline(
    base_model: str, cache_dir: Path, device: str = "auto", dtype: torch.dtype | None = None
) -> DiffusionPipeline:
    """A StableDiffusion(XL)Pipeline on `device`, from a tiny model name or a local diffusers directory.

    `tiny` / `tiny-sdxl` are built once into `cache_dir`. Anything else must be a local diffusers-format directory;
    a missing one raises `ModelNotAvailableError` saying how to put a model here. Half precision only runs on
    CUDA: on the CPU every model loads in float32 whatever `dtype` asks (CPU fp16 kernels are slow or missing).
    """
    import torch

    device = pick_device(device)
    if not device.startswith("cuda"):
        dtype = torch.float32
    elif dtype is None:
        dtype = torch.float16
    directory = tiny_model_dir(base_model, cache_dir) if base_model in TINY_MODELS else Path(base_model).expanduser()
    pipeline_class, extra = _pipeline_class(base_model, directory)
    try:
        pipe = pipeline_class.from_pretrained(directory, dtype=dtype, local_files_only=True, **extra)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotAvailableError(_how_to_provide(base_model, directory, reason)) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def tiny_model_dir(name: str, cache_dir: Path) -> Path:
    """Build tiny model `name` into `cache_dir` unless it is there; the build is atomic (build aside, rename)."""
    target = cache_dir / f"{name}-v1"
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = cache_dir / f".{name}-{uuid.uuid4().hex}"
    TINY_MODELS[name](scratch)
    try:
        os.replace(scratch, target)
    except OSError:  # another process finished the same (identical) build first
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _pipeline_class(base_model: str, directory: Path) -> tuple[Any, dict[str, Any]]:
    """The pipeline class named by `model_index.json`, plus the from_pretrained extras it needs."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    index = directory / "model_index.json"
    if not directory.is_dir():
        raise ModelNotAvailableError(_how_to_provide(base_model, directory, "no such directory"))
    if not index.is_file():
        reason = "it is not a diffusers pipeline directory (no model_index.json; single-file checkpoints are not read)"
        raise ModelNotAvailableError(_how_to_provide(base_model, directory, reason))
    class_name = str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
    if class_name.startswith("StableDiffusionXL"):
        return StableDiffusionXLPipeline, {}
    if class_name.startswith("StableDiffusion"):
        # The NSFW checker costs 1.2 GB and blanks images; brand safety is a separate, explicit check here.
        return StableDiffusionPipeline, {"safety_checker": None, "requires_safety_checker": False}
    reason = f"its pipeline class {class_name!r} is neither Stable Diffusion 1.x/2.x nor SDXL"
    raise ModelNotAvailableError(_how_to_provide(base_model, directory, reason))


def _how_to_provide(base_model: str, directory: Path, reason: str) -> str:
    """The error text for a base model that is not here: what was looked for, why it failed, and the exact fix."""
    return (
        f"base model {base_model!r} is not available on this machine (nothing is downloaded at run time): "
        f"looked for a diffusers pipeline directory at {directory.resolve()}: {reason}. Fix: on a machine with "
        f"internet run `hf download {EXAMPLE_REPO} --local-dir models/sd15 --exclude '*.ckpt' '*.bin'` (or an SDXL "
        "repository in diffusers format), copy models/sd15 here and set EMBEDDED_BASE_MODEL=/abs/path/models/sd15 "
        "(or the preset's base_model); use base_model 'tiny' for an offline smoke test."
    )


def _tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose 514-token vocabulary (every byte, alone and word-final) encodes any text."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    characters = list(bytes_to_unicode().values())
    tokens = [*characters, *(f"{c}</w>" for c in characters), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=_TEXT_HIDDEN,
    )


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=64,
        norm_num_groups=32,
    )


def _scheduler_config() -> dict[str, Any]:
    """SD's training noise schedule; `steps_offset=1` (and DDPM's `clip_sample=False`) avoid config-patch warnings."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "steps_offset": 1,
    }
