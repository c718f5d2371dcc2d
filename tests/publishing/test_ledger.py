"""The ledger repository on SQLite and PostgreSQL: schema, atomic claims (threads and processes), transitions."""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from influencer_pipeline.publishing.base import PostMedia, PublishRequest
from influencer_pipeline.publishing.ledger import (
    VERSION_TABLE,
    AttemptKey,
    AttemptView,
    Base,
    LeaseLost,
    Ledger,
    content_fingerprint,
)
from tests.publishing.conftest import require_postgres
from tests.publishing.fake_platform import START

LEASE = timedelta(minutes=10)
KEY = AttemptKey("post-1", "ava")


def make_request(post_id: str = "post-1", caption: str = "Hello #world", **kw: object) -> PublishRequest:
    fields: dict[str, object] = {"platform": "fakegram", "account_id": "ava", "format": "image"}
    fields |= {"media": (PostMedia(Path("a.jpg"), "image", sha256="a" * 64),)} | kw
    return PublishRequest(post_id=post_id, caption=caption, **fields)  # type: ignore[arg-type]


def enqueue(ledger: Ledger, request: PublishRequest | None = None, now: datetime = START) -> AttemptView:
    request = request or make_request()
    return ledger.enqueue(request, content_fingerprint(request), now)


def move(ledger: Ledger, view: AttemptView, to_state: str, worker: str = "w1", **changes: object) -> AttemptView:
    return ledger.transition(
        view.key,
        worker=worker,
        from_state=view.state,
        to_state=to_state,
        now=START,
        detail=f"to {to_state}",
        lease_until=START + LEASE,
        **changes,
    )


# -- schema


def test_upgrade_is_idempotent_and_matches_the_models(ledger: Ledger) -> None:
    ledger.upgrade()  # a second time: nothing to do

    with ledger.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert context.get_current_revision() == "0003"
        differences = compare_metadata(context, Base.metadata)
        tables = set(inspect(connection).get_table_names())
    assert differences == []
    assert tables == {"post_attempts", "transitions", "planned_posts", VERSION_TABLE}  # not alembic_version: Dagster's


def test_concurrent_upgrades_on_a_fresh_database(ledger_url: str) -> None:
    ledgers = [Ledger(ledger_url) for _ in range(4)]
    errors: list[BaseException] = []

    def upgrade(ledger: Ledger) -> None:
        try:
            ledger.upgrade()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert enqueue(ledgers[0]).state == "queued"
    for ledger in ledgers:
        ledger.dispose()


def test_times_come_back_aware_utc_and_naive_times_are_refused(ledger: Ledger) -> None:
    view = enqueue(ledger)
    assert view.created_at == START and view.created_at.utcoffset() == timedelta(0)

    with pytest.raises(Exception, match="timezone-aware"):
        ledger.claim(KEY, "w1", START.replace(tzinfo=None), START + LEASE)


# -- enqueue and claim


def test_enqueue_is_idempotent(ledger: Ledger) -> None:
    first = enqueue(ledger)
    second = enqueue(ledger, now=START + timedelta(hours=1))

    assert first == second and first.state == "queued" and first.attempts == 0
    assert [step.to_state for step in ledger.history(KEY)] == ["queued"]


def test_claim_is_exclusive_until_the_lease_runs_out(ledger: Ledger) -> None:
    enqueue(ledger)

    won = ledger.claim(KEY, "w1", START, START + LEASE)
    assert won is not None and won.lease_owner == "w1" and won.attempts == 1
    assert ledger.claim(KEY, "w2", START + LEASE - timedelta(seconds=1), START + 2 * LEASE) is None

    taken = ledger.claim(KEY, "w2", START + LEASE + timedelta(seconds=1), START + 2 * LEASE)
    assert taken is not None and taken.lease_owner == "w2" and taken.attempts == 2
    assert [(step.worker, step.detail) for step in ledger.history(KEY)][1:] == [
        ("w1", "claimed (attempt 1)"),
        ("w2", "claimed (attempt 2)"),
    ]


def test_claim_waits_for_next_attempt_at_and_never_takes_a_finished_attempt(ledger: Ledger) -> None:
    held = ledger.claim(enqueue(ledger).key, "w1", START, START + LEASE)
    assert held is not None
    later = START + timedelta(minutes=5)
    view = move(ledger, held, "preparing")
    view = ledger.transition(
        KEY,
        worker="w1",
        from_state=view.state,
        to_state="queued",
        now=START,
        detail="retry later",
        lease_until=None,
        next_attempt_at=later,
    )
    assert view.lease_owner is None and view.next_attempt_at == later

    assert ledger.claim(KEY, "w2", later - timedelta(seconds=1), later + LEASE) is None
    again = ledger.claim(KEY, "w2", later, later + LEASE)
    assert again is not None
    view = move(ledger, again, "preparing", worker="w2")
    ledger.transition(
        KEY, worker="w2", from_state=view.state, to_state="failed", now=later, detail="no", lease_until=None
    )
    assert ledger.claim(KEY, "w3", later + timedelta(days=30), later + timedelta(days=31)) is None


def _claim_in_process(url: str, barrier: Any, worker: str, results: Any) -> None:
    """One contender in its own process, with its own engine."""
    ledger = Ledger(url)
    barrier.wait()
    results.put((worker, ledger.claim(KEY, worker, START, START + LEASE) is not None))
    ledger.dispose()


def test_processes_racing_for_one_attempt_get_exactly_one_claim(ledger: Ledger) -> None:
    enqueue(ledger)
    ledger.dispose()  # nothing of the parent's pool crosses the fork
    context = multiprocessing.get_context("fork")
    contenders = 6
    barrier = context.Barrier(contenders)
    results = context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(ledger.url, barrier, f"proc-{index}", results))
        for index in range(contenders)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)

    winners = [worker for worker, won in outcomes if won]
    assert len(winners) == 1 and all(process.exitcode == 0 for process in processes)
    view = ledger.get(KEY)
    assert view is not None and view.lease_owner == winners[0] and view.attempts == 1


def test_threads_racing_for_one_attempt_get_exactly_one_claim(ledger: Ledger) -> None:
    enqueue(ledger)
    contenders = 12
    barrier = threading.Barrier(contenders)
    winners: list[str] = []

    def contend(worker: str) -> None:
        barrier.wait()
        if ledger.claim(KEY, worker, START, START + LEASE) is not None:
            winners.append(worker)

    threads = [threading.Thread(target=contend, args=(f"thread-{index}",)) for index in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(winners) == 1


# -- transitions


def test_only_the_lease_holder_can_move_an_attempt(ledger: Ledger) -> None:
    enqueue(ledger)
    view = ledger.claim(KEY, "w1", START, START + LEASE)
    assert view is not None

    with pytest.raises(LeaseLost):
        move(ledger, view, "preparing", worker="w2")
    with pytest.raises(LeaseLost):  # the state moved on under this worker's feet
        ledger.transition(
            KEY, worker="w1", from_state="uploading", to_state="processing", now=START, detail="", lease_until=None
        )
    assert move(ledger, view, "preparing").state == "preparing"


def test_illegal_transitions_and_unknown_columns_are_refused(ledger: Ledger) -> None:
    view = ledger.claim(enqueue(ledger).key, "w1", START, START + LEASE)
    assert view is not None

    with pytest.raises(ValueError, match="queued -> publishing"):
        move(ledger, view, "publishing")
    with pytest.raises(ValueError, match="lease_owner"):
        move(ledger, view, "preparing", lease_owner="someone")
    assert ledger.get(KEY) == view


def test_transitions_store_the_handle_and_the_history(ledger: Ledger) -> None:
    view = ledger.claim(enqueue(ledger).key, "w1", START, START + LEASE)
    assert view is not None
    view = move(ledger, view, "preparing")
    view = move(ledger, view, "uploading")
    view = move(ledger, view, "processing", handle_value="container-7", handle_extra={"children": ["a", "b"]})

    handle = view.handle
    assert handle is not None and (handle.platform, handle.value, handle.extra) == (
        "fakegram",
        "container-7",
        {"children": ["a", "b"]},
    )
    history = ledger.history(KEY)
    assert [(step.from_state, step.to_state) for step in history] == [
        (None, "queued"),
        ("queued", "queued"),
        ("queued", "preparing"),
        ("preparing", "uploading"),
        ("uploading", "processing"),
    ]
    assert history[-1].detail == "to processing" and history[-1].worker == "w1"


def test_waiting_lists_unleased_due_rows_in_the_given_states(ledger: Ledger) -> None:
    for index in range(3):
        enqueue(ledger, make_request(f"post-{index}", caption=f"caption {index}"))
    held = ledger.claim(AttemptKey("post-1", "ava"), "w1", START, START + LEASE)
    assert held is not None
    busy = move(ledger, held, "preparing")
    later = START + timedelta(hours=1)
    ledger.claim(AttemptKey("post-2", "ava"), "w1", START, START + LEASE)
    ledger.transition(
        AttemptKey("post-2", "ava"),
        worker="w1",
        from_state="queued",
        to_state="preparing",
        now=START,
        detail="",
        lease_until=START + LEASE,
    )
    ledger.transition(
        AttemptKey("post-2", "ava"),
        worker="w1",
        from_state="preparing",
        to_state="queued",
        now=START,
        detail="",
        lease_until=None,
        next_attempt_at=later,
    )

    def waiting(now: datetime, states: tuple[str, ...]) -> list[str]:
        return [view.post_id for view in ledger.waiting(now, states)]

    assert waiting(START, ("queued",)) == ["post-0"]
    assert waiting(later, ("queued",)) == ["post-0", "post-2"]
    assert waiting(START, ("preparing",)) == []
    assert waiting(busy.lease_until + timedelta(seconds=1), ("preparing",)) == ["post-1"]  # type: ignore[operator]


# -- the duplicate guard


def test_fingerprint_ignores_spacing_and_case_but_not_content() -> None:
    base = content_fingerprint(make_request())
    assert content_fingerprint(make_request(caption="  hello\n #WORLD ")) == base
    assert content_fingerprint(make_request("post-9")) == base  # the post id is not content
    assert content_fingerprint(make_request(caption="Hello #world!")) != base
    assert content_fingerprint(make_request(account_id="bob")) != base
    assert content_fingerprint(make_request(platform="tiktok")) != base
    other = (PostMedia(Path("b.jpg"), "image", sha256="b" * 64),)
    assert content_fingerprint(make_request(media=other)) != base


def test_fingerprint_hashes_media_files_without_a_recorded_sha(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"pixels")
    recorded = PostMedia(image, "image", sha256=hashlib.sha256(b"pixels").hexdigest())
    unrecorded = PostMedia(image, "image")

    assert content_fingerprint(make_request(media=(unrecorded,))) == content_fingerprint(
        make_request(media=(recorded,))
    )
    image.write_bytes(b"other pixels")
    assert content_fingerprint(make_request(media=(unrecorded,))) != content_fingerprint(
        make_request(media=(recorded,))
    )


def test_find_duplicate_sees_live_or_maybe_live_twins_within_the_window(ledger: Ledger) -> None:
    original = enqueue(ledger)
    twin = enqueue(ledger, make_request("post-2"))
    assert ledger.find_duplicate(twin.key, twin.fingerprint, START - timedelta(days=7)) is None  # queued: not yet

    held = ledger.claim(original.key, "w1", START, START + LEASE)
    assert held is not None
    in_flight = move(ledger, held, "preparing")
    found = ledger.find_duplicate(twin.key, twin.fingerprint, START - timedelta(days=7))
    assert found is not None and found.post_id == "post-1"
    assert ledger.find_duplicate(original.key, original.fingerprint, START - timedelta(days=7)) is None  # not itself
    assert ledger.find_duplicate(twin.key, twin.fingerprint, START + timedelta(seconds=1)) is None  # too old

    ledger.transition(
        original.key,
        worker="w1",
        from_state=in_flight.state,
        to_state="failed",
        now=START,
        detail="",
        lease_until=None,
    )
    assert ledger.find_duplicate(twin.key, twin.fingerprint, START - timedelta(days=7)) is None  # failed: not live


# -- operator actions


def test_operator_actions_only_apply_to_finished_attempts(ledger: Ledger) -> None:
    enqueue(ledger)
    with pytest.raises(ValueError, match="only failed or unconfirmed"):
        ledger.requeue(KEY, operator="ops", now=START, detail="")
    with pytest.raises(ValueError, match="is missing"):
        ledger.requeue(AttemptKey("nope", "ava"), operator="ops", now=START, detail="")

    view = ledger.claim(KEY, "w1", START, START + LEASE)
    assert view is not None
    view = move(ledger, move(ledger, view, "preparing"), "uploading")
    view = move(ledger, view, "processing", handle_value="c-1")
    view = move(ledger, view, "publishing", commit_count=1)
    ledger.transition(
        KEY, worker="w1", from_state="publishing", to_state="unconfirmed", now=START, detail="?", lease_until=None
    )

    requeued = ledger.requeue(KEY, operator="ops", now=START, detail="not on the account")
    assert (requeued.state, requeued.handle_value, requeued.attempts, requeued.commit_count) == ("queued", None, 0, 1)
    assert ledger.history(KEY)[-1].worker == "ops"


# -- the PostgreSQL rule for CI


def test_unreachable_postgres_skips_locally_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    closed_port = 1  # nothing listens on port 1

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape("PostgreSQL not reachable at 127.0.0.1:1")):
        require_postgres(port=closed_port)

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        require_postgres(port=closed_port)


def test_one_ledger_per_process_and_url_migrated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sensor ticks and runs ask for the ledger every time: the engine and the migration happen once."""
    from influencer_pipeline.publishing import ledger as module

    upgrades = []
    real = Ledger.upgrade
    monkeypatch.setattr(Ledger, "upgrade", lambda self: (upgrades.append(self.url), real(self))[1])
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = module.shared_ledger(url)
    assert all(module.shared_ledger(url) is first for _ in range(50))
    assert upgrades == [url]
    assert module.shared_ledger(f"sqlite:///{tmp_path / 'other.db'}") is not first
