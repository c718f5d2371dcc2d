"""Facebook Page publisher against the Meta stand-in: every scenario asserts from the stand-in's own record.

Photo posts: unpublished uploads, then one `/feed` post; reconciliation by caption among `published_posts`.
Videos: chunked start / transfer / finish; reconciliation by the video's own status. Each ambiguous commit must
end in `CommitOutcomeUnknown` and be settled by `reconcile` with the post live exactly once.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from influencer_pipeline.endpoints import GRAPH_API_VERSION
from influencer_pipeline.publishing.base import (
    CommitOutcomeUnknown,
    PostMedia,
    Published,
    PublishError,
    PublishRequest,
    RemoteHandle,
)
from influencer_pipeline.publishing.facebook import FacebookPagePublisher
from influencer_pipeline.publishing.meta_errors import ANTI_SPAM_PAUSE_S, MetaPublishError
from tests.publishing.meta_standin import FbPost, MetaStandin

CAPTION = "New week, new city. Where should Ava go next? #travel"
CHUNK = 64 * 1024


@pytest.fixture
def meta() -> Iterator[MetaStandin]:
    with MetaStandin(video_chunk_bytes=CHUNK) as standin:
        yield standin


def publisher(meta: MetaStandin, tmp_path: Path, **overrides: Any) -> FacebookPagePublisher:
    options: dict[str, Any] = {
        "base_url": meta.url,
        "work_dir": tmp_path / "work",
        "poll_interval_s": 0.001,
        "max_wait_s": 2.0,
        "timeout_s": (2.0, 2.0),
    }
    return FacebookPagePublisher(meta.page_id, **{**options, **overrides})


def image(tmp_path: Path, name: str, size: tuple[int, int] = (1080, 1080)) -> Path:
    path = tmp_path / name
    Image.new("RGB", size, (40, 90, 160)).save(path)
    return path


def video(tmp_path: Path, size: int = 3 * CHUNK + 1000, valid: bool = True) -> Path:
    head = b"\x00\x00\x00\x20ftypisom" if valid else b"\x00\x00\x00\x20RIFFjunk"
    path = tmp_path / "clip.mp4"
    path.write_bytes(head + bytes(i % 241 for i in range(size - len(head))))
    return path


def post(fmt: str, *paths: Path, caption: str = CAPTION) -> PublishRequest:
    media = tuple(PostMedia(p, "video" if p.suffix == ".mp4" else "image") for p in paths)
    return PublishRequest("post-1", "facebook", "page-1", fmt, caption, media, title="Ava in Lisbon")  # type: ignore[arg-type]


def prepared(pub: FacebookPagePublisher, request: PublishRequest, token: str) -> RemoteHandle:
    handle = pub.prepare(request, token)
    pub.wait_ready(handle, token)
    return handle


def assert_live_once(meta: MetaStandin, published: Published, caption: str = CAPTION) -> FbPost:
    """The stand-in's truth: exactly one Page post, with this caption, and it is the one reported."""
    assert len(meta.fb_posts) == 1, [p.id for p in meta.fb_posts]
    live = meta.fb_posts[0]
    assert live.message == caption
    assert published.remote_id in (live.id, live.video_id)
    assert published.permalink
    return live


# -- photos --------------------------------------------------------------------------------------------------


def test_photo_is_uploaded_unpublished_then_posted_once(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.webp"))
    handle = prepared(pub, request, meta.token)
    photo = meta.photos[handle.value]
    assert not photo.published and photo.attached_to == [] and meta.fb_posts == []  # invisible until the commit

    published = pub.commit(handle, request, meta.token)

    live = assert_live_once(meta, published)
    assert live.photo_ids == [photo.id]
    assert photo.format == "JPEG"  # WebP is not taken: converted before upload
    assert published.permalink == live.permalink_url
    assert not any(r.token_in_url for r in meta.requests)


def test_every_call_goes_to_the_host_meta_documents_at_the_pinned_version(meta: MetaStandin, tmp_path: Path) -> None:
    """Photos and posts on graph.facebook.com, video upload phases on graph-video.facebook.com, all at
    GRAPH_API_VERSION (the one accounts are linked with); the publisher is built as in production."""
    pub = publisher(meta, tmp_path)
    for fmt, path in (("image", image(tmp_path, "a.jpg")), ("reel", video(tmp_path))):
        request = post(fmt, path, caption=f"{CAPTION} {fmt}")
        pub.commit(prepared(pub, request, meta.token), request, meta.token)

    assert len(meta.fb_posts) == 2 and meta.refused() == []
    hosts = {r.route.split(":")[0]: r.host for r in meta.requests}
    assert hosts == {
        "photos": "graph.facebook.com",
        "feed": "graph.facebook.com",
        "object": "graph.facebook.com",
        "videos": "graph-video.facebook.com",
    }
    assert {r.version for r in meta.requests} == {GRAPH_API_VERSION}


def test_the_stand_in_refuses_page_calls_on_the_wrong_host_or_version(meta: MetaStandin) -> None:
    auth = {"Authorization": f"OAuth {meta.token}"}
    v = GRAPH_API_VERSION
    calls = {
        "video on graph.facebook.com": f"{meta.url}/graph.facebook.com/{v}/{meta.page_id}/videos",
        "photo on graph.instagram.com": f"{meta.url}/graph.instagram.com/{v}/{meta.page_id}/photos",
        "old version": f"{meta.url}/graph.facebook.com/v23.0/{meta.page_id}/feed",
    }
    answers = {
        name: requests.post(
            url, data={"upload_phase": "start", "file_size": "10", "message": "x"}, headers=auth, timeout=5
        )
        for name, url in calls.items()
    }

    assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(calls, 400)
    assert answers["old version"].json()["error"]["code"] == 2635
    assert len(meta.refused()) == 3 and meta.videos == {} and meta.fb_posts == []


def test_multi_photo_post_attaches_every_photo_to_one_post(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    paths = [image(tmp_path, "a.jpg"), image(tmp_path, "b.png", (1080, 1350)), image(tmp_path, "c.jpg", (800, 600))]
    request = post("carousel", *paths)
    handle = prepared(pub, request, meta.token)
    published = pub.commit(handle, request, meta.token)

    live = assert_live_once(meta, published)
    assert live.photo_ids == handle.extra["photo_ids"] and len(live.photo_ids) == 3
    assert [meta.photos[p].format for p in live.photo_ids] == ["JPEG", "PNG", "JPEG"]  # PNG is taken as is


@pytest.mark.parametrize("fault", ["stall", "drop", "5xx"])
def test_photo_commit_that_lands_then_fails_reconciles_to_the_live_post(
    meta: MetaStandin, tmp_path: Path, fault: str
) -> None:
    pub = publisher(meta, tmp_path, timeout_s=(2.0, 0.3))
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.token)
    {
        "stall": lambda: meta.stall("feed", 1.5),
        "drop": lambda: meta.drop("feed", after_commit=True),
        "5xx": lambda: meta.http_error("feed", 500, after_commit=True),
    }[fault]()

    with pytest.raises(CommitOutcomeUnknown):
        pub.commit(handle, request, meta.token)
    found = pub.reconcile(handle, request, meta.token)

    assert found is not None
    live = assert_live_once(meta, found)
    assert found == Published(live.id, live.permalink_url)


def test_photo_commit_lost_before_landing_reconciles_to_none_and_recommits_once(
    meta: MetaStandin, tmp_path: Path
) -> None:
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.token)
    meta.drop("feed", after_commit=False)

    with pytest.raises(CommitOutcomeUnknown):
        pub.commit(handle, request, meta.token)
    assert pub.reconcile(handle, request, meta.token) is None
    assert_live_once(meta, pub.commit(handle, request, meta.token))


def test_reconcile_matches_only_this_caption_inside_the_window(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.jpg"))
    old = meta._new_post(CAPTION)  # the same caption, posted a day ago: not this attempt
    old.created_time = time.time() - 86400
    meta._new_post("Something else entirely")
    handle = prepared(pub, request, meta.token)

    assert pub.reconcile(handle, request, meta.token) is None
    meta.fail("published_posts", 2, is_transient=True, status=500)
    with pytest.raises(PublishError) as caught:
        pub.reconcile(handle, request, meta.token)  # an unreadable Page is undecidable, never "not live"
    assert caught.value.kind == "transient"


@pytest.mark.parametrize(
    ("route", "code", "subcode", "kind", "retry_after"),
    [
        ("feed", 368, 1390008, "throttle", ANTI_SPAM_PAUSE_S),
        ("feed", 32, None, "throttle", None),
        ("feed", 100, 1404102, "permanent", None),
        ("photos", 100, 1366046, "permanent", None),
    ],
    ids=["posting-too-fast", "page-request-limit", "community-standards", "photo-rejected"],
)
def test_definite_refusals_are_classified_and_post_nothing(
    meta: MetaStandin, tmp_path: Path, route: str, code: int, subcode: int | None, kind: str, retry_after: float | None
) -> None:
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.jpg"))
    meta.fail(route, code, subcode)
    with pytest.raises(MetaPublishError) as caught:
        pub.commit(prepared(pub, request, meta.token), request, meta.token)

    assert (caught.value.kind, caught.value.retry_after) == (kind, retry_after)
    assert meta.fb_posts == []


def test_expired_page_token_is_auth_and_the_echoed_token_is_redacted(
    meta: MetaStandin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pub = publisher(meta, tmp_path)
    request = post("image", image(tmp_path, "look.jpg"))
    handle = prepared(pub, request, meta.token)
    meta.expire_token()
    with pytest.raises(PublishError) as caught:
        pub.commit(handle, request, meta.token)

    assert caught.value.kind == "auth"
    text = "".join(traceback.format_exception(caught.value)) + repr(caught.value) + caplog.text + repr(pub)
    assert meta.token not in text
    assert meta.fb_posts == []


# -- video ---------------------------------------------------------------------------------------------------


def test_video_goes_up_in_chunks_and_finish_publishes_once(meta: MetaStandin, tmp_path: Path) -> None:
    meta.video_processing_polls = 3
    pub = publisher(meta, tmp_path)
    clip = video(tmp_path)
    request = post("reel", clip)
    handle = prepared(pub, request, meta.token)
    stored = meta.videos[handle.value]
    assert bytes(stored.data) == clip.read_bytes() and meta.fb_posts == []
    assert meta.routes().count("videos:transfer") == 4  # 3 full chunks and the tail

    published = pub.commit(handle, request, meta.token)

    live = assert_live_once(meta, published)
    assert published.remote_id == handle.value == live.video_id
    assert (stored.title, stored.finish_calls) == ("Ava in Lisbon", 1)


def test_video_finish_that_lands_then_drops_reconciles_to_the_live_video(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    request = post("reel", video(tmp_path))
    handle = prepared(pub, request, meta.token)
    meta.drop("videos:finish", after_commit=True)

    with pytest.raises(CommitOutcomeUnknown):
        pub.commit(handle, request, meta.token)
    found = pub.reconcile(handle, request, meta.token)

    assert found is not None and found.remote_id == handle.value
    assert_live_once(meta, found)
    assert meta.videos[handle.value].finish_calls == 1


def test_video_finish_lost_before_landing_reconciles_to_none_and_finishes_once(
    meta: MetaStandin, tmp_path: Path
) -> None:
    pub = publisher(meta, tmp_path)
    request = post("reel", video(tmp_path))
    handle = prepared(pub, request, meta.token)
    meta.http_error("videos:finish", 503)

    with pytest.raises(CommitOutcomeUnknown):
        pub.commit(handle, request, meta.token)
    assert pub.reconcile(handle, request, meta.token) is None
    assert_live_once(meta, pub.commit(handle, request, meta.token))


def test_video_still_processing_is_unknown_then_reconciles_once_live(meta: MetaStandin, tmp_path: Path) -> None:
    meta.video_processing_polls = 1_000
    pub = publisher(meta, tmp_path, max_wait_s=0.02)
    request = post("reel", video(tmp_path))
    handle = prepared(pub, request, meta.token)

    with pytest.raises(CommitOutcomeUnknown, match="still processing"):
        pub.commit(handle, request, meta.token)
    with pytest.raises(PublishError) as caught:
        pub.reconcile(handle, request, meta.token)  # the finish landed, the video is not live yet: undecidable
    assert caught.value.kind == "transient"

    meta.videos[handle.value].polls_left = 0
    found = pub.reconcile(handle, request, meta.token)
    assert found is not None
    assert_live_once(meta, found)


def test_video_meta_cannot_process_is_a_permanent_failure(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    request = post("reel", video(tmp_path, valid=False))
    handle = prepared(pub, request, meta.token)
    with pytest.raises(MetaPublishError) as caught:
        pub.commit(handle, request, meta.token)

    assert caught.value.kind == "permanent"
    assert meta.fb_posts == []
    assert pub.reconcile(handle, request, meta.token) is None


def test_a_failed_chunk_is_transient_and_prepare_starts_a_fresh_session(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    request = post("reel", video(tmp_path))
    meta.http_error("videos:transfer", 500)
    with pytest.raises(PublishError) as caught:
        pub.prepare(request, meta.token)
    assert caught.value.kind == "transient"

    handle = prepared(pub, request, meta.token)
    assert_live_once(meta, pub.commit(handle, request, meta.token))
    abandoned = [v for v in meta.videos.values() if v.id != handle.value]
    assert len(abandoned) == 1 and abandoned[0].finish_calls == 0


def test_photo_and_video_formats_are_checked_before_any_upload(meta: MetaStandin, tmp_path: Path) -> None:
    pub = publisher(meta, tmp_path)
    with pytest.raises(PublishError) as caught:
        pub.prepare(post("carousel", image(tmp_path, "a.jpg"), video(tmp_path)), meta.token)
    assert caught.value.kind == "permanent" and "reel" in str(caught.value)
    with pytest.raises(PublishError):
        pub.prepare(post("reel", image(tmp_path, "a.jpg")), meta.token)
    assert meta.requests == []
