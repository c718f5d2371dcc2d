"""`PromptRunner` through the engine: ComfyUI's queue is kept full with our prompts only, and a timeout or a stop
cancels ours (deleted when pending, interrupted by id when running) and leaves other clients' work alone."""

from __future__ import annotations

import itertools
import uuid

import pytest

from influencer_pipeline.generation.comfyui import ComfyUIError
from tests.generation.comfy_standin import ComfyStandin
from tests.generation.comfyui.support import (
    make_engine,
    our_runs,
    prompts,
    submit_foreign,
    wait_for,
)

# ----- keeping the queue full ----------------------------------------------------------------------------------------


def test_every_prompt_carries_our_client_id_and_a_uuid_prompt_id(standin: ComfyStandin) -> None:
    make_engine(standin).generate(prompts(3))
    submitted = standin.received("POST", "/prompt")
    client_ids = {r.body["client_id"] for r in submitted}
    assert len(client_ids) == 1
    assert all(str(uuid.UUID(r.body["prompt_id"])) == r.body["prompt_id"] for r in submitted)
    assert standin.received("GET", "/view"), "images are downloaded through /view"


def test_the_queue_stays_full(standin: ComfyStandin) -> None:
    standin.seconds_per_image = 0.04
    make_engine(standin, max_in_flight=3).generate(prompts(8))
    runs = sorted(our_runs(standin), key=lambda run: run.started_at or 0)
    assert [run.status for run in runs] == ["success"] * 8
    for previous, following in itertools.pairwise(runs):
        # queued before the last one finished, so ComfyUI's worker never waited for us (an event order, not a time)
        assert following.submitted_at < previous.finished_at, "the next prompt was queued before the last finished"
    for run in runs:
        queued = [r for r in runs if r.submitted_at <= run.submitted_at < r.finished_at]
        assert len(queued) <= 3, "never more than max_in_flight of ours in ComfyUI's queue"


# ----- timeouts and cancellation -------------------------------------------------------------------------------------


def test_a_prompt_that_never_finishes_times_out_and_is_cancelled(standin: ComfyStandin) -> None:
    standin.hang = True
    with pytest.raises(ComfyUIError, match=r"no image finished within 0\.4 s.*cancelled 1 queued and 1 running"):
        make_engine(standin, timeout_s=0.4).generate(prompts(2))
    ours = {run.prompt_id for run in our_runs(standin)}
    assert set(standin.received("POST", "/queue")[-1].body["delete"]) == ours
    assert [r.body for r in standin.received("POST", "/interrupt")] == [
        {"prompt_id": run.prompt_id} for run in our_runs(standin)[:1]
    ]
    wait_for(lambda: standin.queue_remaining() == 0)


def test_stopping_deletes_only_our_pending_prompts(standin: ComfyStandin) -> None:
    standin.seconds_per_image = 0.2
    theirs = [submit_foreign(standin) for _ in range(2)]
    with pytest.raises(ComfyUIError, match=r"stopped because the run was terminated.*removed 3 .*interrupted 0"):
        make_engine(standin, max_in_flight=3).generate(prompts(5), should_stop=lambda: len(our_runs(standin)) >= 3)
    ours = {run.prompt_id for run in our_runs(standin)}
    assert [set(r.body["delete"]) for r in standin.received("POST", "/queue")] == [ours]
    assert standin.received("POST", "/interrupt") == [], "nothing of ours was running"
    wait_for(lambda: all(standin.runs[p].status == "success" for p in theirs))
    assert all(run.status == "deleted" for run in our_runs(standin))


def test_stopping_interrupts_our_running_prompt_by_id(standin: ComfyStandin) -> None:
    standin.seconds_per_image = 0.3
    theirs: list[str] = []

    def stop_when_ours_runs() -> bool:
        """Another client queues work behind ours just before the run is terminated."""
        if any(run.status == "running" for run in our_runs(standin)):
            theirs.append(submit_foreign(standin))
            return True
        return False

    with pytest.raises(ComfyUIError, match=r"removed 1 .*interrupted 1"):
        make_engine(standin, max_in_flight=2).generate(prompts(3), should_stop=stop_when_ours_runs)
    running, pending = our_runs(standin)
    assert [r.body for r in standin.received("POST", "/interrupt")] == [{"prompt_id": running.prompt_id}]
    assert set(standin.received("POST", "/queue")[0].body["delete"]) == {running.prompt_id, pending.prompt_id}
    wait_for(lambda: standin.runs[theirs[0]].status == "success")
    assert (running.status, pending.status) == ("interrupted", "deleted")
