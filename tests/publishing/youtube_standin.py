"""A YouTube Data API v3 resumable-upload stand-in on a random loopback port, served from a thread.

It speaks the protocol of https://developers.google.com/youtube/v3/guides/using_resumable_upload_protocol:
`POST /upload/youtube/v3/videos?uploadType=resumable` with the video resource opens a session (200 + `Location`);
`PUT <session>` with `Content-Range: bytes a-b/N` stores a chunk (non-final chunks must be multiples of 256 KiB and
must start where the stored bytes end) and answers `308` + `Range: bytes=0-<last stored>`, or `201` + the video
resource once the last byte is in; `PUT <session>` with `Content-Range: bytes */N` probes (308 / 200 with the video
/ 410 when expired). Errors use Google's JSON shape (`error.errors[0].reason`); a bad token is echoed in the 401
message, so redaction is really tested. Projects are unaudited unless `audited=True`: their videos are locked
private, as YouTube does.

Stricter than YouTube where that catches client mistakes: the client is built as in production with only
`base_url` swapped (`endpoints.rehome`), so uploads arrive as `/www.googleapis.com/upload/youtube/v3/videos` and
any other host is refused; `part` must name `snippet` and `status` and every part the body carries (YouTube sets
only the parts `part` names, so a request without `status` would silently lose `containsSyntheticMedia` and the
privacy status; the stand-in refuses such a request with `unexpectedPart` instead).
https://developers.google.com/youtube/v3/docs/videos/insert

Its own record is the source of truth for the tests: every session with its stored bytes and every chunk request
(`Chunk`: range, bytes that arrived, bytes stored), and `videos`, the videos that exist. A video is created only
when a session's last byte is stored, at most once per session.

Faults are queued with `fail(route, action)` and consumed by the next request on that route: routes `start`,
`probe`, `chunk` (any chunk) and `final` (the chunk that would complete the upload). Actions:
- HTTP answers: `500`, `503` (backendError), `429` (with the constructor's `Retry-After`), `rate` (403
  rateLimitExceeded), `quota` (403 quotaExceeded), `upload-limit` (400 uploadLimitExceeded), `signup` (403
  youtubeSignupRequired), `401`.
- `drop`: read the request, store nothing, close the connection without answering.
- `partial`: store the first half of the chunk, then drop (a connection lost mid-upload).
- `lost-response`: store the chunk (creating the video if it was the last), then drop: the double-post case.
- `slow`: store the chunk, answer only after `slow_s` (longer than the client's timeout).
- `expire`: the session expires now (410 to this request and every later one).
- `ok`: serve the request normally (to aim the next action at a later request).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

GRANULARITY = 256 * 1024
ROUTES = frozenset({"start", "probe", "chunk", "final"})
_ERRORS = {  # action -> (HTTP status, reason, message)
    "500": (500, "backendError", "Backend Error"),
    "503": (503, "backendError", "Service unavailable"),
    "429": (429, "rateLimitExceeded", "Too many requests"),
    "rate": (403, "rateLimitExceeded", "The request rate is too high"),
    "quota": (403, "quotaExceeded", "The request cannot be completed because you have exceeded your quota."),
    "upload-limit": (400, "uploadLimitExceeded", "The user has exceeded the number of videos they may upload."),
    "signup": (403, "youtubeSignupRequired", "The user has no YouTube channel."),
}
ACTIONS = frozenset(_ERRORS) | {"ok", "401", "drop", "partial", "lost-response", "slow", "expire"}
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+)$")
UPLOAD_PATH = "/www.googleapis.com/upload/youtube/v3/videos"
REQUIRED_PARTS = frozenset({"snippet", "status"})


@dataclass
class Chunk:
    """One chunk request as it arrived: its declared range, the bytes that arrived and the bytes kept."""

    first: int
    last: int
    arrived: int
    stored: int


@dataclass
class UploadSession:
    id: str
    resource: dict[str, Any]
    total: int
    content_type: str
    params: dict[str, str]
    data: bytearray = field(default_factory=bytearray)
    chunks: list[Chunk] = field(default_factory=list)
    probes: int = 0
    video_id: str | None = None
    expired: bool = False


@dataclass
class Video:
    id: str
    session_id: str
    resource: dict[str, Any]  # as YouTube returns it: snippet, status (with privacy after the audit gate)
    content: bytes


class YouTubeStandin:
    """Use as a context manager; `url` is the base URL for `YouTubePublisher(base_url=...)`."""

    def __init__(
        self,
        tokens: tuple[str, ...] = ("yt-token",),
        audited: bool = False,
        slow_s: float = 1.0,
        retry_after: str = "2",
    ) -> None:
        self.tokens = set(tokens)
        self._trusted: list[Callable[[str], bool]] = []
        self.retry_after = retry_after
        self.audited = audited
        self.slow_s = slow_s
        self.sessions: dict[str, UploadSession] = {}
        self.videos: list[Video] = []
        self.requests: list[tuple[str, str]] = []  # (method, route) of every request, in order
        self._faults: deque[tuple[str, str]] = deque()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> YouTubeStandin:
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- test controls and views --------------------------------------------------------------------------------

    def fail(self, route: str, *actions: str) -> YouTubeStandin:
        """Queue `actions` for the coming requests on `route`, one per request, in order."""
        if route not in ROUTES or not set(actions) <= ACTIONS:
            raise ValueError(f"unknown route {route!r} or actions {actions!r}")
        self._faults.extend((route, action) for action in actions)
        return self

    def trust(self, check: Callable[[str], bool]) -> None:
        """Accept every token `check` says is valid as well (an OAuth stand-in's `valid`: the tokens it issued)."""
        self._trusted.append(check)

    def valid(self, token: str) -> bool:
        return token in self.tokens or any(check(token) for check in self._trusted)

    def revoke(self, token: str) -> None:
        self.tokens.discard(token)

    def expire(self, session_id: str) -> None:
        self.sessions[session_id].expired = True

    def session(self, uri: str) -> UploadSession:
        """The session behind a session URI (as the publisher's handle holds it)."""
        return self.sessions[parse_qs(urlsplit(uri).query)["upload_id"][0]]

    def bytes_arrived(self) -> int:
        """Every chunk byte that reached the server, across all sessions (resent bytes count twice)."""
        return sum(chunk.arrived for s in self.sessions.values() for chunk in s.chunks)

    # --- the server --------------------------------------------------------------------------------------------

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def do_POST(self) -> None:
                standin._dispatch(self, standin._start)

            def do_PUT(self) -> None:
                standin._dispatch(self, standin._put)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _dispatch(self, handler: http.server.BaseHTTPRequestHandler, route: Any) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        token = handler.headers.get("Authorization", "").removeprefix("Bearer ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if not self.valid(token):
                self.requests.append((handler.command, "unauthorized"))
                message = f"Request had invalid authentication credentials: {token}"
                _send_error(handler, 401, "authError", message, status="UNAUTHENTICATED")
                return
            route(handler, body)

    def _take_fault(self, route: str) -> str | None:
        with self._lock:
            for index, (fault_route, action) in enumerate(self._faults):
                if fault_route == route or (fault_route == "chunk" and route == "final"):
                    del self._faults[index]
                    return action
        return None

    def _start(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        self.requests.append(("POST", "start"))
        url = urlsplit(handler.path)
        params = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path != UPLOAD_PATH or params.get("uploadType") != "resumable":
            self.requests[-1] = ("POST", "wrong-route")
            _send_error(handler, 404, "notFound", f"no route {url.path}: uploads go to {UPLOAD_PATH}")
            return
        if self._answer_fault(handler, self._take_fault("start")):
            return
        resource = json.loads(body or b"{}")
        problem = _part_problem(resource, params.get("part", "")) or _metadata_problem(
            resource, handler.headers.get("X-Upload-Content-Length")
        )
        if problem:
            _send_error(handler, 400, *problem)
            return
        session = UploadSession(
            id=uuid.uuid4().hex,
            resource=resource,
            total=int(handler.headers["X-Upload-Content-Length"]),
            content_type=handler.headers.get("X-Upload-Content-Type", ""),
            params=params,
        )
        with self._lock:
            self.sessions[session.id] = session
        location = f"{self.url}{UPLOAD_PATH}?uploadType=resumable&upload_id={session.id}"
        _send(handler, 200, b"", {"Location": location})

    def _put(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        upload_id = parse_qs(urlsplit(handler.path).query).get("upload_id", [""])[0]
        session = self.sessions.get(upload_id) if urlsplit(handler.path).path == UPLOAD_PATH else None
        match = _CONTENT_RANGE.match(handler.headers.get("Content-Range", ""))
        if session is None or match is None:
            self.requests.append(("PUT", "bad"))
            _send_error(handler, 404 if session is None else 400, "badRequest", "unknown session or Content-Range")
            return
        if match[1] is None:
            self._probe(handler, session)
        else:
            self._chunk(handler, session, int(match[1]), int(match[2]), int(match[3]), body)

    def _probe(self, handler: http.server.BaseHTTPRequestHandler, session: UploadSession) -> None:
        self.requests.append(("PUT", "probe"))
        session.probes += 1
        action = self._take_fault("probe")
        if action == "expire":
            session.expired = True
        if self._answer_fault(handler, action):
            return
        self._answer_position(handler, session, created=False)

    def _chunk(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        session: UploadSession,
        first: int,
        last: int,
        total: int,
        body: bytes,
    ) -> None:
        final = last + 1 == session.total
        self.requests.append(("PUT", "final" if final else "chunk"))
        action = self._take_fault("final" if final else "chunk")
        record = Chunk(first=first, last=last, arrived=len(body), stored=0)
        session.chunks.append(record)
        if action == "expire":
            session.expired = True
        if session.expired or session.video_id:
            self._answer_position(handler, session, created=False)
            return
        problem = _chunk_problem(session, first, last, total, body)
        if problem:
            _send_error(handler, 400, "badContent", problem)
            return
        if self._answer_fault(handler, action):
            return
        keep = len(body) // 2 if action == "partial" else len(body)
        created = self._store(session, body[:keep], record)
        if action in ("partial", "lost-response"):
            handler.close_connection = True
            return
        if action == "slow":
            time.sleep(self.slow_s)
        self._answer_position(handler, session, created=created)

    def _store(self, session: UploadSession, data: bytes, record: Chunk) -> bool:
        """Keep the bytes; the last byte creates the video (once). True when this call created it."""
        with self._lock:
            session.data.extend(data)
            record.stored = len(data)
            if len(session.data) < session.total or session.video_id:
                return False
            session.video_id = f"yt{uuid.uuid4().hex[:9]}"
            resource = json.loads(json.dumps(session.resource))
            if not self.audited:
                resource["status"]["privacyStatus"] = "private"  # the audit gate
            resource["status"]["uploadStatus"] = "uploaded"
            self.videos.append(Video(session.video_id, session.id, resource, bytes(session.data)))
            return True

    def _answer_position(
        self, handler: http.server.BaseHTTPRequestHandler, session: UploadSession, created: bool
    ) -> None:
        if session.expired:
            _send_error(handler, 410, "sessionExpired", "The upload session has expired.")
        elif session.video_id:
            video = next(v for v in self.videos if v.id == session.video_id)
            payload = {"kind": "youtube#video", "id": video.id, **video.resource}
            _send(handler, 201 if created else 200, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        elif session.data:
            _send(handler, 308, b"", {"Range": f"bytes=0-{len(session.data) - 1}"})
        else:
            _send(handler, 308, b"", {})

    def _answer_fault(self, handler: http.server.BaseHTTPRequestHandler, action: str | None) -> bool:
        """Answer the request per a fault that needs no storage; False when the request goes on normally."""
        if action in _ERRORS:
            status, reason, message = _ERRORS[action]
            _send_error(handler, status, reason, message, retry_after=self.retry_after if status == 429 else None)
            return True
        if action == "401":
            token = handler.headers.get("Authorization", "").removeprefix("Bearer ")
            _send_error(handler, 401, "authError", f"Invalid Credentials: {token}", status="UNAUTHENTICATED")
            return True
        if action == "drop":
            handler.close_connection = True
            return True
        return False


def _part_problem(resource: dict[str, Any], part: str) -> tuple[str, str] | None:
    """`part` must name snippet and status, and every part the body sets (YouTube would drop the others)."""
    named = {p.strip() for p in part.split(",") if p.strip()}
    missing = (REQUIRED_PARTS | set(resource)) - named
    if missing:
        return "unexpectedPart", f"part={part!r} does not name {sorted(missing)}: those parts would not be set"
    return None


def _metadata_problem(resource: dict[str, Any], length: str | None) -> tuple[str, str] | None:
    """YouTube's checks on a new upload: (reason, message) of the first broken rule, None when valid."""
    snippet, status = resource.get("snippet", {}), resource.get("status", {})
    title, description = snippet.get("title", ""), snippet.get("description", "")
    if not length or not length.isdigit() or int(length) <= 0:
        return "badContent", "X-Upload-Content-Length is required"
    if not title or len(title) > 100 or "<" in title or ">" in title:
        return "invalidTitle", "The request metadata specifies an invalid video title."
    if len(description.encode()) > 5000 or "<" in description or ">" in description:
        return "invalidDescription", "The request metadata specifies an invalid video description."
    if status.get("privacyStatus") not in ("private", "unlisted", "public"):
        return "invalidVideoMetadata", "The request metadata is invalid."
    return None


def _chunk_problem(session: UploadSession, first: int, last: int, total: int, body: bytes) -> str | None:
    if total != session.total:
        return f"Content-Range total {total} differs from the session's {session.total}"
    if first != len(session.data):
        return f"the chunk starts at {first}, the session holds {len(session.data)} bytes"
    if last - first + 1 != len(body):
        return f"Content-Range declares {last - first + 1} bytes, the body has {len(body)}"
    if last + 1 < session.total and len(body) % GRANULARITY:
        return f"a non-final chunk of {len(body)} bytes is not a multiple of 256 KiB"
    return None


def _send(handler: http.server.BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str]) -> None:
    handler.send_response(code)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _send_error(
    handler: http.server.BaseHTTPRequestHandler,
    code: int,
    reason: str,
    message: str,
    status: str = "",
    retry_after: str | None = None,
) -> None:
    """Google's error shape: `{"error": {"code", "message", "errors": [{"domain", "reason", "message"}]}}`."""
    domain = "youtube.quota" if reason == "quotaExceeded" else "youtube.video"
    error = {"code": code, "message": message, "errors": [{"domain": domain, "reason": reason, "message": message}]}
    if status:
        error["status"] = status
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    _send(handler, code, json.dumps({"error": error}).encode(), headers)
