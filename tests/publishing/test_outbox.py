"""The outbox publisher: bundles a person can post by hand, released exactly once, and read back by reconcile."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from influencer_pipeline.publishing.base import PostMedia, PublishError, PublishRequest
from influencer_pipeline.publishing.ledger import AttemptKey, AttemptView, Ledger
from influencer_pipeline.publishing.orchestrator import RetryPolicy, publish_once
from influencer_pipeline.publishing.outbox import MARKER, OutboxPublisher
from tests.publishing.fake_platform import FakeClock

CAPTION = "Sunday market in Porto 🍋\n\n#porto #travel #aiart"


@pytest.fixture
def media(tmp_path: Path) -> tuple[PostMedia, ...]:
    folder = tmp_path / "media"
    folder.mkdir()
    items = []
    for name, data in (("look.jpg", b"jpeg bytes"), ("detail.jpg", b"more jpeg bytes")):
        (folder / name).write_bytes(data)
        items.append(PostMedia(folder / name, "image", sha256=hashlib.sha256(data).hexdigest()))
    return tuple(items)


@pytest.fixture
def outbox(tmp_path: Path) -> OutboxPublisher:
    return OutboxPublisher(tmp_path / "outbox")


def make_request(media: tuple[PostMedia, ...], **kw: Any) -> PublishRequest:
    fields: dict[str, Any] = {
        "post_id": "2026-11-23-ava-1",
        "platform": "instagram",
        "account_id": "ava.studio",
        "format": "carousel",
        "caption": CAPTION,
        "media": media,
        "title": "Porto",
        "scheduled_for": "2026-11-23T18:00:00+00:00",
    }
    return PublishRequest(**(fields | kw))


def test_prepare_writes_a_complete_bundle(outbox: OutboxPublisher, media: tuple[PostMedia, ...]) -> None:
    request = make_request(media)

    handle = outbox.prepare(request, "")

    bundle = outbox.root / "2026-11-23-ava-1" / "instagram"
    assert handle.platform == "outbox" and outbox.root / handle.value == bundle
    assert sorted(path.name for path in bundle.iterdir()) == [
        "01-look.jpg",
        "02-detail.jpg",
        "caption.txt",
        "post.json",
    ]
    assert (bundle / "01-look.jpg").read_bytes() == b"jpeg bytes"
    assert (bundle / "caption.txt").read_text(encoding="utf-8") == CAPTION
    metadata = json.loads((bundle / "post.json").read_text(encoding="utf-8"))
    assert {key: metadata[key] for key in ("platform", "account", "title", "format", "scheduled_for")} == {
        "platform": "instagram",
        "account": "ava.studio",
        "title": "Porto",
        "format": "carousel",
        "scheduled_for": "2026-11-23T18:00:00+00:00",
    }
    assert metadata["hashtags"] == ["#porto", "#travel", "#aiart"] and metadata["ai_generated"] is True
    assert [item["sha256"] for item in metadata["media"]] == [item.sha256 for item in media]
    assert any("AI-generated" in step for step in metadata["how_to_post"])
    assert [path.name for path in bundle.parent.iterdir()] == ["instagram"]  # no staging folder left behind


def test_commit_releases_once_and_reconcile_reads_it(outbox: OutboxPublisher, media: tuple[PostMedia, ...]) -> None:
    request = make_request(media)
    handle = outbox.prepare(request, "")
    outbox.wait_ready(handle, "")
    assert outbox.reconcile(handle, request, "") is None

    published = outbox.commit(handle, request, "")
    marker = outbox.root / handle.value / MARKER
    first_marker = marker.read_bytes()

    assert published.remote_id == handle.value and published.permalink.startswith("file://")
    assert outbox.reconcile(handle, request, "") == published
    assert outbox.commit(handle, request, "") == published  # a second commit reports the first release
    assert marker.read_bytes() == first_marker
    assert not [path for path in marker.parent.iterdir() if path.name.startswith(".")]


def test_racing_commits_write_one_marker(outbox: OutboxPublisher, media: tuple[PostMedia, ...]) -> None:
    request = make_request(media)
    handle = outbox.prepare(request, "")
    barrier = threading.Barrier(8)
    results: list[Any] = []

    def commit() -> None:
        barrier.wait()
        results.append(outbox.commit(handle, request, ""))

    threads = [threading.Thread(target=commit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 8 and len(set(results)) == 1
    record = json.loads((outbox.root / handle.value / MARKER).read_text(encoding="utf-8"))
    assert record["remote_id"] == handle.value


def test_prepare_replaces_an_unreleased_bundle_and_leaves_a_released_one_alone(
    outbox: OutboxPublisher, media: tuple[PostMedia, ...]
) -> None:
    handle = outbox.prepare(make_request(media), "")
    bundle = outbox.root / handle.value

    outbox.prepare(make_request(media, caption="new caption"), "")
    assert (bundle / "caption.txt").read_text(encoding="utf-8") == "new caption"

    outbox.commit(handle, make_request(media), "")
    outbox.prepare(make_request(media, caption="too late"), "")
    assert (bundle / "caption.txt").read_text(encoding="utf-8") == "new caption"


def test_media_changed_since_planning_is_refused(outbox: OutboxPublisher, media: tuple[PostMedia, ...]) -> None:
    media[0].path.write_bytes(b"edited after planning")

    with pytest.raises(PublishError, match="changed since it was planned") as error:
        outbox.prepare(make_request(media), "")
    assert error.value.kind == "permanent"
    assert not (outbox.root / "2026-11-23-ava-1" / "instagram").exists()


def test_a_tampered_bundle_is_not_released(outbox: OutboxPublisher, media: tuple[PostMedia, ...]) -> None:
    handle = outbox.prepare(make_request(media), "")
    (outbox.root / handle.value / "02-detail.jpg").write_bytes(b"swapped")

    with pytest.raises(PublishError, match="missing or changed") as error:
        outbox.wait_ready(handle, "")
    assert error.value.kind == "transient"  # a new prepare rewrites the bundle


def test_a_second_account_cannot_overwrite_the_bundle(outbox: OutboxPublisher, media: tuple[PostMedia, ...]) -> None:
    outbox.prepare(make_request(media), "")

    with pytest.raises(PublishError, match=r"account 'ava\.studio'") as error:
        outbox.prepare(make_request(media, account_id="ava.backup"), "")
    assert error.value.kind == "permanent"


def test_publish_once_through_the_outbox(
    ledger: Ledger, outbox: OutboxPublisher, media: tuple[PostMedia, ...], clock: FakeClock
) -> None:
    request = make_request(media)

    view = publish_once(ledger, outbox, request, lambda: "", "worker-1", now=clock.now, sleep=clock.sleep)

    assert view.state == "published" and view.remote_id == "2026-11-23-ava-1/instagram"
    assert (outbox.root / view.remote_id / MARKER).is_file()
    assert view.permalink == (outbox.root / view.remote_id).resolve().as_uri()


def test_outbox_crash_after_release_is_reconciled_not_released_again(
    ledger: Ledger,
    outbox: OutboxPublisher,
    media: tuple[PostMedia, ...],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = make_request(media)
    transition = ledger.transition

    def dies_before_recording(key: AttemptKey, **kw: Any) -> AttemptView:
        if kw["to_state"] == "published":
            raise SystemExit("worker killed after the marker was written")
        return transition(key, **kw)

    monkeypatch.setattr(ledger, "transition", dies_before_recording)
    with pytest.raises(SystemExit):
        publish_once(ledger, outbox, request, lambda: "", "worker-1", now=clock.now, sleep=clock.sleep)
    marker = outbox.root / "2026-11-23-ava-1" / "instagram" / MARKER
    released = marker.read_bytes()
    monkeypatch.undo()

    clock.advance(RetryPolicy().lease_s + 1)
    view = publish_once(ledger, outbox, request, lambda: "", "worker-2", now=clock.now, sleep=clock.sleep)

    assert view.state == "published" and view.commit_count == 1
    assert marker.read_bytes() == released
    assert "reconciled" in ledger.history(view.key)[-1].detail
