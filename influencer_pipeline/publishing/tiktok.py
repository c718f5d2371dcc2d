"""TikTok Content Posting API publisher: direct post or inbox upload of a video, sent as FILE_UPLOAD chunks.

TikTok creates the post at `init` and makes it public once its bytes have arrived and passed processing. A post
whose bytes never all arrive never goes out, and only this process holds its upload URL. So:

- `prepare` (direct mode) asks `creator_info/query` for the account's privacy options and maximum duration (a
  privacy level it does not offer, or a longer video, is a permanent error before anything is created), then
  calls `/v2/post/publish/video/init/` (direct post, with `is_aigc` for AI content) or
  `/v2/post/publish/inbox/video/init/` (inbox mode: the person finishes the post in the app, caption and AI label
  included, as the inbox init takes only `source_info`; it needs only the `video.upload` scope, so creator_info,
  which needs `video.publish`, is skipped). The handle holds `publish_id`,
  `upload_url` and the chunk plan. A repeated `prepare` makes another publish_id; the abandoned one never gets
  its bytes, so it can never go live.
- `wait_ready` checks (one status fetch) that the publish still awaits its bytes: TikTok processes the video only
  after the upload, and the upload is the commit.
- `commit` checks the status again (a finished publish is returned as is, a partly uploaded one cannot be resumed
  and raises a transient PublishError so the caller prepares a new one), then PUTs the chunks in order
  (`Content-Range`, 206 then 201), then polls `status/fetch` (bounded). A dropped connection, a timeout or a 5xx
  during a chunk is ambiguous (the bytes may have arrived): `CommitOutcomeUnknown`, as is still-processing after
  the last poll, or a status that cannot be read after the upload.
- `reconcile` polls `status/fetch`: `PUBLISH_COMPLETE` / `SEND_TO_USER_INBOX` → `Published`; `FAILED` → None;
  an upload that stays incomplete for the whole polling window → None (only we could have finished it; the window
  lets a chunk still in flight land first); still processing → PublishError (transient: ask again later).

Chunk rules (media transfer guide): files under 5 MiB go as one chunk; otherwise chunks of 5-64 MiB, count =
floor(size / chunk), the last chunk absorbs the remainder, at most 1000 chunks. `ChunkRules` holds the numbers
so tests can scale them down. Errors are classified from TikTok's `error.code` (and the HTTP status when the code
is unknown). The access token is sent only to the API host in the Authorization header (never to the upload URL)
and scrubbed from every message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import requests

from influencer_pipeline.endpoints import rehome
from influencer_pipeline.errors import InputError
from influencer_pipeline.platforms import TIKTOK_API
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

PLATFORM = "tiktok"
API_BASE = TIKTOK_API
MiB = 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
Mode = Literal["direct", "inbox"]
PrivacyLevel = Literal["PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "FOLLOWER_OF_CREATOR", "SELF_ONLY"]

DONE = frozenset({"PUBLISH_COMPLETE", "SEND_TO_USER_INBOX"})
UPLOAD_WINDOW = timedelta(minutes=50)  # upload_url lives about an hour (media transfer guide): leave time
EXPIRES_AT = "expires_at"  # the handle key the orchestrator reads: after it, prepare a new post instead
ACCOUNT_PAUSE_S = 6 * 3600.0  # `spam_risk_*`: pause the account for hours, not seconds
_AUTH_CODES = frozenset({"access_token_invalid", "scope_not_authorized", "scope_permission_missed"})
_THROTTLE_CODES = {  # code -> wait when TikTok names none
    "rate_limit_exceeded": 60.0,
    "spam_risk_too_many_posts": ACCOUNT_PAUSE_S,
    "spam_risk_too_many_pending_share": ACCOUNT_PAUSE_S,
    "reached_active_user_cap": 24 * 3600.0,
}
_TRANSIENT_CODES = frozenset({"internal_error", "internal"})
_FIXES = {
    "access_token_invalid": "refresh the access token, or link the account again if refreshing fails",
    "scope_not_authorized": "link the account again and grant video.publish (direct) or video.upload (inbox)",
    "scope_permission_missed": "link the account again and grant video.publish (direct) or video.upload (inbox)",
    "unaudited_client_can_only_post_to_private_accounts": (
        "until the app passes TikTok's audit, make the account private and post SELF_ONLY, or use inbox mode"
    ),
    "privacy_level_option_mismatch": "pick a privacy level that creator_info lists for this account",
    "spam_risk_too_many_posts": "the account hit TikTok's daily posting cap; post again later",
    "spam_risk_too_many_pending_share": "the inbox holds 5 unfinished uploads; finish or delete them in the app",
    "url_ownership_unverified": "verify the media domain in the TikTok developer portal",
}


@dataclass(frozen=True)
class ChunkRules:
    """TikTok's FILE_UPLOAD chunk limits (bytes); tests scale them down to keep files tiny."""

    min_chunk: int = 5 * MiB
    max_chunk: int = 64 * MiB
    max_final_chunk: int = 128 * MiB
    max_chunks: int = 1000


@dataclass(frozen=True)
class ChunkPlan:
    video_size: int
    chunk_size: int
    total_chunk_count: int

    def span(self, index: int) -> tuple[int, int]:
        """[first, end) of chunk `index`: the last chunk runs to the end of the file."""
        first = index * self.chunk_size
        return first, self.video_size if index == self.total_chunk_count - 1 else first + self.chunk_size


def plan_chunks(video_size: int, preferred: int, rules: ChunkRules = ChunkRules()) -> ChunkPlan:
    """The chunk size and count TikTok accepts for `video_size`, as close to `preferred` as the rules allow."""
    if video_size < rules.min_chunk:
        return ChunkPlan(video_size, video_size, 1)
    least = -(-video_size // rules.max_chunks)  # the smallest chunk that keeps the count within max_chunks
    chunk = min(max(preferred, rules.min_chunk, least), rules.max_chunk, video_size)
    count = video_size // chunk
    if count > rules.max_chunks or video_size - (count - 1) * chunk > rules.max_final_chunk:
        raise PublishError(
            f"a {video_size}-byte video cannot be split into at most {rules.max_chunks} chunks of at most "
            f"{rules.max_chunk} bytes. Fix: shrink the video (TikTok takes at most 4 GB)",
            kind="permanent",
        )
    return ChunkPlan(video_size, chunk, count)


@dataclass(frozen=True)
class _Status:
    status: str
    fail_reason: str
    post_ids: tuple[str, ...]
    uploaded_bytes: int


@dataclass(frozen=True)
class _Ticket:
    """What a handle holds: the publish id, the upload URL and its chunk plan, the mode and the account name."""

    publish_id: str
    upload_url: str
    plan: ChunkPlan
    mode: Mode
    username: str

    @classmethod
    def of(cls, handle: RemoteHandle) -> _Ticket:
        extra = handle.extra
        plan = ChunkPlan(int(extra["video_size"]), int(extra["chunk_size"]), int(extra["total_chunk_count"]))
        return cls(handle.value, str(extra["upload_url"]), plan, extra["mode"], str(extra.get("username", "")))


class _Unreadable(Exception):
    """No answer, or a 5xx: the request's effect is unknown."""


class TikTokPublisher:
    """`Publisher` for TikTok videos through the Content Posting API (FILE_UPLOAD).

    `mode` "direct" posts straight to the profile (needs `video.publish`; unaudited apps may only post SELF_ONLY
    to private accounts), "inbox" sends the video to the creator's inbox to finish in the app (`video.upload`;
    the caption, privacy and AI label are set there). `privacy_level` must be one the account offers.
    `chunk_bytes` is the preferred chunk size, fitted to `chunk_rules`. Status is polled every `poll_interval_s`,
    at most `max_polls` times per call; `timeout_s` bounds each request. `clock` dates the handle's
    `expires_at` (the upload URL's lifetime), after which the orchestrator prepares a new post. `base_url`
    re-homes the API calls to a proxy or a stand-in, keeping the real host in the path (`endpoints.rehome`);
    the upload URL is used as TikTok's answer gives it.
    """

    platform = PLATFORM

    def __init__(
        self,
        *,
        base_url: str | None = None,
        mode: Mode = "direct",
        privacy_level: PrivacyLevel = "SELF_ONLY",
        disable_comment: bool = False,
        disable_duet: bool = False,
        disable_stitch: bool = False,
        chunk_bytes: int = 10 * MiB,
        chunk_rules: ChunkRules = ChunkRules(),
        timeout_s: float = 120.0,
        poll_interval_s: float = 5.0,
        max_polls: int = 24,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if mode not in ("direct", "inbox"):
            raise InputError("mode", f"{mode!r} is not a TikTok posting mode", "use 'direct' or 'inbox'")
        if max_polls < 1:
            raise InputError("max_polls", f"must be at least 1, got {max_polls}", "use 24")
        self.api_base = rehome(API_BASE, base_url)
        self.mode: Mode = mode
        self.privacy_level = privacy_level
        self.disable_comment = disable_comment
        self.disable_duet = disable_duet
        self.disable_stitch = disable_stitch
        self.chunk_bytes = chunk_bytes
        self.chunk_rules = chunk_rules
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.max_polls = max_polls
        self.clock = clock
        self._http = requests.Session()

    def __repr__(self) -> str:
        return f"TikTokPublisher(api_base={self.api_base!r}, mode={self.mode!r}, privacy={self.privacy_level!r})"

    # --- the contract -------------------------------------------------------------------------------------------

    def prepare(self, request: PublishRequest, token: str) -> RemoteHandle:
        """Check the account's rules (direct mode), then init the post; the handle is stored before any byte."""
        path = single_video(request, "TikTok")
        plan = plan_chunks(path.stat().st_size, self.chunk_bytes, self.chunk_rules)
        source = {"source": "FILE_UPLOAD", **asdict(plan)}
        if self.mode == "direct":
            data, username = self._init_direct(request, path, source, token)
        else:
            data, username = self._init_inbox(request, source, token), ""
        if not data.get("publish_id") or not data.get("upload_url"):
            raise PublishError("TikTok's init answer lacks publish_id or upload_url; try again", kind="transient")
        log.info(
            "tiktok: %s publish created for post %s in %d chunk(s)", self.mode, request.post_id, plan.total_chunk_count
        )
        extra = {
            "upload_url": data["upload_url"],
            "mode": self.mode,
            "username": username,
            EXPIRES_AT: (self.clock() + UPLOAD_WINDOW).isoformat(),
            **asdict(plan),
        }
        return RemoteHandle(platform=PLATFORM, value=str(data["publish_id"]), extra=extra)

    def wait_ready(self, handle: RemoteHandle, token: str) -> None:
        """Check that the publish still awaits its bytes (TikTok processes only after the upload, in commit)."""
        self._awaiting_upload(_Ticket.of(handle), token)

    def commit(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published:
        """Upload the chunks (the last one sends the post out), then poll until TikTok has processed it."""
        ticket = _Ticket.of(handle)
        path = single_video(request, "TikTok")
        if path.stat().st_size != ticket.plan.video_size:
            raise PublishError(
                f"{path} changed since the post was initialised ({path.stat().st_size} bytes, TikTok expects "
                f"{ticket.plan.video_size}). Fix: prepare a new post",
                kind="permanent",
            )
        finished = self._awaiting_upload(ticket, token)
        if finished is not None:
            return finished
        self._upload(ticket, path)
        try:
            outcome = self._poll(ticket, token)
        except PublishError as error:
            raise CommitOutcomeUnknown(f"the video was uploaded but its status cannot be read ({error})") from None
        if isinstance(outcome, Published):
            return outcome
        if outcome.status == "FAILED":
            raise self._failure(outcome)
        raise CommitOutcomeUnknown(
            f"TikTok is still processing the upload after {self.max_polls} status checks; reconcile later"
        )

    def reconcile(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published | None:
        """Read the status: the post when it went out, None when it provably did not, PublishError if undecided."""
        ticket = _Ticket.of(handle)
        outcome = self._poll(ticket, token)
        if isinstance(outcome, Published):
            return outcome
        if outcome.status == "FAILED" or outcome.uploaded_bytes < ticket.plan.video_size:
            return None
        raise PublishError(
            f"TikTok is still processing publish {ticket.publish_id} ({outcome.status}); reconcile again later",
            kind="transient",
            retry_after=self.poll_interval_s * self.max_polls,
        )

    # --- steps ----------------------------------------------------------------------------------------------------

    def _init_direct(
        self, request: PublishRequest, path: Path, source: dict[str, Any], token: str
    ) -> tuple[dict[str, Any], str]:
        """creator_info first (the audit rules require it), then the direct-post init: its data and the username."""
        creator = self._api("/v2/post/publish/creator_info/query/", {}, token, "reading the creator's settings")
        self._check_creator(creator, path)
        body = {"post_info": self._post_info(request, creator), "source_info": source}
        data = self._api("/v2/post/publish/video/init/", body, token, "starting the direct post")
        return data, str(creator.get("creator_username", ""))

    def _init_inbox(self, request: PublishRequest, source: dict[str, Any], token: str) -> dict[str, Any]:
        """The inbox init takes `source_info` only: the person adds caption, privacy and AI label in the app."""
        label = " and switch on the AI-generated label" if request.ai_generated else ""
        log.warning("tiktok: post %s goes to the inbox: paste its caption%s in the app", request.post_id, label)
        body = {"source_info": source}
        return self._api("/v2/post/publish/inbox/video/init/", body, token, "starting the inbox upload")

    def _check_creator(self, creator: Mapping[str, Any], path: Path) -> None:
        """The account must offer our privacy level, and take a video this long."""
        options = list(creator.get("privacy_level_options") or [])
        if self.privacy_level not in options:
            raise PublishError(
                f"the TikTok account offers privacy levels {options}, not {self.privacy_level!r}. Fix: set "
                "privacy_level to one of them (a private account has no PUBLIC_TO_EVERYONE)",
                kind="permanent",
            )
        limit = creator.get("max_video_post_duration_sec")
        duration = probe_video(path).duration_s
        if limit is not None and duration > float(limit):
            raise PublishError(
                f"{path}: the video lasts {duration:.1f} s, this TikTok account posts at most {limit} s. "
                "Fix: shorten the video",
                kind="permanent",
            )

    def _post_info(self, request: PublishRequest, creator: Mapping[str, Any]) -> dict[str, Any]:
        """Direct-post settings; interactions the creator disabled stay disabled, AI content is labelled."""
        return {
            "title": request.caption,
            "privacy_level": self.privacy_level,
            "disable_comment": self.disable_comment or bool(creator.get("comment_disabled")),
            "disable_duet": self.disable_duet or bool(creator.get("duet_disabled")),
            "disable_stitch": self.disable_stitch or bool(creator.get("stitch_disabled")),
            "is_aigc": request.ai_generated,
        }

    def _awaiting_upload(self, ticket: _Ticket, token: str) -> Published | None:
        """None when the publish awaits its first byte; the post when it already went out; else PublishError."""
        state = self._status(ticket, token)
        if state.status in DONE:
            return self._published(ticket, state)
        if state.status == "FAILED":
            raise self._failure(state)
        if state.uploaded_bytes:
            raise PublishError(
                f"TikTok publish {ticket.publish_id} already holds {state.uploaded_bytes} of "
                f"{ticket.plan.video_size} bytes from an interrupted upload, which TikTok cannot resume. "
                "Fix: prepare a new post (this one can never go out)",
                kind="transient",
            )
        return None

    def _upload(self, ticket: _Ticket, path: Path) -> None:
        """PUT every chunk in order; the upload URL carries its own authorisation, so no token is sent."""
        plan = ticket.plan
        with open(path, "rb") as media:
            for index in range(plan.total_chunk_count):
                first, end = plan.span(index)
                media.seek(first)
                headers = {"Content-Type": "video/mp4", "Content-Range": f"bytes {first}-{end - 1}/{plan.video_size}"}
                try:
                    response = self._request("PUT", ticket.upload_url, headers=headers, data=media.read(end - first))
                except _Unreadable as failure:
                    raise CommitOutcomeUnknown(
                        f"chunk {index + 1} of {plan.total_chunk_count} got {failure}: it may have arrived; reconcile"
                    ) from None
                if response.status_code not in (200, 201, 206):
                    raise PublishError(
                        f"TikTok refused chunk {index + 1} of {plan.total_chunk_count} (HTTP {response.status_code})."
                        " Fix: prepare a new post",
                        kind="throttle" if response.status_code == 429 else "transient",
                        retry_after=_retry_after(response.headers),
                    )

    def _poll(self, ticket: _Ticket, token: str) -> Published | _Status:
        """Fetch the status until it is final or `max_polls` run out; returns the post or the last status."""
        for attempt in range(self.max_polls):
            if attempt:
                time.sleep(self.poll_interval_s)
            state = self._status(ticket, token)
            if state.status in DONE:
                return self._published(ticket, state)
            if state.status == "FAILED":
                return state
        return state

    def _status(self, ticket: _Ticket, token: str) -> _Status:
        data = self._api("/v2/post/publish/status/fetch/", {"publish_id": ticket.publish_id}, token, "reading status")
        return _Status(
            status=str(data.get("status", "")),
            fail_reason=str(data.get("fail_reason") or ""),
            post_ids=tuple(str(i) for i in data.get("publicaly_available_post_id") or ()),  # TikTok's spelling
            uploaded_bytes=int(data.get("uploaded_bytes") or 0),
        )

    def _published(self, ticket: _Ticket, state: _Status) -> Published:
        """The public post id once moderation has passed; until then (or in the inbox) the publish id."""
        if state.post_ids and ticket.username:
            post_id = state.post_ids[0]
            return Published(remote_id=post_id, permalink=f"https://www.tiktok.com/@{ticket.username}/video/{post_id}")
        return Published(remote_id=state.post_ids[0] if state.post_ids else ticket.publish_id)

    def _failure(self, state: _Status) -> PublishError:
        """FAILED: nothing went out. Rejected media is permanent, TikTok's internal trouble transient."""
        reason = state.fail_reason or "no reason given"
        kind, retry_after = _classify_code(reason, 400)
        fix = _FIXES.get(reason) or "check the video against TikTok's specs (MP4/H.264, 23-60 fps, 3-600 s)"
        return PublishError(f"TikTok did not publish the video ({reason}). Fix: {fix}", kind, retry_after)

    # --- HTTP -----------------------------------------------------------------------------------------------------

    def _api(self, path: str, body: dict[str, Any], token: str, what: str) -> dict[str, Any]:
        """POST to the API with the token; the `data` object of a success, a classified PublishError otherwise."""
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=UTF-8"}
        try:
            response = self._request("POST", f"{self.api_base}{path}", headers=headers, json=body)
        except _Unreadable as failure:
            raise PublishError(f"TikTok gave no answer while {what} ({failure})", kind="transient") from None
        payload = _json(response)
        error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
        code = str(error.get("code") or "")
        if response.status_code == 200 and code in ("", "ok"):
            data = payload.get("data")
            return data if isinstance(data, dict) else {}
        kind, wait = _classify_code(code, response.status_code)
        message = str(error.get("message") or excerpt(response.text, 200, token) or response.reason)
        fix = _FIXES.get(code) or _default_fix(kind)
        text = f"TikTok refused {what} (HTTP {response.status_code}, {code or 'no code'}): {message}. Fix: {fix}"
        retry_after = _retry_after(response.headers) or wait
        raise PublishError(redact(text, token), kind=kind, retry_after=retry_after)

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One request; no answer or a 5xx raises `_Unreadable` (its effect is unknown)."""
        try:
            response = self._http.request(
                method, url, timeout=(min(CONNECT_TIMEOUT_S, self.timeout_s), self.timeout_s), **kwargs
            )
        except requests.Timeout:
            raise _Unreadable(f"no answer within timeout_s={self.timeout_s:g} s") from None
        except requests.RequestException as error:
            raise _Unreadable(f"a dropped or refused connection ({type(error).__name__})") from None
        if response.status_code >= 500:
            raise _Unreadable(f"HTTP {response.status_code}")
        return response


def _classify_code(code: str, status: int) -> tuple[ErrorKind, float | None]:
    """An error kind (and a default wait) from TikTok's `error.code` or `fail_reason`, else from the HTTP status."""
    if code in _AUTH_CODES or status == 401:
        return "auth", None
    if code in _THROTTLE_CODES:
        return "throttle", _THROTTLE_CODES[code]
    if code.startswith("spam_risk"):
        return "permanent", None  # banned from posting, text flagged as spam: a person has to look
    if status == 429:
        return "throttle", None
    if code in _TRANSIENT_CODES or status >= 500:
        return "transient", None
    return "permanent", None


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _default_fix(kind: ErrorKind) -> str:
    return {
        "auth": "refresh the access token, or link the account again if refreshing fails",
        "throttle": "wait and try again later",
        "transient": "try again later",
    }.get(kind, "check the post against TikTok's rules")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return retry_after_seconds(headers.get("Retry-After"))
