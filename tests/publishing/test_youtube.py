"""YouTube publisher against the resumable-upload stand-in: every scenario asserts from the stand-in's own record
that the video exists exactly once (or not at all), with exactly the file's bytes, and that a resumed upload sent
only the bytes the session was missing."""

from __future__ import annotations

import logging
import shutil
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from influencer_pipeline.publishing.base import CommitOutcomeUnknown, PostMedia, PublishError, PublishRequest
from influencer_pipeline.publishing.youtube import (
    CHUNK_GRANULARITY,
    UploadSessionGone,
    YouTubePublisher,
    seconds_until_quota_reset,
)
from influencer_pipeline.video import ffmpeg
from tests.publishing.youtube_standin import YouTubeStandin

TOKEN = "ya29.secret-access-token-0123456789"
FRESH_TOKEN = "ya29.fresh-access-token-9876543210"
SIZE = 3 * CHUNK_GRANULARITY + 100_000  # four chunks of 256 KiB, the last one short
NOW = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)  # 10:00 in Los Angeles


def make_video(path: Path, width: int, height: int, seconds: float, size: int) -> Path:
    """A real H.264 MP4 (so the publisher can probe its shape and length), padded to `size` bytes with a `free`
    box, which every MP4 reader skips: big enough for several upload chunks, cheap to make."""
    frames = ["-f", "lavfi", "-i", f"color=c=blue:s={width}x{height}:r=1:d={seconds}"]
    ffmpeg.run([*frames, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)], what="video")
    padding = size - path.stat().st_size
    with open(path, "ab") as stream:
        stream.write(struct.pack(">I4s", padding, b"free") + bytes(range(256)) * ((padding - 8) // 256))
        stream.write(b"\0" * ((padding - 8) % 256))
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("youtube-media")
    shapes = {"vertical": (72, 128, 2), "square": (96, 96, 2), "horizontal": (128, 72, 2), "long": (72, 128, 181)}
    return {name: make_video(folder / f"{name}.mp4", w, h, s, SIZE) for name, (w, h, s) in shapes.items()}


@pytest.fixture
def standin() -> Iterator[YouTubeStandin]:
    with YouTubeStandin(tokens=(TOKEN, FRESH_TOKEN)) as server:
        yield server


def publisher(standin: YouTubeStandin, **overrides: object) -> YouTubePublisher:
    options: dict = {
        "base_url": standin.url,
        "chunk_bytes": CHUNK_GRANULARITY,
        "timeout_s": 5.0,
        "backoff_s": 0.01,
        "clock": lambda: NOW,
    }
    return YouTubePublisher(**{**options, **overrides})


def request(video: Path, caption: str = "Golden hour on the pier #ai #travel", **fields: object) -> PublishRequest:
    defaults: dict = {
        "post_id": "p1",
        "platform": "youtube",
        "account_id": "c1",
        "format": "reel",
        "title": "Golden hour",
    }
    return PublishRequest(caption=caption, media=(PostMedia(video, "video"),), **defaults | fields)


def test_a_vertical_short_is_uploaded_in_chunks_and_published_once(
    standin: YouTubeStandin, videos: dict[str, Path]
) -> None:
    youtube, post = publisher(standin), request(videos["vertical"])
    handle = youtube.prepare(post, TOKEN)
    youtube.wait_ready(handle, TOKEN)
    published = youtube.commit(handle, post, TOKEN)

    [video] = standin.videos
    assert video.content == videos["vertical"].read_bytes()
    assert published.remote_id == video.id and published.permalink == f"https://www.youtube.com/shorts/{video.id}"
    assert video.resource["status"]["containsSyntheticMedia"] is True
    assert video.resource["snippet"]["description"].endswith("\n\n#Shorts")
    session = standin.session(handle.value)
    assert [chunk.first for chunk in session.chunks] == [i * CHUNK_GRANULARITY for i in range(4)]
    assert all(chunk.arrived % CHUNK_GRANULARITY == 0 for chunk in session.chunks[:-1])
    assert standin.bytes_arrived() == SIZE  # no byte sent twice
    assert session.content_type == "video/mp4" and session.total == SIZE
    assert standin.requests == [("POST", "start"), ("PUT", "probe"), *[("PUT", "chunk")] * 3, ("PUT", "final")]


@pytest.mark.parametrize(
    ("shape", "is_short"),
    [("vertical", True), ("square", True), ("horizontal", False), ("long", False)],
)
def test_only_square_or_vertical_videos_of_at_most_three_minutes_are_shorts(
    standin: YouTubeStandin, videos: dict[str, Path], shape: str, is_short: bool
) -> None:
    handle = publisher(standin).prepare(request(videos[shape], ai_generated=False), TOKEN)

    resource = standin.session(handle.value).resource
    assert handle.extra["short"] is is_short
    assert resource["snippet"]["description"].endswith("#Shorts") is is_short
    assert resource["status"]["containsSyntheticMedia"] is False


def test_a_caption_that_already_says_shorts_is_not_tagged_twice(
    standin: YouTubeStandin, videos: dict[str, Path]
) -> None:
    handle = publisher(standin).prepare(request(videos["vertical"], caption="Pier #shorts #ai"), TOKEN)

    assert standin.session(handle.value).resource["snippet"]["description"] == "Pier #shorts #ai"


def test_a_connection_lost_mid_chunk_resumes_from_the_sessions_range_with_only_the_missing_bytes(
    standin: YouTubeStandin, videos: dict[str, Path]
) -> None:
    standin.fail("chunk", "ok", "partial")  # the second chunk: half of it stored, then the connection drops
    youtube, post = publisher(standin), request(videos["vertical"])
    handle = youtube.prepare(post, TOKEN)
    published = youtube.commit(handle, post, TOKEN)

    [video] = standin.videos
    assert published.remote_id == video.id and video.content == videos["vertical"].read_bytes()
    session = standin.session(handle.value)
    stored_when_dropped = CHUNK_GRANULARITY + CHUNK_GRANULARITY // 2
    assert session.chunks[2].first == stored_when_dropped  # resumed where the session said, not where we were
    assert sum(chunk.arrived for chunk in session.chunks[2:]) == SIZE - stored_when_dropped
    assert sum(chunk.stored for chunk in session.chunks) == SIZE


def test_server_errors_during_the_upload_are_retried_after_a_probe(
    standin: YouTubeStandin, videos: dict[str, Path]
) -> None:
    standin.fail("chunk", "ok", "503", "500")
    youtube, post = publisher(standin), request(videos["vertical"])
    handle = youtube.prepare(post, TOKEN)
    youtube.commit(handle, post, TOKEN)

    assert len(standin.videos) == 1
    session = standin.session(handle.value)
    assert [chunk.stored for chunk in session.chunks[1:3]] == [0, 0]  # the refused attempts kept nothing
    assert session.probes == 3  # the first look, then one after each interruption


def test_a_rate_limit_mid_upload_waits_the_servers_retry_after_and_continues(videos: dict[str, Path]) -> None:
    with YouTubeStandin(tokens=(TOKEN,), retry_after="0.05") as standin:
        standin.fail("chunk", "ok", "429")
        youtube, post = publisher(standin), request(videos["vertical"])
        handle = youtube.prepare(post, TOKEN)
        youtube.commit(handle, post, TOKEN)

    [video] = standin.videos
    assert video.content == videos["vertical"].read_bytes()
    session = standin.session(handle.value)
    assert session.probes == 2 and sum(chunk.stored for chunk in session.chunks) == SIZE


def test_a_rate_limit_asking_for_longer_than_max_wait_ends_unknown_not_blocked(
    standin: YouTubeStandin, videos: dict[str, Path]
) -> None:
    standin.fail("chunk", "429")  # Retry-After: 2, more than this publisher will wait inside one commit
    youtube, post = publisher(standin, max_wait_s=1.0), request(videos["vertical"])
    handle = youtube.prepare(post, TOKEN)
    with pytest.raises(CommitOutcomeUnknown):
        youtube.commit(handle, post, TOKEN)

    assert standin.videos == [] and youtube.reconcile(handle, post, TOKEN) is None


def test_interruptions_beyond_patience_end_unknown_then_reconcile_and_a_second_commit_resume(
    standin: YouTubeStandin, videos: dict[str, Path]
) -> None:
    standin.fail("chunk", "ok", "drop", "drop")
    youtube, post = publisher(standin, max_interruptions=1), request(videos["vertical"])
    handle = youtube.prepare(post, TOKEN)
    with pytest.raises(CommitOutcomeUnknown):
        youtube.commit(handle, post, TOKEN)

    assert standin.videos == []
    assert youtube.reconcile(handle, post, TOKEN) is None  # 308: incomplete, the same session resumes
    arrived_before = standin.bytes_arrived()
    published = youtube.commit(handle, post, TOKEN)

    [video] = standin.videos
    assert published.remote_id == video.id and video.content == videos["vertical"].read_bytes()
    assert standin.bytes_arrived() - arrived_before == SIZE - CHUNK_GRANULARITY  # only the missing bytes


@pytest.mark.parametrize("fault", ["lost-response", "slow"])
def test_a_final_chunk_stored_without_an_answer_is_found_by_the_probe_not_sent_again(
    standin: YouTubeStandin, videos: dict[str, Path], fault: str
) -> None:
    standin.fail("final", fault)
    youtube, post = publisher(standin, timeout_s=0.3), request(videos["vertical"])
    handle = youtube.prepare(post, TOKEN)
    published = youtube.commit(handle, post, TOKEN)

    [video] = standin.videos
    assert published.remote_id == video.id
    assert standin.bytes_arrived() == SIZE
    assert standin.requests[-1] == ("PUT", "probe")


def test_an_ambiguous_final_chunk_reconciles_to_the_one_video_and_a_repeated_commit_sends_nothing(
    standin: YouTubeStandin, videos: dict[str, Path]
) -> None:
    standin.fail("final", "lost-response")
    youtube, post = publisher(standin, max_interruptions=0), request(videos["vertical"])
    handle = youtube.prepare(post, TOKEN)
    with pytest.raises(CommitOutcomeUnknown):
        youtube.commit(handle, post, TOKEN)

    reconciled = youtube.reconcile(handle, post, TOKEN)
    again = youtube.commit(handle, post, TOKEN)

    [video] = standin.videos
    assert reconciled is not None and reconciled.remote_id == video.id
    assert again == reconciled
    assert standin.bytes_arrived() == SIZE


def test_a_token_that_expires_mid_upload_is_an_auth_error_and_a_fresh_token_resumes(
    standin: YouTubeStandin, videos: dict[str, Path]
) -> None:
    standin.fail("chunk", "ok", "401")  # the 401 answer echoes the token back
    youtube, post = publisher(standin), request(videos["vertical"])
    handle = youtube.prepare(post, TOKEN)
    with pytest.raises(PublishError) as caught:
        youtube.commit(handle, post, TOKEN)

    assert caught.value.kind == "auth" and TOKEN not in str(caught.value)
    assert standin.videos == []
    assert youtube.reconcile(handle, post, FRESH_TOKEN) is None
    youtube.commit(handle, post, FRESH_TOKEN)
    assert len(standin.videos) == 1
    assert standin.bytes_arrived() == SIZE + CHUNK_GRANULARITY  # the refused chunk, sent once more


def test_an_expired_session_created_nothing_and_a_new_session_publishes_once(
    standin: YouTubeStandin, videos: dict[str, Path]
) -> None:
    standin.fail("chunk", "ok", "expire")
    youtube, post = publisher(standin), request(videos["vertical"])
    first = youtube.prepare(post, TOKEN)
    with pytest.raises(UploadSessionGone) as caught:
        youtube.commit(first, post, TOKEN)
    assert caught.value.kind == "transient"
    assert youtube.reconcile(first, post, TOKEN) is None

    second = youtube.prepare(post, TOKEN)
    youtube.commit(second, post, TOKEN)

    [video] = standin.videos
    assert video.session_id == standin.session(second.value).id
    assert standin.session(first.value).video_id is None


@pytest.mark.parametrize(
    ("fault", "kind", "retry_after"),
    [
        ("quota", "throttle", 14 * 3600.0),  # until midnight Pacific
        ("upload-limit", "throttle", 24 * 3600.0),
        ("429", "throttle", 2.0),  # the server's Retry-After
        ("rate", "throttle", None),
        ("signup", "permanent", None),
        ("500", "transient", None),
        ("drop", "transient", None),
        ("401", "auth", None),
    ],
)
def test_refusals_to_open_a_session_are_classified(
    standin: YouTubeStandin, videos: dict[str, Path], fault: str, kind: str, retry_after: float | None
) -> None:
    standin.fail("start", fault)
    with pytest.raises(PublishError) as caught:
        publisher(standin).prepare(request(videos["vertical"]), TOKEN)

    assert (caught.value.kind, caught.value.retry_after) == (kind, retry_after)
    assert standin.sessions == {} and standin.videos == []


@pytest.mark.parametrize(
    ("now", "hours"),
    [
        (datetime(2026, 11, 23, 18, 0, tzinfo=UTC), 14.0),  # 10:00 PST
        (datetime(2026, 11, 1, 7, 30, tzinfo=UTC), 24.5),  # 00:30 PDT on the day clocks fall back
        (datetime(2026, 3, 8, 8, 30, tzinfo=UTC), 22.5),  # 00:30 PST on the day clocks spring forward
    ],
)
def test_the_quota_resets_at_midnight_pacific_across_daylight_saving_changes(now: datetime, hours: float) -> None:
    assert seconds_until_quota_reset(now) == hours * 3600


@pytest.mark.parametrize(
    ("fields", "rule"),
    [({"title": "<b>Golden</b> hour"}, "no '<' or '>'"), ({"caption": "x" * 5001}, "at most 5000 bytes")],
)
def test_invalid_metadata_is_permanent_and_sends_nothing(
    standin: YouTubeStandin, videos: dict[str, Path], fields: dict, rule: str
) -> None:
    with pytest.raises(PublishError) as caught:
        publisher(standin).prepare(request(videos["vertical"], **fields), TOKEN)

    assert caught.value.kind == "permanent" and rule in str(caught.value)
    assert standin.requests == []


def test_a_file_changed_after_prepare_is_not_uploaded(
    standin: YouTubeStandin, videos: dict[str, Path], tmp_path: Path
) -> None:
    copy = shutil.copy(videos["vertical"], tmp_path / "reel.mp4")
    youtube, post = publisher(standin), request(Path(copy))
    handle = youtube.prepare(post, TOKEN)
    with open(copy, "ab") as stream:
        stream.write(b"more")

    with pytest.raises(PublishError, match="changed since") as caught:
        youtube.commit(handle, post, TOKEN)
    assert caught.value.kind == "permanent" and standin.bytes_arrived() == 0


def test_unaudited_projects_get_public_uploads_locked_private_and_say_so(
    standin: YouTubeStandin, videos: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    youtube, post = publisher(standin, privacy_status="public"), request(videos["horizontal"])
    with caplog.at_level(logging.WARNING):
        published = youtube.commit(youtube.prepare(post, TOKEN), post, TOKEN)

    [video] = standin.videos
    assert standin.sessions[video.session_id].resource["status"]["privacyStatus"] == "public"
    assert video.resource["status"]["privacyStatus"] == "private"
    assert published.permalink == f"https://www.youtube.com/watch?v={video.id}"
    assert "audit" in caplog.text


def test_the_access_token_never_appears_in_errors_logs_or_reprs(
    standin: YouTubeStandin, videos: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    youtube, post = publisher(standin), request(videos["vertical"])
    with caplog.at_level(logging.DEBUG):
        handle = youtube.prepare(post, TOKEN)
        standin.revoke(TOKEN)  # every answer from now on is a 401 that quotes the token
        errors = []
        for call in (youtube.commit, youtube.reconcile):
            with pytest.raises(PublishError) as caught:
                call(handle, post, TOKEN)
            errors.append(caught.value)

    assert [error.kind for error in errors] == ["auth", "auth"]
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(handle), repr(youtube), caplog.text]
    assert all(TOKEN not in text for text in texts)
    assert standin.videos == []


def test_the_stand_in_refuses_an_upload_that_drops_status_from_part_or_misses_the_host(
    standin: YouTubeStandin, videos: dict[str, Path]
) -> None:
    """YouTube sets only the parts `part` names: without `status`, `containsSyntheticMedia` (and the privacy
    status) would be silently lost, so the stand-in refuses the request; a base URL that drops the real host is
    refused too. The publisher, built as in production, passes both checks."""
    youtube, post = publisher(standin), request(videos["vertical"])
    resource = youtube.video_resource(post, short=True)
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Upload-Content-Length": str(SIZE)}
    upload = f"{standin.url}/www.googleapis.com/upload/youtube/v3/videos"
    dropped = requests.post(
        upload, params={"uploadType": "resumable", "part": "snippet"}, json=resource, headers=headers, timeout=5
    )
    hostless = requests.post(
        f"{standin.url}/upload/youtube/v3/videos",
        params={"uploadType": "resumable", "part": "snippet,status"},
        json=resource,
        headers=headers,
        timeout=5,
    )

    assert dropped.status_code == 400 and dropped.json()["error"]["errors"][0]["reason"] == "unexpectedPart"
    assert hostless.status_code == 404
    assert standin.sessions == {}

    handle = youtube.prepare(post, TOKEN)
    youtube.commit(handle, post, TOKEN)
    assert standin.session(handle.value).params["part"] == "snippet,status"
    assert handle.value.startswith(upload)
    assert [v.resource["status"]["containsSyntheticMedia"] for v in standin.videos] == [True]
