"""Instagram Graph API publisher: image, carousel and reel, in two phases, on the API the account's login uses.

Instagram has two publishing APIs with the same endpoints and different hosts, tokens and features, and an
account's token works on one of them only, so the publisher is built for the login the account was linked with
(`Account.login`, see `instagram_api`):

- Instagram Login: `graph.instagram.com`; "All endpoints can be accessed via the graph.instagram.com host", and
  videos are fetched from a public `video_url`.
  https://developers.facebook.com/docs/instagram-platform/instagram-api-with-instagram-login/content-publishing
- Facebook Login: `graph.facebook.com`, plus the resumable upload on `rupload.facebook.com`, which is "available
  only for apps that have implemented Facebook Login for Business".
  https://developers.facebook.com/docs/instagram-platform/instagram-api-with-facebook-login/content-publishing
  https://developers.facebook.com/docs/instagram-platform/content-publishing/resumable-uploads

`prepare` creates the media container(s) [publishing]: images are converted to JPEG (the only format the spec
names [media]) and handed to Meta as a public URL from a `MediaHost`; reels go up through the resumable upload
(`rupload`, no public URL needed) where the login offers it, else as a `video_url`. `wait_ready` polls
`status_code` [container]. `commit` reads `content_publishing_limit` first (the cap varies by account, [limit]) and
then calls `media_publish`, the one call that makes the post public. `reconcile` asks the container: `PUBLISHED`
means live, `FINISHED` means the commit never landed [container].

Documents cited as [name] here:
[publishing] https://developers.facebook.com/docs/instagram-platform/content-publishing
[media] https://developers.facebook.com/docs/instagram-platform/instagram-graph-api/reference/ig-user/media
[container] https://developers.facebook.com/docs/instagram-platform/instagram-graph-api/reference/ig-container
[limit] https://developers.facebook.com/docs/instagram-platform/instagram-graph-api/reference/ig-user/content_publishing_limit
[errors] https://developers.facebook.com/docs/instagram-platform/instagram-graph-api/reference/error-codes
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import requests
from PIL import Image, ImageOps

from influencer_pipeline import images
from influencer_pipeline.accounts.providers import FACEBOOK_LOGIN, INSTAGRAM_LOGIN
from influencer_pipeline.endpoints import rehome
from influencer_pipeline.errors import InputError
from influencer_pipeline.media.store import MediaStore, S3MediaStore
from influencer_pipeline.platforms import (
    CAROUSEL_MAX_ITEMS as CAROUSEL_LIMITS,
)
from influencer_pipeline.platforms import (
    GRAPH_API_VERSION,
    GRAPH_FACEBOOK,
    GRAPH_INSTAGRAM,
    INSTAGRAM_IMAGE_MAX_BYTES,
    RUPLOAD_FACEBOOK,
)
from influencer_pipeline.publishing.base import (
    CommitOutcomeUnknown,
    PostMedia,
    Published,
    PublishError,
    PublishRequest,
    RemoteHandle,
)
from influencer_pipeline.publishing.meta_errors import GraphSession, MetaError, MetaPublishError, classify, describe
from influencer_pipeline.redaction import excerpt

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = INSTAGRAM_IMAGE_MAX_BYTES
CAROUSEL_MAX_ITEMS = CAROUSEL_LIMITS["instagram"]
QUOTA_WINDOW_S = 86400
QUOTA_RETRY_FALLBACK_S = 3600.0  # when the listing cannot tell when the oldest publish leaves the window
MEDIA_LIST_LIMIT = 100
RECONCILE_LIST_LIMIT = 25
MATCH_SLACK_S = 300.0  # clock skew allowed when matching a live post to this attempt (5 min before the attempt began)
DEFAULT_WORK_DIR = Path(tempfile.gettempdir()) / "influencer-pipeline-meta"


class MediaHost(Protocol):
    """Gives Meta a public HTTPS URL it can fetch a local file from (Instagram images always need one)."""

    def url_for(self, path: Path) -> str: ...


class StoreMediaHost:
    """Hosts files through the media store: copies each under a content-addressed key, then asks `link` for a URL.

    `link` decides how the key becomes public (a presigned S3 URL, a CDN or public-bucket URL), so the same host
    works for any bucket policy. Content addressing makes a repeated `prepare` reuse the same object.
    """

    def __init__(self, store: MediaStore, link: Callable[[str], str], prefix: str = "public/meta/") -> None:
        self.store = store
        self.link = link
        self.prefix = prefix

    def url_for(self, path: Path) -> str:
        data = path.read_bytes()
        key = f"{self.prefix}{hashlib.sha256(data).hexdigest()}{path.suffix.lower()}"
        if not self.store.exists(key):
            self.store.write_bytes(key, data)
        return self.link(key)


def s3_presigned_link(store: S3MediaStore, expires_s: int = 3600) -> Callable[[str], str]:
    """A `link` for `StoreMediaHost` that presigns GETs: Meta fetches images while the container is created
    and videos while it processes, so an hour is ample and the bucket can stay private."""

    def link(key: str) -> str:
        params = {"Bucket": store.bucket, "Key": store.prefix + key}
        return store.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)

    return link


def jpeg_for_meta(
    path: Path, work_dir: Path, *, keep_formats: Sequence[str] = ("JPEG",), max_bytes: int = MAX_IMAGE_BYTES
) -> Path:
    """`path` itself when Meta takes it as is, else a baseline sRGB JPEG copy under `work_dir`.

    Instagram's spec is JPEG only (MPO excluded), sRGB, at most 8 MB [media]; generators emit PNG/WebP. The
    copy is named by content hash, so repeating `prepare` reuses it. Orientation is applied before EXIF is
    dropped, transparency is flattened onto white, and quality then size step down until the file fits.
    """
    with Image.open(path) as image:
        if _acceptable(image, path, keep_formats, max_bytes):
            return path
        target = work_dir / f"{hashlib.sha256(path.read_bytes()).hexdigest()[:32]}.jpg"
        if target.exists():
            return target
        rgb = images.to_srgb(ImageOps.exif_transpose(image))
    work_dir.mkdir(parents=True, exist_ok=True)
    target.write_bytes(_encode_within(rgb, max_bytes))
    log.info("converted %s to JPEG for Meta (%s)", path.name, target.name)
    return target


def _acceptable(image: Image.Image, path: Path, keep_formats: Sequence[str], max_bytes: int) -> bool:
    return (
        image.format in keep_formats
        and image.mode in ("RGB", "L")
        and path.stat().st_size <= max_bytes
        and images.is_srgb_or_untagged(image)
    )


def _encode_within(image: Image.Image, max_bytes: int) -> bytes:
    """Baseline JPEG at the best quality that fits, then smaller sizes; stops before the picture is useless."""
    fitted = images.jpeg_within(image, max_bytes)
    if fitted is None:
        raise PublishError(f"cannot encode this image as a JPEG of at most {max_bytes} bytes", "permanent")
    return fitted.data


@dataclass(frozen=True)
class InstagramApi:
    """Where one login's Instagram API lives: the Graph base (with the version) and the resumable-upload base,
    empty where the login has none."""

    login: str
    graph_base: str
    rupload_base: str


def instagram_api(login: str, base_url: str | None = None) -> InstagramApi:
    """The API an account linked with `login` publishes through; `base_url` re-homes it (`endpoints.rehome`)."""
    if login == INSTAGRAM_LOGIN:
        return InstagramApi(login, rehome(f"{GRAPH_INSTAGRAM}/{GRAPH_API_VERSION}", base_url), "")
    if login == FACEBOOK_LOGIN:
        return InstagramApi(
            login,
            rehome(f"{GRAPH_FACEBOOK}/{GRAPH_API_VERSION}", base_url),
            rehome(f"{RUPLOAD_FACEBOOK}/ig-api-upload/{GRAPH_API_VERSION}", base_url),
        )
    raise InputError(
        "instagram account login",
        f"{login!r} is not a way to link Instagram",
        f"link the account again with --login {INSTAGRAM_LOGIN} or --login {FACEBOOK_LOGIN}",
    )


@dataclass(frozen=True)
class PublishingQuota:
    """`GET /{ig-user-id}/content_publishing_limit`: publishes in the rolling window and the cap that applies."""

    usage: int
    total: int
    duration_s: int

    @property
    def exhausted(self) -> bool:
        return self.usage >= self.total


def normalize_caption(text: str) -> str:
    """Captions compared the way a platform may store them: NFC, whitespace runs collapsed, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def parse_meta_time(value: str) -> float:
    """Meta's timestamps look like `2026-11-05T10:00:00+0000`."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z").timestamp()


class InstagramPublisher:
    """Publishes to one Instagram professional account (`ig_user_id`) through the Graph API of its `login`.

    `login` is how the account was linked (`instagram` or `facebook`): it picks the host, and whether reels may
    use the resumable upload (Facebook Login only; `resumable_reels=False` turns it off there too, sending reels
    and carousel videos as `video_url` through `media_host`). `base_url` re-homes every call to a proxy or a
    stand-in, keeping the real host in the path. `poll_interval_s`/`max_wait_s` bound status polling (timed by
    `clock`, waited with `sleep`: tests inject both);
    `timeout_s` is (connect, read) for every HTTP call; converted JPEGs go to `work_dir`.
    """

    platform = "instagram"

    def __init__(
        self,
        ig_user_id: str,
        media_host: MediaHost | None = None,
        *,
        login: str = INSTAGRAM_LOGIN,
        base_url: str | None = None,
        resumable_reels: bool | None = None,
        work_dir: Path = DEFAULT_WORK_DIR,
        poll_interval_s: float = 5.0,
        max_wait_s: float = 600.0,
        timeout_s: tuple[float, float] = (10.0, 120.0),
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        api = instagram_api(login, base_url)
        if resumable_reels and not api.rupload_base:
            raise InputError(
                "resumable_reels",
                "the resumable upload is only available to accounts linked with Facebook Login",
                "leave it unset for Instagram Login accounts (reels go up as a public video_url)",
            )
        self.ig_user_id = ig_user_id
        self.media_host = media_host
        self.login = login
        self.graph_base = api.graph_base
        self.rupload_base = api.rupload_base
        self.resumable_reels = bool(api.rupload_base) if resumable_reels is None else resumable_reels
        self.work_dir = work_dir
        self.poll_interval_s = poll_interval_s
        self.max_wait_s = max_wait_s
        self.graph = GraphSession(timeout_s, session)
        self.sleep = sleep
        self.clock = clock

    def __repr__(self) -> str:
        return (
            f"InstagramPublisher(ig_user_id={self.ig_user_id!r}, login={self.login!r}, graph_base={self.graph_base!r})"
        )

    # -- the Publisher contract ---------------------------------------------------------------------------

    def prepare(self, request: PublishRequest, token: str) -> RemoteHandle:
        """Create the container(s). Safe to repeat: an unpublished container is invisible and expires in 24 h."""
        prepared_at = time.time()
        if request.format == "image":
            media = _only(request, "image")
            container = self._image_container(media, token, caption=request.caption)
            return self._handle(container, request, prepared_at)
        if request.format == "reel":
            media = _only(request, "video")
            fields = {"media_type": "REELS", "caption": request.caption, "share_to_feed": "true"}
            container = self._video_container(media, token, fields)
            return self._handle(container, request, prepared_at)
        return self._prepare_carousel(request, token, prepared_at)

    def wait_ready(self, handle: RemoteHandle, token: str) -> None:
        """Poll `status_code` until FINISHED (or already PUBLISHED); ERROR/EXPIRED/too slow raise."""
        self._wait_finished(handle.value, token)

    def commit(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published:
        """Check the publishing quota, then `media_publish` once. The permalink read after it is cosmetic.

        A container that is already PUBLISHED is answered from the platform instead of published again: what
        publishing it twice does is undocumented, and one status read is a cheap guard against a double post.
        """
        if self._container_status(handle.value, token)[0] == "PUBLISHED":
            log.warning("instagram: container %s is already PUBLISHED; not publishing it again", handle.value)
            return self._find_live_media(handle, request, token)
        self._check_quota(token)
        body = self.graph.request(
            "POST",
            f"{self.graph_base}/{self.ig_user_id}/media_publish",
            token,
            data={"creation_id": handle.value},
            what=f"Instagram media_publish of container {handle.value}",
            commit=True,
        )
        media_id = str(body.get("id") or "")
        if not media_id:
            raise CommitOutcomeUnknown(f"Instagram media_publish of {handle.value} returned no media id: reconcile")
        log.info("instagram: published container %s as media %s", handle.value, media_id)
        return Published(media_id, self._permalink(media_id, token))

    def reconcile(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published | None:
        """Ask the container [container]: PUBLISHED → live; FINISHED/EXPIRED → never published; else undecidable.

        Once the container says PUBLISHED this never raises: a failed media listing only costs the media id.
        """
        status_code, status = self._container_status(handle.value, token)
        if status_code == "PUBLISHED":
            return self._find_live_media(handle, request, token)
        if status_code in ("FINISHED", "EXPIRED"):
            return None
        raise MetaPublishError(
            f"Instagram container {handle.value} is {status_code} ({status}): cannot tell whether it was published",
            "transient",
        )

    # -- publishing quota ---------------------------------------------------------------------------------

    def publishing_quota(self, token: str) -> PublishingQuota:
        """Read the account's rolling-24 h publishing quota; Meta's documented caps disagree, so never assume."""
        body = self.graph.request(
            "GET",
            f"{self.graph_base}/{self.ig_user_id}/content_publishing_limit",
            token,
            params={"fields": "quota_usage,config", "since": int(time.time()) - QUOTA_WINDOW_S},
            what="Instagram content_publishing_limit read",
        )
        try:
            entry = body["data"][0]
            config = entry.get("config") or {}
            return PublishingQuota(
                usage=int(entry["quota_usage"]),
                total=int(config["quota_total"]),
                duration_s=int(config.get("quota_duration", QUOTA_WINDOW_S)),
            )
        except (KeyError, IndexError, TypeError, ValueError):
            raise MetaPublishError(
                f"Instagram content_publishing_limit answered in an unexpected shape: {excerpt(str(body), 200)}",
                "transient",
            ) from None

    def _check_quota(self, token: str) -> None:
        quota = self.publishing_quota(token)
        if not quota.exhausted:
            return
        wait_s = self._quota_frees_in(quota, token)
        raise MetaPublishError(
            f"Instagram publishing limit reached ({quota.usage}/{quota.total} in {quota.duration_s // 3600} h); "
            f"a slot frees in about {wait_s / 60:.0f} min",
            "throttle",
            wait_s,
        )

    def _quota_frees_in(self, quota: PublishingQuota, token: str) -> float:
        """Seconds until the oldest publish that keeps the account at its cap leaves the window [limit].

        The media listing also holds posts made by hand, which only makes this estimate later, never earlier.
        """
        if quota.total > MEDIA_LIST_LIMIT:
            return QUOTA_RETRY_FALLBACK_S
        try:
            media = self._recent_media(token, quota.total, "timestamp")
            oldest_that_counts = parse_meta_time(media[quota.total - 1]["timestamp"])
        except (PublishError, IndexError, KeyError, ValueError):
            return QUOTA_RETRY_FALLBACK_S
        return max(60.0, oldest_that_counts + quota.duration_s - time.time())

    # -- containers ---------------------------------------------------------------------------------------

    def _prepare_carousel(self, request: PublishRequest, token: str, prepared_at: float) -> RemoteHandle:
        """Children first (each FINISHED before the parent may name it [publishing]), then the parent and caption."""
        if not 2 <= len(request.media) <= CAROUSEL_MAX_ITEMS:
            raise PublishError(
                f"post {request.post_id}: an Instagram carousel takes 2 to {CAROUSEL_MAX_ITEMS} items, "
                f"got {len(request.media)}; split the post or change its format",
                "permanent",
            )
        children = [self._carousel_child(media, token) for media in request.media]
        for child in children:
            self._wait_finished(child, token)
        parent = self._create_container(
            {"media_type": "CAROUSEL", "children": ",".join(children), "caption": request.caption},
            token,
            what="Instagram carousel container",
        )
        return self._handle(parent, request, prepared_at, children=children)

    def _carousel_child(self, media: PostMedia, token: str) -> str:
        if media.kind == "image":
            return self._image_container(media, token, carousel_item=True)
        return self._video_container(media, token, {"media_type": "VIDEO", "is_carousel_item": "true"})

    def _image_container(
        self, media: PostMedia, token: str, *, caption: str | None = None, carousel_item: bool = False
    ) -> str:
        url = self._host().url_for(jpeg_for_meta(media.path, self.work_dir))
        fields = {"image_url": url}
        if caption is not None:
            fields["caption"] = caption
        if carousel_item:
            fields["is_carousel_item"] = "true"
        return self._create_container(fields, token, what=f"Instagram image container for {media.path.name}")

    def _video_container(self, media: PostMedia, token: str, fields: dict[str, str]) -> str:
        what = f"Instagram {fields['media_type'].lower()} container for {media.path.name}"
        if not self.resumable_reels:
            return self._create_container({**fields, "video_url": self._host().url_for(media.path)}, token, what=what)
        container = self._create_container({**fields, "upload_type": "resumable"}, token, what=what)
        self._rupload(container, media.path, token)
        return container

    def _create_container(self, fields: dict[str, str], token: str, *, what: str) -> str:
        body = self.graph.request("POST", f"{self.graph_base}/{self.ig_user_id}/media", token, data=fields, what=what)
        container = str(body.get("id") or "")
        if not container:
            raise MetaPublishError(f"{what}: Meta answered without a container id", "transient")
        return container

    def _rupload(self, container: str, path: Path, token: str) -> None:
        """Push the video bytes to rupload [publishing]; the URL is built from our base, never taken from a response,
        so the token only ever goes to the host we configured."""
        size = path.stat().st_size
        with path.open("rb") as body:
            self.graph.request(
                "POST",
                f"{self.rupload_base}/{container}",
                token,
                headers={"offset": "0", "file_size": str(size)},
                data=body,
                what=f"Instagram resumable upload of {path.name} ({size} bytes)",
            )

    def _wait_finished(self, container: str, token: str) -> None:
        deadline = self.clock() + self.max_wait_s
        while True:
            status_code, status = self._container_status(container, token)
            if status_code in ("FINISHED", "PUBLISHED"):
                return
            if status_code == "ERROR":
                raise _container_error(container, status)
            if status_code == "EXPIRED":
                raise MetaPublishError(f"Instagram container {container} expired: prepare it again", "transient")
            if self.clock() >= deadline:
                raise MetaPublishError(
                    f"Instagram container {container} still {status_code} after {self.max_wait_s:.0f} s", "transient"
                )
            self.sleep(self.poll_interval_s)

    def _container_status(self, container: str, token: str) -> tuple[str, str]:
        body = self.graph.request(
            "GET",
            f"{self.graph_base}/{container}",
            token,
            params={"fields": "status_code,status"},
            what=f"Instagram container {container} status read",
        )
        return str(body.get("status_code", "")), str(body.get("status", ""))

    # -- reading what is live -----------------------------------------------------------------------------

    def _find_live_media(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published:
        """The live media for this attempt: same caption, published after the attempt began ([media], `timestamp`)."""
        try:
            media = self._recent_media(token, RECONCILE_LIST_LIMIT, "id,caption,timestamp,permalink")
        except PublishError as exc:
            log.warning("instagram: container %s is PUBLISHED but the media listing failed: %s", handle.value, exc)
            return Published("")
        since = float(handle.extra.get("prepared_at", 0)) - MATCH_SLACK_S
        caption = normalize_caption(request.caption)
        candidates = [
            item
            for item in media
            if normalize_caption(str(item.get("caption", ""))) == caption and _timestamp(item) >= since
        ]
        if not candidates:
            log.warning("instagram: container %s is PUBLISHED but no recent media matches its caption", handle.value)
            return Published("")
        first = min(candidates, key=_timestamp)
        return Published(str(first.get("id", "")), str(first.get("permalink", "")))

    def _recent_media(self, token: str, limit: int, fields: str) -> list[dict[str, Any]]:
        """The account's newest media first (the edge's order)."""
        body = self.graph.request(
            "GET",
            f"{self.graph_base}/{self.ig_user_id}/media",
            token,
            params={"fields": fields, "limit": limit},
            what="Instagram media listing",
        )
        data = body.get("data")
        return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []

    def _permalink(self, media_id: str, token: str) -> str:
        """Cosmetic: a live post is never failed because its permalink could not be read [publishing]."""
        return self.graph.cosmetic_field(
            f"{self.graph_base}/{media_id}", token, "permalink", f"Instagram permalink read for {media_id}"
        )

    # -- helpers ------------------------------------------------------------------------------------------

    def _host(self) -> MediaHost:
        if self.media_host is None:
            raise PublishError(
                "Instagram fetches images (and non-resumable videos) from a public URL: give the publisher a "
                "media_host, e.g. StoreMediaHost(store, s3_presigned_link(store))",
                "permanent",
            )
        return self.media_host

    @staticmethod
    def _handle(
        container: str, request: PublishRequest, prepared_at: float, children: Sequence[str] = ()
    ) -> RemoteHandle:
        extra = {"format": request.format, "prepared_at": prepared_at, "children": list(children)}
        return RemoteHandle("instagram", container, extra)


def _only(request: PublishRequest, kind: str) -> PostMedia:
    """The single medium of an image or reel post, checked to be of the right kind."""
    if len(request.media) != 1 or request.media[0].kind != kind:
        raise PublishError(
            f"post {request.post_id}: an Instagram {request.format} takes exactly one {kind}, got "
            f"{[m.kind for m in request.media]}",
            "permanent",
        )
    return request.media[0]


def _container_error(container: str, status: str) -> MetaPublishError:
    """A container in ERROR: the subcode in `status` says whether a new container can help ([container], [errors])."""
    subcode = _subcode_in(status)
    # Unknown causes count as transient ("recreate the container"); the ledger's retry budget bounds them.
    error = MetaError(200, subcode=subcode, message=f"container {container} is ERROR: {status}", is_transient=True)
    return MetaPublishError(describe(error, "Instagram media processing"), classify(error), subcode=subcode)


def _subcode_in(status: str) -> int | None:
    for word in status.replace(":", " ").replace(",", " ").split():
        if word.isdigit() and len(word) == 7:
            return int(word)
    return None


def _timestamp(item: dict[str, Any]) -> float:
    try:
        return parse_meta_time(str(item.get("timestamp", "")))
    except ValueError:
        return 0.0
