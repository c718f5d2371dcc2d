"""Honest outbox states (issue 13, item 7): a released bundle is `ready_to_post` until a person marks it posted.

Runs the real outbox publisher through the ledger's state machine (SQLite and PostgreSQL), as `published_posts`
does for a persona's day, on a fake clock.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from influencer_pipeline.publishing import review
from influencer_pipeline.publishing.base import PublishError
from influencer_pipeline.publishing.due import day_statuses, due_posts, due_runs, overdue_posts
from influencer_pipeline.publishing.ledger import PLANNED, Ledger
from influencer_pipeline.publishing.orchestrator import RetryPolicy, publish_once
from influencer_pipeline.publishing.outbox import (
    LEGACY_MARKER,
    MARKER,
    POSTED,
    OutboxPublisher,
    bundle_folder,
    outbox_account,
    record_posted,
)
from influencer_pipeline.publishing.review import PlanEntry, PostKey, ReviewError
from tests.publishing.fake_platform import START, FakeClock
from tests.publishing.test_outbox import make_request, media  # noqa: F401 (fixture)

POLICY = RetryPolicy(base_s=60, cap_s=600, lease_s=300, jitter=lambda: 1.0, reconcile_delay_s=1)
DAY = START.date().isoformat()
KEY = PostKey("ava", "p-1", "instagram")


def release(ledger: Ledger, clock: FakeClock, root: Path, media) -> list[str]:  # noqa: F811
    """What `published_posts` does in outbox mode: pick the due rows, release each bundle, settle the row."""
    states = []
    now = clock.now()
    for item in due_posts(ledger, now, persona="ava", day=DAY):
        assert review.pick(ledger, item.key, worker="run-1", now=now, lease_until=now + timedelta(seconds=300))
        request = make_request(media, post_id=item.key.post_id, account_id=outbox_account("ava", item.key.platform))
        publisher = OutboxPublisher(root / "ava")
        view = publish_once(ledger, publisher, request, lambda: "", "run-1", now=clock.now, sleep=clock.sleep,
                            policy=POLICY)  # fmt: skip
        review.settle(ledger, item.key, view, worker="run-1", now=clock.now())
        states.append(view.state)
    return states


@pytest.fixture
def released(ledger: Ledger, clock: FakeClock, tmp_path: Path, media) -> Path:  # noqa: F811
    entries = [PlanEntry("p-1", "instagram", clock.now() + timedelta(minutes=5))]
    review.register_day(ledger, "ava", DAY, entries, approval="auto", content_version="v1", now=clock.now())
    clock.advance(600)
    assert release(ledger, clock, tmp_path / "outbox", media) == ["published"]  # the attempt: released
    return bundle_folder(tmp_path / "outbox", "ava", "p-1", "instagram")


def test_a_released_outbox_bundle_is_ready_to_post_not_published(ledger, clock, released) -> None:
    [status] = day_statuses(ledger, "ava", DAY)
    assert status.state == "ready_to_post", "nobody has posted the bundle: it must not say published"
    assert (released / MARKER).is_file() and not (released / LEGACY_MARKER).exists()
    assert due_runs(ledger, clock.now()) == [], "a bundle waiting for a person is never released twice"
    assert overdue_posts(ledger, clock.now() + timedelta(days=1), timedelta(minutes=30)) == []


def test_marking_it_posted_publishes_it_once(ledger, clock, released) -> None:
    record_posted(released, by="mia", now=clock.now(), url="https://www.instagram.com/p/abc/")
    view = review.mark_posted(ledger, KEY, now=clock.now())
    assert view.status == "published"
    assert review.mark_posted(ledger, KEY, now=clock.now()).status == "published"  # idempotent
    [status] = day_statuses(ledger, "ava", DAY)
    assert status.state == "published"
    marker = json.loads((released / POSTED).read_text())
    assert marker["posted_by"] == "mia" and marker["url"].endswith("/p/abc/")


def test_only_a_ready_bundle_can_be_marked_posted(ledger, clock, tmp_path) -> None:
    entries = [PlanEntry("p-2", "instagram", clock.now() + timedelta(hours=5))]
    review.register_day(ledger, "ava", DAY, entries, approval="required", content_version="v1", now=clock.now())
    with pytest.raises(ReviewError, match=r"draft.*ready_to_post"):
        review.mark_posted(ledger, PostKey("ava", "p-2", "instagram"), now=clock.now())
    folder = tmp_path / "never-released"
    folder.mkdir()
    with pytest.raises(PublishError, match="never released"):
        record_posted(folder, by="mia", now=clock.now())


def test_a_crashed_outbox_run_is_closed_as_ready_to_post(ledger, clock, released) -> None:
    with ledger.engine.begin() as connection:  # the state a run leaves when it dies before `settle`
        connection.execute(update(PLANNED).values(status="scheduled"))
    assert due_runs(ledger, clock.now()) == []
    view = review.get(ledger, KEY)
    assert view is not None and view.status == "ready_to_post"


def test_a_bundle_released_under_the_old_marker_name_is_not_released_again(tmp_path, media) -> None:  # noqa: F811
    publisher = OutboxPublisher(tmp_path / "outbox")
    request = make_request(media)
    handle = publisher.prepare(request, "")
    first = publisher.commit(handle, request, "")
    bundle = publisher.root / handle.value
    (bundle / MARKER).rename(bundle / LEGACY_MARKER)  # as an older release left it
    assert publisher.reconcile(handle, request, "") == first
    assert publisher.commit(handle, request, "") == first
    assert not (bundle / MARKER).exists()
