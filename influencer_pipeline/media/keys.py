"""Deterministic media-store keys.

Every asset writes under `personas/<persona>/...` and every upload lives under `uploads/<persona>/...`, so a
downstream step can rebuild an upstream key from the partition alone instead of passing blobs around.
"""

from __future__ import annotations

UPLOADS = "uploads"
PERSONAS = "personas"


def uploads_prefix(persona: str) -> str:
    return f"{UPLOADS}/{persona}/"


def dataset_prefix(persona: str) -> str:
    """Curated training images and their kohya `.txt` caption sidecars."""
    return f"{PERSONAS}/{persona}/dataset/"


def dataset_manifest_key(persona: str) -> str:
    return f"{PERSONAS}/{persona}/manifests/training_images.json"


def captions_manifest_key(persona: str) -> str:
    return f"{PERSONAS}/{persona}/manifests/image_captions.json"


def contact_sheet_key(persona: str) -> str:
    return f"{PERSONAS}/{persona}/previews/contact_sheet.jpg"


def lora_prefix(persona: str) -> str:
    """Every trained LoRA of the persona, one folder per version under `versions/`."""
    return f"{PERSONAS}/{persona}/lora/"


def lora_versions_prefix(persona: str) -> str:
    return f"{lora_prefix(persona)}versions/"


def lora_version_prefix(persona: str, version: str) -> str:
    """One LoRA version, never overwritten: `<persona>.safetensors`, `checkpoints/`, `loss_curve.png`,
    `manifest.json` (written last, so a version with a manifest is complete) and `samples/`."""
    return f"{lora_versions_prefix(persona)}{version}/"


def lora_file_key(persona: str, version: str) -> str:
    return f"{lora_version_prefix(persona, version)}{persona}.safetensors"


def lora_version_manifest_key(persona: str, version: str) -> str:
    return f"{lora_version_prefix(persona, version)}manifest.json"


def lora_manifest_key(persona: str) -> str:
    """The latest successful version's record (a copy of its `manifest.json`): the default active version."""
    return f"{PERSONAS}/{persona}/manifests/lora_weights.json"


def samples_prefix(persona: str, version: str) -> str:
    """Validation renders with one LoRA version: `<n>.png` with `<n>.json` parameters beside, and `grid.png`."""
    return f"{lora_version_prefix(persona, version)}samples/"


def content_prefix(persona: str, day: str) -> str:
    """A day's plan (`plan.json`), images (`images/`) and reels (`videos/`)."""
    return f"{PERSONAS}/{persona}/content/{day}/"
