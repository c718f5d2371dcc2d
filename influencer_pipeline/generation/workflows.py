"""ComfyUI API-format workflow templates and the builder that fills them in.

A template is a graph exported with ComfyUI's "Save (API)" and kept in `influencer_pipeline/data/comfy_workflows/`.
The builder never relies on magic strings inside it: it finds the nodes to fill by following the KSampler's links
(positive and negative prompt, latent, model loader), so a workflow re-exported from the UI keeps working. User text
only ever lands in string input *values*; node ids and links are chosen here, so a prompt can never change the
graph. LoRAs are inserted as a chain of `LoraLoader` nodes between the checkpoint loader and everything that used
it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import GenerationRequest, LoraRef
from influencer_pipeline.generation.model_family import FAMILIES

# Package data (pyproject.toml), so a wheel install has the templates too.
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "data" / "comfy_workflows"
TEMPLATE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

STEPS_RANGE = (1, 150)
CFG_RANGE = (1.0, 30.0)
SIZE_RANGE = (256, 2048)
SEED_RANGE = (0, 2**64 - 1)  # KSampler's own bounds; -1 ("random") is invalid in the API
LORA_STRENGTH_RANGE = (-100.0, 100.0)  # LoraLoader's own bounds
MAX_LORAS = 5
VIDEO_FRAMES_RANGE = (1, 128)
MOTION_BUCKET_RANGE = (1, 1023)
FPS_RANGE = (1, 60)

Graph = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class WorkflowTemplate:
    """A loaded template: its name (recorded with every image), the graph, and the hash of that graph."""

    name: str
    graph: Mapping[str, Any]
    hash: str


@dataclass(frozen=True)
class ServerChoices:
    """Option lists ComfyUI reports in `/object_info`. `None` skips that check (e.g. building offline)."""

    samplers: Collection[str] | None = None
    schedulers: Collection[str] | None = None
    checkpoints: Collection[str] | None = None
    loras: Collection[str] | None = None


@dataclass(frozen=True)
class VideoRequest:
    """One still-to-video render with the SVD template; `image` is a name ComfyUI's `LoadImage` accepts."""

    image: str
    seed: int
    steps: int = 20
    cfg: float = 2.5
    width: int = 1024
    height: int = 576
    video_frames: int = 25
    motion_bucket_id: int = 127
    fps: int = 6
    sampler: str = "euler"
    scheduler: str = "karras"


def workflow_hash(graph: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace), so formatting edits do not change it."""
    canonical = json.dumps(graph, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def available_templates(directory: Path = TEMPLATES_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.json"))


def load_template(name: str, directory: Path = TEMPLATES_DIR) -> WorkflowTemplate:
    """Read `<directory>/<name>.json` and check it is API format (UI-format exports have a `nodes` list)."""
    where = f"workflow template {name!r}"
    names = ", ".join(available_templates(directory)) or "none"
    if not TEMPLATE_NAME_RE.match(name):
        raise InputError(where, "a template name is a file name without '.json'", f"use one of: {names}")
    path = directory / f"{name}.json"
    if not path.is_file():
        raise InputError(where, f"no file {path}", f"use one of: {names}")
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(str(path), f"is not valid JSON ({exc})", "re-export it with 'Save (API)'") from exc
    _check_api_format(graph, str(path))
    return WorkflowTemplate(name=name, graph=graph, hash=workflow_hash(graph))


def template_family(template: WorkflowTemplate) -> str | None:
    """The base-model family the template's checkpoint loader is for, as its `_meta.family` declares it
    (sd1, sd2 or sdxl; ComfyUI ignores `_meta` beyond the title). None when the template does not say."""
    for node in template.graph.values():
        if node.get("class_type") not in ("CheckpointLoaderSimple", "ImageOnlyCheckpointLoader"):
            continue
        family = (node.get("_meta") or {}).get("family")
        if family is None:
            continue
        if family not in FAMILIES:
            raise InputError(
                f"workflow template {template.name!r}",
                f"its checkpoint loader declares family {family!r}",
                "use one of: " + ", ".join(FAMILIES),
            )
        return str(family)
    return None


def _check_api_format(graph: Any, where: str) -> None:
    ok = isinstance(graph, dict) and graph and "nodes" not in graph
    if not ok or not all(isinstance(node, dict) and "class_type" in node for node in graph.values()):
        raise InputError(
            where,
            "is not an API-format workflow ({node_id: {class_type, inputs}})",
            "in ComfyUI enable dev mode options and export with 'Save (API)'",
        )


def build_txt2img(
    template: WorkflowTemplate,
    request: GenerationRequest,
    *,
    seed: int,
    checkpoint: str,
    choices: ServerChoices | None = None,
    where: str = "generation request",
) -> Graph:
    """Validate `request` and return a new prompt graph; the template itself is never modified."""
    choices = choices or ServerChoices()
    validate_request(request, seed=seed, choices=choices, where=where)
    _check_choice(checkpoint, choices.checkpoints, "checkpoint", "checkpoints")
    graph: Graph = copy.deepcopy(dict(template.graph))
    sampler_id = _only_node(graph, "KSampler", template.name)
    sampler = graph[sampler_id]["inputs"]
    _input_node(graph, sampler_id, "positive", "CLIPTextEncode", template.name)["text"] = request.prompt
    _input_node(graph, sampler_id, "negative", "CLIPTextEncode", template.name)["text"] = request.negative_prompt
    latent = _input_node(graph, sampler_id, "latent_image", "EmptyLatentImage", template.name)
    latent.update(width=request.width, height=request.height, batch_size=1)
    sampler.update(
        seed=seed,
        steps=request.steps,
        cfg=float(request.cfg),
        sampler_name=request.sampler,
        scheduler=request.scheduler,
    )
    loader_id = _only_node(graph, "CheckpointLoaderSimple", template.name)
    graph[loader_id]["inputs"]["ckpt_name"] = checkpoint
    _insert_loras(graph, loader_id, request.loras, template.name)
    return graph


def build_img2vid(
    template: WorkflowTemplate,
    request: VideoRequest,
    *,
    checkpoint: str,
    choices: ServerChoices | None = None,
    where: str = "video request",
) -> Graph:
    """Fill the SVD template: still image, size, frames, motion, fps, sampler settings and checkpoint."""
    choices = choices or ServerChoices()
    _check_int(request.seed, SEED_RANGE, f"{where}: seed")
    _check_int(request.steps, STEPS_RANGE, f"{where}: steps")
    _check_float(request.cfg, CFG_RANGE, f"{where}: cfg")
    _check_size(request.width, f"{where}: width")
    _check_size(request.height, f"{where}: height")
    _check_int(request.video_frames, VIDEO_FRAMES_RANGE, f"{where}: video_frames")
    _check_int(request.motion_bucket_id, MOTION_BUCKET_RANGE, f"{where}: motion_bucket_id")
    _check_int(request.fps, FPS_RANGE, f"{where}: fps")
    _check_text(request.image, f"{where}: image", allow_empty=False)
    _check_choice(request.sampler, choices.samplers, f"{where}: sampler", "samplers")
    _check_choice(request.scheduler, choices.schedulers, f"{where}: scheduler", "schedulers")
    _check_choice(checkpoint, choices.checkpoints, "checkpoint", "checkpoints")
    graph: Graph = copy.deepcopy(dict(template.graph))
    sampler_id = _only_node(graph, "KSampler", template.name)
    graph[sampler_id]["inputs"].update(
        seed=request.seed,
        steps=request.steps,
        cfg=float(request.cfg),
        sampler_name=request.sampler,
        scheduler=request.scheduler,
    )
    conditioning_id = _link_source(graph, sampler_id, "positive", "SVD_img2vid_Conditioning", template.name)
    graph[conditioning_id]["inputs"].update(
        width=request.width,
        height=request.height,
        video_frames=request.video_frames,
        motion_bucket_id=request.motion_bucket_id,
        fps=request.fps,
    )
    _input_node(graph, conditioning_id, "init_image", "LoadImage", template.name)["image"] = request.image
    _input_node(graph, conditioning_id, "clip_vision", "ImageOnlyCheckpointLoader", template.name)["ckpt_name"] = (
        checkpoint
    )
    for node in graph.values():
        if node["class_type"] in ("SaveAnimatedWEBP", "SaveAnimatedPNG"):
            node["inputs"]["fps"] = float(request.fps)
    return graph


def svd_size(width: int, height: int, long_side: int = 1024) -> tuple[int, int]:
    """SVD's frame size for a still of this shape: the long side at 1024 (what SVD was trained at), both sides
    multiples of 64, so the clip keeps the still's framing and the renderer crops as little as possible."""
    scale = long_side / max(width, height)
    return tuple(max(64, round(side * scale / 64) * 64) for side in (width, height))  # type: ignore[return-value]


def validate_request(
    request: GenerationRequest, *, seed: int, choices: ServerChoices | None = None, where: str
) -> None:
    """Every rule a request must meet, checked before anything is sent; errors name the field and its range."""
    choices = choices or ServerChoices()
    _check_text(request.prompt, f"{where}: prompt", allow_empty=False)
    _check_text(request.negative_prompt, f"{where}: negative_prompt", allow_empty=True)
    _check_int(seed, SEED_RANGE, f"{where}: seed")
    _check_int(request.steps, STEPS_RANGE, f"{where}: steps")
    _check_float(request.cfg, CFG_RANGE, f"{where}: cfg")
    _check_size(request.width, f"{where}: width")
    _check_size(request.height, f"{where}: height")
    _check_choice(request.sampler, choices.samplers, f"{where}: sampler", "samplers")
    _check_choice(request.scheduler, choices.schedulers, f"{where}: scheduler", "schedulers")
    if not isinstance(request.loras, tuple | list) or len(request.loras) > MAX_LORAS:
        count = len(request.loras) if isinstance(request.loras, tuple | list) else "?"
        raise InputError(f"{where}: loras", f"0-{MAX_LORAS} LoRAs are allowed, got {count}", "drop the extra LoRAs")
    for index, lora in enumerate(request.loras):
        _check_lora(lora, choices.loras, f"{where}: loras[{index}]")


def _check_text(value: Any, where: str, *, allow_empty: bool) -> None:
    if not isinstance(value, str):
        raise InputError(where, f"must be text, got {type(value).__name__}", "pass a string")
    if not allow_empty and not value.strip():
        raise InputError(where, "must not be empty", "write what the image should show")


def _check_int(value: Any, bounds: tuple[int, int], where: str) -> None:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(where, f"must be a whole number from {low} to {high}, got {value!r}", "use a value in range")


def _check_float(value: Any, bounds: tuple[float, float], where: str) -> None:
    low, high = bounds
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not low <= value <= high:
        raise InputError(where, f"must be a number from {low:g} to {high:g}, got {value!r}", "use a value in range")


def _check_size(value: Any, where: str) -> None:
    low, high = SIZE_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high or value % 8:
        nearest = min(max(round(value / 8) * 8, low), high) if isinstance(value, int) else 512
        raise InputError(where, f"must be a multiple of 8 from {low} to {high} pixels, got {value!r}", f"use {nearest}")


def _check_choice(value: Any, options: Collection[str] | None, where: str, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise InputError(where, f"must be a non-empty name, got {value!r}", f"use one of ComfyUI's {what}")
    if options is not None and value not in options:
        shown = ", ".join(sorted(options)[:40]) or "none"
        raise InputError(where, f"{value!r} is not one of ComfyUI's {what}", f"use one of: {shown}")


def _check_lora(lora: Any, available: Collection[str] | None, where: str) -> None:
    if not isinstance(lora, LoraRef):
        raise InputError(where, f"must be a LoraRef, got {type(lora).__name__}", "pass LoraRef(name, strength)")
    if not isinstance(lora.name, str) or not lora.name:
        raise InputError(f"{where}.name", "must be a LoRA file name", "use the name deploy_lora returned")
    if available is not None and lora.name not in available:
        raise InputError(
            f"{where}.name",
            f"ComfyUI does not list the LoRA {lora.name!r} in its loras folder",
            "deploy it first (deploy_lora) or use one of: " + (", ".join(sorted(available)[:40]) or "none"),
        )
    _check_float(lora.strength, LORA_STRENGTH_RANGE, f"{where}.strength")


def _only_node(graph: Graph, class_type: str, template: str) -> str:
    found = [node_id for node_id, node in graph.items() if node.get("class_type") == class_type]
    if len(found) != 1:
        raise InputError(
            f"workflow template {template!r}",
            f"needs exactly one {class_type} node, found {len(found)}",
            "keep a single one in the template (the builder fills it in)",
        )
    return found[0]


def _link_source(graph: Graph, node_id: str, input_name: str, class_type: str, template: str) -> str:
    """The id of the node feeding `input_name` of `node_id`, checked to be a `class_type`."""
    link = graph[node_id].get("inputs", {}).get(input_name)
    source = link[0] if _is_link(link) else None
    if source not in graph or graph[source].get("class_type") != class_type:
        raise InputError(
            f"workflow template {template!r}",
            f"input {input_name!r} of node {node_id} must come from a {class_type} node",
            "wire the template like the reference graph and export it again with 'Save (API)'",
        )
    return source


def _input_node(graph: Graph, node_id: str, input_name: str, class_type: str, template: str) -> dict[str, Any]:
    """The `inputs` dict of the node feeding `input_name` of `node_id` (for filling in values)."""
    return graph[_link_source(graph, node_id, input_name, class_type, template)].setdefault("inputs", {})


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _insert_loras(graph: Graph, loader_id: str, loras: tuple[LoraRef, ...], template: str) -> None:
    """Chain one LoraLoader per LoRA after the checkpoint loader; whatever used its MODEL/CLIP uses the chain's end.

    New node ids are numbers above every numeric id in the template, so they can never collide with or be
    chosen by user input.
    """
    if any(node.get("class_type") == "LoraLoader" for node in graph.values()):
        raise InputError(
            f"workflow template {template!r}",
            "must not contain LoraLoader nodes",
            "remove them: the builder inserts one per requested LoRA",
        )
    original = list(graph)
    next_id = max((int(node_id) for node_id in graph if node_id.isdigit()), default=0) + 1
    tail = loader_id
    for position, lora in enumerate(loras, start=1):
        node_id = str(next_id)
        next_id += 1
        graph[node_id] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": [tail, 0],
                "clip": [tail, 1],
                "lora_name": lora.name,
                "strength_model": float(lora.strength),
                "strength_clip": float(lora.strength),
            },
            "_meta": {"title": f"LoRA {position}"},
        }
        tail = node_id
    if tail == loader_id:
        return
    for node_id in original:
        inputs = graph[node_id].get("inputs", {})
        for name, value in inputs.items():
            if _is_link(value) and value[0] == loader_id and value[1] in (0, 1):
                inputs[name] = [tail, value[1]]
