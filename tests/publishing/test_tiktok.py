"""TikTok publisher against the Content Posting API stand-in: every scenario asserts from the stand-in's own record
that the video went out exactly once (or not at all) with exactly the file's bytes, and that an ambiguous upload
is read back (status fetch) rather than sent again."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from influencer_pipeline.publishing.base import CommitOutcomeUnknown, PostMedia, PublishError, PublishRequest
from influencer_pipeline.publishing.tiktok import ChunkPlan, ChunkRules, MiB, TikTokPublisher, plan_chunks
from influencer_pipeline.video import ffmpeg
from tests.publishing.tiktok_standin import Creator, TikTokStandin

TOKEN = "act.secret-tiktok-token-0123456789"
KiB = 1024
RULES = ChunkRules(min_chunk=64 * KiB, max_chunk=256 * KiB, max_final_chunk=512 * KiB)  # TikTok's, scaled down
SIZE = 300_000  # four chunks of 64 KiB, the last one absorbing the remainder
NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


def make_video(path: Path, width: int, height: int, seconds: float, size: int) -> Path:
    """A real H.264 MP4 (so the publisher can probe its length), padded to `size` bytes with a `free` box."""
    frames = ["-f", "lavfi", "-i", f"color=c=red:s={width}x{height}:r=1:d={seconds}"]
    ffmpeg.run([*frames, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)], what="video")
    padding = size - path.stat().st_size
    with open(path, "ab") as stream:
        stream.write(struct.pack(">I4s", padding, b"free") + bytes(i % 251 for i in range(padding - 8)))
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("tiktok-media") / "reel.mp4", 72, 128, 2, SIZE)


def standin_with(**options: object) -> TikTokStandin:
    limits = {"min_chunk": RULES.min_chunk, "max_chunk": RULES.max_chunk, "max_final_chunk": RULES.max_final_chunk}
    return TikTokStandin(tokens=(TOKEN,), **{**limits, **options})


@pytest.fixture
def standin() -> Iterator[TikTokStandin]:
    with standin_with() as server:
        yield server


def publisher(standin: TikTokStandin, **overrides: object) -> TikTokPublisher:
    options: dict = {
        "base_url": standin.url,
        "chunk_bytes": 64 * KiB,
        "chunk_rules": RULES,
        "timeout_s": 5.0,
        "poll_interval_s": 0.01,
        "max_polls": 4,
        "clock": lambda: NOW,
    }
    return TikTokPublisher(**{**options, **overrides})


def request(video: Path, ai_generated: bool = True) -> PublishRequest:
    return PublishRequest(
        post_id="p1",
        platform="tiktok",
        account_id="ava",
        format="reel",
        caption="Golden hour on the pier #ai",
        media=(PostMedia(video, "video"),),
        ai_generated=ai_generated,
    )


def test_a_direct_post_goes_out_once_labelled_as_ai_after_processing(standin: TikTokStandin, video: Path) -> None:
    standin.processing_polls = 2
    tiktok, post = publisher(standin), request(video)
    handle = tiktok.prepare(post, TOKEN)
    tiktok.wait_ready(handle, TOKEN)
    published = tiktok.commit(handle, post, TOKEN)

    [live] = standin.posts
    assert live.content == video.read_bytes() and standin.inbox == []
    assert published.remote_id == live.post_id
    assert published.permalink == f"https://www.tiktok.com/@ava.virtual/video/{live.post_id}"
    publish = standin.publishes[handle.value]
    assert publish.body["post_info"]["is_aigc"] is True
    assert publish.body["post_info"]["privacy_level"] == "SELF_ONLY"
    assert publish.body["source_info"] == {
        "source": "FILE_UPLOAD",
        "video_size": SIZE,
        "chunk_size": 64 * KiB,
        "total_chunk_count": 4,
    }
    assert [(c.first, c.arrived) for c in publish.chunks] == [
        (0, 65536),
        (65536, 65536),
        (131072, 65536),
        (196608, 103392),
    ]
    assert not any(chunk.authorization for chunk in publish.chunks)  # the token goes to the API host only
    assert (
        standin.requests
        == ["creator_info", "init", "status", "status", "chunk", "chunk", "chunk", "final"] + ["status"] * 3
    )
    assert handle.extra["expires_at"] == "2026-11-23T18:50:00+00:00"


def test_api_calls_and_uploads_go_to_tiktoks_own_hosts(standin: TikTokStandin, video: Path) -> None:
    """The publisher, built as in production with only `base_url` swapped, calls open.tiktokapis.com and uploads
    to the URL TikTok handed out (open-upload.tiktokapis.com); calls that drop the real host are refused."""
    tiktok, post = publisher(standin), request(video)
    handle = tiktok.prepare(post, TOKEN)
    tiktok.commit(handle, post, TOKEN)
    assert handle.extra["upload_url"].startswith(f"{standin.url}/open-upload.tiktokapis.com/upload/")
    assert "wrong-host" not in standin.requests and len(standin.posts) == 1

    auth = {"Authorization": f"Bearer {TOKEN}"}
    hostless = requests.post(f"{standin.url}/v2/post/publish/creator_info/query/", json={}, headers=auth, timeout=5)
    upload = handle.extra["upload_url"].replace("/open-upload.tiktokapis.com", "")
    stray = requests.put(upload, data=b"x", headers={"Content-Range": "bytes 0-0/1"}, timeout=5)
    assert (hostless.status_code, stray.status_code) == (404, 404)
    assert standin.requests[-2:] == ["wrong-host", "wrong-host"] and len(standin.posts) == 1


def test_an_inbox_upload_needs_only_the_upload_scope_and_lands_in_the_inbox(
    video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with standin_with(scopes=frozenset({"video.upload"})) as standin, caplog.at_level(logging.WARNING):
        tiktok, post = publisher(standin, mode="inbox"), request(video)
        handle = tiktok.prepare(post, TOKEN)
        tiktok.wait_ready(handle, TOKEN)
        published = tiktok.commit(handle, post, TOKEN)

    [delivered] = standin.inbox
    assert standin.posts == [] and delivered.content == video.read_bytes()
    assert published.remote_id == handle.value and published.permalink == ""
    assert "creator_info" not in standin.requests
    assert list(standin.publishes[handle.value].body) == ["source_info"]  # the inbox init takes nothing else
    assert "AI-generated label" in caplog.text  # so the person must set it in the app


@pytest.mark.parametrize(
    ("size", "preferred", "plan"),
    [
        (3 * MiB, 10 * MiB, ChunkPlan(3 * MiB, 3 * MiB, 1)),  # under 5 MiB: one chunk, whatever is preferred
        (7 * MiB, 10 * MiB, ChunkPlan(7 * MiB, 7 * MiB, 1)),
        (50 * MiB, 10 * MiB, ChunkPlan(50 * MiB, 10 * MiB, 5)),
        (52 * MiB + 123, 10 * MiB, ChunkPlan(52 * MiB + 123, 10 * MiB, 5)),  # the last chunk absorbs the rest
        (200 * MiB, 1 * MiB, ChunkPlan(200 * MiB, 5 * MiB, 40)),  # chunks are at least 5 MiB
        (300 * MiB, 100 * MiB, ChunkPlan(300 * MiB, 64 * MiB, 4)),  # and at most 64 MiB
        (6000 * MiB, 5 * MiB, ChunkPlan(6000 * MiB, 6 * MiB, 1000)),  # at most 1000 chunks
    ],
)
def test_chunk_plans_follow_tiktoks_rules(size: int, preferred: int, plan: ChunkPlan) -> None:
    assert plan_chunks(size, preferred) == plan
    last_first, last_end = plan.span(plan.total_chunk_count - 1)
    assert last_end == size and last_end - last_first <= 128 * MiB


def test_a_video_too_large_to_chunk_is_a_permanent_error() -> None:
    with pytest.raises(PublishError, match="cannot be split") as caught:
        plan_chunks(70_000 * MiB, 10 * MiB)
    assert caught.value.kind == "permanent"


def test_a_video_longer_than_the_creator_may_post_is_refused_before_init(video: Path) -> None:
    standin = standin_with(creator=Creator(max_video_post_duration_sec=1))
    with standin, pytest.raises(PublishError, match="at most 1 s") as caught:
        publisher(standin).prepare(request(video), TOKEN)

    assert caught.value.kind == "permanent"
    assert standin.requests == ["creator_info"] and standin.publishes == {}


def test_a_privacy_level_the_account_does_not_offer_is_refused_before_init(video: Path) -> None:
    private_account = Creator(privacy_level_options=("FOLLOWER_OF_CREATOR", "SELF_ONLY"))
    standin = standin_with(creator=private_account)
    with standin, pytest.raises(PublishError, match="FOLLOWER_OF_CREATOR") as caught:
        publisher(standin, privacy_level="PUBLIC_TO_EVERYONE").prepare(request(video), TOKEN)

    assert caught.value.kind == "permanent" and standin.publishes == {}


def test_interactions_the_creator_disabled_stay_disabled(video: Path) -> None:
    with standin_with(creator=Creator(comment_disabled=True, duet_disabled=True)) as standin:
        handle = publisher(standin).prepare(request(video, ai_generated=False), TOKEN)

    post_info = standin.publishes[handle.value].body["post_info"]
    assert (post_info["disable_comment"], post_info["disable_duet"], post_info["disable_stitch"]) == (True, True, False)
    assert post_info["is_aigc"] is False


@pytest.mark.parametrize("fault", ["lost-response", "slow"])
def test_a_final_chunk_stored_without_an_answer_is_ambiguous_and_reconciles_to_the_one_post(
    standin: TikTokStandin, video: Path, fault: str
) -> None:
    standin.fail("final", fault)
    tiktok, post = publisher(standin, timeout_s=0.3), request(video)
    handle = tiktok.prepare(post, TOKEN)
    with pytest.raises(CommitOutcomeUnknown):
        tiktok.commit(handle, post, TOKEN)

    found = tiktok.reconcile(handle, post, TOKEN)

    [live] = standin.posts
    assert found is not None and found.remote_id == live.post_id
    assert len(standin.publishes) == 1 and standin.bytes_arrived() == SIZE


@pytest.mark.parametrize("fault", ["drop", "500"])
def test_a_chunk_lost_mid_upload_reconciles_to_not_published_and_a_new_post_goes_out_once(
    standin: TikTokStandin, video: Path, fault: str
) -> None:
    standin.fail("chunk", "ok", fault)
    tiktok, post = publisher(standin), request(video)
    first = tiktok.prepare(post, TOKEN)
    with pytest.raises(CommitOutcomeUnknown):
        tiktok.commit(first, post, TOKEN)

    assert tiktok.reconcile(first, post, TOKEN) is None  # the bytes never all arrived, and only we hold the URL
    arrived = standin.bytes_arrived()
    with pytest.raises(PublishError, match="cannot resume") as caught:
        tiktok.commit(first, post, TOKEN)  # committing the dead handle again sends nothing
    assert caught.value.kind == "transient" and standin.bytes_arrived() == arrived

    second = tiktok.prepare(post, TOKEN)
    tiktok.commit(second, post, TOKEN)

    [live] = standin.posts
    assert live.publish_id == second.value and live.content == video.read_bytes()
    assert standin.publishes[first.value].status == "PROCESSING_UPLOAD"  # never went out


def test_media_rejected_in_processing_is_a_permanent_error_and_nothing_goes_out(video: Path) -> None:
    with standin_with(reject_media="file_format_check_failed", processing_polls=1) as standin:
        tiktok, post = publisher(standin), request(video)
        handle = tiktok.prepare(post, TOKEN)
        with pytest.raises(PublishError, match="file_format_check_failed") as caught:
            tiktok.commit(handle, post, TOKEN)
        reconciled = tiktok.reconcile(handle, post, TOKEN)

    assert caught.value.kind == "permanent" and reconciled is None
    assert standin.posts == [] and standin.inbox == []


def test_processing_beyond_the_poll_budget_is_unknown_until_a_later_reconcile_sees_it_live(
    video: Path,
) -> None:
    with standin_with(processing_polls=8) as standin:
        tiktok, post = publisher(standin, max_polls=3), request(video)
        handle = tiktok.prepare(post, TOKEN)
        with pytest.raises(CommitOutcomeUnknown, match="still processing"):
            tiktok.commit(handle, post, TOKEN)
        with pytest.raises(PublishError, match="still processing") as undecided:
            tiktok.reconcile(handle, post, TOKEN)
        assert undecided.value.kind == "transient" and standin.posts == []
        found = tiktok.reconcile(handle, post, TOKEN)

    [live] = standin.posts
    assert found is not None and found.remote_id == live.post_id


def test_a_post_awaiting_moderation_is_published_under_its_publish_id_then_found_by_post_id(video: Path) -> None:
    with standin_with(moderation_polls=1) as standin:
        tiktok, post = publisher(standin), request(video)
        handle = tiktok.prepare(post, TOKEN)
        published = tiktok.commit(handle, post, TOKEN)
        later = tiktok.reconcile(handle, post, TOKEN)
        again = tiktok.commit(handle, post, TOKEN)  # a finished publish: nothing is sent again

    [live] = standin.posts
    assert published.remote_id == handle.value and published.permalink == ""
    assert later is not None and later.remote_id == live.post_id and again == later
    assert standin.bytes_arrived() == SIZE


@pytest.mark.parametrize(
    ("fault", "kind", "retry_after"),
    [
        ("429", "throttle", 3.0),  # the server's Retry-After
        ("spam_risk_too_many_posts", "throttle", 6 * 3600.0),
        ("reached_active_user_cap", "throttle", 24 * 3600.0),
        ("401", "auth", None),
        ("scope_not_authorized", "auth", None),
        ("spam_risk_user_banned_from_posting", "permanent", None),
        ("invalid_params", "permanent", None),
        ("500", "transient", None),
        ("drop", "transient", None),
    ],
)
def test_init_refusals_are_classified(
    standin: TikTokStandin, video: Path, fault: str, kind: str, retry_after: float | None
) -> None:
    standin.fail("init", fault)
    with pytest.raises(PublishError) as caught:
        publisher(standin).prepare(request(video), TOKEN)

    assert (caught.value.kind, caught.value.retry_after) == (kind, retry_after)
    assert standin.publishes == {} and standin.posts == []


def test_an_unaudited_client_may_post_only_self_only_to_a_private_account(video: Path) -> None:
    with standin_with(audited=False) as standin:
        with pytest.raises(PublishError, match="make the account private") as caught:
            publisher(standin).prepare(request(video), TOKEN)
        assert caught.value.kind == "permanent"

        standin.account_private = True
        tiktok, post = publisher(standin), request(video)
        tiktok.commit(tiktok.prepare(post, TOKEN), post, TOKEN)

    assert len(standin.posts) == 1


def test_the_init_rate_limit_throttles_the_seventh_post_in_a_minute(standin: TikTokStandin, video: Path) -> None:
    tiktok, post = publisher(standin), request(video)
    for _ in range(6):
        tiktok.prepare(post, TOKEN)
    with pytest.raises(PublishError) as caught:
        tiktok.prepare(post, TOKEN)

    assert (caught.value.kind, caught.value.retry_after) == ("throttle", 60.0)
    assert len(standin.publishes) == 6 and standin.posts == []  # inits without bytes never go out


def test_the_access_token_never_appears_in_errors_logs_or_reprs(
    standin: TikTokStandin, video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tiktok, post = publisher(standin), request(video)
    with caplog.at_level(logging.DEBUG):
        handle = tiktok.prepare(post, TOKEN)
        standin.revoke(TOKEN)  # every API answer from now on is a 401 that quotes the token
        errors = []
        for call in (lambda: tiktok.prepare(post, TOKEN), lambda: tiktok.wait_ready(handle, TOKEN)):
            with pytest.raises(PublishError) as caught:
                call()
            errors.append(caught.value)
        for call in (tiktok.commit, tiktok.reconcile):
            with pytest.raises(PublishError) as caught:
                call(handle, post, TOKEN)
            errors.append(caught.value)

    assert [error.kind for error in errors] == ["auth"] * 4
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(handle), repr(tiktok), caplog.text]
    assert all(TOKEN not in text for text in texts)
    assert standin.posts == [] and standin.bytes_arrived() == 0
