"""Helpers for the ComfyUI tests: an engine with short timeouts, requests, another client's prompts, stills."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from influencer_pipeline.generation.base import GenerationRequest
from influencer_pipeline.generation.comfyui import ComfyUIEngine
from influencer_pipeline.generation.workflows import build_txt2img, load_template
from tests.generation.comfy_standin import ComfyStandin, Run
from tests.support.waiting import wait_until

SD15 = "v1-5-pruned-emaonly.safetensors"
FOREIGN = "someone-else"


def make_engine(standin: ComfyStandin, **overrides: Any) -> ComfyUIEngine:
    settings: dict[str, Any] = {
        "timeout_s": 3,
        "connect_timeout_s": 1,
        "poll_interval_s": 0.05,
        "deploy_timeout_s": 0.5,
        "retry_backoff_s": 0.01,
        **overrides,
    }
    return ComfyUIEngine(standin.url, standin.loras_dir, SD15, **settings)


def prompts(count: int, **fields: Any) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"ohwx woman, scene {i}", **fields) for i in range(count)]


def our_runs(standin: ComfyStandin) -> list[Run]:
    return [run for run in standin.runs.values() if run.client_id != FOREIGN]


def submit_foreign(standin: ComfyStandin) -> str:
    """Another client's prompt, queued straight over HTTP as a second user of the same ComfyUI would."""
    body = {"prompt": sd15_graph(steps=20), "client_id": FOREIGN}
    response = requests.post(f"{standin.url}/prompt", json=body, timeout=5)
    response.raise_for_status()
    return response.json()["prompt_id"]


def sd15_graph(steps: int) -> dict[str, Any]:
    request = GenerationRequest(prompt="raw", steps=steps)
    return build_txt2img(load_template("sd15-lora-txt2img"), request, seed=random.randrange(2**32), checkpoint=SD15)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    wait_until(condition, "the stand-in to reach the awaited state", timeout, interval=0.01)


def colour_of(png: bytes) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(png)).convert("RGB").getpixel((0, 0))


def write_template(tmp_path: Path, name: str, edit: Callable[[dict], None]) -> Path:
    graph = json.loads(json.dumps(load_template("sd15-lora-txt2img").graph))
    edit(graph)
    folder = tmp_path / "templates"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(graph))
    return folder


def still(colour: tuple[int, int, int], size: tuple[int, int] = (96, 160)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()
