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
    """The trained LoRA (`<persona>.safetensors`), epoch checkpoints, loss curve and training record."""
    return f"{PERSONAS}/{persona}/lora/"


def lora_manifest_key(persona: str) -> str:
    return f"{PERSONAS}/{persona}/manifests/lora_weights.json"


def samples_prefix(persona: str) -> str:
    """Validation renders with the persona's LoRA: `<n>.png` with `<n>.json` parameters beside, and `grid.png`."""
    return f"{PERSONAS}/{persona}/samples/"


def content_prefix(persona: str, day: str) -> str:
    """A day's plan (`plan.json`), images (`images/`) and reels (`videos/`)."""
    return f"{PERSONAS}/{persona}/content/{day}/"
