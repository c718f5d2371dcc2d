"""Guards the guard: the stand-in the ComfyUI tests run against speaks ComfyUI's WebSocket protocol, routes events
as ComfyUI does, and guards `/view` paths."""

from __future__ import annotations

import contextlib
import json

import requests
import websocket

from tests.generation.comfy_standin import ComfyStandin
from tests.generation.comfyui.support import (
    sd15_graph,
    wait_for,
)


def test_the_stand_in_speaks_comfyuis_websocket_protocol(standin: ComfyStandin) -> None:
    """Frame order and routing as ComfyUI sends them (https://docs.comfy.org/development/comfyui-server/comms_messages),
    the history entry written before `executing: null`."""
    sock = websocket.create_connection(f"ws://127.0.0.1:{standin.port}/ws?clientId=me", timeout=2)
    hello = json.loads(sock.recv())
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}
    ours = requests.post(f"{standin.url}/prompt", json={"prompt": sd15_graph(steps=2), "client_id": "me"}, timeout=2)
    prompt_id = ours.json()["prompt_id"]
    kinds = []
    while True:
        frame = json.loads(sock.recv())
        kinds.append(frame["type"])
        if frame["type"] == "executing" and frame["data"]["node"] is None:
            assert frame["data"]["prompt_id"] == prompt_id
            history = requests.get(f"{standin.url}/history/{prompt_id}", timeout=2).json()
            assert history[prompt_id]["status"]["status_str"] == "success"
            break
    sock.close()
    assert kinds[:3] == ["status", "execution_start", "execution_cached"]
    assert kinds.count("progress") == 2 and "executed" in kinds
    assert kinds.index("execution_success") < len(kinds) - 1, "success comes before the final executing frame"


def test_the_stand_in_routes_events_to_the_submitting_client_only(standin: ComfyStandin) -> None:
    sock = websocket.create_connection(f"ws://127.0.0.1:{standin.port}/ws?clientId=watcher", timeout=2)
    sock.recv()
    requests.post(f"{standin.url}/prompt", json={"prompt": sd15_graph(steps=2), "client_id": "other"}, timeout=2)
    requests.post(f"{standin.url}/prompt", json={"prompt": sd15_graph(steps=3)}, timeout=2)
    wait_for(lambda: standin.queue_remaining() == 0)
    sock.settimeout(0.2)
    kinds = []
    with contextlib.suppress(websocket.WebSocketTimeoutException):
        while True:
            kinds.append(json.loads(sock.recv())["type"])
    sock.close()
    assert set(kinds) == {"status", "progress"}, "only broadcasts: status, and progress of a prompt without client_id"
    assert kinds.count("progress") == 3


def test_the_stand_in_guards_view_paths(standin: ComfyStandin) -> None:
    view = f"{standin.url}/view"
    assert requests.get(view, params={"filename": "../secret.png"}, timeout=2).status_code == 400
    assert requests.get(view, params={"filename": "a.png", "subfolder": "../../etc"}, timeout=2).status_code == 403
    assert requests.get(view, params={"filename": "missing.png"}, timeout=2).status_code == 404
