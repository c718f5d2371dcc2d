"""Image captioners: a small protocol and a BLIP-family implementation on transformers.

Nothing is ever downloaded: a model is a local directory or a Hugging Face repo id already in the local cache,
and anything else fails with a message that says how to put the model on this machine. torch and transformers
are imported on first use, so loading the Dagster definitions stays fast on machines that never caption.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from influencer_pipeline.errors import ModelNotAvailableError

EXAMPLE_REPO = "Salesforce/blip-image-captioning-base"


class Captioner(Protocol):
    """Turns images into one plain-language caption each; `name` is recorded in metadata."""

    name: str
    batch_size: int

    def caption(self, images: list[Image.Image]) -> list[str]: ...


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment says now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("HF_HOME") or Path(xdg) / "huggingface") / "hub"


def how_to_provide(model: str, cache: Path, reason: str) -> str:
    """The error text for a model that is not here: what was looked for, why it failed, and the exact fix."""
    looked_for = f"a local directory {Path(model).expanduser().resolve()}"
    if _looks_like_repo_id(model):
        looked_for += f" and Hugging Face repo {model!r} in the cache {cache}"
    repo = model if _looks_like_repo_id(model) else EXAMPLE_REPO
    return (
        f"caption model {model!r} is not available on this machine (nothing is downloaded at run time). "
        f"Looked for {looked_for}: {reason.rstrip('.')}. Fix: on a machine with internet run "
        f"`hf download {repo} --local-dir models/blip-base` (older huggingface_hub: `huggingface-cli download`), "
        "copy models/blip-base here and set CAPTION_MODEL=/abs/path/models/blip-base; or copy a populated "
        f"Hugging Face cache here and set HF_HOME to it (the cache in use now is {cache})."
    )


def _looks_like_repo_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~"))


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class BlipCaptioner:
    """BLIP / BLIP-2 captioning via AutoProcessor + AutoModelForImageTextToText, loaded on first use."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        prompt: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.prompt = prompt
        self.name = f"blip:{model}"
        self._loaded: tuple[Any, Any, str] | None = None

    def _components(self) -> tuple[Any, Any, str]:
        """Processor, model and device, loaded once; `ModelNotAvailableError` if the model is not here."""
        if self._loaded is not None:
            return self._loaded
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = _pick_device(self.device)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        cache = hub_cache_dir()
        source = Path(self.model).expanduser()
        if not source.is_dir() and not _looks_like_repo_id(self.model):
            raise ModelNotAvailableError(how_to_provide(self.model, cache, "no such directory"))
        where = str(source) if source.is_dir() else self.model
        try:
            processor = AutoProcessor.from_pretrained(where, local_files_only=True, cache_dir=cache)
            net = AutoModelForImageTextToText.from_pretrained(
                where, local_files_only=True, cache_dir=cache, dtype=dtype
            )
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelNotAvailableError(how_to_provide(self.model, cache, reason)) from exc
        self._loaded = (processor, net.to(device).eval(), device)
        return self._loaded

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order, generated `batch_size` images at a time."""
        if not images:
            return []
        processor, net, device = self._components()
        captions: list[str] = []
        for start in range(0, len(images), self.batch_size):
            captions.extend(self._generate(processor, net, device, images[start : start + self.batch_size]))
        return captions

    def _generate(self, processor: Any, net: Any, device: str, batch: list[Image.Image]) -> list[str]:
        import torch

        kwargs: dict[str, Any] = {"images": [image.convert("RGB") for image in batch], "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(batch)
        with torch.inference_mode():
            inputs = processor(**kwargs).to(device, dtype=net.dtype)
            ids = net.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
        texts = processor.batch_decode(ids, skip_special_tokens=True)
        return [self._without_prompt(processor, text) for text in texts]

    def _without_prompt(self, processor: Any, text: str) -> str:
        """BLIP continues the prompt, so the decoded text repeats it (normalised by the tokenizer): drop it."""
        text = text.strip()
        if not self.prompt:
            return text
        echo = processor.tokenizer.decode(
            processor.tokenizer(self.prompt, add_special_tokens=False).input_ids, skip_special_tokens=True
        ).strip()
        if echo and text.lower().startswith(echo.lower()):
            return text[len(echo) :].strip()
        return text
