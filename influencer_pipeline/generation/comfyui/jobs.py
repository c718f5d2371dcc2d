"""One prompt of ours on its way through ComfyUI's queue, and how errors name it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from influencer_pipeline.generation.base import ClipRequest, GenerationRequest


@dataclass
class Job:
    """A request with its seed and filled workflow graph; `prompt_id` is set when it is submitted."""

    index: int
    request: GenerationRequest | ClipRequest
    seed: int
    graph: dict[str, Any]
    prompt_id: str = ""

    @property
    def where(self) -> str:
        return request_where(self.index) if isinstance(self.request, GenerationRequest) else clip_where(self.index)


def request_where(index: int) -> str:
    """How errors name a request: 1-based, as a person counts the images of a plan."""
    return f"generation request {index + 1}"


def clip_where(index: int) -> str:
    """How errors name an image-to-video request, 1-based like `request_where`."""
    return f"clip {index + 1}"
