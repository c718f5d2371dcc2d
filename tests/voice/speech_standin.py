"""An OpenAI-compatible speech server stand-in on a random loopback port, in a thread.

`POST /v1/audio/speech` takes the documented JSON body (`model`, `input` of at most 4096 characters, `voice`,
`response_format`) behind `Authorization: Bearer <key>`, and answers with WAV bytes: a 220 Hz tone per word of
the input with short silences between words, written the way streaming servers write WAV when the length is not
known yet (RIFF and data sizes 0xFFFFFFFF). Errors use OpenAI's `{"error": {"message", "type"}}` shape; a bad key
is echoed back in full in the message, so the client's redaction is really tested.

It records every request and misbehaves on demand, one queued action per request: `429` (with `Retry-After`),
`500`, `401`, `slow` (answers after `slow_s`), `drop` (closes the connection without answering), `not-audio`
(200 with a JSON body), `flac` (the speech as FLAC, as a server that ignores `response_format` would send).
"""

from __future__ import annotations

import http.server
import json
import struct
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import imageio_ffmpeg
import numpy as np

SAMPLE_RATE = 24_000  # what OpenAI's speech API returns
WORD_S, GAP_S = 0.25, 0.15  # the gap outlasts a stop inside a word (timing.MIN_GAP_S)
ACTIONS = frozenset({"429", "500", "401", "slow", "drop", "not-audio", "flac"})


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


def speech_wav(text: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A tone per word, silences between: a WAV with 'unknown length' sizes, as streamed WAVs have."""
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(WORD_S * sample_rate)) / sample_rate)
    gap = np.zeros(int(GAP_S * sample_rate))
    pieces = [part for _ in text.split() for part in (tone, gap)]
    pcm = (np.concatenate(pieces) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF\xff\xff\xff\xffWAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data\xff\xff\xff\xff" + pcm


def to_flac(wav: bytes) -> bytes:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", "pipe:0", "-f", "flac", "-"]
    return subprocess.run(command, input=wav, capture_output=True, check=True).stdout


class SpeechStandin:
    """Use as a context manager; `url` is the base URL to give the client (ends in /v1)."""

    def __init__(self, api_key: str | None = None, retry_after: str = "1", slow_s: float = 2.0) -> None:
        self.api_key = api_key
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.received: list[Received] = []
        self._actions: deque[str] = deque()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> SpeechStandin:
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def misbehave(self, *actions: str) -> None:
        """Queue one action per coming request; requests after the queue runs out are served normally."""
        unknown = set(actions) - ACTIONS
        assert not unknown, f"unknown actions {unknown}; known: {sorted(ACTIONS)}"
        with self._lock:
            self._actions.extend(actions)

    def _next_action(self) -> str | None:
        with self._lock:
            return self._actions.popleft() if self._actions else None

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                return

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                standin.received.append(Received(self.path, dict(self.headers), body))
                try:
                    standin._serve(self, body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first (timeouts)
                    self.close_connection = True

        return Handler

    def _serve(self, handler: http.server.BaseHTTPRequestHandler, body: dict[str, Any] | None) -> None:
        action = self._next_action()
        if action == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if action == "slow":
            time.sleep(self.slow_s)
        presented = handler.headers.get("Authorization", "")
        if action == "401" or (self.api_key and presented != f"Bearer {self.api_key}"):
            shown = presented.removeprefix("Bearer ") or "none"
            return _json(handler, 401, f"Incorrect API key provided: {shown}.", "invalid_request_error")
        if action == "429":
            return _json(handler, 429, "Rate limit reached for requests", "requests", {"Retry-After": self.retry_after})
        if action == "500":
            return _json(handler, 500, "The server had an error while processing your request.", "server_error")
        problem = _invalid(body)
        if problem:
            return _json(handler, 400, problem, "invalid_request_error")
        if action == "not-audio":
            return _json(handler, 200, "this is not audio", "none")
        wav = speech_wav(body["input"])  # type: ignore[index]
        if action == "flac":
            return _send(handler, 200, to_flac(wav), "audio/flac")
        _send(handler, 200, wav, "audio/wav")


def _invalid(body: dict[str, Any] | None) -> str | None:
    """What is wrong with a request body, per the API reference; None when it is valid."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    for field in ("model", "input", "voice"):
        if not isinstance(body.get(field), str) or not body[field]:
            return f"'{field}' is a required property"
    if len(body["input"]) > 4096:
        return "'input' is too long: at most 4096 characters"
    if body.get("response_format", "mp3") not in {"mp3", "opus", "aac", "flac", "wav", "pcm"}:
        return f"'{body['response_format']}' is not a valid response_format"
    return None


def _json(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    message: str,
    kind: str,
    headers: dict[str, str] | None = None,
) -> None:
    payload = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
    _send(handler, status, payload, "application/json", headers)


def _send(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    payload: bytes,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(payload)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(payload)
