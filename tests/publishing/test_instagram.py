"""Instagram publisher against the Meta stand-in: every scenario asserts from the stand-in's own record.

Every scenario runs for both ways an account can be linked (Instagram Login on graph.instagram.com, Facebook Login
on graph.facebook.com), with the publisher built as production builds it and only `base_url` pointing at the
stand-in; the stand-in refuses a call to the other login's host. Each test drives prepare / wait_ready / commit /
reconcile directly, as the orchestrator will: the post must be live exactly once (or not at all), an ambiguous
commit must end in `CommitOutcomeUnknown` and be settled by `reconcile`, and every failure must carry the right kind
without the token in it.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from influencer_pipeline.endpoints import GRAPH_API_VERSION
from influencer_pipeline.errors import InputError
from influencer_pipeline.media import S3MediaStore
from influencer_pipeline.publishing.base import (
    CommitOutcomeUnknown,
    PostMedia,
    Published,
    PublishError,
    PublishRequest,
    RemoteHandle,
)
from influencer_pipeline.publishing.instagram import (
    InstagramPublisher,
    StoreMediaHost,
    jpeg_for_meta,
    s3_presigned_link,
)
from influencer_pipeline.publishing.meta_errors import (
    ANTI_SPAM_PAUSE_S,
    GraphSession,
    MetaError,
    MetaPublishError,
    classify,
    redact,
)
from tests.publishing.meta_standin import MetaStandin
from tests.support.services import free_port

CAPTION = "Golden hour in Lisbon ✨ #travel #aiart"


@pytest.fixture(params=["instagram", "facebook"])
def meta(request: pytest.FixtureRequest) -> Iterator[MetaStandin]:
    """The stand-in with its Instagram account linked through Instagram Login, then through Facebook Login."""
    with MetaStandin(ig_login=request.param) as standin:
        yield standin


@pytest.fixture
def fb_meta() -> Iterator[MetaStandin]:
    """For what only Facebook Login offers: the resumable upload (rupload)."""
    with MetaStandin(ig_login="facebook") as standin:
        yield standin


def publisher(meta: MetaStandin, tmp_path: Path, **overrides: Any) -> InstagramPublisher:
    options: dict[str, Any] = {
        "media_host": meta,
        "login": meta.ig_login,
        "base_url": meta.url,
        "work_dir": tmp_path / "work",
        "poll_interval_s": 0.001,
        "max_wait_s": 2.0,
        "timeout_s": (2.0, 2.0),
    }
    return InstagramPublisher(meta.ig_user_id, **{**options, **overrides})


def image(tmp_path: Path, name: str, size: tuple[int, int] = (1080, 1350), mode: str = "RGB") -> Path:
    path = tmp_path / name
    colour = (200, 120, 80, 128) if mode == "RGBA" else (200, 120, 80)
    Image.new(mode, size, colour[: len(mode)]).save(path)
    return path


def video(tmp_path: Path, name: str = "reel.mp4", size: int = 150_000, valid: bool = True) -> Path:
    head = b"\x00\x00\x00\x20ftypisom" if valid else b"\x00\x00\x00\x20RIFFjunk"
    path = tmp_path / name
    path.write_bytes(head + bytes(i % 251 for i in range(size - len(head))))
    return path


def post(fmt: str, *paths: Path, caption: str = CAPTION) -> PublishRequest:
    media = tuple(PostMedia(p, "video" if p.suffix == ".mp4" else "image") for p in paths)
    return PublishRequest("post-1", "instagram", "acct-1", fmt, caption, media)  # type: ignore[arg-type]


def prepared(pub: InstagramPublisher, request: PublishRequest, token: str) -> RemoteHandle:
    handle = pub.prepare(request, token)
    pub.wait_ready(handle, token)
    return handle


def assert_live_once(meta: MetaStandin, published: Published, caption: str = CAPTION) -> None:
    """The stand-in's truth: exactly one post of ours is live, it is the one the publisher reported."""
    live = meta.live_ig()
    assert len(live) == 1, [m.id for m in live]
    assert live[0].caption == caption
    assert published.remote_id == live[0].id
    assert published.permalink == live[0].permalink


def assert_no_token(meta: MetaStandin, error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    text = "".join(traceback.format_exception(error)) + repr(error) + caplog.text
    assert meta.ig_token not in text
    assert not any(r.token_in_url for r in meta.requests)


# -- happy paths ---------------------------------------------------------------------------------------------


def test_png_image_is_converted_to_jpeg_hosted_and_published_once(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.png", mode="RGBA"))
    handle = prepared(pub, request, meta.ig_token)
    published = pub.commit(handle, request, meta.ig_token)

    assert_live_once(meta, published)
    assert [f.format for f in meta.fetched] == ["JPEG"]
    assert meta.containers[handle.value].media_type == "IMAGE"
    routes = meta.routes()
    assert routes.index("content_publishing_limit") < routes.index("media_publish")
    assert routes.count("media_publish") == 1
    assert not any(r.token_in_url for r in meta.requests)


def test_carousel_creates_children_then_the_parent_and_publishes_once(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    paths = image(tmp_path, "a.jpg"), image(tmp_path, "b.webp", (1080, 1080)), video(tmp_path, "c.mp4")
    request = post("carousel", *paths)
    handle = prepared(pub, request, meta.ig_token)
    published = pub.commit(handle, request, meta.ig_token)

    assert_live_once(meta, published)
    parent = meta.containers[handle.value]
    assert parent.media_type == "CAROUSEL" and parent.caption == CAPTION
    children = [meta.containers[c] for c in parent.children]
    assert [c.media_type for c in children] == ["IMAGE", "IMAGE", "VIDEO"]
    assert all(c.is_carousel_item and c.caption == "" for c in children)
    assert meta.live_ig()[0].media_type == "CAROUSEL_ALBUM"
    assert handle.extra["children"] == parent.children
    assert json.loads(json.dumps(handle.extra)) == handle.extra  # the ledger stores it as JSON


def test_reel_goes_up_by_resumable_upload_and_is_polled_until_finished(fb_meta: MetaStandin, tmp_path: Path) -> None:
    meta = fb_meta
    meta.set_processing(polls=3)
    pub = publisher(meta, tmp_path)
    clip = video(tmp_path)
    request = post("reel", clip)
    handle = prepared(pub, request, meta.ig_token)
    published = pub.commit(handle, request, meta.ig_token)

    assert_live_once(meta, published)
    container = meta.containers[handle.value]
    assert container.media_type == "REELS" and container.resumable
    assert container.data == clip.read_bytes()
    assert meta.fetched == []  # no public URL was needed
    assert {r.host for r in meta.requests} == {"graph.facebook.com", "rupload.facebook.com"}
    status_reads = [r for r in meta.requests if r.route == "object" and r.path.endswith(handle.value)]
    assert len(status_reads) >= 4  # three IN_PROGRESS answers, then FINISHED


def test_reel_by_video_url_under_instagram_login_or_when_resumable_upload_is_off(
    meta: MetaStandin, tmp_path: Path
) -> None:
    """Instagram Login has no resumable upload: its reels always go as a public video_url."""
    off = {"resumable_reels": False} if meta.ig_login == "facebook" else {}
    pub = publisher(meta, tmp_path, **off)
    request = post("reel", video(tmp_path))
    handle = prepared(pub, request, meta.ig_token)
    published = pub.commit(handle, request, meta.ig_token)

    assert_live_once(meta, published)
    assert "rupload" not in meta.routes()
    assert not meta.containers[handle.value].resumable
    assert meta.refused() == []


def test_the_default_publisher_speaks_instagram_login_on_graph_instagram_com(tmp_path: Path) -> None:
    """Accounts are linked with Instagram Login unless told otherwise; built with defaults (only `base_url`
    swapped), the publisher must reach that account on graph.instagram.com at the pinned version, reels included.
    (It used to default to graph.facebook.com and rupload, which an Instagram Login token is refused on.)"""
    with MetaStandin(ig_login="instagram") as meta:
        pub = InstagramPublisher(meta.ig_user_id, meta, base_url=meta.url, work_dir=tmp_path / "w", poll_interval_s=0)
        for fmt, path in (("image", image(tmp_path, "a.jpg")), ("reel", video(tmp_path))):
            request = post(fmt, path, caption=f"{CAPTION} {fmt}")
            pub.commit(prepared(pub, request, meta.ig_token), request, meta.ig_token)

    assert len(meta.live_ig()) == 2
    assert {r.host for r in meta.requests} == {"graph.instagram.com"}
    assert {r.version for r in meta.requests} == {GRAPH_API_VERSION}
    assert meta.refused() == []


@pytest.mark.parametrize("account_login", ["instagram", "facebook"])
def test_a_publisher_built_for_the_other_login_is_refused_and_posts_nothing(account_login: str, tmp_path: Path) -> None:
    """The stand-in is stricter than needed to catch the wrong API: a token works on its own login's host only."""
    other = "facebook" if account_login == "instagram" else "instagram"
    with MetaStandin(ig_login=account_login) as meta:
        pub = InstagramPublisher(meta.ig_user_id, meta, login=other, base_url=meta.url, work_dir=tmp_path / "w")
        with pytest.raises(PublishError) as caught:
            pub.prepare(post("image", image(tmp_path, "a.jpg")), meta.ig_token)

    assert caught.value.kind == "auth"
    assert meta.containers == {} and meta.live_ig() == []
    assert meta.ig_token not in str(caught.value)


def test_the_stand_in_refuses_another_graph_version_and_an_unknown_host(meta: MetaStandin) -> None:
    host = "graph.instagram.com" if meta.ig_login == "instagram" else "graph.facebook.com"
    auth = {"Authorization": f"Bearer {meta.ig_token}"}
    old = requests.get(f"{meta.url}/{host}/v23.0/{meta.ig_user_id}/media", headers=auth, timeout=5)
    unknown = requests.get(f"{meta.url}/graph.example.com/{GRAPH_API_VERSION}/me", headers=auth, timeout=5)
    bare = requests.get(f"{meta.url}/{GRAPH_API_VERSION}/{meta.ig_user_id}/media", headers=auth, timeout=5)

    assert old.status_code == 400 and old.json()["error"]["code"] == 2635
    assert unknown.status_code == 400 and "graph.example.com" in unknown.json()["error"]["message"]
    assert bare.status_code == 400  # a base URL that drops the real host is refused too
    assert len(meta.refused()) == 3


def test_resumable_reels_cannot_be_asked_of_an_instagram_login_account(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Facebook Login"):
        InstagramPublisher("1", login="instagram", resumable_reels=True)
    with pytest.raises(InputError, match="--login"):
        InstagramPublisher("1", login="google")


def test_facebook_login_reels_go_to_rupload_on_its_own_host(fb_meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(fb_meta, tmp_path)
    request = post("reel", video(tmp_path))
    pub.commit(prepared(pub, request, fb_meta.ig_token), request, fb_meta.ig_token)

    rupload = [r for r in fb_meta.requests if r.route == "rupload"]
    assert [r.host for r in rupload] == ["rupload.facebook.com"]
    assert rupload[0].path.startswith(f"/rupload.facebook.com/ig-api-upload/{GRAPH_API_VERSION}/")


def test_media_host_backed_by_presigned_s3_urls(
    meta: MetaStandin, tmp_path: Path, s3_bucket: tuple[Any, str], s3_endpoint: str
) -> None:
    client, bucket = s3_bucket
    store = S3MediaStore(client, bucket, prefix="studio")
    pub = publisher(meta, tmp_path, media_host=StoreMediaHost(store, s3_presigned_link(store)))
    request = post("image", image(tmp_path, "look.png"))
    published = pub.commit(prepared(pub, request, meta.ig_token), request, meta.ig_token)

    assert_live_once(meta, published)
    assert meta.fetched[0].url.startswith(s3_endpoint) and "Signature" in meta.fetched[0].url
    assert meta.fetched[0].format == "JPEG"
    hosted = [o.key for o in store.list("public/")]
    assert len(hosted) == 1 and hosted[0].endswith(".jpg")  # the converted copy, under a content-addressed key


def test_jpeg_conversion_follows_the_spec(tmp_path: Path) -> None:
    work = tmp_path / "work"
    jpeg = image(tmp_path, "ok.jpg")
    assert jpeg_for_meta(jpeg, work) == jpeg  # already a plain sRGB JPEG: hosted as is

    converted = jpeg_for_meta(image(tmp_path, "alpha.png", mode="RGBA"), work)
    with Image.open(converted) as out:
        assert out.format == "JPEG" and out.mode == "RGB"
        red, green, _ = out.getpixel((0, 0))
        assert red > 220 and green > 180  # half-transparent pixels were flattened onto white, not black

    cmyk = tmp_path / "print.jpg"
    Image.new("CMYK", (400, 500), (0, 50, 100, 0)).save(cmyk)
    with Image.open(jpeg_for_meta(cmyk, work)) as out:
        assert out.mode == "RGB"

    noisy = tmp_path / "huge.png"
    Image.effect_noise((600, 750), 120).convert("RGB").save(noisy)
    small = jpeg_for_meta(noisy, work, max_bytes=60_000)
    assert small.stat().st_size <= 60_000
    assert jpeg_for_meta(noisy, work, max_bytes=60_000) == small  # repeated prepare reuses the copy


# -- processing and media rejections -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("valid_video", "forced_subcode", "kind"),
    [(False, None, "permanent"), (True, 2207053, "transient")],
    ids=["unsupported-video-2207026", "unknown-upload-error-2207053"],
)
def test_container_error_after_polls_is_classified_and_nothing_is_published(
    meta: MetaStandin, tmp_path: Path, valid_video: bool, forced_subcode: int | None, kind: str
) -> None:
    meta.set_processing(polls=2, error_subcode=forced_subcode)
    pub = publisher(meta, tmp_path)
    handle = pub.prepare(post("reel", video(tmp_path, valid=valid_video)), meta.ig_token)
    with pytest.raises(MetaPublishError) as caught:
        pub.wait_ready(handle, meta.ig_token)

    assert caught.value.kind == kind
    assert caught.value.subcode == (forced_subcode or 2207026)
    assert meta.publish_calls == [] and meta.live_ig() == []


def test_image_outside_the_aspect_ratio_is_rejected_permanently(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    with pytest.raises(MetaPublishError) as caught:
        pub.prepare(post("image", image(tmp_path, "banner.jpg", (1500, 500))), meta.ig_token)

    assert (caught.value.kind, caught.value.code, caught.value.subcode) == ("permanent", 36003, 2207009)
    assert meta.containers == {}


def test_slow_processing_gives_up_within_the_bound(meta: MetaStandin, tmp_path: Path) -> None:
    meta.set_processing(polls=10_000)
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # a clock that moves only when the publisher waits
        waits.append(seconds)
        now[0] += seconds

    pub = publisher(meta, tmp_path, poll_interval_s=5.0, max_wait_s=60.0, sleep=sleep, clock=lambda: now[0])
    handle = pub.prepare(post("reel", video(tmp_path)), meta.ig_token)
    with pytest.raises(PublishError) as caught:
        pub.wait_ready(handle, meta.ig_token)

    assert caught.value.kind == "transient" and "IN_PROGRESS" in str(caught.value) and "after 60 s" in str(caught.value)
    assert waits == [5.0] * 12  # polled every poll_interval_s until max_wait_s had passed, then gave up


# -- the commit: ambiguity and reconciliation ----------------------------------------------------------------


@pytest.mark.parametrize("fault", ["stall", "drop", "5xx"])
def test_commit_that_lands_then_fails_is_unknown_and_reconcile_finds_the_post(
    meta: MetaStandin, tmp_path: Path, fault: str
) -> None:
    pub = publisher(meta, tmp_path, timeout_s=(2.0, 0.3))
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.ig_token)
    {
        "stall": lambda: meta.stall("media_publish", 1.5),
        "drop": lambda: meta.drop("media_publish", after_commit=True),
        "5xx": lambda: meta.http_error("media_publish", 502, after_commit=True),
    }[fault]()

    with pytest.raises(CommitOutcomeUnknown):
        pub.commit(handle, request, meta.ig_token)
    found = pub.reconcile(handle, request, meta.ig_token)

    assert found is not None
    assert_live_once(meta, found)
    assert len(meta.publish_calls) == 1


def test_commit_that_fails_before_landing_reconciles_to_none_and_recommits_once(
    meta: MetaStandin, tmp_path: Path
) -> None:
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.ig_token)
    meta.http_error("media_publish", 503)

    with pytest.raises(CommitOutcomeUnknown):
        pub.commit(handle, request, meta.ig_token)
    assert pub.reconcile(handle, request, meta.ig_token) is None  # container still FINISHED: provably not live
    published = pub.commit(handle, request, meta.ig_token)  # same container, still FINISHED, so not yet published

    assert_live_once(meta, published)


def test_commit_on_an_already_published_container_does_not_publish_again(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.ig_token)
    first = pub.commit(handle, request, meta.ig_token)
    again = pub.commit(handle, request, meta.ig_token)

    assert again == first
    assert len(meta.publish_calls) == 1
    assert_live_once(meta, first)


@pytest.mark.parametrize(
    ("code", "subcode", "kind"),
    [(4, 2207051, "throttle"), (9, 2207042, "throttle"), (190, None, "auth"), (9007, 2207027, "transient")],
    ids=["anti-spam", "limit-reached", "token", "not-ready"],
)
def test_a_definite_refusal_of_the_commit_is_a_classified_error_not_unknown(
    meta: MetaStandin, tmp_path: Path, code: int, subcode: int | None, kind: str
) -> None:
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.ig_token)
    meta.fail("media_publish", code, subcode)

    with pytest.raises(MetaPublishError) as caught:
        pub.commit(handle, request, meta.ig_token)

    assert caught.value.kind == kind
    assert meta.live_ig() == []
    if subcode == 2207051:
        assert caught.value.retry_after == ANTI_SPAM_PAUSE_S  # back off for hours, never hammer
    assert pub.reconcile(handle, request, meta.ig_token) is None


def test_reconcile_reads_the_container_state(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.ig_token)
    container = meta.containers[handle.value]

    container.status_code, container.polls_left = "IN_PROGRESS", 100
    with pytest.raises(PublishError):
        pub.reconcile(handle, request, meta.ig_token)
    container.status_code = "EXPIRED"
    assert pub.reconcile(handle, request, meta.ig_token) is None
    container.status_code = "FINISHED"
    meta.fail("object", 2, None, status=500, is_transient=True)
    with pytest.raises(PublishError) as caught:
        pub.reconcile(handle, request, meta.ig_token)  # an unreadable container is undecidable, never "not live"
    assert caught.value.kind == "transient"
    assert meta.live_ig() == []


def test_reconcile_of_a_published_container_never_raises_when_the_listing_fails(
    meta: MetaStandin, tmp_path: Path
) -> None:
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.ig_token)
    pub.commit(handle, request, meta.ig_token)
    meta.fail("media_list", 1, None, status=500)

    assert pub.reconcile(handle, request, meta.ig_token) == Published("")
    assert len(meta.publish_calls) == 1


# -- quota, throttling, tokens -------------------------------------------------------------------------------


def test_publishing_limit_is_read_before_publishing_and_says_when_a_slot_frees(
    meta: MetaStandin, tmp_path: Path
) -> None:
    hour = 3600.0
    meta.seed_media([hour + 60 * i for i in range(meta.quota_total - 1)] + [23 * hour])  # oldest frees in 1 h
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.ig_token)

    with pytest.raises(MetaPublishError) as caught:
        pub.commit(handle, request, meta.ig_token)

    assert caught.value.kind == "throttle"
    assert caught.value.retry_after == pytest.approx(hour, abs=60)
    assert "media_publish" not in meta.routes() and meta.live_ig() == []


@pytest.mark.parametrize(
    ("status", "code", "headers", "retry_after"),
    [
        (400, 4, {"X-Business-Use-Case-Usage": json.dumps({"1": [{"estimated_time_to_regain_access": 7}]})}, 420),
        (429, 613, {"Retry-After": "30"}, 30),
        (400, 80002, {}, None),
    ],
    ids=["buc-header", "retry-after", "no-hint"],
)
def test_rate_limits_are_throttles_with_the_platforms_wait(
    meta: MetaStandin, tmp_path: Path, status: int, code: int, headers: dict[str, str], retry_after: float | None
) -> None:
    pub = publisher(meta, tmp_path)
    meta.fail("media", code, status=status, headers=headers, message="Application request limit reached")
    with pytest.raises(PublishError) as caught:
        pub.prepare(post("image", image(tmp_path, "look.jpg")), meta.ig_token)

    assert caught.value.kind == "throttle"
    assert caught.value.retry_after == retry_after


def test_a_5xx_while_preparing_is_transient_and_prepare_can_repeat(fb_meta: MetaStandin, tmp_path: Path) -> None:
    meta = fb_meta
    pub = publisher(meta, tmp_path)
    request = post("reel", video(tmp_path))
    meta.http_error("rupload", 502)
    with pytest.raises(PublishError) as caught:
        pub.prepare(request, meta.ig_token)
    assert caught.value.kind == "transient"

    handle = prepared(pub, request, meta.ig_token)
    published = pub.commit(handle, request, meta.ig_token)
    assert_live_once(meta, published)
    assert len(meta.containers) == 2  # the orphan stays unpublished (and expires)


@pytest.mark.parametrize("spoil", ["expire_token", "revoke_token"])
def test_a_dead_token_is_an_auth_error_that_never_carries_the_token(
    meta: MetaStandin, tmp_path: Path, caplog: pytest.LogCaptureFixture, spoil: str
) -> None:
    caplog.set_level(logging.DEBUG)
    pub = publisher(meta, tmp_path)
    getattr(meta, spoil)()
    with pytest.raises(PublishError) as caught:
        pub.prepare(post("image", image(tmp_path, "look.jpg")), meta.ig_token)

    assert caught.value.kind == "auth"
    assert "190" in str(caught.value)
    assert_no_token(meta, caught.value, caplog)
    assert meta.ig_token not in repr(pub)


def test_an_echoed_token_is_redacted_even_on_a_commit_timeout(
    meta: MetaStandin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pub = publisher(meta, tmp_path, timeout_s=(2.0, 0.2))
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.ig_token)
    meta.stall("media_publish", 1.0)
    with pytest.raises(CommitOutcomeUnknown) as caught:
        pub.commit(handle, request, meta.ig_token)
    assert_no_token(meta, caught.value, caplog)

    meta.expire_token()
    with pytest.raises(PublishError) as auth:
        pub.reconcile(handle, request, meta.ig_token)
    assert auth.value.kind == "auth"
    assert_no_token(meta, auth.value, caplog)


# -- the classifier on its own -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http_status", "code", "subcode", "kind"),
    [
        (400, 190, 460, "auth"),
        (403, 10, None, "auth"),
        (400, 200, None, "auth"),
        (400, 4, None, "throttle"),
        (400, 17, None, "throttle"),
        (400, 32, None, "throttle"),
        (400, 613, None, "throttle"),
        (400, 80014, None, "throttle"),
        (400, 368, None, "throttle"),
        (400, 4, 2207051, "throttle"),
        (400, 9, 2207042, "throttle"),
        (400, 36003, 2207009, "permanent"),
        (400, 36001, 2207005, "permanent"),
        (400, 36000, 2207004, "permanent"),
        (400, 100, 2207026, "permanent"),
        (400, 100, 2207010, "permanent"),
        (400, 100, 2207050, "permanent"),
        (400, 100, 1366046, "permanent"),
        (400, 100, None, "permanent"),
        (400, 100, 33, "transient"),
        (400, -2, 2207003, "transient"),
        (400, -1, 2207032, "transient"),
        (400, 9007, 2207027, "transient"),
        (400, 24, 2207006, "transient"),
        (500, 1, None, "transient"),
        (500, 2, None, "transient"),
        (502, None, None, "transient"),
        (429, None, None, "throttle"),
    ],
)
def test_meta_codes_classify_as_the_reference_says(
    http_status: int, code: int | None, subcode: int | None, kind: str
) -> None:
    assert classify(MetaError(http_status, code=code, subcode=subcode)) == kind


def test_a_commit_that_never_reached_the_server_is_a_plain_transient_error() -> None:
    """No connection, no request: nothing can have been published, so there is nothing to reconcile."""
    graph = GraphSession((1.0, 1.0))
    url = f"http://127.0.0.1:{free_port()}/v23.0/1/media_publish"
    with pytest.raises(MetaPublishError) as caught:
        graph.request("POST", url, "EAAGnotused0123456789abcdef", what="publish", commit=True)
    assert caught.value.kind == "transient"
    assert "EAAGnotused" not in str(caught.value)


def test_redaction_covers_raw_encoded_and_token_shaped_text() -> None:
    token = "EAAGabc123+/=def456ghi789jkl"
    text = f"bad {token} url ?access_token=xyz&x=1 header OAuth secret1 enc EAAGabc123%2B%2F%3Ddef456ghi789jkl"
    cleaned = redact(text, token)
    assert token not in cleaned and "xyz" not in cleaned and "secret1" not in cleaned and "EAAGabc123" not in cleaned
