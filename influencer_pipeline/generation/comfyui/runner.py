"""Runs a batch of our prompts through ComfyUI's single-worker queue, keeping it full.

Throughput comes from keeping the queue full: up to `max_in_flight` of our prompts are queued at once and the
next one is submitted the moment one finishes, before its output is downloaded, so the GPU never waits for this
client. Every wait is bounded by `timeout_s` per finished prompt. When the run is stopped (or fails) only our own
prompts are cancelled: pending ones deleted from the queue, a running one interrupted by id.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from influencer_pipeline.generation.comfyui.client import ComfyUIClient
from influencer_pipeline.generation.comfyui.errors import ComfyUIError
from influencer_pipeline.generation.comfyui.jobs import Job
from influencer_pipeline.generation.comfyui.watcher import TICK_S, ProgressWatcher


@dataclass(frozen=True)
class PromptRunner:
    """`max_in_flight` is how many of our prompts may wait in ComfyUI's queue at once; `timeout_s` bounds the
    wait for the *next* prompt to finish; `poll_interval_s` paces `/history` polling."""

    client: ComfyUIClient
    max_in_flight: int
    timeout_s: float
    poll_interval_s: float

    def run(
        self,
        jobs: list[Job],
        collect: Callable[[Job, dict[str, Any]], Any],
        progress: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> list[Any]:
        """Submit every job and `collect` each finished one's history entry into its result; results in job
        order. `progress(done, total)` follows each collected result; `should_stop()` is checked every tick."""
        client_id = uuid.uuid4().hex
        with ProgressWatcher(self.client, client_id, self.poll_interval_s) as watcher:
            return self._run(jobs, collect, client_id, watcher, progress, should_stop)

    def _run(
        self,
        jobs: list[Job],
        collect: Callable[[Job, dict[str, Any]], Any],
        client_id: str,
        watcher: ProgressWatcher,
        progress: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> list[Any]:
        pending = deque(jobs)
        in_flight: dict[str, Job] = {}
        results: list[Any] = [None] * len(jobs)
        done = 0
        deadline = time.monotonic() + self.timeout_s
        try:
            while pending or in_flight:
                if should_stop():
                    raise self._stop_error(in_flight, done, len(jobs))
                self._fill_queue(pending, in_flight, client_id)
                finished = watcher.wait(in_flight, TICK_S)
                if not finished:
                    if time.monotonic() > deadline:
                        raise self._timeout_error(in_flight)
                    continue
                finished_jobs = [(in_flight.pop(prompt_id), entry) for prompt_id, entry in finished]
                self._fill_queue(pending, in_flight, client_id)  # before downloading: keep the GPU busy
                for job, entry in finished_jobs:
                    results[job.index] = collect(job, entry)
                    done += 1
                    progress(done, len(jobs))
                deadline = time.monotonic() + self.timeout_s
        except BaseException:
            self._cancel(in_flight)
            raise
        return [result for result in results if result is not None]

    def _fill_queue(self, pending: deque[Job], in_flight: dict[str, Job], client_id: str) -> None:
        """Submit until `max_in_flight` of ours are queued; a prompt is tracked before it is sent, so one that
        ComfyUI queued despite `node_errors` is still cancelled."""
        while pending and len(in_flight) < self.max_in_flight:
            job = pending.popleft()
            job.prompt_id = str(uuid.uuid4())
            in_flight[job.prompt_id] = job
            self.client.submit(job.graph, client_id, job.prompt_id, job.where)

    def _stop_error(self, in_flight: dict[str, Job], done: int, total: int) -> ComfyUIError:
        """Cancel our prompts (the Dagster run was terminated), then say what was cancelled."""
        deleted, interrupted = self._cancel(in_flight)
        return ComfyUIError(
            f"generation stopped because the run was terminated, after {done} of {total} images: removed "
            f"{len(deleted)} of our prompts from ComfyUI's queue and interrupted {len(interrupted)} running one(s); "
            "other clients' prompts were left alone"
        )

    def _timeout_error(self, in_flight: dict[str, Job]) -> ComfyUIError:
        """Cancel our prompts (no image finished in time), then say what we waited for and what to check."""
        waiting = ", ".join(f"{job.where} (prompt {prompt_id})" for prompt_id, job in in_flight.items())
        deleted, interrupted = self._cancel(in_flight)
        return ComfyUIError(
            f"no image finished within {self.timeout_s:g} s while waiting for {waiting}; ComfyUI at "
            f"{self.client.url} may be stuck or busy with other work. We cancelled {len(deleted)} queued and "
            f"{len(interrupted)} running prompt(s) of ours. Check the ComfyUI console and its queue (GET /queue), or "
            "raise timeout_s for slow models"
        )

    def _cancel(self, in_flight: dict[str, Job]) -> tuple[list[str], list[str]]:
        """Cancel every prompt in flight and forget them (so a failure after a stop does not cancel twice)."""
        ids = list(in_flight)
        in_flight.clear()
        return self.client.cancel(ids)
