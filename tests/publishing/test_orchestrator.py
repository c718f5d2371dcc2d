"""Fault scenarios for `publish_once`: each asserts from the fake platform's own record that the post is live
exactly once (or not at all), and from the ledger that its state says so. Every test runs on SQLite and
PostgreSQL (the `ledger` fixture); time is a fake clock, so backoffs cost nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from influencer_pipeline.publishing.base import PostMedia, PublishError, PublishRequest
from influencer_pipeline.publishing.ledger import TERMINAL, AttemptKey, AttemptView, Ledger
from influencer_pipeline.publishing.orchestrator import (
    RetryPolicy,
    due_attempts,
    publish_once,
    stalled_attempts,
)
from tests.publishing.fake_platform import (
    FakeClock,
    FakePlatform,
    Fault,
    WorkerCrash,
    crash,
    rejected,
    server_error,
    throttled,
    timeout_after_commit,
    timeout_before_commit,
    transient,
)

POLICY = RetryPolicy(jitter=lambda: 1.0)  # deterministic backoff: exactly the exponential ceiling
IMAGE = PostMedia(Path("look-01.jpg"), "image", sha256="a" * 64)


def make_request(post_id: str = "post-1", caption: str = "Golden hour in Lisbon #travel", **kw: Any) -> PublishRequest:
    fields = {"platform": "fakegram", "account_id": "ava", "format": "image", "media": (IMAGE,)} | kw
    return PublishRequest(post_id=post_id, caption=caption, **fields)


REQUEST = make_request()
KEY = AttemptKey("post-1", "ava")


@dataclass
class World:
    """The ledger, the platform and the clock of one scenario, and a sensor-like driver over them."""

    ledger: Ledger
    fake: FakePlatform
    clock: FakeClock
    tokens: list[str] = field(default_factory=lambda: ["token-1"])
    token_calls: int = 0
    notified: list[AttemptView] = field(default_factory=list)
    policy: RetryPolicy = POLICY

    def token(self) -> str:
        self.token_calls += 1
        return self.tokens[min(self.token_calls, len(self.tokens)) - 1]

    def publish(self, request: PublishRequest = REQUEST, worker: str = "worker-1", **kw: Any) -> AttemptView:
        return publish_once(
            self.ledger,
            self.fake,
            request,
            self.token,
            worker,
            now=self.clock.now,
            sleep=self.clock.sleep,
            policy=self.policy,
            notify=self.notified.append,
            **kw,
        )

    def settle(self, request: PublishRequest = REQUEST, **kw: Any) -> AttemptView:
        """Call again whenever the attempt comes due, as the due-posts sensor would, until it is finished."""
        for _ in range(12):
            view = self.publish(request, **kw)
            if view.state in TERMINAL:
                return view
            assert view.next_attempt_at is not None, f"handed back without a retry time: {view}"
            self.clock.advance_to(view.next_attempt_at)
        raise AssertionError(f"{request.post_id} did not settle: {view}")

    def lease_runs_out(self) -> None:
        self.clock.advance(self.policy.lease_s + 1)

    def states(self, key: AttemptKey = KEY) -> list[str]:
        return [step.to_state for step in self.ledger.history(key) if step.from_state != step.to_state]

    def assert_live(self, times: int, post_id: str = "post-1") -> None:
        """The platform's own record, not the ledger's belief."""
        posts = self.fake.live_posts(post_id)
        assert len(posts) == times, f"{post_id} is live {len(posts)} times: {posts}"


@pytest.fixture
def world(ledger: Ledger, clock: FakeClock) -> World:
    return World(ledger, FakePlatform(clock), clock)


HAPPY_PATH = ["queued", "preparing", "uploading", "processing", "publishing", "published"]


# -- the plain path


def test_happy_path_publishes_once_and_records_every_step(world: World) -> None:
    view = world.publish()

    assert view.state == "published"
    world.assert_live(1)
    live = world.fake.live_posts("post-1")[0]
    assert (view.remote_id, view.permalink) == (live.remote_id, f"https://fakegram.test/p/{live.remote_id}")
    assert view.handle_value == live.handle and view.commit_count == 1 and view.lease_owner is None
    assert world.states() == HAPPY_PATH
    assert world.notified == []


def test_a_published_attempt_is_never_touched_again(world: World) -> None:
    world.publish()
    calls = len(world.fake.calls)

    world.clock.advance(3600)
    again = world.publish(worker="worker-2")

    assert again.state == "published" and len(world.fake.calls) == calls
    assert due_attempts(world.ledger, world.clock.now()) == []
    assert stalled_attempts(world.ledger, world.clock.now()) == []
    world.assert_live(1)


# -- retries with backoff


def test_prepare_fails_transiently_twice_then_publishes_with_exponential_backoff(world: World) -> None:
    world.fake.inject("prepare", transient(), times=2)
    start = world.clock.now()

    first = world.publish()
    assert first.state == "queued" and first.error_kind == "transient"
    assert first.next_attempt_at == start + timedelta(seconds=2)

    early = world.publish()  # not due yet: nothing happens
    assert early.next_attempt_at == first.next_attempt_at and world.fake.calls_to("prepare") == 1

    world.clock.advance_to(first.next_attempt_at)
    second = world.publish()
    assert second.next_attempt_at == world.clock.now() + timedelta(seconds=4)

    assert world.settle().state == "published"
    world.assert_live(1)
    assert world.fake.calls_to("prepare") == 3 and len(world.fake.commits) == 1


def test_throttle_waits_exactly_as_long_as_retry_after(world: World) -> None:
    world.fake.inject("prepare", throttled(retry_after=120))
    start = world.clock.now()

    view = world.publish()
    assert view.state == "queued" and view.error_kind == "throttle"
    assert view.next_attempt_at == start + timedelta(seconds=120)

    world.clock.advance(119)
    assert world.publish().state == "queued" and world.fake.calls_to("prepare") == 1
    world.clock.advance(1)
    assert world.publish().state == "published"
    world.assert_live(1)


def test_throttled_commit_retries_the_same_handle_after_a_retry_after_beyond_the_cap(world: World) -> None:
    world.fake.inject("commit", throttled(retry_after=3 * 3600))
    start = world.clock.now()

    view = world.publish()
    assert view.next_attempt_at == start + timedelta(hours=3)  # the platform's hint beats the 15-minute cap
    assert view.handle_value is not None and world.fake.live == []

    assert world.settle().state == "published"
    world.assert_live(1)
    assert world.fake.calls_to("prepare") == 1
    assert [call.landed for call in world.fake.commits] == [False, True]


def test_transient_failures_give_up_after_max_attempts(world: World) -> None:
    world.policy = RetryPolicy(jitter=lambda: 1.0, max_attempts=3)
    world.fake.inject("prepare", transient("HTTP 500"), times=10)

    view = world.settle()

    assert view.state == "failed" and view.error_kind == "transient"
    assert "gave up after 3 attempts" in (view.last_error or "")
    assert world.fake.calls_to("prepare") == 3 and world.fake.commits == []
    world.assert_live(0)
    assert [note.state for note in world.notified] == ["failed"]


def test_wait_ready_transient_resumes_with_the_same_handle(world: World) -> None:
    world.fake.inject("wait_ready", transient("still IN_PROGRESS after 300 s"))

    first = world.publish()
    assert first.state == "queued" and first.handle_value is not None and first.handle_failures == 1

    assert world.settle().state == "published"
    world.assert_live(1)
    assert world.fake.calls_to("prepare") == 1


# -- auth


def test_auth_error_then_ok_after_one_token_refresh(world: World) -> None:
    world.tokens = ["expired-token", "token-1"]

    view = world.publish()

    assert view.state == "published" and world.token_calls == 2
    world.assert_live(1)


def test_auth_error_always_fails_asking_to_reconnect(world: World) -> None:
    world.tokens = ["revoked-token"]

    view = world.publish()

    assert view.state == "failed" and view.error_kind == "auth"
    assert "reconnect the account" in (view.last_error or "")
    assert world.token_calls == 2  # one refresh, no more
    assert world.fake.commits == [] and due_attempts(world.ledger, world.clock.now() + timedelta(days=1)) == []
    world.assert_live(0)
    assert [note.state for note in world.notified] == ["failed"]


def test_auth_error_on_commit_refreshes_and_commits_again(world: World) -> None:
    world.fake.inject("commit", Fault(PublishError("Error validating access token", "auth")))

    view = world.publish()

    assert view.state == "published" and world.token_calls == 2 and view.commit_count == 2
    assert [call.landed for call in world.fake.commits] == [False, True]
    operations = [name for name, _ in world.fake.calls]
    assert operations[-4:] == ["commit", "wait_ready", "reconcile", "commit"]  # read before committing again
    world.assert_live(1)


# -- permanent rejections


@pytest.mark.parametrize("operation", ["prepare", "wait_ready", "commit"])
def test_permanent_rejection_fails_with_the_platforms_message(world: World, operation: str) -> None:
    message = "The aspect ratio is not supported (code 36003)"
    world.fake.inject(operation, rejected(message))

    view = world.publish()

    assert view.state == "failed" and view.error_kind == "permanent" and view.last_error == message
    world.assert_live(0)
    assert not any(call.landed for call in world.fake.commits)
    assert [note.last_error for note in world.notified] == [message]


# -- ambiguous commits: reconcile, never commit blindly


def test_commit_times_out_after_committing_is_reconciled_not_reposted(world: World) -> None:
    world.fake.inject("commit", timeout_after_commit())

    view = world.publish()

    assert view.state == "published" and view.remote_id == world.fake.live[0].remote_id
    world.assert_live(1)
    assert len(world.fake.commits) == 1 and world.fake.calls_to("reconcile") == 1
    assert world.clock.slept == [POLICY.reconcile_delay_s]
    assert "reconciled after commit outcome unknown" in world.ledger.history(KEY)[-1].detail


def test_commit_times_out_before_committing_then_commits_the_same_handle(world: World) -> None:
    world.fake.inject("commit", timeout_before_commit())

    first = world.publish()
    assert first.state == "queued" and first.error_kind == "transient" and first.handle_failures == 1
    world.assert_live(0)

    assert world.settle().state == "published"
    world.assert_live(1)
    handles = {call.handle for call in world.fake.commits}
    assert len(world.fake.commits) == 2 and len(handles) == 1 and world.fake.calls_to("prepare") == 1


@pytest.mark.parametrize(
    "error",
    [KeyError("permalink"), PublishError("permalink read: HTTP 500", "transient")],
    ids=["unexpected-exception", "publish-error"],
)
def test_bookkeeping_failure_after_the_post_went_out_never_reposts(world: World, error: Exception) -> None:
    """A publisher whose commit raises after its post landed (here: fetching the permalink) breaks the contract;
    the ledger still reads before it ever commits that handle again."""
    world.fake.inject("commit", Fault(error, after=True))

    view = world.settle()

    assert view.state == "published" and view.remote_id == world.fake.live[0].remote_id
    assert len(world.fake.commits) == 1
    world.assert_live(1)


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "lost"])
def test_commit_5xx_is_ambiguous_and_reconciled(world: World, landed: bool) -> None:
    world.fake.inject("commit", server_error(landed=landed))
    world.fake.inject("reconcile", transient("status read failed"))  # the first read fails too, within budget

    view = world.settle()

    assert view.state == "published"
    world.assert_live(1)
    assert len(world.fake.commits) == (1 if landed else 2)


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "lost"])
def test_undecidable_reconcile_ends_unconfirmed_and_is_never_retried(world: World, landed: bool) -> None:
    world.fake.inject("commit", timeout_after_commit() if landed else timeout_before_commit())
    world.fake.inject("reconcile", transient("HTTP 500"), times=POLICY.reconcile_tries)

    view = world.publish()

    assert view.state == "unconfirmed" and "Check the account before reposting" in (view.last_error or "")
    assert [note.state for note in world.notified] == ["unconfirmed"]
    world.clock.advance(7 * 86400)
    calls = len(world.fake.calls)
    assert world.publish(worker="worker-2").state == "unconfirmed" and len(world.fake.calls) == calls
    assert due_attempts(world.ledger, world.clock.now()) == []
    assert stalled_attempts(world.ledger, world.clock.now()) == []
    assert len(world.fake.commits) == 1
    world.assert_live(1 if landed else 0)


def test_a_failing_notification_does_not_disturb_the_recorded_state(world: World) -> None:
    def broken_notify(view: AttemptView) -> None:
        raise RuntimeError("SMTP down")

    world.fake.inject("prepare", rejected("caption too long"))
    view = publish_once(world.ledger, world.fake, REQUEST, world.token, "w", now=world.clock.now, notify=broken_notify)

    assert view.state == "failed"
    world.assert_live(0)


# -- crashes: the next worker reconciles


def test_crash_between_commit_and_ledger_update_is_reconciled_by_the_next_worker(world: World) -> None:
    world.fake.inject("commit", crash(after=True))

    with pytest.raises(WorkerCrash):
        world.publish(worker="worker-1")
    stuck = world.ledger.get(KEY)
    assert stuck is not None and stuck.state == "publishing" and stuck.lease_owner == "worker-1"
    world.assert_live(1)

    calls = len(world.fake.calls)
    assert world.publish(worker="worker-2").state == "publishing" and len(world.fake.calls) == calls  # leased
    world.lease_runs_out()
    now = world.clock.now()
    assert due_attempts(world.ledger, now) == []  # a sweep for due posts never picks it
    assert [view.key for view in stalled_attempts(world.ledger, now)] == [KEY]

    view = world.publish(worker="worker-2")

    assert view.state == "published" and view.remote_id == world.fake.live[0].remote_id
    assert len(world.fake.commits) == 1 and world.fake.calls_to("reconcile") == 1
    world.assert_live(1)
    assert [step.worker for step in world.ledger.history(KEY)][-2:] == ["worker-2", "worker-2"]


def test_worker_crash_during_commit_that_did_not_land_is_reconciled_then_committed(world: World) -> None:
    world.fake.inject("commit", crash(after=False))

    with pytest.raises(WorkerCrash):
        world.publish(worker="worker-1")
    world.lease_runs_out()

    second = world.publish(worker="worker-2")
    assert second.state == "queued" and world.fake.calls_to("reconcile") == 1  # read first, no blind commit
    assert len(world.fake.commits) == 1

    assert world.settle(worker="worker-2").state == "published"
    world.assert_live(1)
    assert [call.landed for call in world.fake.commits] == [False, True]


def test_ledger_write_failing_after_commit_never_reposts(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    transition = world.ledger.transition
    failures: list[str] = []

    def flaky(key: AttemptKey, **kw: Any) -> AttemptView:
        if kw["to_state"] == "published" and not failures:
            failures.append("once")
            raise OperationalError("UPDATE post_attempts", {}, Exception("server closed the connection"))
        return transition(key, **kw)

    monkeypatch.setattr(world.ledger, "transition", flaky)

    with pytest.raises(OperationalError):
        world.publish(worker="worker-1")
    world.assert_live(1)
    world.lease_runs_out()

    assert world.publish(worker="worker-2").state == "published"
    assert len(world.fake.commits) == 1
    world.assert_live(1)


def test_crash_during_upload_is_resumed_by_a_due_sweep(world: World) -> None:
    world.fake.inject("prepare", crash(after=True))

    with pytest.raises(WorkerCrash):
        world.publish(worker="worker-1")
    assert due_attempts(world.ledger, world.clock.now()) == []  # still leased
    world.lease_runs_out()
    assert [view.state for view in due_attempts(world.ledger, world.clock.now())] == ["uploading"]

    assert world.publish(worker="worker-2").state == "published"
    world.assert_live(1)
    assert world.fake.calls_to("prepare") == 2  # the orphaned container is simply never published


def test_a_worker_whose_lease_ran_out_stops_before_its_next_side_effect(world: World) -> None:
    """worker-1 stalls in `prepare` past its lease; worker-2 takes over and publishes; worker-1 must not commit."""
    taken_over: list[AttemptView] = []

    def stall_and_take_over() -> None:
        world.lease_runs_out()
        taken_over.append(world.publish(worker="worker-2"))

    world.fake.inject("prepare", Fault(action=stall_and_take_over))

    view = world.publish(worker="worker-1")

    assert [v.state for v in taken_over] == ["published"] and view.state == "published"
    assert len(world.fake.commits) == 1
    world.assert_live(1)


def test_racing_threads_commit_once(world: World) -> None:
    contenders = 8
    barrier = threading.Barrier(contenders)
    results: list[str] = []
    errors: list[BaseException] = []

    def contend(index: int) -> None:
        try:
            barrier.wait()
            results.append(world.publish(worker=f"thread-{index}").state)
        except BaseException as exc:
            errors.append(exc)

    world.fake.inject("prepare", Fault(action=lambda: threading.Event().wait(0.05)))  # hold the lease a moment
    threads = [threading.Thread(target=contend, args=(index,)) for index in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [] and results.count("published") >= 1
    assert len(world.fake.commits) == 1 and world.fake.calls_to("prepare") == 1
    world.assert_live(1)
    claims = [step for step in world.ledger.history(KEY) if step.detail.startswith("claimed")]
    assert len(claims) == 1


# -- handles that expire


def test_announced_expired_handle_is_replaced_without_committing_it(world: World) -> None:
    world.fake.inject("commit", timeout_before_commit())
    first = world.publish()
    assert first.state == "queued"

    world.clock.advance(25 * 3600)  # past the handle's EXPIRES_AT
    view = world.publish()

    assert view.state == "published" and view.handle_value != first.handle_value
    assert [call.handle for call in world.fake.commits] == [first.handle_value, view.handle_value]
    assert "expired" in " ".join(step.detail for step in world.ledger.history(KEY))
    world.assert_live(1)


def test_silently_expired_handle_is_abandoned_after_failing_twice(world: World) -> None:
    world.fake.announce_expiry = False  # the platform only says "expired" when the handle is used
    world.fake.inject("commit", timeout_before_commit())
    first = world.publish()  # reconcile found it unpublished: failure 1 of the handle
    world.clock.advance(25 * 3600)

    second = world.publish()  # wait_ready: "expired, prepare it again": failure 2, abandoned
    assert second.state == "queued" and second.handle_value is None

    assert world.settle().state == "published"
    world.assert_live(1)
    assert world.fake.calls_to("prepare") == 2
    assert [call.handle for call in world.fake.commits].count(first.handle_value) == 1


# -- the duplicate-content guard


def test_same_content_for_another_post_is_refused_unless_forced(world: World) -> None:
    assert world.publish().state == "published"
    twin = make_request("post-2", caption="  golden HOUR in  Lisbon #travel ")  # same after normalization
    calls = len(world.fake.calls)

    refused = world.publish(twin)

    assert refused.state == "failed" and refused.error_kind == "permanent"
    assert "post-1" in (refused.last_error or "") and "force=True" in (refused.last_error or "")
    assert len(world.fake.calls) == calls
    world.assert_live(0, "post-2")

    world.ledger.requeue(refused.key, operator="ops", now=world.clock.now(), detail="intentional repost")
    assert world.publish(twin, force=True).state == "published"
    world.assert_live(1, "post-2")
    world.assert_live(1, "post-1")


def test_same_content_is_allowed_again_after_the_window(world: World) -> None:
    world.publish()
    world.clock.advance(8 * 86400)

    assert world.publish(make_request("post-2")).state == "published"
    world.assert_live(1, "post-2")


def test_different_media_is_not_a_duplicate(world: World) -> None:
    world.publish()
    other = make_request("post-2", media=(PostMedia(Path("look-02.jpg"), "image", sha256="b" * 64),))

    assert world.publish(other).state == "published"
    world.assert_live(1, "post-2")


# -- operator decisions


def test_operator_confirms_an_unconfirmed_post_found_live(world: World) -> None:
    world.fake.inject("commit", timeout_after_commit())
    world.fake.inject("reconcile", transient(), times=POLICY.reconcile_tries)
    assert world.publish().state == "unconfirmed"
    live = world.fake.live[0]

    view = world.ledger.confirm_published(
        KEY, operator="ops", now=world.clock.now(), remote_id=live.remote_id, permalink="", detail="seen on the app"
    )

    assert view.state == "published" and view.remote_id == live.remote_id
    assert world.publish().state == "published" and len(world.fake.commits) == 1
    world.assert_live(1)


def test_operator_requeues_an_unconfirmed_post_found_missing(world: World) -> None:
    world.fake.inject("commit", timeout_before_commit())
    world.fake.inject("reconcile", transient(), times=POLICY.reconcile_tries)
    assert world.publish().state == "unconfirmed"

    world.ledger.requeue(KEY, operator="ops", now=world.clock.now(), detail="not on the account")
    view = world.publish()

    assert view.state == "published" and view.attempts == 1
    assert world.fake.calls_to("prepare") == 2  # a fresh handle: the old one is never committed again
    world.assert_live(1)
