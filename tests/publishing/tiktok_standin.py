"""A TikTok Content Posting API stand-in on a random loopback port, served from a thread.

It speaks the protocol of https://developers.tiktok.com/doc/content-posting-api-reference-direct-post (all API calls
`POST` JSON with a Bearer token, answers `{"data": {...}, "error": {"code", "message", "log_id"}}`):
- `/v2/post/publish/creator_info/query/`: the creator's privacy options, disabled interactions, max duration.
- `/v2/post/publish/video/init/` (direct post, scope `video.publish`) and `/v2/post/publish/inbox/video/init/`
  (scope `video.upload`) with FILE_UPLOAD `source_info`, checked against the chunk rules (scaled down by the
  constructor's numbers), the creator's privacy options and, for unaudited clients, SELF_ONLY on a private
  account; at most `init_per_minute` inits per token (rate_limit_exceeded beyond). Answers publish_id +
  upload_url.
- `PUT <upload_url>` (no token: the URL authorises itself) with `Content-Range: bytes a-b/N`: the chunks in order,
  each exactly as the init's plan says; 206 until the last, then 201.
- `/v2/post/publish/status/fetch/`: PROCESSING_UPLOAD (with `uploaded_bytes`) while the upload is incomplete and
  for `processing_polls` polls after it, then PUBLISH_COMPLETE (direct; the post id appears after
  `moderation_polls` more polls), SEND_TO_USER_INBOX (inbox), or FAILED with `reject_media` as fail_reason.

Hosts are checked: the client is built as in production with only `base_url` swapped (`endpoints.rehome`), so
API calls arrive as `/open.tiktokapis.com/v2/...` and anything on another host is refused (404, recorded as
`wrong-host`); upload URLs are handed out on `open-upload.tiktokapis.com`, as TikTok's are, and only they take
chunks. https://developers.tiktok.com/doc/content-posting-api-reference-direct-post

Its own record is the source of truth: `publishes` (every init with its body, chunks and stored bytes), `posts`
(videos live on the profile) and `inbox` (videos sent to the creator's inbox). A publish goes out at most once, and
only when all its bytes are stored.

Faults are queued with `fail(route, action)` for the next request on a route: `creator_info`, `init`, `status`,
`chunk` (any chunk) or `final` (the chunk that completes the upload). Actions: `ok` (serve normally), `429`
(rate_limit_exceeded + Retry-After), `500` (internal_error), `401` (access_token_invalid, quoting the token), any
TikTok error code in `ERROR_STATUS` (answered with its HTTP status), `drop` (close without answering, store
nothing), `lost-response` (store the chunk, then close without answering), `slow` (store, answer after `slow_s`).
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

ROUTES = frozenset({"creator_info", "init", "status", "chunk", "final"})
API_HOST = "open.tiktokapis.com"
UPLOAD_HOST = "open-upload.tiktokapis.com"
ERROR_STATUS = {
    "access_token_invalid": 401,
    "scope_not_authorized": 401,
    "rate_limit_exceeded": 429,
    "internal_error": 500,
    "invalid_params": 400,
    "privacy_level_option_mismatch": 400,
    "spam_risk_too_many_posts": 403,
    "spam_risk_too_many_pending_share": 403,
    "spam_risk_user_banned_from_posting": 403,
    "reached_active_user_cap": 403,
    "unaudited_client_can_only_post_to_private_accounts": 403,
}
ACTIONS = frozenset(ERROR_STATUS) | {"ok", "429", "500", "401", "drop", "lost-response", "slow"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)$")
_SCOPE = {  # the scope each API route needs
    "/v2/post/publish/creator_info/query/": "video.publish",
    "/v2/post/publish/video/init/": "video.publish",
    "/v2/post/publish/inbox/video/init/": "video.upload",
}


@dataclass
class Creator:
    creator_username: str = "ava.virtual"
    creator_nickname: str = "Ava"
    privacy_level_options: tuple[str, ...] = ("PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "SELF_ONLY")
    comment_disabled: bool = False
    duet_disabled: bool = False
    stitch_disabled: bool = False
    max_video_post_duration_sec: int = 600


@dataclass
class Chunk:
    """One chunk PUT as it arrived: range, bytes that arrived and bytes kept, and whether it carried a token."""

    first: int
    last: int
    arrived: int
    stored: int
    authorization: bool


@dataclass
class Publish:
    publish_id: str
    mode: str  # "direct" | "inbox"
    body: dict[str, Any]
    upload_token: str
    data: bytearray = field(default_factory=bytearray)
    chunks: list[Chunk] = field(default_factory=list)
    status: str = "PROCESSING_UPLOAD"
    fail_reason: str = ""
    processing_left: int = 0
    moderation_left: int = 0
    post_id: str = ""
    polls: int = 0

    @property
    def source(self) -> dict[str, Any]:
        return self.body["source_info"]

    @property
    def complete(self) -> bool:
        return len(self.data) == self.source["video_size"]


@dataclass
class Delivered:
    """A video that went out: on the profile (`posts`) or to the creator's inbox (`inbox`)."""

    publish_id: str
    post_info: dict[str, Any]
    content: bytes
    post_id: str = ""


class TikTokStandin:
    """Use as a context manager; `url` is the base URL for `TikTokPublisher(base_url=...)`."""

    def __init__(
        self,
        tokens: tuple[str, ...] = ("act.tiktok-token",),
        scopes: frozenset[str] = frozenset({"video.publish", "video.upload"}),
        creator: Creator | None = None,
        *,
        audited: bool = True,
        account_private: bool = False,
        processing_polls: int = 0,
        moderation_polls: int = 0,
        reject_media: str = "",
        min_chunk: int = 5 * 1024 * 1024,
        max_chunk: int = 64 * 1024 * 1024,
        max_final_chunk: int = 128 * 1024 * 1024,
        init_per_minute: int = 6,
        slow_s: float = 1.0,
    ) -> None:
        self.tokens = set(tokens)
        self._trusted: list[Callable[[str], bool]] = []
        self.scopes = scopes
        self.creator = creator or Creator()
        self.audited = audited
        self.account_private = account_private
        self.processing_polls = processing_polls
        self.moderation_polls = moderation_polls
        self.reject_media = reject_media
        self.min_chunk, self.max_chunk, self.max_final_chunk = min_chunk, max_chunk, max_final_chunk
        self.init_per_minute = init_per_minute
        self.slow_s = slow_s
        self.publishes: dict[str, Publish] = {}
        self.posts: list[Delivered] = []
        self.inbox: list[Delivered] = []
        self.requests: list[str] = []  # the route of every request, in order
        self._inits: dict[str, list[float]] = {}
        self._faults: deque[tuple[str, str]] = deque()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def trust(self, check: Callable[[str], bool]) -> None:
        """Accept every token `check` says is valid as well (an OAuth stand-in's `valid`: the tokens it issued)."""
        self._trusted.append(check)

    def valid(self, token: str) -> bool:
        return token in self.tokens or any(check(token) for check in self._trusted)

    def __enter__(self) -> TikTokStandin:
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- test controls --------------------------------------------------------------------------------------------

    def fail(self, route: str, *actions: str) -> TikTokStandin:
        """Queue `actions` for the coming requests on `route`, one per request, in order."""
        if route not in ROUTES or not set(actions) <= ACTIONS:
            raise ValueError(f"unknown route {route!r} or actions {actions!r}")
        self._faults.extend((route, action) for action in actions)
        return self

    def revoke(self, token: str) -> None:
        self.tokens.discard(token)

    def bytes_arrived(self) -> int:
        """Every chunk byte that reached the server, across all publishes (resent bytes count twice)."""
        return sum(chunk.arrived for p in self.publishes.values() for chunk in p.chunks)

    # --- the server -----------------------------------------------------------------------------------------------

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def do_POST(self) -> None:
                standin._serve(self, standin._api)

            def do_PUT(self) -> None:
                standin._serve(self, standin._chunk)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _serve(self, handler: http.server.BaseHTTPRequestHandler, route: Any) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            route(handler, body)

    def _take_fault(self, route: str) -> str | None:
        with self._lock:
            for index, (fault_route, action) in enumerate(self._faults):
                if fault_route == route or (fault_route == "chunk" and route == "final"):
                    del self._faults[index]
                    return action
        return None

    def _api(self, handler: http.server.BaseHTTPRequestHandler, raw: bytes) -> None:
        host, _, path = urlsplit(handler.path).path.removeprefix("/").partition("/")
        path = "/" + path
        if host != API_HOST:
            self.requests.append("wrong-host")
            _error(handler, "invalid_params", f"no such host {host!r}: the Content Posting API is on {API_HOST}", 404)
            return
        route = {"/v2/post/publish/creator_info/query/": "creator_info", "/v2/post/publish/status/fetch/": "status"}
        name = route.get(path, "init" if path.endswith("/video/init/") else "")
        self.requests.append(name or path)
        token = handler.headers.get("Authorization", "").removeprefix("Bearer ")
        if not name:
            _error(handler, "invalid_params", f"no route {path}", 404)
        elif not self.valid(token):
            _error(handler, "access_token_invalid", f"The access token is invalid or not found: {token}")
        elif path in _SCOPE and _SCOPE[path] not in self.scopes:
            _error(handler, "scope_not_authorized", f"The user did not authorize the scope {_SCOPE[path]}")
        elif not self._answer_fault(handler, self._take_fault(name), token):
            body = json.loads(raw or b"{}")
            if name == "creator_info":
                _ok(handler, {"creator_avatar_url": "https://example.invalid/a.jpg", **vars(self.creator)})
            elif name == "status":
                self._status(handler, body)
            else:
                self._init(handler, path, body, token)

    def _init(self, handler: http.server.BaseHTTPRequestHandler, path: str, body: dict[str, Any], token: str) -> None:
        mode = "inbox" if "/inbox/" in path else "direct"
        now = time.monotonic()
        recent = [at for at in self._inits.get(token, []) if now - at < 60]
        self._inits[token] = [*recent, now]
        if len(recent) >= self.init_per_minute:
            _error(handler, "rate_limit_exceeded", "Too many init requests", retry_after="60")
            return
        problem = self._post_problem(body) if mode == "direct" else None
        problem = problem or self._source_problem(body.get("source_info", {}))
        if problem:
            _error(handler, *problem)
            return
        publish = Publish(f"v_pub_file~v2-1.{uuid.uuid4().hex[:16]}", mode, body, uuid.uuid4().hex)
        with self._lock:
            self.publishes[publish.publish_id] = publish
        upload_url = (
            f"{self.url}/{UPLOAD_HOST}/upload/?upload_id={publish.publish_id}&upload_token={publish.upload_token}"
        )
        _ok(handler, {"publish_id": publish.publish_id, "upload_url": upload_url})

    def _post_problem(self, body: dict[str, Any]) -> tuple[str, str] | None:
        privacy = body.get("post_info", {}).get("privacy_level")
        if privacy not in self.creator.privacy_level_options:
            return "privacy_level_option_mismatch", f"privacy_level {privacy!r} is not one of the creator's options"
        if not self.audited and (privacy != "SELF_ONLY" or not self.account_private):
            return "unaudited_client_can_only_post_to_private_accounts", "Unaudited clients post SELF_ONLY to private"
        return None

    def _source_problem(self, source: dict[str, Any]) -> tuple[str, str] | None:
        """The media transfer guide's chunk rules; (code, message) of the first one broken."""
        if source.get("source") != "FILE_UPLOAD":
            return "invalid_params", "this stand-in takes FILE_UPLOAD only"
        size, chunk, count = (int(source.get(k) or 0) for k in ("video_size", "chunk_size", "total_chunk_count"))
        if size <= 0:
            return "invalid_params", "video_size must be positive"
        if size < self.min_chunk:
            valid = chunk == size and count == 1
        else:
            last = size - (count - 1) * chunk
            valid = (
                self.min_chunk <= chunk <= self.max_chunk and count == size // chunk and last <= self.max_final_chunk
            )
        if not valid or not 1 <= count <= 1000:
            return "invalid_params", f"chunk_size {chunk} x {count} does not fit video_size {size}"
        return None

    def _status(self, handler: http.server.BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        publish = self.publishes.get(body.get("publish_id", ""))
        if publish is None:
            _error(handler, "invalid_params", "publish_id not found")
            return
        with self._lock:
            publish.polls += 1
            self._advance(publish)
            data: dict[str, Any] = {"status": publish.status, "uploaded_bytes": len(publish.data)}
            if publish.status == "FAILED":
                data["fail_reason"] = publish.fail_reason
            if publish.status == "PUBLISH_COMPLETE":
                data["publicaly_available_post_id"] = [publish.post_id] if not publish.moderation_left else []
                publish.moderation_left = max(publish.moderation_left - 1, 0)
        _ok(handler, data)

    def _advance(self, publish: Publish) -> None:
        """One status poll's worth of processing: after `processing_polls` polls the publish goes out."""
        if publish.complete and publish.status == "PROCESSING_UPLOAD":
            if publish.processing_left:
                publish.processing_left -= 1
            else:
                self._finish(publish)

    def _finish(self, publish: Publish) -> None:
        """Processing is over: rejected, or out (to the profile or the inbox), exactly once."""
        post_info = publish.body.get("post_info", {})
        if self.reject_media:
            publish.status, publish.fail_reason = "FAILED", self.reject_media
        elif publish.mode == "inbox":
            publish.status = "SEND_TO_USER_INBOX"
            self.inbox.append(Delivered(publish.publish_id, post_info, bytes(publish.data)))
        else:
            publish.status, publish.post_id = "PUBLISH_COMPLETE", str(7_000_000_000_000 + len(self.posts))
            publish.moderation_left = self.moderation_polls
            self.posts.append(Delivered(publish.publish_id, post_info, bytes(publish.data), publish.post_id))

    def _chunk(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        if urlsplit(handler.path).path != f"/{UPLOAD_HOST}/upload/":
            self.requests.append("wrong-host")
            _send(handler, 404, b"")
            return
        query = {key: values[0] for key, values in parse_qs(urlsplit(handler.path).query).items()}
        publish = self.publishes.get(query.get("upload_id", ""))
        match = _CONTENT_RANGE.match(handler.headers.get("Content-Range", ""))
        if publish is None or publish.upload_token != query.get("upload_token") or match is None:
            self.requests.append("bad-upload")
            _send(handler, 404 if match else 400, b"")
            return
        first, last = int(match[1]), int(match[2])
        final = last + 1 == publish.source["video_size"]
        self.requests.append("final" if final else "chunk")
        record = Chunk(first, last, len(body), 0, "Authorization" in handler.headers)
        publish.chunks.append(record)
        problem = _chunk_problem(publish, first, last, int(match[3]), body, handler.headers.get("Content-Type", ""))
        if problem:
            _send(handler, 400, json.dumps({"error": {"code": "invalid_params", "message": problem}}).encode())
            return
        action = self._take_fault("final" if final else "chunk")
        if self._answer_fault(handler, action, ""):
            return
        self._store(publish, body, record)
        if action == "lost-response":
            handler.close_connection = True
            return
        if action == "slow":
            time.sleep(self.slow_s)
        _send(handler, 201 if publish.complete else 206, b"")

    def _store(self, publish: Publish, data: bytes, record: Chunk) -> None:
        with self._lock:
            publish.data.extend(data)
            record.stored = len(data)
            if publish.complete:
                publish.processing_left = self.processing_polls
                if not publish.processing_left:
                    self._finish(publish)

    def _answer_fault(self, handler: http.server.BaseHTTPRequestHandler, action: str | None, token: str) -> bool:
        """Answer per a fault that stores nothing; False when the request goes on normally."""
        if action == "401":
            _error(handler, "access_token_invalid", f"The access token is invalid or not found: {token}")
        elif action == "429":
            _error(handler, "rate_limit_exceeded", "Too many requests", retry_after="3")
        elif action == "500":
            _error(handler, "internal_error", "Something went wrong")
        elif action in ERROR_STATUS:
            _error(handler, action, f"scripted {action}")
        elif action == "drop":
            handler.close_connection = True
        else:
            return False
        return True


def _chunk_problem(publish: Publish, first: int, last: int, total: int, body: bytes, content_type: str) -> str | None:
    """Chunks arrive in order, each exactly as the init's plan says."""
    source = publish.source
    size, chunk_size, count = source["video_size"], source["chunk_size"], source["total_chunk_count"]
    index = first // chunk_size
    end = size if index == count - 1 else first + chunk_size
    if not content_type.startswith("video/"):
        return f"Content-Type {content_type!r} is not a video type"
    if total != size or first != len(publish.data) or index >= count:
        return f"bytes {first}-{last}/{total} do not continue the upload at {len(publish.data)} of {size}"
    if last + 1 != end or len(body) != end - first:
        return f"chunk {index} must span bytes {first}-{end - 1} ({len(body)} bytes arrived)"
    return None


def _ok(handler: http.server.BaseHTTPRequestHandler, data: dict[str, Any]) -> None:
    payload = {"data": data, "error": {"code": "ok", "message": "", "log_id": uuid.uuid4().hex}}
    _send(handler, 200, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def _error(
    handler: http.server.BaseHTTPRequestHandler,
    code: str,
    message: str,
    status: int | None = None,
    retry_after: str | None = None,
) -> None:
    payload = {"data": {}, "error": {"code": code, "message": message, "log_id": uuid.uuid4().hex}}
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    _send(handler, status or ERROR_STATUS.get(code, 400), json.dumps(payload).encode(), headers)


def _send(handler: http.server.BaseHTTPRequestHandler, code: int, data: bytes, headers: dict | None = None) -> None:
    handler.send_response(code)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
