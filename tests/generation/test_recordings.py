"""The stand-in and the project's graphs checked against facts recorded from the real ComfyUI 0.3.64
(`recordings/README.md`): a template, the builder or the stand-in drifting from the real node definitions or wire
shapes fails here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from influencer_pipeline.generation.base import GenerationRequest, LoraRef
from influencer_pipeline.generation.workflows import (
    VideoRequest,
    available_templates,
    build_img2vid,
    build_txt2img,
    load_template,
)
from tests.generation.comfy_standin import (
    FILE_LISTS,
    RECORDED_NODES,
    UNKNOWN_INPUT,
    ComfyStandin,
    recording,
)
from tests.generation.loras import write_lora

SD15 = "v1-5-pruned-emaonly.safetensors"


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[ComfyStandin]:
    (tmp_path / "loras").mkdir()
    with ComfyStandin(output_dir=tmp_path / "output", loras_dir=tmp_path / "loras", seconds_per_image=0.02) as server:
        yield server


def project_graphs() -> dict[str, dict[str, Any]]:
    """Every graph shape the project sends: each template as the builder fills it, with two LoRAs for txt2img."""
    graphs = {}
    loras = (LoraRef("a.safetensors", 0.8), LoraRef("b.safetensors", 0.5))
    for name in available_templates():
        template = load_template(name)
        if name.startswith("svd"):
            request = VideoRequest(image="influencer/still.png", seed=1)
            graphs[name] = build_img2vid(template, request, checkpoint="svd_xt.safetensors")
        else:
            request = GenerationRequest(prompt="ohwx woman", loras=loras)
            graphs[name] = build_txt2img(template, request, seed=1, checkpoint=SD15)
    return graphs


def test_every_node_and_input_the_project_sends_is_in_the_recorded_object_info() -> None:
    used = set()
    for name, graph in project_graphs().items():
        for node_id, node in graph.items():
            assert node["class_type"] in RECORDED_NODES, f"{name} node {node_id}: {node['class_type']} not recorded"
            declared = RECORDED_NODES[node["class_type"]]["input"]
            known = {*declared.get("required", {}), *declared.get("optional", {})}
            unknown = set(node["inputs"]) - known
            assert not unknown, f"{name} node {node_id} ({node['class_type']}) sends inputs ComfyUI lacks: {unknown}"
            missing = set(declared["required"]) - set(node["inputs"])
            assert not missing, f"{name} node {node_id} ({node['class_type']}) lacks required inputs {missing}"
            used.add(node["class_type"])
    assert used == set(RECORDED_NODES), "the recording covers exactly the nodes the project uses"


def test_the_stand_in_serves_the_recorded_entries_with_its_own_file_lists(standin: ComfyStandin) -> None:
    write_lora(standin.loras_dir / "ava.safetensors")
    served = requests.get(f"{standin.url}/object_info", timeout=5).json()
    for name, entry in RECORDED_NODES.items():
        expected = json.loads(json.dumps(entry))
        for (node, field), _kind in FILE_LISTS.items():
            if node == name:
                expected["input"]["required"][field][0] = served[name]["input"]["required"][field][0]
        assert served[name] == expected
    assert served["LoraLoader"]["input"]["required"]["lora_name"][0] == ["ava.safetensors"]
    assert "svd_xt.safetensors" in served["ImageOnlyCheckpointLoader"]["input"]["required"]["ckpt_name"][0]


def test_the_stand_in_is_stricter_than_comfyui_about_unknown_inputs(standin: ComfyStandin) -> None:
    graph = project_graphs()["sd15-lora-txt2img"]
    for node in graph.values():
        if node["class_type"] == "LoraLoader":
            node["inputs"]["lora_name"] = "ava.safetensors"
    write_lora(standin.loras_dir / "ava.safetensors")
    graph["3"]["inputs"]["not_an_input"] = 5
    real = recording("extra_input_ignored")
    assert real["response"]["status"] == 200, "the recording shows ComfyUI ignores it"
    response = requests.post(f"{standin.url}/prompt", json={"prompt": graph}, timeout=5)
    assert response.status_code == 400
    [error] = response.json()["node_errors"]["3"]["errors"]
    assert error["type"] == UNKNOWN_INPUT and error["extra_info"]["input_name"] == "not_an_input"


def _submit_and_trace(standin: ComfyStandin, graph: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    client = "trace"
    sock = websocket.create_connection(f"ws://127.0.0.1:{standin.port}/ws?clientId={client}", timeout=10)
    body = {"prompt": graph, "client_id": client, "prompt_id": "6f1c8a8e-2d0c-4a57-9a8e-0a5b7f3c1d20"}
    requests.post(f"{standin.url}/prompt", json=body, timeout=5).raise_for_status()
    frames = []
    while True:
        frame = json.loads(sock.recv())
        frames.append(frame)
        if frame["type"] == "executing" and frame["data"].get("node") is None:
            break
    sock.close()
    history = requests.get(f"{standin.url}/history/{body['prompt_id']}", timeout=5).json()[body["prompt_id"]]
    return frames, history


def _shapes(frames: list[dict[str, Any]]) -> dict[tuple[str, bool], set[str]]:
    """Frame type (and, for `executing`, whether it is the final node-null one) -> its data keys."""
    shapes: dict[tuple[str, bool], set[str]] = {}
    for frame in frames:
        if "type" not in frame:
            continue
        data = frame["data"]
        final = frame["type"] == "executing" and data.get("node") is None
        shapes.setdefault((frame["type"], final), set()).update(data)
    return shapes


def test_the_stand_ins_websocket_frames_and_history_have_the_recorded_shapes(standin: ComfyStandin) -> None:
    real = recording("txt2img_success")
    frames, history = _submit_and_trace(standin, real["request"]["prompt"] | {"4": _sd15_loader()})
    ours, theirs = _shapes(frames), _shapes(real["websocket"])
    theirs.pop(("progress_state", False))  # 0.3.6x's per-node progress map: the engine does not read it
    theirs[("status", False)] = {"status", "sid"}  # the first status frame carries the socket's sid
    assert ours == theirs
    real_entry = next(iter(real["history"].values()))
    assert set(history) == set(real_entry)
    assert set(history["status"]) == set(real_entry["status"])
    assert [kind for kind, _ in history["status"]["messages"]] == [k for k, _ in real_entry["status"]["messages"]]
    assert set(history["outputs"]["9"]["images"][0]) == set(real_entry["outputs"]["9"]["images"][0])
    assert history["meta"]["9"].keys() == real_entry["meta"]["9"].keys()


def _sd15_loader() -> dict[str, Any]:
    """The recorded prompt used the reduced test checkpoint; the stand-in has the real SD1.5 name."""
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}}


def test_the_stand_ins_rejection_has_the_recorded_shape(standin: ComfyStandin) -> None:
    real = recording("rejected_missing_lora")
    graph = real["request"]["prompt"] | {"4": _sd15_loader()}
    response = requests.post(f"{standin.url}/prompt", json={"prompt": graph}, timeout=5)
    assert response.status_code == real["response"]["status"] == 400
    ours, theirs = response.json(), real["response"]["body"]
    assert ours["error"] == theirs["error"]
    [(node_id, entry)] = ours["node_errors"].items()
    [(real_id, real_entry)] = theirs["node_errors"].items()
    assert (node_id, entry["class_type"], entry["dependent_outputs"]) == (
        real_id,
        real_entry["class_type"],
        real_entry["dependent_outputs"],
    )
    [error], [real_error] = entry["errors"], real_entry["errors"]
    assert (error["type"], error["message"]) == (real_error["type"], real_error["message"])
    assert error["extra_info"].keys() == real_error["extra_info"].keys()
    assert error["details"] == "lora_name: 'ghost.safetensors' not in []"


def test_the_stand_in_reports_a_foreign_lora_as_comfyui_does(standin: ComfyStandin) -> None:
    """Success in history, the recorded ERROR line on the console only."""
    real = recording("lora_family_mismatch_sdxl")
    real_entry = next(iter(real["history"].values()))
    assert real_entry["status"]["status_str"] == "success"
    [real_line] = [line for line in real["console"] if line.startswith("ERROR lora")]
    write_lora(standin.loras_dir / "persona-sdxl.safetensors", "sdxl")
    _frames, history = _submit_and_trace(standin, real["request"]["prompt"] | {"4": _sd15_loader()})
    assert history["status"]["status_str"] == "success"
    assert standin.console == [real_line]


def test_the_stand_in_fails_a_non_svd_checkpoint_with_the_recorded_error(standin: ComfyStandin) -> None:
    real = recording("img2vid_not_svd_checkpoint")
    [(_, real_error)] = [
        m for m in next(iter(real["history"].values()))["status"]["messages"] if m[0] == "execution_error"
    ]
    graph = real["request"]["prompt"]
    graph["1"]["inputs"]["ckpt_name"] = SD15
    graph["2"]["inputs"]["image"] = "example.png"
    _frames, history = _submit_and_trace(standin, graph)
    [(_, error)] = [m for m in history["status"]["messages"] if m[0] == "execution_error"]
    fields = ("node_id", "node_type", "exception_type", "exception_message")
    assert {k: error[k] for k in fields} == {k: real_error[k] for k in fields}
    assert set(error) == set(real_error)
