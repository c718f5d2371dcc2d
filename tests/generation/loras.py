"""Small kohya-format LoRA files for the engine tests: real safetensors whose cross-attention width says the family.

Widths as real LoRAs have them (768 SD1.x, 2048 SDXL; the project's tiny test models give 32 and 64), in the key
layout ComfyUI loads (`lora_unet_<diffusers module>.lora_down.weight` / `.lora_up.weight` / `.alpha`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
WIDTHS = {"sd1": 768, "sd2": 1024, "sdxl": 2048, "tiny": 32, "tiny-sdxl": 64}


def write_lora(path: Path, family: str = "sd1", *, seed: int = 0, claim: str | None = None) -> Path:
    """A rank-4 LoRA for `family` (a WIDTHS key); `claim` sets `ss_base_model_version` (default: none)."""
    rng = np.random.default_rng(seed)
    tensors = {
        f"{MODULE}.lora_down.weight": rng.standard_normal((4, WIDTHS[family])).astype(np.float16),
        f"{MODULE}.lora_up.weight": rng.standard_normal((320, 4)).astype(np.float16),
        f"{MODULE}.alpha": np.array(4.0, dtype=np.float16),
    }
    metadata = {"ss_network_module": "networks.lora", **({"ss_base_model_version": claim} if claim else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_checkpoint(path: Path, kind: str) -> Path:
    """A header-faithful single-file checkpoint stub: `sd1`, `sdxl` (UNet cross-attention 768 / 2048 wide) or
    `svd` (CLIP-vision encoder under `conditioner.embedders.0.open_clip.model.visual.` and temporal layers).
    Tensors are tiny except for the shapes the header is read for."""
    width = {"sd1": 768, "sdxl": 2048, "svd": 1024}[kind]
    attn = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2"
    tensors = {f"{attn}.to_k.weight": np.zeros((320, width), dtype=np.float16)}
    if kind == "svd":
        tensors["model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight"] = np.zeros((2, 2), np.float16)
        tensors["conditioner.embedders.0.open_clip.model.visual.proj"] = np.zeros((2, 2), np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
