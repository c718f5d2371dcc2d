"""Due-post selection and review states, on the ledger alone (SQLite and PostgreSQL), with a fake clock.

Each of issue 10's failures has its test here: a post is never missed after a transient failure or a crashed
worker (run keys change with every release; a tick during a run uses no key), days older than yesterday are
still seen, two personas' same-id posts never hide each other, and a pre-flight block is recorded once instead
of coming back on every tick.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from influencer_pipeline.publishing import review
from influencer_pipeline.publishing.due import day_statuses, due_posts, due_runs, overdue_posts, waiting_for_review
from influencer_pipeline.publishing.ledger import AttemptKey, Ledger
from influencer_pipeline.publishing.orchestrator import RetryPolicy, publish_once
from influencer_pipeline.publishing.review import PlanEntry, PostKey, ReviewError
from tests.publishing.fake_platform import START, FakeClock, FakePlatform, WorkerCrash, crash, rejected, transient
from tests.publishing.test_orchestrator import make_request

POLICY = RetryPolicy(base_s=60, cap_s=600, lease_s=300, jitter=lambda: 1.0, reconcile_delay_s=1)
DAY = START.date().isoformat()


def plan(ledger: Ledger, clock: FakeClock, persona: str = "ava", *, approval: str = "auto", version: str = "v1",
         posts: tuple[tuple[str, str, timedelta], ...] = (("p-1", "fakegram", timedelta(hours=1)),),
         day: str = DAY) -> list[review.PlannedView]:  # fmt: skip
    entries = [PlanEntry(post, platform, clock.now() + offset) for post, platform, offset in posts]
    return review.register_day(
        ledger, persona, day, entries, approval=approval, content_version=version, now=clock.now()
    )


def run_day(ledger: Ledger, fake: FakePlatform, clock: FakeClock, persona: str, day: str = DAY,
            worker: str = "run-1") -> list[str]:  # fmt: skip
    """What `published_posts` does for one persona's day: pick the due rows, publish each, settle it."""
    states = []
    now = clock.now()
    for item in due_posts(ledger, now, persona=persona, day=day):
        if not review.pick(ledger, item.key, worker=worker, now=now, lease_until=now + timedelta(seconds=300)):
            continue
        request = make_request(item.key.post_id, platform=item.key.platform, account_id=f"acct-{persona}",
                               caption=f"{persona} {item.key.post_id}")  # fmt: skip
        view = publish_once(ledger, fake, request, lambda: "token-1", worker, now=clock.now, sleep=clock.sleep,
                            policy=POLICY)  # fmt: skip
        review.settle(ledger, item.key, view, worker=worker, now=clock.now())
        states.append(view.state)
    return states


def keys(ledger: Ledger, clock: FakeClock) -> list[str]:
    return [run.run_key for run in due_runs(ledger, clock.now())]


# -- missed posts


def test_a_transient_failure_gets_a_new_run_key_and_a_tick_during_the_run_asks_for_nothing(ledger, clock) -> None:
    fake = FakePlatform(clock)
    plan(ledger, clock)
    assert keys(ledger, clock) == []  # not due yet
    clock.advance(3600)
    [first] = keys(ledger, clock)

    seen_during: list[str] = []
    fault = transient()
    fault.action = lambda: seen_during.extend(keys(ledger, clock))  # a sensor tick while the run is in flight
    fake.inject("prepare", fault)
    assert run_day(ledger, fake, clock, "ava") == ["queued"]
    assert seen_during == [], "a tick while the run holds the post must not spend the retry's key"
    assert keys(ledger, clock) == []  # backing off
    clock.advance(POLICY.cap_s)
    [retry] = keys(ledger, clock)
    assert retry != first, "the retry needs a key Dagster has not seen, or it is skipped forever"
    assert run_day(ledger, fake, clock, "ava") == ["published"]
    assert keys(ledger, clock) == [] and len(fake.live_posts("p-1")) == 1


def test_a_worker_killed_mid_commit_is_reconciled_by_a_new_run_after_its_lease(ledger, clock) -> None:
    fake = FakePlatform(clock)
    plan(ledger, clock, posts=(("p-1", "fakegram", timedelta(minutes=1)),))
    clock.advance(60)
    [first] = keys(ledger, clock)
    fake.inject("commit", crash(after=True))
    with pytest.raises(WorkerCrash):
        run_day(ledger, fake, clock, "ava")
    assert keys(ledger, clock) == []  # the dead run's leases still hold
    clock.advance(301)
    [recover] = keys(ledger, clock)
    assert recover != first
    assert run_day(ledger, fake, clock, "ava", worker="run-2") == ["published"]
    assert len(fake.live_posts("p-1")) == 1 and [c.landed for c in fake.commits] == [True], (
        "reconciled, not committed again"
    )


def test_a_requested_run_that_never_started_is_asked_for_again_with_a_fresh_key(ledger, clock) -> None:
    plan(ledger, clock, posts=(("p-1", "fakegram", timedelta(minutes=1)),))
    clock.advance(60)
    [first] = keys(ledger, clock)
    clock.advance(60)
    assert keys(ledger, clock) == [first]  # the same request: Dagster skips it while that run is queued
    clock.advance(1800)
    assert keys(ledger, clock) != [first]


def test_posts_of_any_earlier_day_are_still_due(ledger, clock) -> None:
    fake = FakePlatform(clock)
    old_day = (START - timedelta(days=5)).date().isoformat()
    plan(ledger, clock, day=old_day, posts=(("p-old", "fakegram", timedelta(hours=1)),))
    clock.advance(5 * 86400)  # the daemon was down for five days
    [run] = due_runs(ledger, clock.now())
    assert (run.persona, run.day) == ("ava", old_day)
    assert run_day(ledger, fake, clock, "ava", day=old_day) == ["published"]


# -- crossed personas


def test_two_personas_same_day_same_platform_are_both_published(ledger, clock) -> None:
    fake = FakePlatform(clock)
    for persona in ("ava", "bob"):
        plan(ledger, clock, persona, posts=(("p-1", "fakegram", timedelta(minutes=1)),))
        clock.advance(60)
    assert run_day(ledger, fake, clock, "ava") == ["published"]
    [run] = due_runs(ledger, clock.now())  # ava's published post must not hide bob's
    assert run.persona == "bob"
    assert run_day(ledger, fake, clock, "bob") == ["published"]
    assert sorted(p.account_id for p in fake.live_posts("p-1")) == ["acct-ava", "acct-bob"]
    assert {s.state for s in day_statuses(ledger, "bob", DAY)} == {"published"}


# -- blocked posts


def test_a_blocked_post_is_recorded_once_and_released_when_its_content_is_regenerated(ledger, clock) -> None:
    plan(ledger, clock, posts=(("p-1", "fakegram", timedelta(minutes=1)),))
    clock.advance(60)
    [item] = due_posts(ledger, clock.now())
    now = clock.now()
    assert review.pick(ledger, item.key, worker="run-1", now=now, lease_until=now + timedelta(minutes=5))
    review.block(ledger, item.key, ["reel is 216 px wide; TikTok needs 360. Fix: render larger"], worker="run-1",
                 now=now)  # fmt: skip
    [report] = due_runs(ledger, clock.now())  # one run, whose posts_on_time check names the block ...
    assert [i.attempt_state for i in report.items] == ["report"]
    review.mark_reported(ledger, [item.key], clock.now())
    clock.advance(3600)
    assert due_runs(ledger, clock.now()) == [], "a blocked post is not due on every tick"
    [shown] = day_statuses(ledger, "ava", DAY)
    assert shown.state == "blocked" and "360" in shown.last_error
    assert [s.key for s in overdue_posts(ledger, clock.now(), timedelta(minutes=30))] == [item.key]

    plan(ledger, clock, version="v1")  # the same content again: still blocked
    assert day_statuses(ledger, "ava", DAY)[0].state == "blocked"
    plan(ledger, clock, version="v2", posts=(("p-1", "fakegram", timedelta(minutes=-60)),))
    row = review.get(ledger, item.key)
    assert row is not None and row.status == "approved" and row.verdict is None  # late: waits for publish now
    review.publish_now(ledger, item.key, reviewer="ava's creator", now=clock.now())
    assert [run.persona for run in due_runs(ledger, clock.now())] == ["ava"]


# -- review states


def test_required_approval_keeps_drafts_until_approved(ledger, clock) -> None:
    [row] = plan(ledger, clock, approval="required")
    assert row.status == "draft"
    clock.advance(7200)
    assert due_runs(ledger, clock.now()) == []
    assert [s.key for s in waiting_for_review(ledger, clock.now())] == [row.key]
    assert overdue_posts(ledger, clock.now(), timedelta(0)) == []  # waiting for a person is not a failure


def test_approving_before_the_time_schedules_and_after_it_waits_for_publish_now(ledger, clock) -> None:
    on_time, late = plan(
        ledger, clock, approval="required",
        posts=(("p-1", "fakegram", timedelta(hours=1)), ("p-2", "fakegram", timedelta(hours=2))),
    )  # fmt: skip
    assert review.approve(ledger, on_time.key, reviewer="me", now=clock.now()).status == "scheduled"
    clock.advance(3 * 3600)
    assert review.approve(ledger, late.key, reviewer="me", now=clock.now()).status == "approved"
    [run] = due_runs(ledger, clock.now())
    assert [item.key.post_id for item in run.items] == ["p-1"]  # the late one never goes out on its own
    review.publish_now(ledger, late.key, reviewer="me", now=clock.now())
    [run] = due_runs(ledger, clock.now())
    assert sorted(item.key.post_id for item in run.items) == ["p-1", "p-2"]


def test_auto_approval_schedules_on_time_content_and_late_content_waits(ledger, clock) -> None:
    late, on_time = plan(  # in time order
        ledger, clock,
        posts=(("p-1", "fakegram", timedelta(hours=1)), ("p-2", "fakegram", timedelta(hours=-1))),
    )  # fmt: skip
    assert (on_time.status, late.status) == ("scheduled", "approved")
    assert on_time.reviewer == review.AUTO_REVIEWER


def test_hold_keeps_a_scheduled_post_back_until_approved_again(ledger, clock) -> None:
    [row] = plan(ledger, clock)
    review.hold(ledger, row.key, reviewer="me", now=clock.now())
    clock.advance(7200)
    assert due_runs(ledger, clock.now()) == []
    assert review.approve(ledger, row.key, reviewer="me", now=clock.now()).status == "approved"  # its time passed


def test_reschedule_moves_the_time_and_refuses_the_past(ledger, clock) -> None:
    [row] = plan(ledger, clock, approval="required")
    with pytest.raises(ReviewError, match="publish now"):
        review.reschedule(ledger, row.key, clock.now() - timedelta(minutes=1), reviewer="me", now=clock.now())
    moved = review.reschedule(ledger, row.key, clock.now() + timedelta(days=1), reviewer="me", now=clock.now())
    assert moved.status == "draft" and moved.rescheduled
    review.approve(ledger, row.key, reviewer="me", now=clock.now())
    plan(ledger, clock, approval="required", version="v2")  # regenerated: back to draft, keeps the person's time
    again = review.get(ledger, row.key)
    assert again is not None and again.status == "draft" and again.publish_at == moved.publish_at
    clock.advance(3600 * 2)
    assert due_runs(ledger, clock.now()) == []


def test_review_actions_stop_once_a_publish_has_started_and_failed_posts_are_requeued(ledger, clock) -> None:
    fake = FakePlatform(clock)
    plan(ledger, clock, posts=(("p-1", "fakegram", timedelta(minutes=1)),))
    clock.advance(60)
    fake.inject("prepare", rejected("media type not supported"))
    assert run_day(ledger, fake, clock, "ava") == ["failed"]
    key = PostKey("ava", "p-1", "fakegram")
    for action in (review.hold, review.publish_now):
        with pytest.raises(ReviewError, match="failed"):
            action(ledger, key, reviewer="me", now=clock.now())
    clock.advance(7200)
    [late] = overdue_posts(ledger, clock.now(), timedelta(minutes=30))
    assert (late.state, late.last_error) == ("failed", "media type not supported")
    assert due_posts(ledger, clock.now()) == []  # a permanent failure is never retried by itself
    review.requeue(ledger, key, operator="me", now=clock.now(), detail="fixed the media")
    assert run_day(ledger, fake, clock, "ava") == ["published"]
    assert overdue_posts(ledger, clock.now(), timedelta(minutes=30)) == []


def test_unknown_approval_policy_is_refused(ledger, clock) -> None:
    with pytest.raises(ReviewError, match="required"):
        plan(ledger, clock, approval="sometimes")


def test_a_finished_attempt_left_unsettled_by_a_dying_run_is_closed_not_picked(ledger, clock) -> None:
    fake = FakePlatform(clock)
    plan(ledger, clock, posts=(("p-1", "fakegram", timedelta(minutes=1)),))
    clock.advance(60)
    assert run_day(ledger, fake, clock, "ava") == ["published"]
    row = review.get(ledger, PostKey("ava", "p-1", "fakegram"))
    assert row is not None and row.status == "published"
    # force the state a run leaves when it dies between the platform's answer and `settle`
    from sqlalchemy import update

    from influencer_pipeline.publishing.ledger import PLANNED

    with ledger.engine.begin() as connection:
        connection.execute(update(PLANNED).values(status="scheduled"))
    assert due_runs(ledger, clock.now()) == []
    closed = review.get(ledger, PostKey("ava", "p-1", "fakegram"))
    assert closed is not None and closed.status == "published"


def test_an_attempt_requeued_straight_in_the_ledger_is_due_again(ledger, clock) -> None:
    """Operators following the older docs requeue with `Ledger.requeue`: the planned row must follow."""
    fake = FakePlatform(clock)
    plan(ledger, clock, posts=(("p-1", "fakegram", timedelta(minutes=1)),))
    clock.advance(60)
    fake.inject("commit", rejected("caption refused"))
    assert run_day(ledger, fake, clock, "ava") == ["failed"]
    ledger.requeue(AttemptKey("p-1", "acct-ava"), operator="me", now=clock.now(), detail="fixed")
    assert run_day(ledger, fake, clock, "ava") == ["published"]
    assert review.get(ledger, PostKey("ava", "p-1", "fakegram")).status == "published"


def test_a_failure_whose_run_died_before_its_check_gets_a_run_that_reports_it(ledger, clock) -> None:
    """The run that recorded a permanent failure can die before its posts_on_time check is evaluated; the
    failure must still reach a check, so the day gets a run until a check has named it."""
    fake = FakePlatform(clock)
    plan(ledger, clock, posts=(("p-1", "fakegram", timedelta(minutes=1)),))
    clock.advance(60)
    fake.inject("prepare", rejected("media type not supported"))
    assert run_day(ledger, fake, clock, "ava") == ["failed"]  # ... and the run died here, before its check
    [run] = due_runs(ledger, clock.now())
    assert (run.persona, run.day, [i.attempt_state for i in run.items]) == ("ava", DAY, ["report"])
    assert due_posts(ledger, clock.now()) == []  # nothing is published again
    review.mark_reported(ledger, [PostKey("ava", "p-1", "fakegram")], clock.now())
    assert due_runs(ledger, clock.now()) == []
