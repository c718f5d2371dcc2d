"""A protocol-faithful ComfyUI stand-in: HTTP and WebSocket on one loopback port, one worker thread.

Built from facts recorded from the real ComfyUI 0.3.64 (commit a125cd84, run on CPU; see
`recordings/README.md`), so that the engine is tested against the real wire contract rather than against
itself: `/object_info` serves the recorded node entries (with the live file lists in their COMBO inputs);
`/prompt` validates graphs against them and answers 400 with ComfyUI-shaped `error` + `node_errors`; history
entries, `/queue`, `/interrupt`, `/view` and the WebSocket frames (routing by `client_id`, `executing` with
`node: null` after the history entry is written) have the recorded shapes. Every image takes a fixed time on a
single worker, so queue behaviour is measurable.

Stricter than ComfyUI: an input that is not in the recorded `/object_info` is a 400 here (ComfyUI silently ignores
it, as `recordings/extra_input_ignored.json` shows), so a template or builder that drifts from the real node
definitions fails its tests. Like ComfyUI, a LoRA of another base family than the checkpoint is *not* an error:
the prompt succeeds and only `console` gets the recorded `ERROR lora ... shape ... is invalid` line
(`recordings/lora_family_mismatch_*.json`), so the project's own family check is what must catch it. A non-SVD
checkpoint in `ImageOnlyCheckpointLoader` fails in `SVD_img2vid_Conditioning` with the recorded AttributeError.

It records what it received and misbehaves on demand (execution errors, 500s on submit, dropped sockets,
prompts that never finish, refused connections, slow downloads) so every failure path can be exercised.
Everything runs on threads, so tests stay synchronous.
"""

from __future__ import annotations

import contextlib
import copy
import email.parser
import email.policy
import http.server
import io
import json
import random
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

RECORDINGS = Path(__file__).parent / "recordings"


def recording(name: str) -> Any:
    """One recorded fact of the real ComfyUI (`recordings/<name>.json`)."""
    return json.loads((RECORDINGS / f"{name}.json").read_text(encoding="utf-8"))


RECORDED_NODES: dict[str, dict[str, Any]] = recording("object_info")["nodes"]
RECORDED_VERSION: str = recording("object_info")["recorded_from"]["comfyui_version"]
SAMPLERS = tuple(RECORDED_NODES["KSampler"]["input"]["required"]["sampler_name"][0])
SCHEDULERS = tuple(RECORDED_NODES["KSampler"]["input"]["required"]["scheduler"][0])
# Checkpoints the stand-in "has", with what a real file of that name is: its UNet cross-attention width (what a
# LoRA's attn2 to_k/to_v input must match) and whether it is Stable Video Diffusion (has a CLIP-vision encoder).
CHECKPOINT_FACTS = {
    "v1-5-pruned-emaonly.safetensors": {"context_width": 768, "svd": False},
    "sd_xl_base_1.0.safetensors": {"context_width": 2048, "svd": False},
    "svd_xt.safetensors": {"context_width": 1024, "svd": True},
}
CHECKPOINTS = tuple(CHECKPOINT_FACTS)
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
# The file-list COMBO inputs: the recorded entries hold the recording machine's files; the stand-in's are live.
FILE_LISTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoadImage", "image"): "input",
}
UNKNOWN_INPUT = "standin_unknown_input"  # our own error type: real ComfyUI ignores such inputs silently


@dataclass
class Received:
    """One HTTP request as the stand-in saw it (path without the `/api` prefix)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    at: float


@dataclass
class Run:
    """One queued prompt and what happened to it: `status` is pending, running, success, error,
    interrupted or deleted."""

    prompt_id: str
    number: float
    client_id: str | None
    graph: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    status: str = "pending"

    def queue_item(self) -> list[Any]:
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs_to_execute]


@dataclass
class _Failure:
    node_type: str
    message: str
    exception_type: str
    times: int


@dataclass
class ComfyStandin:
    """Start with `start()` (or as a context manager); `url` is then `http://127.0.0.1:<port>`.

    Knobs (set any time): `seconds_per_image`, `websocket_enabled`, `hang` (prompts run until interrupted),
    `view_delay_s`, plus `fail_submits`, `fail_execution`, `drop_websockets_after` and `refuse_connections`.
    """

    output_dir: Path
    loras_dir: Path | None = None
    seconds_per_image: float = 0.05
    checkpoints: tuple[str, ...] = CHECKPOINTS
    input_images: tuple[str, ...] = ("example.png",)  # files already in input/; uploads are added
    websocket_enabled: bool = True
    hang: bool = False
    view_delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)
    console: list[str] = field(default_factory=list)  # what ComfyUI logs on its own console (never sent to clients)
    dropped_at: float | None = None  # when drop_websockets_after cut the sockets (time.monotonic)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._interrupt = threading.Event()
        self._sockets: dict[str, ServerConnection] = {}
        self._clients: set[socket.socket] = set()
        self._history: dict[str, dict[str, Any]] = {}
        self._cache: dict[str, dict[str, Any]] = {}
        self._running: Run | None = None
        self._current_node: str | None = None
        self._counter = 0
        self._files = 0
        self._submit_failures: tuple[int, int] = (0, 500)
        self._upload_failures: tuple[int, int] = (0, 500)
        self._uploaded: list[str] = []
        self._failure: _Failure | None = None
        self._drop_after: int | None = None
        self._listener: socket.socket | None = None
        self._thawed = threading.Event()
        self._thawed.set()
        self.port = 0

    # ----- lifecycle -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ComfyStandin:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._http = http.server.HTTPServer(("127.0.0.1", 0), _HttpHandler, bind_and_activate=False)
        self._http.standin = self  # type: ignore[attr-defined]
        placeholder = socket.socket()
        self._ws = serve(self._ws_session, sock=placeholder, compression=None, ping_interval=None)
        for target in (self._accept_loop, self._worker_loop):
            threading.Thread(target=target, daemon=True, name=f"comfy-standin-{target.__name__}").start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._interrupt.set()
        self._thawed.set()
        self.refuse_connections()
        with self._lock:
            self._lock.notify_all()
        self._http.server_close()
        self._ws.socket.close()

    def __enter__(self) -> ComfyStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- misbehaviour on demand ------------------------------------------------------------------------------

    def fail_submits(self, times: int, status: int = 500) -> None:
        """The next `times` POST /prompt calls answer `status` without queueing anything."""
        self._submit_failures = (times, status)

    def fail_uploads(self, times: int, status: int = 500) -> None:
        """The next `times` POST /upload/image calls answer `status` without storing anything."""
        self._upload_failures = (times, status)

    def fail_execution(
        self,
        node_type: str = "VAEDecode",
        message: str = "stand-in failure",
        exception_type: str = "RuntimeError",
        times: int = 1,
    ) -> None:
        """The next `times` prompts raise at their first node of `node_type` (an `execution_error`)."""
        self._failure = _Failure(node_type, message, exception_type, times)

    def freeze(self) -> None:
        """Keep accepting connections but answer no HTTP request until `thaw()` (a hung server process)."""
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def wait_if_frozen(self) -> None:
        self._thawed.wait()

    def drop_websockets_after(self, progress_frames: int) -> None:
        """Close every WebSocket abruptly once this many more `progress` frames have been sent."""
        self._drop_after = progress_frames

    def refuse_connections(self) -> None:
        """Stop listening and cut every open connection: clients then get 'connection refused'."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
            self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            _shutdown(client)

    # ----- assertions helpers ----------------------------------------------------------------------------------

    def received(self, method: str, path: str) -> list[Received]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def queue_remaining(self) -> int:
        with self._lock:
            return sum(run.status in ("pending", "running") for run in self.runs.values())

    # ----- object_info -----------------------------------------------------------------------------------------

    def object_info(self) -> dict[str, dict[str, Any]]:
        """The recorded entries, rebuilt per request with live file lists, as ComfyUI re-reads a folder whose
        mtime changed."""
        files = {"checkpoints": list(self.checkpoints), "loras": self._lora_files(), "input": self._input_files()}
        nodes = copy.deepcopy(RECORDED_NODES)
        for (node, name), kind in FILE_LISTS.items():
            spec = nodes[node]["input"]["required"][name]
            spec[0] = files[kind]
        return nodes

    def _input_files(self) -> list[str]:
        with self._lock:
            return sorted({*self.input_images, *self._uploaded})

    @property
    def input_dir(self) -> Path:
        return self.output_dir.parent / "input"

    # ----- POST /upload/image ----------------------------------------------------------------------------------

    def upload_image(self, content_type: str, raw: bytes) -> tuple[int, Any]:
        """Like `server.py` `upload_image`: the `image` part must have a file name; an existing name with other
        bytes is saved as `name (1).ext` unless `overwrite`; the answer's `name` is what LoadImage must use."""
        with self._lock:
            times, status = self._upload_failures
            if times > 0:
                self._upload_failures = (times - 1, status)
                return status, "upload failed (stand-in)"
        parts = _multipart(content_type, raw)
        if "image" not in parts or not parts["image"][0]:
            return 400, "400: Bad Request"
        filename, data = parts["image"]
        text = {name: value.decode() for name, (_, value) in parts.items() if name != "image"}
        kind, subfolder = text.get("type") or "input", text.get("subfolder", "")
        root = self.input_dir.resolve()
        folder = (root / subfolder).resolve()
        if kind != "input" or not folder.is_relative_to(root) or "/" in filename or ".." in filename:
            return 400, "400: Bad Request"
        folder.mkdir(parents=True, exist_ok=True)
        name, counter = filename, 1
        stem, dot, suffix = filename.rpartition(".")
        while text.get("overwrite") not in ("true", "1") and (folder / name).is_file():
            if (folder / name).read_bytes() == data:
                break
            name, counter = f"{stem} ({counter}){dot}{suffix}", counter + 1
        (folder / name).write_bytes(data)
        with self._lock:
            self._uploaded.append(f"{subfolder}/{name}" if subfolder else name)
        return 200, {"name": name, "subfolder": subfolder, "type": kind}

    def _lora_files(self) -> list[str]:
        if self.loras_dir is None or not self.loras_dir.is_dir():
            return []
        return sorted(
            p.relative_to(self.loras_dir).as_posix()
            for p in self.loras_dir.rglob("*")
            if p.is_file() and p.suffix in MODEL_EXTENSIONS
        )

    # ----- POST /prompt ----------------------------------------------------------------------------------------

    def submit(self, body: Any) -> tuple[int, Any]:
        """Validate and queue like `server.py` `post_prompt`; returns (HTTP status, JSON body or text)."""
        with self._lock:
            times, status = self._submit_failures
            if times > 0:
                self._submit_failures = (times - 1, status)
                return status, f"{status} Internal Server Error\n\nServer got itself in trouble"
        if not isinstance(body, dict) or "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided"}
            return 400, {"error": {**error, "extra_info": {}}, "node_errors": {}}
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        if not _is_canonical_uuid(prompt_id):
            error = {"type": "invalid_prompt_id", "message": "Invalid prompt_id", "details": prompt_id}
            return 400, {"error": {**error, "extra_info": {}}, "node_errors": {}}
        graph = body["prompt"]
        error, node_errors, outputs = self.validate_prompt(graph)
        if error is not None:
            return 400, {"error": error, "node_errors": node_errors}
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        with self._lock:
            self._counter += 1
            number = float(body["number"]) if "number" in body else self._counter * (-1 if body.get("front") else 1)
            run = Run(prompt_id, number, extra_data.get("client_id"), graph, extra_data, outputs, time.monotonic())
            self.runs[prompt_id] = run
            self._lock.notify_all()
        self._broadcast_status()
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}

    def validate_prompt(self, graph: Any) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
        """(top-level error or None, node_errors, output node ids to run), as `execution.validate_prompt`."""
        catalogue = self.object_info()
        if not isinstance(graph, dict):
            return _error("invalid_prompt", "Prompt is not a dictionary", ""), {}, []
        for node_id, node in graph.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type is None:
                message = "Cannot execute because a node is missing the class_type property."
                return _error("invalid_prompt", message, f"Node ID '#{node_id}'"), {}, []
            if class_type not in catalogue:
                message = f"Cannot execute because node {class_type} does not exist."
                return _error("invalid_prompt", message, f"Node ID '#{node_id}'"), {}, []
        outputs = [node_id for node_id, node in graph.items() if catalogue[node["class_type"]]["output_node"]]
        if not outputs:
            return _error("prompt_no_outputs", "Prompt has no outputs", ""), {}, []
        validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        good, node_errors = [], {}
        for output in outputs:
            if _validate_node(graph, output, catalogue, validated):
                good.append(output)
                continue
            for node_id in _ancestors(graph, output):
                reasons = validated.get(node_id, (True, []))[1]
                if reasons:
                    entry = node_errors.setdefault(
                        node_id,
                        {"errors": reasons, "dependent_outputs": [], "class_type": graph[node_id]["class_type"]},
                    )
                    entry["dependent_outputs"].append(output)
        if good:
            return None, node_errors, good
        # 0.3.64 leaves `details` empty when the errors are per node (recordings/rejected_missing_*.json)
        return _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", ""), node_errors, []

    # ----- queue, history, interrupt ---------------------------------------------------------------------------

    def queue_state(self) -> dict[str, list[list[Any]]]:
        with self._lock:
            running = [self._running.queue_item()] if self._running else []
            pending = sorted((r for r in self.runs.values() if r.status == "pending"), key=lambda r: r.number)
            return {"queue_running": running, "queue_pending": [r.queue_item() for r in pending]}

    def change_queue(self, body: Any) -> None:
        """`POST /queue`: `clear` or `delete` pending items; the running prompt is never touched."""
        with self._lock:
            body = body if isinstance(body, dict) else {}
            doomed = set(body.get("delete") or ())
            for run in self.runs.values():
                if run.status == "pending" and (body.get("clear") or run.prompt_id in doomed):
                    run.status = "deleted"
        self._broadcast_status()

    def interrupt(self, body: Any) -> None:
        """`POST /interrupt`: with a `prompt_id`, only if that prompt is running; without, whatever runs."""
        target = body.get("prompt_id") if isinstance(body, dict) else None
        with self._lock:
            if target is None or (self._running is not None and self._running.prompt_id == target):
                self._interrupt.set()

    def history(self, prompt_id: str | None, query: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            if prompt_id is not None:
                return {prompt_id: self._history[prompt_id]} if prompt_id in self._history else {}
            items = list(self._history.items())
        if "max_items" in query:
            count = int(query["max_items"])
            offset = int(query.get("offset", max(len(items) - count, 0)))
            items = items[offset : offset + count]
        return dict(items)

    def change_history(self, body: Any) -> None:
        with self._lock:
            body = body if isinstance(body, dict) else {}
            if body.get("clear"):
                self._history.clear()
            for prompt_id in body.get("delete") or ():
                self._history.pop(prompt_id, None)

    def view(self, query: dict[str, str]) -> tuple[int, bytes, str]:
        """`GET /view`: (status, body, content type), with ComfyUI's path checks."""
        filename, subfolder = query.get("filename", ""), query.get("subfolder", "")
        if not filename or filename.startswith("/") or ".." in filename:
            return 400, b"", "text/plain"
        root = self.output_dir.resolve()
        path = (root / subfolder / filename).resolve()
        if not path.is_relative_to(root):
            return 403, b"", "text/plain"
        if query.get("type", "output") != "output" or not path.is_file():
            return 404, b"404: Not Found", "text/plain"
        self._stopping.wait(self.view_delay_s)
        return 200, path.read_bytes(), "image/webp" if path.suffix == ".webp" else "image/png"

    # ----- the worker ------------------------------------------------------------------------------------------

    def _next_run(self) -> Run | None:
        with self._lock:
            while not self._stopping.is_set():
                pending = [run for run in self.runs.values() if run.status == "pending"]
                if pending:
                    run = min(pending, key=lambda r: r.number)
                    run.status, run.started_at = "running", time.monotonic()
                    self._running = run
                    return run
                self._lock.wait(0.5)
        return None

    def _worker_loop(self) -> None:
        while (run := self._next_run()) is not None:
            self._interrupt.clear()  # ComfyUI resets the flag at the start of every prompt
            messages: list[list[Any]] = []
            outputs: dict[str, Any] = {}
            status = self._execute(run, messages, outputs)
            with self._lock:
                run.status, run.finished_at = status, time.monotonic()
                self._history[run.prompt_id] = {
                    "prompt": run.queue_item(),
                    "outputs": outputs,
                    "status": {
                        "status_str": "success" if status == "success" else "error",
                        "completed": status == "success",
                        "messages": messages,
                    },
                    "meta": {
                        n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs
                    },
                }
                self._running = self._current_node = None
            self._send(run, "executing", {"node": None, "prompt_id": run.prompt_id})
            self._broadcast_status()

    def _execute(self, run: Run, messages: list[list[Any]], outputs: dict[str, Any]) -> str:
        """Run one prompt; returns success, error or interrupted. Messages also land in the history entry."""
        deadline = time.monotonic() + self.seconds_per_image
        self._message(run, messages, "execution_start", {"prompt_id": run.prompt_id})
        signature = json.dumps(run.graph, sort_keys=True)
        cached = self._cache.get(signature)
        order = _execution_order(run.graph, run.outputs_to_execute)
        self._message(run, messages, "execution_cached", {"nodes": order if cached else [], "prompt_id": run.prompt_id})
        if cached:
            outputs.update(cached)
            for node_id, ui in cached.items():
                self._send(
                    run,
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": run.prompt_id},
                )
            self._message(run, messages, "execution_success", {"prompt_id": run.prompt_id})
            return "success"
        rendered = _render(run.graph)
        for index, node_id in enumerate(order):
            node_type = run.graph[node_id]["class_type"]
            self._current_node = node_id
            self._send(run, "executing", {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id})
            base = {"prompt_id": run.prompt_id, "node_id": node_id, "node_type": node_type, "executed": order[:index]}
            failure = self._failure if self._should_fail(node_type) else self._real_failure(run.graph, node_id)
            if failure is not None:
                self._message(
                    run,
                    messages,
                    "execution_error",
                    {
                        **base,
                        "exception_message": failure.message,
                        "exception_type": failure.exception_type,
                        "traceback": ["Traceback (stand-in)"],
                        "current_inputs": {},
                        "current_outputs": [],
                    },
                )
                return "error"
            if node_type == "LoraLoader":
                self._apply_lora(run.graph, node_id)
            if node_type == "KSampler" and not self._sample(run, node_id, deadline):
                self._message(run, messages, "execution_interrupted", base)
                return "interrupted"
            if node_type in ("SaveImage", "SaveAnimatedWEBP"):
                outputs[node_id] = self._save(run.graph[node_id], rendered)
                self._send(
                    run,
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": outputs[node_id], "prompt_id": run.prompt_id},
                )
        self._cache[signature] = dict(outputs)
        self._message(run, messages, "execution_success", {"prompt_id": run.prompt_id})
        return "success"

    def _real_failure(self, graph: dict[str, Any], node_id: str) -> _Failure | None:
        """What real ComfyUI raises for this node: SVD conditioning fed by a checkpoint without CLIP vision
        (recordings/img2vid_not_svd_checkpoint.json)."""
        if graph[node_id]["class_type"] != "SVD_img2vid_Conditioning":
            return None
        loader = graph[str(graph[node_id]["inputs"]["clip_vision"][0])]
        if CHECKPOINT_FACTS.get(loader["inputs"]["ckpt_name"], {}).get("svd", False):
            return None
        return _Failure(
            "SVD_img2vid_Conditioning", "'NoneType' object has no attribute 'encode_image'\n", "AttributeError", 1
        )

    def _apply_lora(self, graph: dict[str, Any], node_id: str) -> None:
        """Like ComfyUI: a LoRA whose cross-attention width differs from the checkpoint's is skipped with an
        ERROR line on the console, and the prompt still succeeds (recordings/lora_family_mismatch_*.json)."""
        width = _checkpoint_width(graph, node_id)
        if width is None or self.loras_dir is None:
            return
        name = graph[node_id]["inputs"]["lora_name"]
        for key, lora_width, size in _lora_cross_attention(self.loras_dir / name):
            if lora_width != width:
                self.console.append(
                    f"ERROR lora diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_{key}.weight shape "
                    f"'[320, {width}]' is invalid for input of size {size}"
                )

    def _should_fail(self, node_type: str) -> bool:
        with self._lock:
            failure = self._failure
            if failure is None or failure.node_type != node_type or failure.times <= 0:
                return False
            failure.times -= 1
            return True

    def _sample(self, run: Run, node_id: str, deadline: float) -> bool:
        """Spread the image's time over the steps, sending `progress`; False when interrupted."""
        steps = int(run.graph[node_id]["inputs"].get("steps", 20))
        start = time.monotonic()
        span = max(deadline - start, 0.0)
        for step in range(1, steps + 1):
            if self.hang:
                self._interrupt.wait()
            if self._interrupt.wait(max(start + span * step / steps - time.monotonic(), 0.0)):
                return False
            self._send(run, "progress", {"value": step, "max": steps, "prompt_id": run.prompt_id, "node": node_id})
            self._count_progress()
        return True

    def _count_progress(self) -> None:
        with self._lock:
            if self._drop_after is None:
                return
            self._drop_after -= 1
            if self._drop_after > 0:
                return
            self._drop_after = None
            self.dropped_at = time.monotonic()
            connections = list(self._sockets.values())
        for connection in connections:
            connection.close_socket()

    def _save(self, node: dict[str, Any], rendered: tuple[bytes, str]) -> dict[str, Any]:
        data, extension = rendered
        prefix = str(node["inputs"].get("filename_prefix", "ComfyUI"))
        subfolder, _, stem = prefix.rpartition("/")
        with self._lock:
            self._files += 1
            filename = f"{stem}_{self._files:05d}_.{extension}"
        target = self.output_dir / subfolder / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        ui: dict[str, Any] = {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}]}
        if extension == "webp":
            ui["animated"] = [True]
        return ui

    # ----- WebSocket -------------------------------------------------------------------------------------------

    def _ws_session(self, connection: ServerConnection) -> None:
        """One `/ws?clientId=` socket; connecting again with the same id replaces the older socket."""
        query = parse_qs(urlsplit(connection.request.path if connection.request else "").query)
        sid = query.get("clientId", [uuid.uuid4().hex])[0]
        with self._lock:
            self._sockets[sid] = connection
            running, node = self._running, self._current_node
        status = {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}, "sid": sid}
        try:
            connection.send(json.dumps({"type": "status", "data": status}))
            if running is not None and running.client_id == sid and node is not None:
                connection.send(json.dumps({"type": "executing", "data": {"node": node}}))
            for _frame in connection:
                pass  # client frames (feature_flags, pings) need no answer here
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                if self._sockets.get(sid) is connection:
                    del self._sockets[sid]

    def _message(self, run: Run, messages: list[list[Any]], event: str, data: dict[str, Any]) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        messages.append([event, data])
        self._send(run, event, data)

    def _send(self, run: Run, event: str, data: dict[str, Any]) -> None:
        """Route like `server.send_sync`: to the prompt's client only; without one only progress and
        interrupts are broadcast, everything else is dropped."""
        with self._lock:
            if run.client_id is not None:
                targets = [self._sockets[run.client_id]] if run.client_id in self._sockets else []
            elif event in ("progress", "execution_interrupted"):
                targets = list(self._sockets.values())
            else:
                targets = []
        _send_all(targets, {"type": event, "data": data})

    def _broadcast_status(self) -> None:
        with self._lock:
            targets = list(self._sockets.values())
        _send_all(
            targets, {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}}
        )

    # ----- connections -----------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, address = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as aiohttp: no 40 ms Nagle stalls
            with self._lock:
                self._clients.add(client)
            threading.Thread(target=self._dispatch, args=(client, address), daemon=True).start()

    def _dispatch(self, client: socket.socket, address: Any) -> None:
        """HTTP and WebSocket share the port, as in ComfyUI: peek at the request line to pick the handler."""
        try:
            line = _peek_request_line(client)
            if self.websocket_enabled and _is_websocket_path(line):
                self._ws.handler(client, address)
            else:
                self._http.finish_request(client, address)
        except OSError:
            pass
        finally:
            with self._lock:
                self._clients.discard(client)
            _shutdown(client)


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    """Routes of `server.py` (also mounted under `/api`), answered from the stand-in's state."""

    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, *args: Any) -> None:
        """Quiet: pytest shows the assertions, not an access log."""

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        standin: ComfyStandin = self.server.standin
        standin.wait_if_frozen()
        parts = urlsplit(self.path)
        path = parts.path.removeprefix("/api") or "/"
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if (method, path) == ("POST", "/upload/image"):
            standin.requests.append(Received(method, path, query, raw, time.monotonic()))
            return self._reply(*standin.upload_image(self.headers.get("Content-Type", ""), raw))
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            standin.requests.append(Received(method, path, query, raw, time.monotonic()))
            return self._reply(500, "500 Internal Server Error")
        standin.requests.append(Received(method, path, query, body, time.monotonic()))
        segments = path.strip("/").split("/")
        head, rest = segments[0], "/".join(segments[1:]) or None
        if (method, head) == ("POST", "prompt"):
            return self._reply(*standin.submit(body))
        if (method, head) == ("GET", "prompt"):
            return self._reply(200, {"exec_info": {"queue_remaining": standin.queue_remaining()}})
        if (method, head) == ("GET", "object_info"):
            info = standin.object_info()
            return self._reply(200, info if rest is None else {rest: info[rest]} if rest in info else {})
        if (method, head) == ("GET", "queue"):
            return self._reply(200, standin.queue_state())
        if (method, head) == ("POST", "queue"):
            standin.change_queue(body)
            return self._reply(200, b"")
        if (method, head) == ("POST", "interrupt"):
            standin.interrupt(body)
            return self._reply(200, b"")
        if (method, head) == ("GET", "history"):
            return self._reply(200, standin.history(rest, query))
        if (method, head) == ("POST", "history"):
            standin.change_history(body)
            return self._reply(200, b"")
        if (method, head) == ("GET", "view"):
            status, data, content_type = standin.view(query)
            return self._reply(status, data, content_type)
        if (method, head) == ("GET", "system_stats"):
            return self._reply(200, {"system": {"comfyui_version": "0.3.64-standin"}, "devices": []})
        return self._reply(404, "404: Not Found")

    def _reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
        if isinstance(body, str):
            data, content_type = body.encode(), "text/plain; charset=utf-8"
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# ----- helpers -------------------------------------------------------------------------------------------------


def _error(kind: str, message: str, details: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body as {field name: (file name, bytes)}; empty when it is not multipart."""
    if not content_type.startswith("multipart/form-data"):
        return {}
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def _is_canonical_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _input_error(kind: str, message: str, details: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {"input_name": name, **extra}}


def _validate_node(
    graph: dict[str, Any],
    node_id: str,
    catalogue: dict[str, Any],
    validated: dict[str, tuple[bool, list[dict[str, Any]]]],
) -> bool:
    """`execution.validate_inputs`: required inputs present, links typed right, literals in range/in list."""
    if node_id in validated:
        return validated[node_id][0]
    validated[node_id] = (True, [])  # provisional, so a cycle cannot recurse forever
    inputs = graph[node_id].get("inputs") or {}
    errors: list[dict[str, Any]] = []
    upstream_ok = True
    declared = catalogue[graph[node_id]["class_type"]]["input"]
    known = {*declared.get("required", {}), *declared.get("optional", {})}
    for name in inputs:
        if name not in known:  # stricter than ComfyUI, which ignores it (recordings/extra_input_ignored.json)
            message = f"Input not in the recorded /object_info of ComfyUI {RECORDED_VERSION}"
            errors.append(_input_error(UNKNOWN_INPUT, message, f"{name}: known inputs are {sorted(known)}", name))
    for name, spec in declared["required"].items():
        if name not in inputs:
            errors.append(_input_error("required_input_missing", "Required input is missing", name, name))
            continue
        value, kind = inputs[name], spec[0]
        if isinstance(value, list):
            link_error, source = _check_link(graph, catalogue, name, value, kind)
            if link_error is not None:
                errors.append(link_error)
            elif not _validate_node(graph, source, catalogue, validated):
                upstream_ok = False
            continue
        literal_error = _check_literal(name, value, kind, spec[1] if len(spec) > 1 else {})
        if literal_error is not None:
            errors.append(literal_error)
    validated[node_id] = (upstream_ok and not errors, errors)
    return validated[node_id][0]


def _check_link(
    graph: dict[str, Any], catalogue: dict[str, Any], name: str, value: list[Any], kind: Any
) -> tuple[dict[str, Any] | None, str]:
    if len(value) != 2:
        message = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
        return _input_error("bad_linked_input", message, f"{name}, {value}", name), ""
    source, slot = str(value[0]), value[1]
    if source not in graph:
        message = "Exception when validating inner node"
        return _input_error("exception_during_validation", message, f"node {source} does not exist", name), ""
    produced = catalogue[graph[source]["class_type"]]["output"]
    received = produced[slot] if isinstance(slot, int) and 0 <= slot < len(produced) else None
    expected = kind if isinstance(kind, str) else "COMBO"
    if received != expected:
        details = f"{name}, received_type({received}) mismatch input_type({expected})"
        return _input_error("return_type_mismatch", "Return type mismatch between linked nodes", details, name), source
    return None, source


def _check_literal(name: str, value: Any, kind: Any, options: dict[str, Any]) -> dict[str, Any] | None:
    if isinstance(kind, list):
        if value in kind:
            return None
        shown = kind if len(kind) <= 20 else f"(list of length {len(kind)})"
        return _input_error(
            "value_not_in_list",
            "Value not in list",
            f"{name}: '{value}' not in {shown}",
            name,
            input_config=[kind, options] if len(kind) <= 20 else None,
            received_value=value,
        )
    converters = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
    if kind not in converters:
        return _input_error("invalid_input_type", f"Input must be a link to a {kind} output", name, name)
    try:
        number = converters[kind](value)
    except (TypeError, ValueError) as exc:
        message = f"Failed to convert an input value to a {kind} value"
        return _input_error("invalid_input_type", message, f"{name}, {value}, {exc}", name)
    if kind in ("INT", "FLOAT") and "min" in options and number < options["min"]:
        return _input_error(
            "value_smaller_than_min", f"Value {number} smaller than min of {options['min']}", name, name
        )
    if kind in ("INT", "FLOAT") and "max" in options and number > options["max"]:
        return _input_error("value_bigger_than_max", f"Value {number} bigger than max of {options['max']}", name, name)
    return None


def _links(node: dict[str, Any]) -> list[str]:
    return [str(v[0]) for v in (node.get("inputs") or {}).values() if isinstance(v, list) and len(v) == 2]


def _ancestors(graph: dict[str, Any], node_id: str) -> list[str]:
    seen: list[str] = []
    stack = [node_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in graph:
            continue
        seen.append(current)
        stack.extend(_links(graph[current]))
    return seen


def _execution_order(graph: dict[str, Any], outputs: list[str]) -> list[str]:
    """Dependencies first, each node once (the real executor's order differs only among independent nodes)."""
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in order:
            return
        for source in _links(graph[node_id]):
            visit(source)
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order


def _render(graph: dict[str, Any]) -> tuple[bytes, str]:
    """A solid colour picked by the seed, at the requested size: distinct seeds give distinct images."""
    nodes = list(graph.values())
    seed = next((n["inputs"]["seed"] for n in nodes if n["class_type"] == "KSampler"), 0)
    colour = tuple(random.Random(seed).randrange(256) for _ in range(3))
    sized = next((n["inputs"] for n in nodes if "width" in n.get("inputs", {})), {"width": 64, "height": 64})
    width, height = int(sized["width"]), int(sized["height"])
    buffer = io.BytesIO()
    if any(n["class_type"] == "SaveAnimatedWEBP" for n in nodes):
        video = next(n["inputs"] for n in nodes if n["class_type"] == "SVD_img2vid_Conditioning")
        size = (max(width // 8, 2), max(height // 8, 2))
        frames = [
            Image.new("RGB", size, tuple((c + 9 * i) % 256 for c in colour)) for i in range(video["video_frames"])
        ]
        duration = round(1000 / video["fps"])
        frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=duration, loop=0)
        return buffer.getvalue(), "webp"
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue(), "png"


def _peek_request_line(client: socket.socket) -> bytes:
    client.settimeout(5)
    data = b""
    for _ in range(500):
        data = client.recv(2048, socket.MSG_PEEK)
        if not data or b"\r\n" in data or len(data) >= 2048:
            break
        time.sleep(0.002)
    client.settimeout(None)
    return data.split(b"\r\n", 1)[0]


def _is_websocket_path(request_line: bytes) -> bool:
    parts = request_line.split(b" ")
    if len(parts) < 2 or parts[0] != b"GET":
        return False
    return urlsplit(parts[1].decode("latin-1")).path in ("/ws", "/api/ws")


def _send_all(connections: list[ServerConnection], message: dict[str, Any]) -> None:
    text = json.dumps(message)
    for connection in connections:
        with contextlib.suppress(ConnectionClosed, OSError, RuntimeError):
            connection.send(text)  # a socket that went away misses the frame, as with ComfyUI


def _shutdown(client: socket.socket) -> None:
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_RDWR)
    client.close()


def _checkpoint_width(graph: dict[str, Any], node_id: str) -> int | None:
    """The context width of the checkpoint at the root of a LoraLoader chain."""
    node = graph[node_id]
    while node["class_type"] == "LoraLoader":
        node = graph[str(node["inputs"]["model"][0])]
    return CHECKPOINT_FACTS.get(node["inputs"].get("ckpt_name", ""), {}).get("context_width")


def _lora_cross_attention(path: Path) -> list[tuple[str, int, int]]:
    """(to_k or to_v, in-width, element count of up @ down) for each attn2 to_k/to_v pair in a LoRA file, read
    from its safetensors header as ComfyUI's loader sees the shapes."""
    try:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error):
        return []
    found = []
    for key, entry in header.items():
        if key.endswith(("attn2_to_k.lora_down.weight", "attn2_to_v.lora_down.weight")):
            rank, width = entry["shape"][:2]
            up = header.get(key.replace("lora_down", "lora_up"), {}).get("shape", [320, rank])
            found.append((key.split(".")[0][-1:], int(width), int(up[0]) * int(width)))
    return found
