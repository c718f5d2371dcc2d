"""A protocol-faithful Meta stand-in: Instagram content publishing, Facebook Pages and rupload, on one loopback port.

Written from Meta's public docs
(https://developers.facebook.com/docs/instagram-platform/content-publishing,
https://developers.facebook.com/docs/instagram-platform/instagram-graph-api/reference/ig-user/media,
https://developers.facebook.com/docs/pages-api/posts, https://developers.facebook.com/docs/video-api/guides/publishing)
so the publishers are tested against the wire contract rather than
against themselves: containers with `status_code` (IN_PROGRESS → FINISHED | ERROR, PUBLISHED after
`media_publish`), `content_publishing_limit` enforced on `media_publish` (code 9 / 2207042), image URLs fetched
over HTTP and checked against the spec (JPEG only, ≤ 8 MB, aspect 4:5–1.91:1), the resumable upload, Page photos
uploaded unpublished and attached by `/feed`, and the chunked video upload (start / transfer / finish).
Errors use Meta's envelope; bad tokens get code 190 with the token quoted back, as Meta does, so redaction is
tested against the real hazard.

Stricter than Meta where that catches client mistakes: the stand-in serves each Meta host under its own path
prefix (`endpoints.rehome`: `<url>/graph.instagram.com/v24.0/...`), so a client built exactly as in production
with only `base_url` swapped still says which host it called, and the stand-in answers only what that host serves:
Instagram Login tokens work on `graph.instagram.com` only, Facebook (Page/user) tokens on `graph.facebook.com`,
`graph-video.facebook.com` and `rupload.facebook.com` only (a wrong one is code 190, as Meta answers a token it
cannot parse), Page videos are uploaded to `graph-video`, `rupload` and `upload_type=resumable` exist for
Facebook Login only, and any Graph version other than the one the app pins (`GRAPH_API_VERSION`) is refused.
https://developers.facebook.com/docs/instagram-platform/instagram-api-with-instagram-login/content-publishing
https://developers.facebook.com/docs/instagram-platform/content-publishing/resumable-uploads
https://developers.facebook.com/docs/graph-api/video-uploads

It keeps its own record (every request, container, publish call and live post): tests assert on that record,
never on what the client believes. Where the reference does not say what a repeated commit does, the stand-in
assumes the worst (publishing a container twice, or attaching the same photos twice, makes two posts), so a
double commit always shows up as a duplicate. On demand it fails calls with Meta errors and rate-limit headers,
answers 5xx, drops the connection or stalls past the client's timeout *after* committing, expires or revokes the
token, keeps containers IN_PROGRESS for N polls and ends them in ERROR.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import http.server
import io
import itertools
import json
import mimetypes
import re
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from PIL import Image

from influencer_pipeline.endpoints import GRAPH_API_VERSION

VERSION = GRAPH_API_VERSION
VERSION_RE = re.compile(r"v\d+\.\d+")
INSTAGRAM_LOGIN, FACEBOOK_LOGIN = "instagram", "facebook"
IG_ROUTES = frozenset({"media", "media_list", "media_publish", "content_publishing_limit", "object"})
PAGE_ROUTES = frozenset({"photos", "feed", "published_posts", "object"})
VIDEO_ROUTES = frozenset({"videos:start", "videos:transfer", "videos:finish"})
# host -> (the login whose tokens it takes, the routes it serves)
HOSTS: dict[str, tuple[str, frozenset[str]]] = {
    "graph.instagram.com": (INSTAGRAM_LOGIN, IG_ROUTES),
    "graph.facebook.com": (FACEBOOK_LOGIN, IG_ROUTES | PAGE_ROUTES),
    "graph-video.facebook.com": (FACEBOOK_LOGIN, VIDEO_ROUTES),
    "rupload.facebook.com": (FACEBOOK_LOGIN, frozenset({"rupload"})),
}
DAY_S = 86400
MAX_IG_IMAGE_BYTES = 8 * 1024 * 1024
MAX_FB_PHOTO_BYTES = 4 * 1024 * 1024
IG_ASPECT = (0.8, 1.91)
CAROUSEL_ITEMS = (2, 10)
CAPTION_MAX = 2200


def meta_time(at: float) -> str:
    """Meta's timestamp format: `2026-11-05T10:00:00+0000`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(at))


class GraphFault(Exception):
    """An error answer in Meta's envelope; raised by route handlers, rendered by the request handler."""

    def __init__(
        self,
        code: int,
        subcode: int | None,
        message: str,
        *,
        status: int = 400,
        headers: dict[str, str] | None = None,
        is_transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.code, self.subcode, self.message = code, subcode, message
        self.status, self.headers, self.is_transient = status, headers or {}, is_transient

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": "OAuthException",
            "code": self.code,
            "is_transient": self.is_transient,
            "fbtrace_id": "A" + secrets.token_hex(8),
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
            error["error_user_msg"] = self.message
        return {"error": error}


@dataclass
class Received:
    """One request as the stand-in saw it: `route` names the endpoint (see `MetaStandin.fail`), `host` the Meta
    host the client meant (the first path segment), `refused` why the host or version was wrong (empty if not)."""

    method: str
    route: str
    path: str
    params: dict[str, str]
    token_in_url: bool
    at: float
    host: str = ""
    refused: str = ""
    version: str = ""


@dataclass(frozen=True)
class Routed:
    """A request path taken apart: `<host>/<version>/<node>/<edge>`, or `files/<name>` for the media host."""

    host: str
    version: str
    route: str
    args: list[str]


@dataclass
class Container:
    """An IG media container; `data` is the media it fetched or was uploaded (None until it has some)."""

    id: str
    media_type: str
    caption: str
    is_carousel_item: bool
    resumable: bool
    children: list[str]
    created_at: float
    data: bytes | None = None
    status_code: str = "IN_PROGRESS"
    status: str = ""
    polls_left: int = 0
    error_subcode: int | None = None
    media_ids: list[str] = field(default_factory=list)


@dataclass
class IgMedia:
    """A live Instagram post. `seeded` ones were there before the test (they fill the quota)."""

    id: str
    caption: str
    timestamp: float
    permalink: str
    media_type: str
    container_id: str = ""
    children: list[str] = field(default_factory=list)
    seeded: bool = False


@dataclass
class PublishCall:
    """Every `media_publish` call, whether Meta published (`media_id`) or refused (`refused` holds the codes)."""

    container_id: str
    media_id: str = ""
    refused: str = ""


@dataclass
class Fetched:
    """A media URL the stand-in fetched (as Meta cURLs `image_url`/`video_url`) and what it found."""

    url: str
    format: str
    size: int


@dataclass
class FbPhoto:
    id: str
    format: str
    size: int
    published: bool
    attached_to: list[str] = field(default_factory=list)


@dataclass
class FbPost:
    """A live Page post: photos attached from `/feed`, or the post a finished video became."""

    id: str
    message: str
    created_time: float
    permalink_url: str
    photo_ids: list[str] = field(default_factory=list)
    video_id: str = ""


@dataclass
class FbVideo:
    id: str
    session_id: str
    file_size: int
    data: bytearray = field(default_factory=bytearray)
    state: str = "uploading"  # uploading, processing, ready, error
    description: str = ""
    title: str = ""
    polls_left: int = 0
    finish_calls: int = 0
    post_id: str = ""


@dataclass
class Fault:
    """A planned misbehaviour for the next `times` calls of `route`.

    `action`: `error` (a Meta error before anything happens), `http` (a bare 5xx before anything happens),
    `drop_before` / `drop_after` (close the connection without an answer, before / after acting), `delay_after`
    (act, then stall `delay_s` before answering), `http_after` (act, then answer a bare 5xx).
    """

    route: str
    action: str
    times: int = 1
    error: GraphFault | None = None
    status: int = 500
    delay_s: float = 0.0


class MetaStandin:
    """Start with `start()` or as a context manager; then `url` is the `base_url` for the Meta publishers.

    `ig_login` is how the Instagram account (`ig_user_id`) was linked, hence the host it answers on. `token` is the
    Facebook Login token (the Page's: Page calls, and Instagram through Facebook Login); `ig_token` is the token
    for the Instagram account (an Instagram Login token, or `token` itself under Facebook Login);
    `trust(check, login)` accepts the tokens an OAuth stand-in issued as well. The
    stand-in is also a `MediaHost`: `url_for(path)` serves a local file from `/files/...`, and containers fetch it
    over HTTP like Meta would.
    """

    def __init__(
        self,
        *,
        ig_user_id: str = "17841400000000001",
        ig_login: str = INSTAGRAM_LOGIN,  # as production links Instagram by default
        page_id: str = "100000000000001",
        quota_total: int = 50,
        video_chunk_bytes: int = 64 * 1024,
    ) -> None:
        self.ig_login = ig_login
        self.token = "EAAG" + secrets.token_hex(24)
        self.ig_token = "IGAA" + secrets.token_hex(24) if ig_login == INSTAGRAM_LOGIN else self.token
        self._host = ""  # the host of the request being dispatched
        self.token_state = "valid"
        self._trusted: list[tuple[Any, str]] = []
        self.ig_user_id = ig_user_id
        self.page_id = page_id
        self.quota_total = quota_total
        self.video_chunk_bytes = video_chunk_bytes
        self.processing_polls = 0
        self.processing_error: int | None = None
        self.video_processing_polls = 0
        self.requests: list[Received] = []
        self.containers: dict[str, Container] = {}
        self.ig_media: list[IgMedia] = []
        self.publish_calls: list[PublishCall] = []
        self.fetched: list[Fetched] = []
        self.photos: dict[str, FbPhoto] = {}
        self.fb_posts: list[FbPost] = []
        self.videos: dict[str, FbVideo] = {}
        self._faults: list[Fault] = []
        self._files: dict[str, Path] = {}
        self._ids = itertools.count(17_900_000_000_000_001)
        self._lock = threading.RLock()
        self._server: http.server.ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> MetaStandin:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> MetaStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def trust(self, check: Any, login: str) -> None:
        """Accept every token for which `check(token)` is true (an OAuth stand-in's `valid`) as a `login` token."""
        self._trusted.append((check, login))

    def refused(self) -> list[Received]:
        """Requests refused for a wrong host, route or Graph version."""
        return [r for r in self.requests if r.refused]

    def url_for(self, path: Path) -> str:
        """MediaHost: serve `path` at a stable URL (the name is its content hash)."""
        name = hashlib.sha256(path.read_bytes()).hexdigest()[:16] + path.suffix.lower()
        self._files[name] = path
        return f"{self.url}/files/{name}"

    # -- misbehaviour on demand ---------------------------------------------------------------------------

    def fail(
        self,
        route: str,
        code: int,
        subcode: int | None = None,
        *,
        status: int = 400,
        message: str = "An error occurred",
        headers: dict[str, str] | None = None,
        is_transient: bool = False,
        times: int = 1,
    ) -> None:
        """Answer the next `times` calls of `route` with this Meta error, before acting.

        Routes: `media` (container create), `media_list`, `media_publish`, `content_publishing_limit`, `object`
        (GET of any id), `rupload`, `photos`, `feed`, `published_posts`, `videos:start|transfer|finish`, `files`.
        """
        error = GraphFault(code, subcode, message, status=status, headers=headers, is_transient=is_transient)
        self._faults.append(Fault(route, "error", times, error=error))

    def http_error(self, route: str, status: int = 500, *, after_commit: bool = False, times: int = 1) -> None:
        """A bare 5xx (a proxy's, no Meta envelope), either instead of acting or after acting."""
        self._faults.append(Fault(route, "http_after" if after_commit else "http", times, status=status))

    def drop(self, route: str, *, after_commit: bool, times: int = 1) -> None:
        """Close the connection without an answer, before or after acting."""
        self._faults.append(Fault(route, "drop_after" if after_commit else "drop_before", times))

    def stall(self, route: str, seconds: float, times: int = 1) -> None:
        """Act, then wait `seconds` before answering: longer than the client's timeout, that is commit-then-timeout."""
        self._faults.append(Fault(route, "delay_after", times, delay_s=seconds))

    def expire_token(self) -> None:
        self.token_state = "expired"

    def revoke_token(self) -> None:
        self.token_state = "revoked"

    def set_processing(self, polls: int, error_subcode: int | None = None) -> None:
        """New containers stay IN_PROGRESS for `polls` status reads, then end FINISHED or ERROR(`error_subcode`)."""
        self.processing_polls, self.processing_error = polls, error_subcode

    def seed_media(self, ages_s: list[float]) -> list[IgMedia]:
        """Posts published `ages_s` seconds ago, before the test: they count against the publishing quota."""
        now = time.time()
        seeded = []
        for i, age in enumerate(ages_s):
            media_id = self._new_id()
            seeded.append(IgMedia(media_id, f"earlier post {i}", now - age, self._ig_permalink(media_id), "IMAGE"))
            seeded[-1].seeded = True
        with self._lock:
            self.ig_media.extend(seeded)
        return seeded

    # -- the record, for assertions -----------------------------------------------------------------------

    def live_ig(self) -> list[IgMedia]:
        """Instagram posts this test published (seeded ones left out)."""
        return [m for m in self.ig_media if not m.seeded]

    def routes(self) -> list[str]:
        return [r.route for r in self.requests]

    # -- request plumbing ---------------------------------------------------------------------------------

    def _new_id(self) -> str:
        return str(next(self._ids))

    def _take_fault(self, route: str) -> Fault | None:
        for fault in self._faults:
            if fault.route == route and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    def _login_of(self, token: str) -> str | None:
        """Which login issued `token` (None: not a token Meta knows)."""
        if not token:
            return None
        if token == self.token:
            return FACEBOOK_LOGIN
        if token == self.ig_token:
            return self.ig_login
        for check, login in self._trusted:
            if check(token):
                return login
        return None

    def _check_token(self, token: str, host: str) -> None:
        """Code 190 for every bad token, and for a token of the other login (Instagram Login tokens work on
        graph.instagram.com only); the message quotes the token, as Meta's own messages do."""
        login = self._login_of(token)
        if login is not None and login != HOSTS[host][0]:
            raise GraphFault(190, None, f"Invalid OAuth access token - Cannot parse access token {token}", status=400)
        if login is not None and self.token_state == "valid":
            return
        if login is not None and self.token_state == "expired":
            message = f"Error validating access token: Session has expired. Token: {token}"
            raise GraphFault(190, 463, message, status=401)
        if login is not None and self.token_state == "revoked":
            message = f"Error validating access token: The user has not authorized application. Token: {token}"
            raise GraphFault(190, 458, message, status=401)
        raise GraphFault(190, None, f"Malformed access token {token}", status=401)

    def dispatch(self, method: str, path: str, params: dict[str, str], files: dict[str, bytes], token: str) -> Any:
        """Route one authenticated request; returns the JSON answer or raises GraphFault."""
        routed = self.route(method, path, params)
        problem = self.misrouted(routed, params)
        if problem is not None:
            raise problem
        self._check_token(token, routed.host)
        self._host = routed.host
        handler = getattr(self, "_r_" + routed.route.replace(":", "_"), None)
        if handler is None:
            raise GraphFault(100, None, f"Unsupported {method} request to {path}")
        return handler(*routed.args, params=params, files=files)

    @staticmethod
    def misrouted(routed: Routed, params: dict[str, str]) -> GraphFault | None:
        """The error for a call to a host that does not serve it, or under another Graph version; else None."""
        if routed.host not in HOSTS:
            return GraphFault(100, None, f"Unknown host {routed.host!r}: the Meta stand-in serves {sorted(HOSTS)}")
        if routed.version != VERSION:
            message = f"Graph API {routed.version or '(no version)'} called; this app pins {VERSION}"
            return GraphFault(2635, None, message)
        if routed.route not in HOSTS[routed.host][1]:
            return GraphFault(100, None, f"Unsupported request: {routed.host} does not serve {routed.route}")
        if routed.host == "graph.instagram.com" and params.get("upload_type") == "resumable":
            return GraphFault(
                100, None, "upload_type=resumable is only available to apps that use Facebook Login for Business"
            )
        return None

    @staticmethod
    def route(method: str, path: str, params: dict[str, str]) -> Routed:
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["files"]:
            return Routed("", "", "files", parts[1:])
        host, rest = (parts[0], parts[1:]) if parts else ("", [])
        if rest[:1] == ["ig-api-upload"] and len(rest) == 3:
            return Routed(host, rest[1], "rupload", rest[2:])
        if not rest or not VERSION_RE.fullmatch(rest[0]):
            return Routed(host, "", "unknown", rest)
        version, rest = rest[0], rest[1:]
        if len(rest) == 1:
            return Routed(host, version, "object" if method == "GET" else "unknown", rest)
        if len(rest) == 2 and rest[1] == "media":
            return Routed(host, version, "media_list" if method == "GET" else "media", rest[:1])
        if len(rest) == 2 and rest[1] == "videos" and method == "POST":
            return Routed(host, version, f"videos:{params.get('upload_phase', '')}", rest[:1])
        if len(rest) == 2:
            return Routed(host, version, rest[1], rest[:1])
        return Routed(host, version, "unknown", rest)

    # -- Instagram ----------------------------------------------------------------------------------------

    def _ig_node(self, node: str) -> None:
        """The Instagram account answers on the host of the login it was linked with only."""
        if node != self.ig_user_id or HOSTS[self._host][0] != self.ig_login:
            raise GraphFault(100, 33, f"Object with ID '{node}' does not exist or cannot be loaded")

    def _r_media(self, node: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        self._ig_node(node)
        media_type = params.get("media_type", "").upper() or "IMAGE"
        caption = params.get("caption", "")
        if len(caption) > CAPTION_MAX:
            raise GraphFault(100, 2207010, "The caption is too long")
        carousel_item = params.get("is_carousel_item") == "true"
        resumable = params.get("upload_type") == "resumable"
        if media_type == "VIDEO" and not carousel_item:
            raise GraphFault(100, 2207023, "VIDEO is only supported for carousel items; use REELS")
        if media_type not in ("IMAGE", "REELS", "VIDEO", "CAROUSEL"):
            raise GraphFault(100, 2207023, f"The media type {media_type} is unknown")
        container = Container(
            self._new_id(), media_type, caption, carousel_item, resumable, [], time.time(), polls_left=0
        )
        if media_type == "CAROUSEL":
            container.children = self._carousel_children(params.get("children", ""))
            container.data = b""
        elif media_type == "IMAGE":
            container.data = self._fetch_image(params.get("image_url", ""))
        elif not resumable:
            container.data = self._fetch(params.get("video_url", ""))[0]
        self.containers[container.id] = container
        self._begin_processing(container)
        answer = {"id": container.id}
        if resumable:
            answer["uri"] = f"https://rupload.facebook.com/ig-api-upload/{VERSION}/{container.id}"
        return answer

    def _carousel_children(self, children: str) -> list[str]:
        ids = [c for c in children.split(",") if c]
        low, high = CAROUSEL_ITEMS
        if not low <= len(ids) <= high:
            raise GraphFault(100, 2207028, f"A carousel takes {low} to {high} children, got {len(ids)}")
        for child in ids:
            container = self.containers.get(child)
            if container is None or not container.is_carousel_item or container.status_code != "FINISHED":
                raise GraphFault(100, 2207028, f"Carousel child {child} is not a finished carousel item")
        return ids

    def _fetch(self, url: str) -> tuple[bytes, str]:
        """GET a media URL like Meta's fetcher; a dead URL is 2207052, a slow one 2207003."""
        if not url.startswith(("http://", "https://")):
            raise GraphFault(100, None, "The media URL is missing or not a URL")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read(), response.headers.get("Content-Type", "")
        except TimeoutError:
            raise GraphFault(-2, 2207003, "Timeout downloading media", is_transient=True) from None
        except (urllib.error.URLError, OSError) as exc:
            raise GraphFault(9004, 2207052, f"The media could not be fetched from this uri: {exc}") from None

    def _fetch_image(self, url: str) -> bytes:
        """Fetch and check an `image_url` against the IG User Media spec: JPEG only, ≤ 8 MB, aspect 4:5 to 1.91:1."""
        data, _ = self._fetch(url)
        try:
            with Image.open(io.BytesIO(data)) as image:
                fmt, (width, height) = image.format or "", image.size
        except OSError:
            fmt, width, height = "unreadable", 1, 1
        self.fetched.append(Fetched(url, fmt, len(data)))
        if len(data) > MAX_IG_IMAGE_BYTES:
            raise GraphFault(36000, 2207004, "The image is too large to download. It should be less than 8 MiB.")
        if fmt != "JPEG":
            raise GraphFault(36001, 2207005, f"The image format is not supported ({fmt}). Only JPEG is.")
        low, high = IG_ASPECT
        if not low <= width / height <= high:
            raise GraphFault(36003, 2207009, f"The aspect ratio {width}x{height} is not supported.")
        return data

    def _begin_processing(self, container: Container) -> None:
        """Processing starts once the container has its media; with no polls asked for it ends at once."""
        container.polls_left = self.processing_polls
        container.error_subcode = self.processing_error
        if container.data is not None and container.polls_left == 0:
            self._end_processing(container)

    def _end_processing(self, container: Container) -> None:
        is_video = container.media_type in ("REELS", "VIDEO")
        bad_video = is_video and (container.data or b"")[4:8] != b"ftyp"
        subcode = container.error_subcode or (2207026 if bad_video else None)
        if subcode is None:
            container.status_code, container.status = "FINISHED", "Finished: Media has been uploaded"
        else:
            container.status_code = "ERROR"
            container.status = f"Error: Media upload has failed with error code {subcode}"

    def _container_view(self, container: Container) -> dict[str, Any]:
        if container.status_code == "IN_PROGRESS" and container.data is not None:
            if container.polls_left > 0:
                container.polls_left -= 1
            else:
                self._end_processing(container)
        if container.status_code == "FINISHED" and time.time() - container.created_at > DAY_S:
            container.status_code, container.status = "EXPIRED", "Expired: not published within 24 hours"
        status = container.status or ("In progress" if container.data is not None else "Waiting for upload")
        return {"id": container.id, "status_code": container.status_code, "status": status}

    def _r_rupload(self, container_id: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        container = self.containers.get(container_id)
        if container is None or not container.resumable:
            raise _upload_error(f"no resumable container {container_id}")
        body = files["body"]
        if params.get("offset") != "0" or params.get("file_size") != str(len(body)):
            raise _upload_error(f"offset/file_size headers {params.get('offset')}/{params.get('file_size')} wrong")
        container.data = body
        self._begin_processing(container)
        return {"success": True, "message": "Upload successful."}

    def _r_media_publish(self, node: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        self._ig_node(node)
        creation_id = params.get("creation_id", "")
        call = PublishCall(creation_id)
        self.publish_calls.append(call)
        try:
            media = self._publish(creation_id)
        except GraphFault as fault:
            call.refused = f"{fault.code}/{fault.subcode}"
            raise
        call.media_id = media.id
        return {"id": media.id}

    def _publish(self, creation_id: str) -> IgMedia:
        container = self.containers.get(creation_id)
        if container is None or container.is_carousel_item:
            raise GraphFault(24, 2207006, f"The media with id {creation_id} cannot be found")
        if container.status_code == "IN_PROGRESS":
            raise GraphFault(9007, 2207027, "Media ID is not available: the media is not ready for publishing")
        if container.status_code in ("ERROR", "EXPIRED"):
            raise GraphFault(-2, 2207020, "The media has expired or failed; create a new container")
        if self._quota_usage() >= self.quota_total:
            raise GraphFault(9, 2207042, "The maximum number of posts that can be published has been reached")
        media_id = self._new_id()
        media_type = "CAROUSEL_ALBUM" if container.media_type == "CAROUSEL" else container.media_type
        media = IgMedia(
            media_id,
            container.caption,
            time.time(),
            self._ig_permalink(media_id),
            media_type,
            creation_id,
            list(container.children),
        )
        self.ig_media.append(media)
        container.status_code, container.status = "PUBLISHED", "Published"
        container.media_ids.append(media_id)
        return media

    def _quota_usage(self) -> int:
        since = time.time() - DAY_S
        return sum(1 for m in self.ig_media if m.timestamp >= since)

    def _r_content_publishing_limit(self, node: str, **_: Any) -> dict[str, Any]:
        self._ig_node(node)
        usage = {
            "quota_usage": self._quota_usage(),
            "config": {"quota_total": self.quota_total, "quota_duration": DAY_S},
        }
        return {"data": [usage]}

    def _r_media_list(self, node: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        self._ig_node(node)
        newest_first = sorted(self.ig_media, key=lambda m: m.timestamp, reverse=True)
        limit = int(params.get("limit", "25"))
        return {"data": [_fields(self._media_view(m), params) for m in newest_first[:limit]]}

    def _media_view(self, media: IgMedia) -> dict[str, Any]:
        return {
            "id": media.id,
            "caption": media.caption,
            "timestamp": meta_time(media.timestamp),
            "permalink": media.permalink,
            "media_type": media.media_type,
        }

    def _ig_permalink(self, media_id: str) -> str:
        return f"https://www.instagram.com/p/{hashlib.sha1(media_id.encode()).hexdigest()[:11]}/"

    # -- any object ---------------------------------------------------------------------------------------

    def _r_object(self, object_id: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        if object_id in self.containers:
            return _fields(self._container_view(self.containers[object_id]), params)
        for media in self.ig_media:
            if media.id == object_id:
                return _fields(self._media_view(media), params)
        for post in self.fb_posts:
            if post.id == object_id:
                return _fields(self._post_view(post), params)
        if object_id in self.videos:
            return _fields(self._video_view(self.videos[object_id]), params)
        raise GraphFault(100, 33, f"Object with ID '{object_id}' does not exist or cannot be loaded")

    # -- Facebook Pages -----------------------------------------------------------------------------------

    def _page_node(self, node: str) -> None:
        if node != self.page_id:
            raise GraphFault(100, 33, f"Object with ID '{node}' does not exist or cannot be loaded")

    def _r_photos(self, node: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        self._page_node(node)
        data = files.get("source") if "source" in files else self._fetch(params.get("url", ""))[0]
        fmt = _image_format(data)
        self.fetched.append(Fetched("source", fmt, len(data)))
        if fmt not in ("JPEG", "PNG") or len(data) > MAX_FB_PHOTO_BYTES:
            raise GraphFault(
                100, 1366046, "Your photos couldn't be uploaded. Photos should be less than 4 MB and saved as JPG, PNG"
            )
        photo = FbPhoto(self._new_id(), fmt, len(data), params.get("published", "true") != "false")
        self.photos[photo.id] = photo
        if not photo.published:
            return {"id": photo.id}
        post = self._new_post(params.get("caption", params.get("message", "")), photo_ids=[photo.id])
        return {"id": photo.id, "post_id": post.id}

    def _r_feed(self, node: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        self._page_node(node)
        attached = [str(item["media_fbid"]) for item in json.loads(params.get("attached_media", "[]"))]
        for photo_id in attached:
            if photo_id not in self.photos:
                raise GraphFault(100, None, f"(#100) Invalid media_fbid {photo_id}")
        message = params.get("message", "")
        if not message and not attached:
            raise GraphFault(100, None, "(#100) A post needs a message or attached media")
        return {"id": self._new_post(message, photo_ids=attached).id}

    def _new_post(self, message: str, *, photo_ids: list[str] | None = None, video_id: str = "") -> FbPost:
        number = self._new_id()
        post_id = f"{self.page_id}_{number}"
        post = FbPost(
            post_id,
            message,
            time.time(),
            f"https://www.facebook.com/{self.page_id}/posts/{number}",
            photo_ids or [],
            video_id,
        )
        self.fb_posts.append(post)
        for photo_id in post.photo_ids:
            self.photos[photo_id].attached_to.append(post_id)
        return post

    def _post_view(self, post: FbPost) -> dict[str, Any]:
        return {
            "id": post.id,
            "message": post.message,
            "created_time": meta_time(post.created_time),
            "permalink_url": post.permalink_url,
        }

    def _r_published_posts(self, node: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        self._page_node(node)
        since = float(params.get("since", "0"))
        newest_first = sorted(self.fb_posts, key=lambda p: p.created_time, reverse=True)
        posts = [p for p in newest_first if p.created_time >= since][: int(params.get("limit", "25"))]
        return {"data": [_fields(self._post_view(p), params) for p in posts]}

    def _r_videos_start(self, node: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        self._page_node(node)
        size = int(params.get("file_size", "0"))
        if size <= 0:
            raise GraphFault(100, None, "(#100) file_size must be a positive integer")
        video = FbVideo(self._new_id(), self._new_id(), size)
        self.videos[video.id] = video
        return {
            "video_id": video.id,
            "upload_session_id": video.session_id,
            "start_offset": "0",
            "end_offset": str(min(size, self.video_chunk_bytes)),
        }

    def _session(self, params: dict[str, str]) -> FbVideo:
        for video in self.videos.values():
            if video.session_id == params.get("upload_session_id"):
                return video
        raise GraphFault(6000, 1363019, "There was a problem uploading your video: invalid upload session")

    def _r_videos_transfer(self, node: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        self._page_node(node)
        video = self._session(params)
        if int(params.get("start_offset", "-1")) != len(video.data):
            raise GraphFault(6000, 1363037, f"start_offset must be {len(video.data)}")
        video.data.extend(files.get("video_file_chunk", b""))
        if len(video.data) > video.file_size:
            raise GraphFault(6000, 1363037, "More bytes than file_size")
        start = len(video.data)
        return {"start_offset": str(start), "end_offset": str(min(video.file_size, start + self.video_chunk_bytes))}

    def _r_videos_finish(self, node: str, *, params: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        """The publishing call. Again on the same session it changes nothing: one video is one post at most."""
        self._page_node(node)
        video = self._session(params)
        video.finish_calls += 1
        if len(video.data) != video.file_size:
            raise GraphFault(6000, 1363030, f"Upload incomplete: {len(video.data)} of {video.file_size} bytes")
        if video.state == "error":
            raise GraphFault(6000, 1363040, "The video could not be processed")
        if video.state == "uploading":
            video.state, video.polls_left = "processing", self.video_processing_polls
            video.description, video.title = params.get("description", ""), params.get("title", "")
            if video.polls_left == 0:
                self._end_video_processing(video)
        return {"success": True}

    def _end_video_processing(self, video: FbVideo) -> None:
        if bytes(video.data[4:8]) != b"ftyp":
            video.state = "error"
            return
        video.state = "ready"
        video.post_id = self._new_post(video.description, video_id=video.id).id

    def _video_view(self, video: FbVideo) -> dict[str, Any]:
        if video.state == "processing":
            if video.polls_left > 0:
                video.polls_left -= 1
            else:
                self._end_video_processing(video)
        uploaded = len(video.data) == video.file_size
        processing = {"uploading": "not_started", "processing": "in_progress", "ready": "complete"}.get(
            video.state, "error"
        )
        status = {
            "video_status": video.state if video.state != "uploading" or not uploaded else "upload_complete",
            "uploading_phase": {
                "status": "complete" if uploaded else "in_progress",
                "bytes_transferred": len(video.data),
            },
            "processing_phase": {"status": processing},
            "publishing_phase": {"status": "complete" if video.state == "ready" else "not_started"},
        }
        permalink = f"https://www.facebook.com/{self.page_id}/videos/{video.id}/" if video.post_id else ""
        return {"id": video.id, "status": status, "published": video.state == "ready", "permalink_url": permalink}


def _upload_error(message: str) -> GraphFault:
    return GraphFault(100, None, f"ProcessingFailedError: {message}")


def _image_format(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format or ""
    except OSError:
        return "unreadable"


def _fields(view: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """Only the fields asked for (plus `id`), as the Graph API answers."""
    wanted = {f.strip() for f in params.get("fields", "").split(",") if f.strip()}
    return view if not wanted else {k: v for k, v in view.items() if k in wanted or k == "id"}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this each answer waits ~40 ms
    standin: MetaStandin

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the stand-in's record is the log."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        standin = self.standin
        split = urlsplit(self.path)
        params, files = self._params(split.query)
        token = self._token(params)
        routed = standin.route(method, split.path, params)
        if routed.route == "files":
            self._serve_file(routed.args)
            return
        problem = standin.misrouted(routed, params)
        with standin._lock:
            in_url = "access_token" in dict(parse_qsl(split.query)) or (bool(token) and token in self.path)
            refused = problem.message if problem is not None else ""
            received = Received(
                method, routed.route, split.path, params, in_url, time.time(), routed.host, refused, routed.version
            )
            standin.requests.append(received)
            fault = standin._take_fault(routed.route) if problem is None else None
        if fault is not None and fault.action in ("error", "http", "drop_before"):
            self._misbehave(fault)
            return
        try:
            with standin._lock:
                status, answer, headers = 200, standin.dispatch(method, split.path, params, files, token), {}
        except GraphFault as error:
            status, answer, headers = error.status, error.body(), error.headers
        if fault is not None:
            self._after(fault)
            if fault.action != "delay_after":
                return
        self._send_json(status, answer, headers)

    def _params(self, query: str) -> tuple[dict[str, str], dict[str, bytes]]:
        """Query, form, multipart or JSON parameters merged, plus file parts; rupload's headers count as params."""
        params = dict(parse_qsl(query))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        files: dict[str, bytes] = {}
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            params.update(parse_qsl(body.decode()))
        elif ctype.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + body
            )
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True) or b""
                if part.get_filename() is not None:
                    files[str(name)] = payload
                else:
                    params[str(name)] = payload.decode()
        elif ctype.startswith("application/json") and body:
            params.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in json.loads(body).items()})
        else:
            files["body"] = body
        for header in ("offset", "file_size"):
            if header in self.headers:
                params[header] = self.headers[header]
        return params, files

    def _token(self, params: dict[str, str]) -> str:
        auth = self.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() in ("oauth", "bearer") and value:
            return value.strip()
        return params.get("access_token", "")

    def _serve_file(self, args: list[str]) -> None:
        path = self.standin._files.get(args[0]) if args else None
        if path is None:
            self._send(404, b"not found", "text/plain", {})
            return
        self._send(200, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream", {})

    def _misbehave(self, fault: Fault) -> None:
        if fault.action == "error" and fault.error is not None:
            self._send_json(fault.error.status, fault.error.body(), fault.error.headers)
        elif fault.action == "http":
            self._send(fault.status, b"<html><body>Service Unavailable</body></html>", "text/html", {})
        else:
            self._drop()

    def _after(self, fault: Fault) -> None:
        if fault.action == "drop_after":
            self._drop()
        elif fault.action == "http_after":
            self._send(fault.status, b"<html><body>Internal Server Error</body></html>", "text/html", {})
        elif fault.action == "delay_after":
            time.sleep(fault.delay_s)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_json(self, status: int, answer: Any, headers: dict[str, str]) -> None:
        usage = json.dumps({"call_count": 1, "total_cputime": 1, "total_time": 1})
        self._send(
            status, json.dumps(answer).encode(), "application/json; charset=UTF-8", {"X-App-Usage": usage, **headers}
        )

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
