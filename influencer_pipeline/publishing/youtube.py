"""YouTube Data API v3 publisher: a resumable upload, so an interrupted upload resumes and never posts twice.

YouTube creates the video when the *last byte* of a resumable session arrives, and a session creates at most one
video. That maps onto the publisher contract like this:

- `prepare` validates the metadata and opens the session (`POST .../upload/youtube/v3/videos?uploadType=resumable`
  with the video resource). The handle holds the session URI and the total size: everything needed to ask the
  session later whether the video exists. Opening a session creates nothing, so `prepare` is safe to repeat.
- `wait_ready` has nothing to wait for: YouTube processes the video after the upload, and the upload *is* the
  commit.
- `commit` first asks the session where it stands (`Content-Range: bytes */N`), then sends the missing bytes in
  chunks (each non-final chunk a multiple of 256 KiB). After a dropped connection, a timeout, a 5xx or a 429 it
  backs off and asks again, continuing from the `Range` the session reports, so only missing bytes are re-sent.
  When the interruptions outlast `max_interruptions`, or the session cannot be read after one, it raises
  `CommitOutcomeUnknown`. Because it always probes first, calling `commit` again on the same handle is safe: a
  finished session answers with the video and no byte is sent.
- `reconcile` asks the session: 200/201 → `Published`; 308 → None (incomplete: commit the *same* handle again and
  it resumes); 404/410 → None (the session expired and nothing was created: committing this handle raises
  `UploadSessionGone`, a transient `PublishError`, which tells the caller to `prepare` a new session).

Shorts have no API flag: a square or vertical video of at most three minutes is a Short, and `#Shorts` in the
description is added as a hint. Synthetic media is declared through `status.containsSyntheticMedia`. Projects
that have not passed YouTube's API audit get every upload locked private; that is logged when it happens.

Errors: 401 → auth; `quotaExceeded` → throttle until midnight Pacific; `uploadLimitExceeded` → throttle for a day;
429 / `rateLimitExceeded` → throttle with the server's Retry-After; 5xx and network failures → transient; other
4xx → permanent. The access token is sent only in the Authorization header and scrubbed from every message.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import requests

from influencer_pipeline.endpoints import rehome
from influencer_pipeline.errors import InputError
from influencer_pipeline.platforms import CAPTION_LIMITS, YOUTUBE_SHORTS_MAX_S, YOUTUBE_TITLE_LIMIT, YOUTUBE_UPLOAD_URL
from influencer_pipeline.publishing.base import (
    CommitOutcomeUnknown,
    ErrorKind,
    Published,
    PublishError,
    PublishRequest,
    RemoteHandle,
)
from influencer_pipeline.publishing.video_upload import probe_video, single_video
from influencer_pipeline.redaction import excerpt, redact
from influencer_pipeline.retry_after import retry_after_seconds

log = logging.getLogger(__name__)

PLATFORM = "youtube"
UPLOAD_URL = YOUTUBE_UPLOAD_URL  # videos.insert, resumable upload
CHUNK_GRANULARITY = 256 * 1024  # every non-final chunk must be a multiple of this
MAX_TITLE_CHARS = YOUTUBE_TITLE_LIMIT
MAX_DESCRIPTION_BYTES = CAPTION_LIMITS["youtube"]
SHORTS_MAX_S = YOUTUBE_SHORTS_MAX_S  # uploads since 2024-10-15: square or vertical and at most three minutes
SHORTS_TAG = "#Shorts"
UPLOAD_CAP_WAIT_S = 24 * 3600.0  # `uploadLimitExceeded`: retry the next day, not sooner
PACIFIC = ZoneInfo("America/Los_Angeles")  # YouTube quotas reset at midnight Pacific time
CONNECT_TIMEOUT_S = 10.0
Privacy = Literal["private", "unlisted", "public"]

_RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
_FIXES = {
    "quotaExceeded": "the API project's daily quota is spent; it resets at midnight Pacific time",
    "uploadLimitExceeded": "the channel reached its upload cap; try again tomorrow",
    "youtubeSignupRequired": "the Google account has no YouTube channel: create one, then link it again",
    "forbidden": "the account may not upload videos: check the channel's status in YouTube Studio",
    "invalidTitle": f"shorten the title to {MAX_TITLE_CHARS} characters and remove '<' and '>'",
    "invalidDescription": f"shorten the description to {MAX_DESCRIPTION_BYTES} bytes and remove '<' and '>'",
    "invalidCategoryId": "use a category id that exists in the channel's region (default 22)",
}


class UploadSessionGone(PublishError):
    """The upload session expired (404/410) before the last byte: no video exists, and none ever will from this
    handle. Transient, because a new `prepare` opens a fresh session that can succeed."""

    def __init__(self) -> None:
        super().__init__(
            "the YouTube upload session has expired and created no video. Fix: prepare a new upload session",
            kind="transient",
        )


class _Interrupted(Exception):
    """An upload request whose effect is unknown (no answer, 5xx, 429): ask the session and continue."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


@dataclass(frozen=True)
class _Session:
    """The part of a handle that the upload needs."""

    uri: str
    total: int
    short: bool

    @classmethod
    def of(cls, handle: RemoteHandle) -> _Session:
        return cls(uri=handle.value, total=int(handle.extra["total_bytes"]), short=bool(handle.extra["short"]))


class YouTubePublisher:
    """`Publisher` for YouTube through the Data API v3 resumable upload.

    Uploads go to `https://www.googleapis.com/upload/youtube/v3/videos`
    (https://developers.google.com/youtube/v3/guides/using_resumable_upload_protocol); `base_url` re-homes them to a
    proxy or a stand-in, keeping the real host in the path (`endpoints.rehome`). `privacy_status` defaults to
    private because unaudited API projects are locked private anyway. `category_id` 22 is "People & Blogs";
    `made_for_kids` is declared explicitly (COPPA); `tag_shorts` adds `#Shorts` to a Short's description when the
    caption lacks it. `chunk_bytes` must be a multiple of 256 KiB (Google's rule). `timeout_s` bounds each request;
    `max_interruptions` is how many dropped / failed chunk requests one commit survives (waiting `backoff_s`,
    doubling with jitter, or the server's Retry-After up to `max_wait_s`). `clock` tells the time for the quota
    reset (injectable so tests can pin it).
    """

    platform = PLATFORM

    def __init__(
        self,
        *,
        base_url: str | None = None,
        privacy_status: Privacy = "private",
        category_id: str = "22",
        made_for_kids: bool = False,
        notify_subscribers: bool = True,
        tag_shorts: bool = True,
        chunk_bytes: int = 32 * CHUNK_GRANULARITY,
        timeout_s: float = 120.0,
        max_interruptions: int = 5,
        backoff_s: float = 2.0,
        max_wait_s: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if chunk_bytes <= 0 or chunk_bytes % CHUNK_GRANULARITY:
            raise InputError(
                "chunk_bytes", f"{chunk_bytes} is not a positive multiple of 256 KiB", "use e.g. 8388608 (8 MiB)"
            )
        self.upload_url = rehome(UPLOAD_URL, base_url)
        self.privacy_status = privacy_status
        self.category_id = category_id
        self.made_for_kids = made_for_kids
        self.notify_subscribers = notify_subscribers
        self.tag_shorts = tag_shorts
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self.max_interruptions = max_interruptions
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._http = requests.Session()

    def __repr__(self) -> str:
        return f"YouTubePublisher(upload_url={self.upload_url!r}, privacy_status={self.privacy_status!r})"

    # --- the contract -------------------------------------------------------------------------------------------

    def prepare(self, request: PublishRequest, token: str) -> RemoteHandle:
        """Open a resumable session for the request's video; nothing is created on YouTube until the last byte."""
        path = single_video(request, "YouTube")
        total = path.stat().st_size
        if total == 0:
            raise PublishError(f"{path}: the video file is empty. Fix: render the video again", kind="permanent")
        short = _is_short(path)
        resource = self.video_resource(request, short)
        response = self._start_session(resource, total, path, token)
        uri = response.headers.get("Location")
        if not uri:
            raise PublishError("YouTube opened no upload session (no Location header); try again", kind="transient")
        log.info("youtube: upload session opened for post %s (%d bytes, short=%s)", request.post_id, total, short)
        return RemoteHandle(platform=PLATFORM, value=uri, extra={"total_bytes": total, "short": short})

    def wait_ready(self, handle: RemoteHandle, token: str) -> None:
        """Nothing to wait for: YouTube processes the video after the upload, and the upload is the commit."""

    def commit(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published:
        """Send the bytes the session is missing; the last one creates the video. Safe to call again."""
        session = _Session.of(handle)
        path = single_video(request, "YouTube")
        if path.stat().st_size != session.total:
            raise PublishError(
                f"{path} changed since the upload session was opened ({path.stat().st_size} bytes, the session "
                f"expects {session.total}). Fix: prepare a new upload session",
                kind="permanent",
            )
        with open(path, "rb") as media:
            return self._upload(session, media, token)

    def reconcile(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published | None:
        """Ask the session: the video if it exists; None if not (308: commit again to resume; 404/410: prepare)."""
        session = _Session.of(handle)
        try:
            position = self._probe(session, token)
        except UploadSessionGone:
            return None
        except _Interrupted as failure:
            raise PublishError(
                f"could not read the YouTube upload session ({failure.reason}); reconcile again later",
                kind="transient",
                retry_after=failure.wait_s,
            ) from None
        return position if isinstance(position, Published) else None

    # --- the resource ---------------------------------------------------------------------------------------------

    def video_resource(self, request: PublishRequest, short: bool) -> dict[str, Any]:
        """The `snippet` + `status` JSON for videos.insert; invalid metadata fails here, before any request."""
        title = _title(request)
        description = _description(request.caption, title, short and self.tag_shorts)
        return {
            "snippet": {"title": title, "description": description, "categoryId": self.category_id},
            "status": {
                "privacyStatus": self.privacy_status,
                "selfDeclaredMadeForKids": self.made_for_kids,
                "containsSyntheticMedia": request.ai_generated,
            },
        }

    # --- requests -------------------------------------------------------------------------------------------------

    def _start_session(self, resource: dict[str, Any], total: int, path: Path, token: str) -> requests.Response:
        mime = mimetypes.guess_type(path.name)[0] or ""
        headers = {
            "Content-Type": "application/json; charset=UTF-8",
            "X-Upload-Content-Length": str(total),
            "X-Upload-Content-Type": mime if mime.startswith("video/") else "application/octet-stream",
        }
        params = {
            "uploadType": "resumable",
            "part": "snippet,status",
            "notifySubscribers": str(self.notify_subscribers).lower(),
        }
        url = self.upload_url
        try:
            response = self._send("POST", url, token, headers=headers, params=params, data=json.dumps(resource))
        except _Interrupted as failure:
            raise PublishError(
                f"could not open a YouTube upload session ({failure.reason})", "transient", failure.wait_s
            ) from None
        if response.status_code not in (200, 201):
            raise self._refusal(response, token, "opening the upload session")
        return response

    def _upload(self, session: _Session, media: Any, token: str) -> Published:
        """Probe, then send chunks from where the session stands; after an interruption probe again."""
        interruptions = 0
        position: Published | int | None = None  # None: ask the session where it stands
        while not isinstance(position, Published):
            try:
                position = (
                    self._probe(session, token)
                    if position is None
                    else self._send_chunk(session, media, position, token)
                )
            except _Interrupted as failure:
                interruptions += 1
                self._pause(failure, interruptions, session)
                position = None
            except UploadSessionGone:
                raise
            except PublishError as error:
                if interruptions and position is None:  # the probe after an interruption failed: cannot tell
                    raise CommitOutcomeUnknown(
                        f"the YouTube upload was interrupted and the session cannot be read ({error}); reconcile"
                    ) from None
                raise
        return position

    def _pause(self, failure: _Interrupted, interruptions: int, session: _Session) -> None:
        """Wait before probing again, or give up with CommitOutcomeUnknown when out of patience."""
        wait = failure.wait_s if failure.wait_s is not None else self._backoff(interruptions)
        if interruptions > self.max_interruptions or wait > self.max_wait_s:
            raise CommitOutcomeUnknown(
                f"the YouTube upload was interrupted {interruptions} times, last by {failure.reason}; "
                "the last byte may or may not have arrived: reconcile (the session resumes where it stopped)"
            )
        log.warning(
            "youtube: upload interrupted (%s), probing the session in %.2f s (interruption %d of %d)",
            failure.reason,
            wait,
            interruptions,
            self.max_interruptions,
        )
        time.sleep(wait)

    def _backoff(self, interruptions: int) -> float:
        return self.backoff_s * 2 ** (interruptions - 1) * random.uniform(0.5, 1.0)

    def _probe(self, session: _Session, token: str) -> Published | int:
        """`PUT <session>` with `Content-Range: bytes */N`: the video when complete, else the next byte to send."""
        headers = {"Content-Range": f"bytes */{session.total}", "Content-Length": "0"}
        response = self._send("PUT", session.uri, token, headers=headers, data=b"")
        return self._position(response, session, token)

    def _send_chunk(self, session: _Session, media: Any, offset: int, token: str) -> Published | int:
        end = min(offset + self.chunk_bytes, session.total)
        media.seek(offset)
        data = media.read(end - offset)
        headers = {"Content-Range": f"bytes {offset}-{end - 1}/{session.total}"}
        response = self._send("PUT", session.uri, token, headers=headers, data=data)
        return self._position(response, session, token)

    def _position(self, response: requests.Response, session: _Session, token: str) -> Published | int:
        """Read an upload answer: 200/201 → the video; 308 → the next byte (from `Range`, not from what we sent)."""
        status = response.status_code
        if status in (200, 201):
            return self._published(response, session, token)
        if status == 308:
            return _next_byte(response.headers.get("Range"))
        if status in (404, 410):
            raise UploadSessionGone()
        if status >= 500:
            raise _Interrupted(f"HTTP {status}")
        if status == 429 or _reason(response) in _RATE_REASONS:
            raise _Interrupted(f"HTTP {status} (rate limited)", _retry_after(response.headers))
        raise self._refusal(response, token, "uploading the video")

    def _published(self, response: requests.Response, session: _Session, token: str) -> Published:
        video = _json(response)
        video_id = video.get("id")
        if not video_id:
            raise PublishError(
                f"YouTube finished the upload but sent no video id: {excerpt(response.text, 200, token)}",
                kind="transient",
            )
        privacy = video.get("status", {}).get("privacyStatus")
        if privacy == "private" and self.privacy_status != "private":
            log.warning(
                "youtube: video %s was locked private although %s was asked: the API project has not passed "
                "YouTube's audit; publish it by hand in YouTube Studio or request the audit",
                video_id,
                self.privacy_status,
            )
        path = f"shorts/{video_id}" if session.short else f"watch?v={video_id}"
        return Published(remote_id=video_id, permalink=f"https://www.youtube.com/{path}")

    def _send(self, method: str, url: str, token: str, **kwargs: Any) -> requests.Response:
        """One request with the token in its header; no answer at all raises `_Interrupted`."""
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        try:
            return self._http.request(
                method,
                url,
                headers=headers,
                timeout=(min(CONNECT_TIMEOUT_S, self.timeout_s), self.timeout_s),
                allow_redirects=False,  # 308 here means "resume incomplete", never a redirect
                **kwargs,
            )
        except requests.Timeout:
            raise _Interrupted(f"no answer within timeout_s={self.timeout_s:g} s") from None
        except requests.RequestException as error:
            raise _Interrupted(f"a dropped or refused connection ({type(error).__name__})") from None

    def _refusal(self, response: requests.Response, token: str, what: str) -> PublishError:
        """A classified PublishError for a non-success answer, with the platform's reason and what to do."""
        status, reason = response.status_code, _reason(response)
        message = _error_message(response, token)
        kind, retry_after = self._classify(status, reason, response.headers)
        fix = _FIXES.get(reason) or _default_fix(kind)
        text = f"YouTube refused {what} (HTTP {status}, {reason or 'no reason'}): {message}. Fix: {fix}"
        return PublishError(redact(text, token), kind=kind, retry_after=retry_after)

    def _classify(self, status: int, reason: str, headers: Mapping[str, str]) -> tuple[ErrorKind, float | None]:
        if status == 401:
            return "auth", None
        if reason == "quotaExceeded":
            return "throttle", seconds_until_quota_reset(self.clock())
        if reason == "uploadLimitExceeded":
            return "throttle", UPLOAD_CAP_WAIT_S
        if status == 429 or reason in _RATE_REASONS:
            return "throttle", _retry_after(headers)
        if status >= 500:
            return "transient", _retry_after(headers)
        return "permanent", None


def seconds_until_quota_reset(now: datetime) -> float:
    """Seconds from `now` to the next midnight in Pacific time (computed in UTC, so DST days come out right)."""
    local = now.astimezone(PACIFIC)
    midnight = datetime.combine(local.date() + timedelta(days=1), clock_time.min, tzinfo=PACIFIC)
    return (midnight.astimezone(UTC) - now.astimezone(UTC)).total_seconds()


def _is_short(path: Path) -> bool:
    """Square or vertical and at most three minutes: what YouTube counts as a Short."""
    info = probe_video(path)
    return info.video.height >= info.video.width and info.duration_s <= SHORTS_MAX_S


def _title(request: PublishRequest) -> str:
    """The request's title, else the caption's first line cleaned to YouTube's rules; invalid ones fail here."""
    if request.title:
        title = request.title.strip()
        _check_text("title", title, "no '<' or '>'", "<" in title or ">" in title)
        _check_text("title", title, f"at most {MAX_TITLE_CHARS} characters", len(title) > MAX_TITLE_CHARS)
        return title
    first_line = next((line for line in request.caption.splitlines() if line.strip()), "")
    title = first_line.replace("<", "").replace(">", "").strip()[:MAX_TITLE_CHARS].strip()
    _check_text("title", title, "a title is required (the request has no title and an empty caption)", not title)
    return title


def _description(caption: str, title: str, tag_short: bool) -> str:
    """The caption, checked against YouTube's rules, with `#Shorts` added as a hint when it fits."""
    _check_text("caption", caption, "no '<' or '>' in a YouTube description", "<" in caption or ">" in caption)
    size = len(caption.encode())
    _check_text("caption", caption, f"at most {MAX_DESCRIPTION_BYTES} bytes", size > MAX_DESCRIPTION_BYTES)
    already_tagged = SHORTS_TAG.lower() in f"{title}\n{caption}".lower()
    tagged = f"{caption.rstrip()}\n\n{SHORTS_TAG}" if caption.strip() else SHORTS_TAG
    if tag_short and not already_tagged and len(tagged.encode()) <= MAX_DESCRIPTION_BYTES:
        return tagged
    return caption


def _check_text(field: str, value: str, rule: str, broken: bool) -> None:
    if broken:
        raise PublishError(
            f"YouTube {field} {value[:60]!r}: {rule}. Fix: edit the post's {field} (pre-flight can shorten it)",
            kind="permanent",
        )


def _next_byte(range_header: str | None) -> int:
    """`Range: bytes=0-N` → N + 1; no header means the session holds nothing yet."""
    if not range_header:
        return 0
    return int(range_header.rsplit("-", 1)[1]) + 1


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _reason(response: requests.Response) -> str:
    """Google's `error.errors[0].reason` (e.g. quotaExceeded), else `error.status`, else ''."""
    error = _json(response).get("error")
    if not isinstance(error, dict):
        return ""
    errors = error.get("errors") or [{}]
    return str(errors[0].get("reason") or error.get("status") or "")


def _error_message(response: requests.Response, token: str) -> str:
    error = _json(response).get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return excerpt(response.text, 200, token).strip() or response.reason or "no message"


def _default_fix(kind: ErrorKind) -> str:
    return {
        "auth": "refresh the access token, or link the account again if refreshing fails",
        "throttle": "wait and try again later",
        "transient": "try again later",
    }.get(kind, "check the post's metadata and the account")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return retry_after_seconds(headers.get("Retry-After"))
