"""What the due-posts sensor asks for: due posts that are not final, and failed attempts again once their retry
time comes (the run key changes with the attempt count, so a retry is a new run, never a repeated one)."""

from __future__ import annotations

from datetime import date, timedelta

from influencer_pipeline.content.plan import ContentPlan, PlannedPost
from influencer_pipeline.defs.publishing import pending_posts
from influencer_pipeline.publishing.ledger import Ledger
from influencer_pipeline.publishing.orchestrator import publish_once
from tests.publishing.fake_platform import START, FakeClock, FakePlatform, rejected, transient
from tests.publishing.test_orchestrator import make_request


def plan_with(post_id: str, at) -> ContentPlan:
    post = PlannedPost(
        id=post_id,
        theme="t",
        format="image",
        image_prompts=["ohwx woman"],
        captions={"instagram": "hello"},
        platforms=["instagram"],
        publish_at=at,
    )
    return ContentPlan(persona="ava", date=date(2026, 11, 23), posts=[post])


def test_due_posts_are_pending_until_final_and_failed_ones_come_back_when_due(tmp_path) -> None:
    clock = FakeClock()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    fake = FakePlatform(clock)
    request = make_request("p-1", platform="instagram")

    assert pending_posts(plan_with("p-1", START + timedelta(hours=1)), ledger, clock.now()) == []  # not due yet
    plan = plan_with("p-1", START - timedelta(minutes=1))
    assert pending_posts(plan, ledger, clock.now()) == ["p-1/instagram/0"]

    fake.inject("prepare", transient())
    view = publish_once(ledger, fake, request, lambda: "token-1", "w", now=clock.now, sleep=clock.sleep)
    assert view.state == "queued" and view.next_attempt_at > clock.now()
    assert pending_posts(plan, ledger, clock.now()) == []  # backing off: not asked for again yet
    clock.advance_to(view.next_attempt_at)
    assert pending_posts(plan, ledger, clock.now()) == [f"p-1/instagram/{view.attempts}"]  # due again: new key

    published = publish_once(ledger, fake, request, lambda: "token-1", "w", now=clock.now, sleep=clock.sleep)
    assert published.state == "published" and len(fake.live_posts("p-1")) == 1
    assert pending_posts(plan, ledger, clock.now()) == []


def test_permanently_failed_posts_are_not_retried(tmp_path) -> None:
    clock = FakeClock()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    fake = FakePlatform(clock)
    fake.inject("prepare", rejected("media type not supported"))
    request = make_request("p-2", platform="instagram")
    view = publish_once(ledger, fake, request, lambda: "token-1", "w", now=clock.now, sleep=clock.sleep)
    assert view.state == "failed"
    clock.advance(86400)
    assert pending_posts(plan_with("p-2", START - timedelta(minutes=1)), ledger, clock.now()) == []
