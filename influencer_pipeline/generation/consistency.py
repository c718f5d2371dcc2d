"""How consistent a LoRA's samples are with the persona's dataset: one number per sample grid, pluggable embedding.

Score: for each sample, the cosine similarity of its embedding to the *nearest* dataset image's embedding; the
score is the mean of those over the samples (range -1..1, higher is more consistent). Nearest neighbour, not the
dataset centroid, because a persona dataset mixes poses, framings and backgrounds on purpose: the mean of their
embeddings is a blur that no good sample resembles, while a good sample does look like *some* training photo.

Embedders:
- `ColorLayoutEmbedder` (default; numpy + Pillow only): palette and composition, not identity. Its cosine is the
  average of a colour-histogram similarity and a grayscale-thumbnail correlation. It makes the score exist on any
  machine; it cannot tell two people with the same colours apart.
- `ClipEmbedder`: CLIP image embeddings from a local model (semantic similarity; still not a face-identity model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from influencer_pipeline.errors import InputError, ModelNotAvailableError

CLIP_EXAMPLE_REPO = "openai/clip-vit-base-patch32"


class Embedder(Protocol):
    """Maps images to one row each; rows are compared by cosine similarity. `name` is recorded with the score."""

    name: str

    def embed(self, images: list[Image.Image]) -> np.ndarray: ...


def consistency_score(samples: list[Image.Image], dataset: list[Image.Image], embedder: Embedder) -> float:
    """Mean over `samples` of the best cosine similarity to any `dataset` image (see the module doc for why)."""
    if not samples or not dataset:
        raise InputError(
            "consistency score",
            f"needs at least one sample and one dataset image (got {len(samples)} and {len(dataset)})",
            "render the sample prompts and pass the persona's training images",
        )
    sample_rows = _unit_rows(embedder.embed(samples))
    dataset_rows = _unit_rows(embedder.embed(dataset))
    return float((sample_rows @ dataset_rows.T).max(axis=1).mean())


class ColorLayoutEmbedder:
    """Half palette (square-rooted joint RGB histogram), half layout (mean-centred grayscale thumbnail).

    Both halves are unit vectors, so the cosine of two embeddings is the mean of the Bhattacharyya coefficient of
    the colour histograms (0..1) and the Pearson correlation of the thumbnails (-1..1): scores lie in -0.5..1.
    """

    name = "color-histogram+gray-thumbnail"

    def __init__(self, bins: int = 8, thumbnail: int = 16) -> None:
        self.bins = bins
        self.thumbnail = thumbnail

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        return np.stack([self._features(image) for image in images])

    def _features(self, image: Image.Image) -> np.ndarray:
        rgb = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)).reshape(-1, 3)
        histogram, _ = np.histogramdd(rgb, bins=(self.bins,) * 3, range=[(0, 256)] * 3)
        palette = np.sqrt(histogram.ravel() / histogram.sum())
        size = (self.thumbnail, self.thumbnail)
        gray = np.asarray(image.convert("L").resize(size, Image.Resampling.BOX), dtype=np.float64).ravel()
        layout = gray - gray.mean()
        return np.concatenate([_unit(palette), _unit(layout)]) / np.sqrt(2.0)


class ClipEmbedder:
    """CLIP image embeddings (`CLIPModel.get_image_features`) from a local directory or an already-cached repo."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 16) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.name = f"clip:{model}"
        self._loaded: tuple[Any, Any, str] | None = None

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        processor, net, device = self._components()
        rows = []
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            with torch.inference_mode():
                pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device, net.dtype)
                output = net.get_image_features(pixel_values=pixels)
            features = output if isinstance(output, torch.Tensor) else output.pooler_output  # transformers 5
            rows.append(features.float().cpu().numpy())
        return np.concatenate(rows)

    def _components(self) -> tuple[Any, Any, str]:
        """Image processor, model and device, loaded once; `ModelNotAvailableError` when the model is not here."""
        if self._loaded is not None:
            return self._loaded
        from transformers import AutoImageProcessor, CLIPModel

        from influencer_pipeline.captions.captioner import hub_cache_dir
        from influencer_pipeline.diffusion import pick_device

        device = pick_device(self.device)
        source = Path(self.model).expanduser()
        where = str(source) if source.is_dir() else self.model
        if not source.is_dir() and self.model.count("/") != 1:
            raise ModelNotAvailableError(self._how_to_provide("no such directory"))
        try:
            processor = AutoImageProcessor.from_pretrained(where, local_files_only=True, cache_dir=hub_cache_dir())
            net = CLIPModel.from_pretrained(where, local_files_only=True, cache_dir=hub_cache_dir())
        except (OSError, ValueError) as exc:
            raise ModelNotAvailableError(self._how_to_provide(str(exc).splitlines()[0] if str(exc) else "")) from exc
        self._loaded = (processor, net.to(device).eval(), device)
        return self._loaded

    def _how_to_provide(self, reason: str) -> str:
        return (
            f"CLIP model {self.model!r} is not available on this machine (nothing is downloaded at run time): "
            f"{reason}. Fix: on a machine with internet run `hf download {CLIP_EXAMPLE_REPO} --local-dir "
            "models/clip`, copy models/clip here and set CONSISTENCY_CLIP_MODEL=/abs/path/models/clip; or leave it "
            "unset to use the colour/layout embedder, which needs no model."
        )


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)
