"""The studio as ASGI routes in front of another app (dagster-webserver): `/studio` and `/studio/media/<key>`.

Everything else goes to the wrapped app, unchanged. Media are read through the media store, by key, and only keys
under `personas/` with an image or video suffix: the store itself refuses `..`, absolute keys and links that lead
out of its root, so no URL reaches a file outside the media root. Range requests are answered (RFC 9110 §14), so
a browser can seek in a reel. The page and the files are read-only; they are built in a worker thread, never on
the event loop that serves the UI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import anyio.to_thread

from influencer_pipeline.errors import InputError
from influencer_pipeline.media.store import MediaStore, UnsafeMediaError
from influencer_pipeline.studio.overview import Overview
from influencer_pipeline.studio.page import render

Message = dict[str, Any]
ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]
STUDIO = "/studio"
MEDIA = "/studio/media/"
DAY = "/studio/day.json"  # ?persona=<slug>&day=YYYY-MM-DD: a day's posts for the approval workflow (n8n)
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
}
MAX_MEDIA_BYTES = 512 * 1024 * 1024
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class StudioRoutes:
    """ASGI: serve the studio page and its media; pass every other request to `app`."""

    def __init__(self, app: ASGIApp, overview: Callable[[], Overview], store: Callable[[], MediaStore],
                 day: Callable[[str, str], list[dict[str, Any]]], path_prefix: str = "") -> None:  # fmt: skip
        self.app, self.overview, self.store, self.day = app, overview, store, day
        self.path_prefix = path_prefix.rstrip("/")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(self.path_prefix)
        if path.rstrip("/") == STUDIO:
            await self._page(scope, send)
        elif path == DAY:
            await self._day(scope, send)
        elif path.startswith(MEDIA):
            await self._media(scope, send, unquote(path.removeprefix(MEDIA)))
        else:
            await self.app(scope, receive, send)

    async def _page(self, scope: dict[str, Any], send: Any) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"the studio is read-only", "text/plain; charset=utf-8")
            return
        html = await anyio.to_thread.run_sync(lambda: render(self.overview(), self.path_prefix))
        await _respond(send, 200, html.encode(), "text/html; charset=utf-8", head=scope["method"] == "HEAD")

    async def _day(self, scope: dict[str, Any], send: Any) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        persona, day = (query.get(name, [""])[0] for name in ("persona", "day"))
        try:
            posts = await anyio.to_thread.run_sync(lambda: self.day(persona, day))
        except (InputError, ValueError) as exc:
            body = json.dumps({"error": f"{exc}. Ask for ?persona=<folder name>&day=YYYY-MM-DD"}).encode()
            await _respond(send, 400, body, "application/json")
            return
        body = json.dumps({"persona": persona, "day": day, "posts": posts}).encode()
        await _respond(send, 200, body, "application/json", head=scope["method"] == "HEAD")

    async def _media(self, scope: dict[str, Any], send: Any, key: str) -> None:
        suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key else ""
        if scope["method"] not in ("GET", "HEAD") or not key.startswith("personas/") or suffix not in CONTENT_TYPES:
            await _respond(send, 404, b"not a studio media file", "text/plain; charset=utf-8")
            return
        try:
            data = await anyio.to_thread.run_sync(lambda: self.store().read_bytes(key, max_bytes=MAX_MEDIA_BYTES))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, UnsafeMediaError, ValueError):
            await _respond(send, 404, b"not found", "text/plain; charset=utf-8")
            return
        status, body, extra = 200, data, [(b"accept-ranges", b"bytes")]
        wanted = _header(scope, b"range")
        if wanted is not None:
            span = _range(wanted, len(data))
            if span is None:
                extra.append((b"content-range", f"bytes */{len(data)}".encode()))
                await _respond(send, 416, b"", CONTENT_TYPES[suffix], extra)
                return
            start, end = span
            status, body = 206, data[start : end + 1]
            extra.append((b"content-range", f"bytes {start}-{end}/{len(data)}".encode()))
        await _respond(send, status, body, CONTENT_TYPES[suffix], extra, head=scope["method"] == "HEAD")


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _range(value: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b`, `bytes=a-` or `bytes=-n` range within `size`; None when unsatisfiable or not one range."""
    match = RANGE.match(value.strip())
    if not match or size == 0 or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end and start < size else None


async def _respond(send: Any, status: int, body: bytes, content_type: str,
                   headers: list[tuple[bytes, bytes]] | None = None, head: bool = False) -> None:  # fmt: skip
    base = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": b"" if head else body})
