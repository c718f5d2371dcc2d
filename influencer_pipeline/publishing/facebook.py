"""Facebook Page publisher: photo posts and videos, in two phases (prepare, then one commit).

Photos: `prepare` uploads each image to `/{page-id}/photos` with `published=false` (bytes pushed as `source`, so no
public URL is needed and a repeat leaves only invisible photos); `commit` makes the one `/{page-id}/feed` post that
attaches them, the same way for one photo or several [posts]. `reconcile` matches the caption among the Page's
`published_posts` since the attempt began [posts].

Videos: `prepare` runs the resumable upload's `start` and `transfer` phases [video]; `commit` is the
`finish` phase, which publishes, then waits (bounded) for processing so a video Meta fails to process is reported.
A video object is one post at most, so `finish` again on the same upload session cannot post twice [video].

Documents cited as [name] here:
[posts] https://developers.facebook.com/docs/pages-api/posts
[video] https://developers.facebook.com/docs/video-api/guides/publishing
"""

from __future__ import annotations

import json
import logging
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from influencer_pipeline.endpoints import rehome
from influencer_pipeline.platforms import (
    CAROUSEL_MAX_ITEMS,
    FACEBOOK_PHOTO_MAX_BYTES,
    GRAPH_API_VERSION,
    GRAPH_FACEBOOK,
    GRAPH_VIDEO_FACEBOOK,
)
from influencer_pipeline.publishing.base import (
    CommitOutcomeUnknown,
    PostMedia,
    Published,
    PublishError,
    PublishRequest,
    RemoteHandle,
)
from influencer_pipeline.publishing.instagram import (
    DEFAULT_WORK_DIR,
    MATCH_SLACK_S,
    jpeg_for_meta,
    normalize_caption,
    parse_meta_time,
)
from influencer_pipeline.publishing.meta_errors import GraphSession, MetaPublishError

log = logging.getLogger(__name__)

MAX_PHOTO_BYTES = FACEBOOK_PHOTO_MAX_BYTES
MAX_PHOTOS = CAROUSEL_MAX_ITEMS["facebook"]
PUBLISHED_POSTS_LIMIT = 100
STARTED_PHASES = ("in_progress", "complete")


@dataclass(frozen=True)
class VideoState:
    """`GET /{video-id}?fields=status,published,permalink_url`, reduced to what publishing decides on."""

    published: bool
    permalink: str
    processing: str
    publishing: str
    video_status: str

    @property
    def failed(self) -> bool:
        return self.video_status == "error" or "error" in (self.processing, self.publishing)

    @property
    def in_flight(self) -> bool:
        """`finish` landed and Meta is still processing or publishing: live soon, unless processing fails."""
        return (
            not self.published
            and not self.failed
            and (self.processing in STARTED_PHASES or self.publishing in STARTED_PHASES)
        )


class FacebookPagePublisher:
    """Publishes photo posts and videos to one Facebook Page with a Page access token.

    Calls go to `graph.facebook.com`, video uploads to `graph-video.facebook.com` ("Videos must be published to
    graph-video.facebook.com instead of the regular Graph API URL",
    https://developers.facebook.com/docs/graph-api/video-uploads), both at `GRAPH_API_VERSION`; `base_url` re-homes
    them to a proxy or a stand-in, keeping the real host in the path. `poll_interval_s`/`max_wait_s` bound the
    wait for video processing after `finish`; `timeout_s` is (connect, read) for every HTTP call; converted images
    go to `work_dir`.
    """

    platform = "facebook"

    def __init__(
        self,
        page_id: str,
        *,
        base_url: str | None = None,
        work_dir: Path = DEFAULT_WORK_DIR,
        poll_interval_s: float = 5.0,
        max_wait_s: float = 600.0,
        timeout_s: tuple[float, float] = (10.0, 120.0),
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.page_id = page_id
        self.graph_base = rehome(f"{GRAPH_FACEBOOK}/{GRAPH_API_VERSION}", base_url)
        self.video_base = rehome(f"{GRAPH_VIDEO_FACEBOOK}/{GRAPH_API_VERSION}", base_url)
        self.work_dir = work_dir
        self.poll_interval_s = poll_interval_s
        self.max_wait_s = max_wait_s
        self.graph = GraphSession(timeout_s, session)
        self.sleep = sleep

    def __repr__(self) -> str:
        return f"FacebookPagePublisher(page_id={self.page_id!r}, graph_base={self.graph_base!r})"

    # -- the Publisher contract ---------------------------------------------------------------------------

    def prepare(self, request: PublishRequest, token: str) -> RemoteHandle:
        """Upload unpublished photos, or a video up to (not including) `finish`. Safe to repeat."""
        prepared_at = time.time()
        if request.format == "reel":
            return self._prepare_video(request, token, prepared_at)
        return self._prepare_photos(request, token, prepared_at)

    def wait_ready(self, handle: RemoteHandle, token: str) -> None:
        """Nothing to wait for: unpublished photos are ready once uploaded, and Meta processes a video only after
        `finish`, which is the commit (so `commit` does that wait)."""

    def commit(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published:
        """The feed post that attaches the photos, or the video's `finish` phase: made once per handle."""
        if handle.extra.get("kind") == "video":
            return self._finish_video(handle, request, token)
        attached = [{"media_fbid": photo} for photo in handle.extra["photo_ids"]]
        body = self.graph.request(
            "POST",
            f"{self.graph_base}/{self.page_id}/feed",
            token,
            data={"message": request.caption, "published": "true", "attached_media": json.dumps(attached)},
            what=f"Facebook Page post with {len(attached)} photo(s)",
            commit=True,
        )
        post_id = str(body.get("id") or "")
        if not post_id:
            raise CommitOutcomeUnknown("Facebook /feed answered without a post id: reconcile")
        log.info("facebook: published post %s", post_id)
        return Published(post_id, self._post_permalink(post_id, token))

    def reconcile(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published | None:
        """Photos: the Page post with this caption since the attempt began, or None. Videos: the video's own state.

        A failed read raises (undecidable for now); it never turns into "not published".
        """
        if handle.extra.get("kind") == "video":
            return self._reconcile_video(handle, token)
        since = float(handle.extra.get("prepared_at", 0)) - MATCH_SLACK_S
        caption = normalize_caption(request.caption)
        matches = [
            post
            for post in self._published_posts(token, since)
            if normalize_caption(str(post.get("message", ""))) == caption and _created(post) >= since
        ]
        if not matches:
            return None
        first = min(matches, key=_created)
        return Published(str(first.get("id", "")), str(first.get("permalink_url", "")))

    # -- photos -------------------------------------------------------------------------------------------

    def _prepare_photos(self, request: PublishRequest, token: str, prepared_at: float) -> RemoteHandle:
        media = request.media
        wanted = 1 if request.format == "image" else MAX_PHOTOS
        if not media or len(media) > wanted or any(m.kind != "image" for m in media):
            raise PublishError(
                f"post {request.post_id}: a Facebook {request.format} post takes 1 to {wanted} images, got "
                f"{[m.kind for m in media]}; send videos as a reel",
                "permanent",
            )
        photo_ids = [self._upload_photo(m, token) for m in media]
        extra = {"format": request.format, "kind": "photos", "photo_ids": photo_ids, "prepared_at": prepared_at}
        return RemoteHandle("facebook", photo_ids[0], extra)

    def _upload_photo(self, media: PostMedia, token: str) -> str:
        path = jpeg_for_meta(media.path, self.work_dir, keep_formats=("JPEG", "PNG"), max_bytes=MAX_PHOTO_BYTES)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as fh:
            body = self.graph.request(
                "POST",
                f"{self.graph_base}/{self.page_id}/photos",
                token,
                data={"published": "false"},
                files={"source": (path.name, fh, mime)},
                what=f"Facebook unpublished photo upload of {media.path.name}",
            )
        photo_id = str(body.get("id") or "")
        if not photo_id:
            raise MetaPublishError(f"Facebook photo upload of {media.path.name} returned no id", "transient")
        return photo_id

    def _published_posts(self, token: str, since: float) -> list[dict[str, Any]]:
        """The Page's posts since `since`, newest first. `paging.next` is not followed: Meta puts the token in it."""
        body = self.graph.request(
            "GET",
            f"{self.graph_base}/{self.page_id}/published_posts",
            token,
            params={
                "fields": "id,message,created_time,permalink_url",
                "since": int(since),
                "limit": PUBLISHED_POSTS_LIMIT,
            },
            what="Facebook published_posts read",
        )
        data = body.get("data")
        if not isinstance(data, list):
            raise MetaPublishError("Facebook published_posts answered without a data list", "transient")
        return [post for post in data if isinstance(post, dict)]

    def _post_permalink(self, post_id: str, token: str) -> str:
        return self.graph.cosmetic_field(
            f"{self.graph_base}/{post_id}", token, "permalink_url", f"Facebook permalink read for {post_id}"
        )

    # -- video --------------------------------------------------------------------------------------------

    def _prepare_video(self, request: PublishRequest, token: str, prepared_at: float) -> RemoteHandle:
        if len(request.media) != 1 or request.media[0].kind != "video":
            raise PublishError(
                f"post {request.post_id}: a Facebook video post takes exactly one video, got "
                f"{[m.kind for m in request.media]}",
                "permanent",
            )
        path = request.media[0].path
        size = path.stat().st_size
        body = self._video_phase(token, "start", {"file_size": str(size)}, what=f"start upload of {path.name}")
        try:
            video_id, session = str(body["video_id"]), str(body["upload_session_id"])
        except KeyError:
            raise MetaPublishError(f"Facebook video upload start answered without ids: {body}", "transient") from None
        self._transfer(path, session, _offsets(body), token)
        extra = {"format": request.format, "kind": "video", "upload_session_id": session, "prepared_at": prepared_at}
        return RemoteHandle("facebook", video_id, extra)

    def _transfer(self, path: Path, session: str, offsets: tuple[int, int], token: str) -> None:
        """Send the byte ranges Meta asks for until it answers start == end [video]; a range that does not move
        forward is an error rather than an endless loop."""
        start, end = offsets
        with path.open("rb") as fh:
            while start < end:
                fh.seek(start)
                chunk = fh.read(end - start)
                body = self._video_phase(
                    token,
                    "transfer",
                    {"upload_session_id": session, "start_offset": str(start)},
                    what=f"transfer bytes {start}-{end} of {path.name}",
                    files={"video_file_chunk": (path.name, chunk, "application/octet-stream")},
                )
                next_start, next_end = _offsets(body)
                if next_start <= start and next_start < next_end:
                    raise MetaPublishError(
                        f"Facebook video transfer of {path.name} did not advance past byte {start}", "transient"
                    )
                start, end = next_start, next_end

    def _finish_video(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published:
        fields = {
            "upload_session_id": str(handle.extra["upload_session_id"]),
            "description": request.caption,
            "title": request.title,
            "published": "true",
        }
        body = self._video_phase(token, "finish", fields, what=f"finish video {handle.value}", commit=True)
        if not body.get("success"):
            raise CommitOutcomeUnknown(f"Facebook video finish for {handle.value} did not report success: reconcile")
        return self._await_video(handle.value, token)

    def _await_video(self, video_id: str, token: str) -> Published:
        """After `finish`: Published once live; a processing failure is definite; anything else is unknown."""
        deadline = time.monotonic() + self.max_wait_s
        while True:
            try:
                state = self._video_state(video_id, token)
            except PublishError as exc:
                raise CommitOutcomeUnknown(f"Facebook video {video_id} finished, status unreadable: {exc}") from None
            if state.published:
                log.info("facebook: video %s is live", video_id)
                return Published(video_id, state.permalink)
            if state.failed:
                raise MetaPublishError(f"Facebook could not process video {video_id}: {state}", "permanent")
            if time.monotonic() >= deadline:
                raise CommitOutcomeUnknown(
                    f"Facebook video {video_id} still processing after {self.max_wait_s:.0f} s: reconcile later"
                )
            self.sleep(self.poll_interval_s)

    def _reconcile_video(self, handle: RemoteHandle, token: str) -> Published | None:
        """Live → Published; processing → undecidable yet; otherwise `finish` never took and may be sent again."""
        state = self._video_state(handle.value, token)
        if state.published:
            return Published(handle.value, state.permalink)
        if state.in_flight:
            raise MetaPublishError(
                f"Facebook video {handle.value} is still being processed: reconcile again later",
                "transient",
                self.poll_interval_s,
            )
        return None

    def _video_state(self, video_id: str, token: str) -> VideoState:
        body = self.graph.request(
            "GET",
            f"{self.graph_base}/{video_id}",
            token,
            params={"fields": "status,published,permalink_url"},
            what=f"Facebook video {video_id} status read",
        )
        status = body.get("status") if isinstance(body.get("status"), dict) else {}
        return VideoState(
            published=bool(body.get("published")),
            permalink=str(body.get("permalink_url", "")),
            processing=_phase(status, "processing_phase"),
            publishing=_phase(status, "publishing_phase"),
            video_status=str(status.get("video_status", "")),
        )

    def _video_phase(
        self, token: str, phase: str, fields: dict[str, str], *, what: str, commit: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        return self.graph.request(
            "POST",
            f"{self.video_base}/{self.page_id}/videos",
            token,
            data={"upload_phase": phase, **fields},
            what=f"Facebook video upload: {what}",
            commit=commit,
            **kwargs,
        )


def _offsets(body: dict[str, Any]) -> tuple[int, int]:
    try:
        return int(body["start_offset"]), int(body["end_offset"])
    except (KeyError, TypeError, ValueError):
        raise MetaPublishError(f"Facebook video upload answered without offsets: {body}", "transient") from None


def _phase(status: dict[str, Any], name: str) -> str:
    phase = status.get(name)
    return str(phase.get("status", "")) if isinstance(phase, dict) else ""


def _created(post: dict[str, Any]) -> float:
    try:
        return parse_meta_time(str(post.get("created_time", "")))
    except ValueError:
        return 0.0
