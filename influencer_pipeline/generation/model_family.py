"""Which base-model family a LoRA or checkpoint belongs to, read from the safetensors header alone.

ComfyUI applies a LoRA of another family (an SD1.5 LoRA on an SDXL checkpoint, or a tiny test model's LoRA on
anything) by logging shape errors on its own console and reporting success: every image is then made without the
LoRA. So the family is checked here, before a LoRA is deployed, from facts that cost a few kilobytes to read:

- A safetensors file starts with an 8-byte little-endian header length and a JSON header that lists every tensor's
  dtype and shape (https://github.com/huggingface/safetensors#format); no weights are read.
- A UNet LoRA's cross-attention key and value projections (`...attn2_to_k.lora_down.weight`, `attn2_to_v`,
  shape `[rank, in]`) take the text encoder's hidden states, so its in-width is the base's cross-attention
  width: 768 for SD1.x (CLIP-L), 1024 for SD2.x (OpenCLIP-H), 2048 for SDXL (CLIP-L + OpenCLIP-bigG). A
  checkpoint's own
  `model.diffusion_model.*attn2.to_k.weight` has the same in-width (ComfyUI detects the model the same way:
  `context_dim` in comfy/model_detection.py, https://github.com/comfyanonymous/ComfyUI).
- A LoRA with no UNet part still tells by its text-encoder keys: `lora_te1_`/`lora_te2_` are SDXL's two encoders
  (kohya sd-scripts naming); `lora_te_` q-projections are 768 wide on SD1.x, 1024 on SD2.x.
- An SVD image-to-video checkpoint carries the CLIP-vision encoder that ComfyUI's `ImageOnlyCheckpointLoader`
  returns (`conditioner.embedders.0.open_clip.model.visual.*`, the `clip_vision_prefix` of `SVD_img2vid` in
  comfy/supported_models.py) and temporal UNet layers (`time_stack`).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from influencer_pipeline.errors import InputError

FAMILIES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}
CROSS_ATTENTION_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the header size
SVD_CLIP_VISION_PREFIX = "conditioner.embedders.0.open_clip.model.visual."

_LORA_CROSS_ATTENTION = re.compile(r"attn2[._]to_[kv]\.(?:lora_down|lora_A|lora\.down)\.weight$")
_CHECKPOINT_CROSS_ATTENTION = re.compile(r"^model\.diffusion_model\..*\.attn2\.to_[kv]\.weight$")
_TE_Q_PROJ = re.compile(r"^lora_te_.*self_attn_q_proj\.lora_down\.weight$")


@dataclass(frozen=True)
class Family:
    """`name` is a key of FAMILIES, or None when the file is of no family we know; `evidence` says why."""

    name: str | None
    evidence: str

    @property
    def label(self) -> str:
        return FAMILIES.get(self.name or "", "an unknown base model")


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> {dtype, shape, data_offsets}, plus `__metadata__`)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if not 2 <= length <= min(MAX_HEADER_BYTES, path.stat().st_size - 8):
                raise ValueError(f"its header length {length} does not fit the file")
            header = json.loads(fh.read(length).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(
            str(path), f"is not a readable safetensors file ({exc})", "re-export it as .safetensors"
        ) from exc
    if not isinstance(header, dict):
        raise InputError(str(path), "has a safetensors header that is not a JSON object", "re-export the file")
    return header


def metadata(header: dict[str, Any]) -> dict[str, str]:
    value = header.get("__metadata__")
    return value if isinstance(value, dict) else {}


def _in_width(header: dict[str, Any], key: str) -> int | None:
    shape = (header.get(key) or {}).get("shape")
    return int(shape[1]) if isinstance(shape, list) and len(shape) >= 2 and isinstance(shape[1], int) else None


def _by_width(width: int, key: str) -> Family:
    name = CROSS_ATTENTION_WIDTHS.get(width)
    if name is None:
        known = ", ".join(f"{w} = {FAMILIES[f]}" for w, f in CROSS_ATTENTION_WIDTHS.items())
        return Family(None, f"{key} is {width} wide, which matches no base model ComfyUI runs ({known})")
    return Family(name, f"{key} is {width} wide ({FAMILIES[name]})")


def lora_family(header: dict[str, Any]) -> Family | None:
    """The family a LoRA was trained for; None when its keys say nothing (e.g. a format we do not parse)."""
    for key in sorted(header):
        if _LORA_CROSS_ATTENTION.search(key):
            width = _in_width(header, key)
            if width is not None:
                return _by_width(width, f"the UNet cross-attention input of `{key}`")
    if any(key.startswith(("lora_te1_", "lora_te2_")) for key in header):
        return Family("sdxl", "it has text-encoder keys for two encoders (lora_te1_/lora_te2_), as SDXL LoRAs do")
    for key in sorted(header):
        if _TE_Q_PROJ.search(key):
            width = _in_width(header, key)
            if width is not None:
                return _by_width(width, f"the text-encoder input of `{key}`")
    return None


def checkpoint_family(header: dict[str, Any]) -> Family | None:
    """The family of a single-file (ComfyUI / original layout) checkpoint; None when it has no SD-style UNet."""
    for key in sorted(header):
        if _CHECKPOINT_CROSS_ATTENTION.match(key):
            width = _in_width(header, key)
            if width is not None:
                return _by_width(width, f"the checkpoint's UNet cross-attention input `{key}`")
    return None


def is_svd_checkpoint(header: dict[str, Any]) -> bool:
    """True for a Stable Video Diffusion image-to-video checkpoint (CLIP-vision encoder plus temporal layers)."""
    has_clip_vision = any(key.startswith(SVD_CLIP_VISION_PREFIX) for key in header)
    has_temporal = any(key.startswith("model.diffusion_model.") and ".time_stack." in key for key in header)
    return has_clip_vision and has_temporal


def check_lora_family(path: Path, expected: str, target: str) -> Family | None:
    """Refuse a LoRA whose header shows another family than `expected` (a FAMILIES key); `target` names what it
    was meant for (the ComfyUI checkpoint/template) in the message. Returns the family found (None: undecidable)."""
    header = read_header(path)
    found = lora_family(header)
    if found is None or found.name == expected:
        return found
    claimed = metadata(header).get("ss_base_model_version")
    claim = f" (its metadata says ss_base_model_version={claimed!r})" if claimed else ""
    raise InputError(
        str(path),
        f"this LoRA was trained for {found.label}, but {target} is {FAMILIES[expected]}: {found.evidence}{claim}. "
        "ComfyUI would skip its weights with shape errors on its console and still report success",
        f"train the persona's LoRA on a {FAMILIES[expected]} base model (set the training preset's base_model to "
        f"one), or point COMFYUI_CHECKPOINT and COMFYUI_TEMPLATE at a {found.label} checkpoint and template",
    )
