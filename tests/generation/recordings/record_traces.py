"""Record what a real ComfyUI does with this project's graphs: `/object_info` of every node the templates and the
builder use, WebSocket traces, history entries, 400 bodies and console lines, one JSON file per case.

Usage (ComfyUI running as `python main.py --cpu --listen 127.0.0.1 --port 8199 > server.log 2>&1` with the reduced
checkpoint from make_reduced_sd15_checkpoint.py in models/checkpoints):
    .venv/bin/python tests/generation/recordings/record_traces.py COMFY_DIR server.log OUT_DIR COMMIT
It writes three test LoRAs into COMFY_DIR/models/loras (SD1.x, SDXL and tiny-model widths).
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import requests
import websocket
from PIL import Image
from safetensors.numpy import save_file

from influencer_pipeline.generation.base import GenerationRequest, LoraRef
from influencer_pipeline.generation.workflows import VideoRequest, build_img2vid, build_txt2img, load_template

BASE = "http://127.0.0.1:8199"
CHECKPOINT = "tiny-sd15-arch.safetensors"
NODES = (
    *("CheckpointLoaderSimple", "LoraLoader", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode"),
    *("SaveImage", "ImageOnlyCheckpointLoader", "LoadImage", "SVD_img2vid_Conditioning", "VideoLinearCFGGuidance"),
    "SaveAnimatedWEBP",
)
MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def write_lora(path: Path, width: int) -> None:
    rng = np.random.default_rng(1)
    tensors = {
        f"{MODULE}.lora_down.weight": (rng.standard_normal((4, width)) * 0.01).astype(np.float16),
        f"{MODULE}.lora_up.weight": (rng.standard_normal((320, 4)) * 0.01).astype(np.float16),
        f"{MODULE}.alpha": np.array(4.0, dtype=np.float16),
    }
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1"})


def run(graph: dict[str, Any], log: Path) -> dict[str, Any]:
    """Submit one prompt and read its WebSocket frames until `executing` with node null, then its history."""
    client, prompt_id = uuid.uuid4().hex, str(uuid.uuid4())
    sock = websocket.create_connection(f"ws://127.0.0.1:8199/ws?clientId={client}", timeout=600)
    log_start = log.stat().st_size
    body = {"prompt": graph, "client_id": client, "prompt_id": prompt_id}
    response = requests.post(f"{BASE}/prompt", json=body, timeout=60)
    frames: list[Any] = []
    while response.status_code == 200:
        frame = sock.recv()
        if isinstance(frame, bytes):
            frames.append({"binary": len(frame)})
            continue
        message = json.loads(frame)
        frames.append(message)
        data = message.get("data") or {}
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            break
    sock.close()
    history: dict[str, Any] = {}
    for _ in range(20):
        history = requests.get(f"{BASE}/history/{prompt_id}", timeout=30).json()
        if history:
            break
        time.sleep(0.5)
    time.sleep(0.5)
    console = log.read_bytes()[log_start:].decode("utf-8", "replace").splitlines()
    return {
        "request": body,
        "response": {"status": response.status_code, "body": response.json()},
        "websocket": frames,
        "history": history,
        "console": console,
    }


def main(comfy_dir: Path, log: Path, out: Path, commit: str) -> None:
    out.mkdir(parents=True, exist_ok=True)

    def save(name: str, payload: Any) -> None:
        (out / f"{name}.json").write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")

    stats = requests.get(f"{BASE}/system_stats", timeout=30).json()
    nodes = {n: requests.get(f"{BASE}/object_info/{n}", timeout=30).json()[n] for n in NODES}
    system = stats["system"]
    recorded_from = {
        "comfyui_version": system["comfyui_version"],
        "commit": commit,
        "python_version": system["python_version"],
        "pytorch_version": system["pytorch_version"],
        "command": "python main.py --cpu --listen 127.0.0.1 --port 8199",
    }
    save("object_info", {"recorded_from": recorded_from, "system_stats": stats, "nodes": nodes})

    sd15 = load_template("sd15-lora-txt2img")
    request = GenerationRequest(prompt="ohwx woman, portrait", negative_prompt="blurry", steps=2, width=256, height=256)
    save("txt2img_success", run(build_txt2img(sd15, request, seed=42, checkpoint=CHECKPOINT), log))

    loras = comfy_dir / "models" / "loras"
    for name, width in (("persona-sd1", 768), ("persona-tiny", 32), ("persona-sdxl", 2048)):
        write_lora(loras / f"{name}.safetensors", width)
    for case, file in (
        ("lora_matching", "persona-sd1.safetensors"),
        ("lora_family_mismatch_tiny", "persona-tiny.safetensors"),
        ("lora_family_mismatch_sdxl", "persona-sdxl.safetensors"),
    ):
        with_lora = GenerationRequest(prompt="ohwx woman", steps=2, width=256, height=256, loras=(LoraRef(file, 0.8),))
        save(case, run(build_txt2img(sd15, with_lora, seed=43, checkpoint=CHECKPOINT), log))

    save(
        "rejected_missing_checkpoint", run(build_txt2img(sd15, request, seed=44, checkpoint="missing.safetensors"), log)
    )
    ghost = GenerationRequest(prompt="x", steps=2, width=256, height=256, loras=(LoraRef("ghost.safetensors"),))
    save("rejected_missing_lora", run(build_txt2img(sd15, ghost, seed=45, checkpoint=CHECKPOINT), log))
    extra = build_txt2img(sd15, request, seed=46, checkpoint=CHECKPOINT)
    extra["3"]["inputs"]["not_an_input"] = 5
    save("extra_input_ignored", run(extra, log))

    still = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 50)).save(still, format="PNG")
    form = {"type": "input", "subfolder": "influencer", "overwrite": "false"}
    files = {"image": ("still.png", still.getvalue(), "image/png")}
    upload = requests.post(f"{BASE}/upload/image", files=files, data=form, timeout=30)
    save("upload_image", {"status": upload.status_code, "body": upload.json()})
    image = f"influencer/{upload.json()['name']}"
    video = VideoRequest(image=image, seed=1, steps=2, width=256, height=256, video_frames=2)
    save(
        "img2vid_not_svd_checkpoint",
        run(build_img2vid(load_template("svd-img2vid"), video, checkpoint=CHECKPOINT), log),
    )
    save("queue_idle", requests.get(f"{BASE}/queue", timeout=30).json())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
