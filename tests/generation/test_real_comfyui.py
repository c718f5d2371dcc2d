"""Re-check against a real ComfyUI: the engine end to end and the recorded `/object_info` still true.

Opt-in because no ComfyUI runs on CI machines (it needs a checkpoint of several hundred MB): start one as
`tests/generation/recordings/README.md` says and set COMFYUI_REAL_URL (e.g. http://127.0.0.1:8199),
COMFYUI_REAL_CHECKPOINT (an SD1.x checkpoint it lists) and COMFYUI_REAL_LORAS_DIR (its models/loras). The recorded
facts these tests would re-read are checked on every run by test_recordings.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import GenerationRequest, LoraRef
from influencer_pipeline.generation.comfyui import ComfyUIEngine
from tests.generation.comfy_standin import RECORDED_NODES
from tests.generation.loras import write_lora

URL = os.environ.get("COMFYUI_REAL_URL", "")
pytestmark = pytest.mark.skipif(not URL, reason="no real ComfyUI configured (COMFYUI_REAL_URL); see the docstring")


def engine() -> ComfyUIEngine:
    loras = Path(os.environ["COMFYUI_REAL_LORAS_DIR"])
    return ComfyUIEngine(
        URL, loras, os.environ["COMFYUI_REAL_CHECKPOINT"], checkpoints_dir=loras.parent / "checkpoints"
    )


@pytest.mark.slow
def test_the_recorded_node_inputs_are_still_what_comfyui_declares() -> None:
    for name, recorded in RECORDED_NODES.items():
        live = requests.get(f"{URL}/object_info/{name}", timeout=30).json()[name]
        for section in ("required", "optional"):
            assert set(live["input"].get(section, {})) == set(recorded["input"].get(section, {})), (name, section)
        assert live["output"] == recorded["output"], name


@pytest.mark.slow
def test_the_engine_renders_with_a_matching_lora_and_refuses_a_foreign_one(tmp_path: Path) -> None:
    comfy = engine()
    name = comfy.deploy_lora(write_lora(tmp_path / "real-check.safetensors", "sd1"), "real-check", group="real-check")
    request = GenerationRequest(prompt="ohwx woman", steps=2, width=256, height=256, loras=(LoraRef(name, 0.8),))
    [image] = comfy.generate([request])
    assert image.png.startswith(b"\x89PNG") and image.params["loras"] == [{"name": name, "strength": 0.8}]
    with pytest.raises(InputError, match="trained for SDXL"):
        comfy.deploy_lora(write_lora(tmp_path / "sdxl.safetensors", "sdxl"), "real-check-sdxl")
