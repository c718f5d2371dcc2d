"""The ComfyUI image engine, one module per concern.

- `engine`: `ComfyUIEngine`, the `ImageEngine` (and image-to-video animator) that ties the others together.
- `client`: HTTP to one ComfyUI server (`/prompt`, `/queue`, `/history`, `/view`, `/upload/image`, `/object_info`).
- `watcher`: which of our prompts finished, from WebSocket events or by polling `/history`.
- `runner`: a batch of prompts through ComfyUI's queue, kept full, stopped and timed out cleanly.
- `jobs`: one prompt of ours, and how errors name it.
- `deployment`: LoRA files in the folder ComfyUI reads as `models/loras`, and their ledger.
- `errors`: `ComfyUIError` and the translation of ComfyUI's rejections and failures into it.

Workflow templates and graph building live in `influencer_pipeline.generation.workflows`.
"""

from influencer_pipeline.generation.comfyui.engine import ComfyUIEngine
from influencer_pipeline.generation.comfyui.errors import ComfyUIError

__all__ = ["ComfyUIEngine", "ComfyUIError"]
