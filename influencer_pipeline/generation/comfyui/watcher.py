"""Which of our prompts finished: from ComfyUI's WebSocket events while the socket is up, by polling `/history`
otherwise.

On the socket, `executing` with `node: null` is the only race-free "this prompt is done" signal (ComfyUI writes
the history entry before sending it); `execution_error` / `execution_interrupted` end a prompt too, and
`progress` carries sampler steps (https://docs.comfy.org/development/comfyui-server/comms_messages, and
https://github.com/comfyanonymous/ComfyUI/blob/master/script_examples/websockets_api_example.py for the same
loop). When the socket never connects or drops, `/history/{id}` polling takes over, with `/queue` telling
"still queued" from "lost"; with a live socket `/history` is still read now and then, in case a frame was lost.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

import websocket

from influencer_pipeline.generation.comfyui.client import ComfyUIClient
from influencer_pipeline.generation.comfyui.errors import ComfyUIError
from influencer_pipeline.generation.comfyui.jobs import Job

log = logging.getLogger(__name__)

TICK_S = 0.1  # how often the socket reader, and the wait loop, check for shutdown, should_stop and deadlines
SAFETY_POLL_FACTOR = 10  # with a live socket, /history is still polled this many poll intervals apart


class ProgressWatcher:
    """Reports which of our prompts finished (a context manager: entering connects the socket, leaving closes
    it). Events are those of prompts submitted with `client_id`; `poll_interval_s` paces `/history` polling."""

    def __init__(self, client: ComfyUIClient, client_id: str, poll_interval_s: float) -> None:
        self._client = client
        self._client_id = client_id
        self._poll_interval_s = poll_interval_s
        self._frames: queue.Queue[dict[str, Any] | Exception] = queue.Queue()
        self._closing = threading.Event()
        self._socket: websocket.WebSocket | None = None
        self._reader: threading.Thread | None = None
        self._live = False
        self._due: set[str] = set()
        self._next_poll = 0.0  # a socket that never connects means: poll from the start

    def __enter__(self) -> ProgressWatcher:
        url = self._client.websocket_url(self._client_id)
        try:
            self._socket = websocket.create_connection(url, timeout=self._client.connect_timeout_s)
        except (websocket.WebSocketException, OSError) as exc:
            log.warning("ComfyUI WebSocket %s unavailable (%s); following progress by polling /history", url, exc)
            return self
        self._socket.settimeout(TICK_S)
        self._live = True
        self._next_poll = time.monotonic() + self._poll_interval_s * SAFETY_POLL_FACTOR
        self._reader = threading.Thread(target=self._read, args=(self._socket,), daemon=True, name="comfyui-ws")
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Abort rather than close politely: the reader wakes at once instead of at its next recv timeout."""
        self._closing.set()
        if self._socket is not None:
            self._socket.abort()
        if self._reader is not None:
            self._reader.join(timeout=2 * TICK_S + 1)
        if self._socket is not None:
            self._socket.shutdown()

    def _read(self, sock: websocket.WebSocket) -> None:
        """Reader thread: a recv timeout is only a chance to check for shutdown (ComfyUI can be silent for
        minutes while it loads a model); any other failure ends the socket and switches to polling."""
        while not self._closing.is_set():
            try:
                frame = sock.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError) as exc:
                self._frames.put(exc)
                return
            if isinstance(frame, str):  # binary frames are previews; not needed here
                try:
                    self._frames.put(json.loads(frame))
                except json.JSONDecodeError:
                    log.debug("ignoring a non-JSON ComfyUI frame")

    def wait(self, in_flight: dict[str, Job], timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """Wait up to `timeout` for news; returns (prompt_id, history entry) for prompts that finished."""
        self._take_frames(in_flight, timeout)
        now = time.monotonic()
        if now >= self._next_poll:
            self._due.update(in_flight)
            factor = SAFETY_POLL_FACTOR if self._live else 1
            self._next_poll = now + self._poll_interval_s * factor
        return self._poll(in_flight)

    def _take_frames(self, in_flight: dict[str, Job], timeout: float) -> None:
        """Block for the first frame (it is also the loop's pause when polling), then drain the rest."""
        block = True
        while True:
            try:
                frame = self._frames.get(timeout=timeout) if block else self._frames.get_nowait()
            except queue.Empty:
                return
            block = False
            if isinstance(frame, Exception):
                log.warning(
                    "ComfyUI WebSocket dropped (%s); following progress by polling /history every %g s",
                    frame,
                    self._poll_interval_s,
                )
                self._live = False
                self._next_poll = 0.0  # frames may have been lost: look now
                continue
            self._handle(frame, in_flight)

    def _handle(self, frame: Any, in_flight: dict[str, Job]) -> None:
        data = frame.get("data") if isinstance(frame, dict) and isinstance(frame.get("data"), dict) else {}
        prompt_id = data.get("prompt_id")
        if prompt_id not in in_flight:
            return
        kind = frame.get("type")
        if kind == "executing" and data.get("node") is None:
            self._due.add(prompt_id)  # the history entry is written before this frame is sent
        elif kind in ("execution_error", "execution_interrupted"):
            self._due.add(prompt_id)
        elif kind == "progress":
            log.debug("%s: step %s/%s", in_flight[prompt_id].where, data.get("value"), data.get("max"))

    def _poll(self, in_flight: dict[str, Job]) -> list[tuple[str, dict[str, Any]]]:
        """Read history for due prompts; one that is neither in history nor queued is lost (restart, or
        deleted by someone else) and would otherwise be waited for until the timeout."""
        due = [prompt_id for prompt_id in self._due if prompt_id in in_flight]
        self._due.clear()
        finished: list[tuple[str, dict[str, Any]]] = []
        unfinished = []
        for prompt_id in due:
            entry = self._client.history_entry(prompt_id)
            if entry is not None:
                finished.append((prompt_id, entry))
            else:
                unfinished.append(prompt_id)
        queued = self._client.queued_ids() if unfinished else set()
        for prompt_id in unfinished:
            if prompt_id in queued:
                continue
            entry = self._client.history_entry(prompt_id)  # it may have finished between the two reads
            if entry is None:
                raise ComfyUIError(
                    f"ComfyUI no longer knows prompt {prompt_id} ({in_flight[prompt_id].where}): it is neither "
                    "queued nor in its history. ComfyUI was probably restarted (history lives in memory) or the "
                    "prompt was deleted from its queue. Run the step again"
                )
            finished.append((prompt_id, entry))
        return finished
