"""PreloadedRunLauncher on a real instance (resources/dagster/dagster.local.yaml), a real code server and the real
queue daemon: runs start in workers forked from the preloaded worker server, steps in processes of their own, a
terminated run's worker and step stop, and run monitoring sees a worker that died.

This file is also the code location under test (`defs` below), loaded by the code server and the worker server.
"""

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.code_pointer import FileCodePointer
from dagster._core.launcher import WorkerStatus
from dagster._core.origin import RepositoryPythonOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.monitoring.run_monitoring import monitor_started_run
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from influencer_pipeline.admin.run_launcher import (
    WORKER_TAG,
    PreloadedRunLauncher,
    RunWorker,
    WorkerServer,
    process_state,
)
from influencer_pipeline.dagster_layer.executors import forked_multiprocess_executor
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
LOCATION = "launcher_test"
pytestmark = pytest.mark.integration  # a real code server, worker server and run workers: seconds, not minutes


class StepConfig(dg.Config):
    folder: str
    wait: bool = False


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("Threads:")).split()[1])


@dg.op(pool="gpu")
def gpu_step(config: StepConfig) -> None:
    """Records which processes it runs in, then (with `wait`) waits for the test's `release` file."""
    folder = Path(config.folder)
    worker = os.getppid()
    pids = {"step": os.getpid(), "worker": worker, "worker_parent": parent_of(worker), "threads": thread_count(worker)}
    (folder / "pids.json").write_text(json.dumps(pids))
    deadline = time.monotonic() + 600  # a bound, so a broken test never leaves a step behind for long
    while config.wait and not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@dg.job(executor_def=forked_multiprocess_executor())
def gpu_job() -> None:
    gpu_step()


defs = dg.Definitions(jobs=[gpu_job])


# --- fixtures ---------------------------------------------------------------------------------------------------


@dataclass
class Site:
    instance: dg.DagsterInstance
    context: WorkspaceProcessContext

    @property
    def launcher(self) -> PreloadedRunLauncher:
        launcher = self.instance.run_launcher
        assert isinstance(launcher, PreloadedRunLauncher)
        return launcher

    def submit(self, folder: Path, wait: bool = False) -> str:
        """Queue a run of gpu_job as the webserver does, then let one queue-daemon iteration launch it."""
        workspace = self.context.create_request_context()
        remote_job = workspace.get_code_location(LOCATION).get_repository("__repository__").get_full_job("gpu_job")
        run = self.instance.create_run_for_job(
            job_def=gpu_job,
            run_config={"ops": {"gpu_step": {"config": {"folder": str(folder), "wait": wait}}}},
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
        )
        self.instance.submit_run(run.run_id, workspace)
        list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(self.context))
        return run.run_id

    def gpu_slots(self) -> list:
        """The claimed slots of the `gpu` pool (limit 1: dagster.local.yaml's `default_limit`)."""
        return list(self.instance.event_log_storage.get_concurrency_info("gpu").claimed_slots)

    def status(self, run_id: str) -> dg.DagsterRunStatus:
        return self.instance.get_run_by_id(run_id).status

    def wait_for_status(self, run_id: str, *statuses: dg.DagsterRunStatus) -> dg.DagsterRun:
        def events() -> str:
            return "\n".join(f"{e.dagster_event_type}: {e.message}" for e in self.instance.all_logs(run_id))

        wait_until(lambda: self.status(run_id) in statuses, f"run {run_id} to be {statuses}", 180, details=events)
        return self.instance.get_run_by_id(run_id)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    overrides = yaml.safe_load((ROOT / "resources" / "dagster" / "dagster.local.yaml").read_text())
    target = PythonFileTarget(
        python_file=__file__, attribute="defs", working_directory=str(ROOT), location_name=LOCATION
    )
    with (
        dg.instance_for_test(overrides=overrides) as instance,
        WorkspaceProcessContext(instance, target) as context,
    ):
        yield Site(instance, context)


@pytest.fixture(scope="module")
def warm(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The first launch goes through the code server and starts the worker server; wait until it has loaded."""
    folder = tmp_path_factory.mktemp("first")
    run_id = site.submit(folder)
    run = site.wait_for_status(run_id, dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert WORKER_TAG not in run.tags  # not forked: the worker server had not loaded yet
    servers = [server for _, server in site.launcher._servers.values()]
    assert len(servers) == 1
    wait_until(lambda: servers[0].poll_ready(), "the worker server to load the code location", timeout=180)
    return site


# --- tests ------------------------------------------------------------------------------------------------------


def test_the_local_instance_uses_the_preloaded_launcher(site: Site):
    assert isinstance(site.instance.run_launcher, PreloadedRunLauncher)


def test_a_queued_run_starts_in_a_worker_forked_from_the_worker_server(warm: Site, tmp_path: Path):
    run_id = warm.submit(tmp_path)
    run = warm.wait_for_status(run_id, dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
    assert run.status == dg.DagsterRunStatus.SUCCESS

    worker = RunWorker.from_tags(run.tags)
    (server,) = [server for _, server in warm.launcher._servers.values()]
    pids = json.loads((tmp_path / "pids.json").read_text())
    assert pids["worker"] == worker.pid  # the step's parent is the run worker the launcher recorded ...
    assert pids["worker_parent"] == server.process.pid  # ... a fork of the worker server
    assert pids["step"] != worker.pid  # and the (GPU) step ran in a process of its own, forked from a worker
    assert pids["threads"] == 1  # with no other thread whose locks a fork could copy
    started = [e for e in warm.instance.all_logs(run_id) if "Started process for run" in (e.message or "")]
    assert f"(pid: {worker.pid})" in started[0].message


def test_terminate_stops_the_run_worker_and_its_step(warm: Site, tmp_path: Path):
    run_id = warm.submit(tmp_path, wait=True)
    wait_until(lambda: (tmp_path / "pids.json").exists(), "the step to start", timeout=180)
    pids = json.loads((tmp_path / "pids.json").read_text())
    assert len(warm.gpu_slots()) == 1  # the step holds the `gpu` pool's one slot

    assert warm.launcher.terminate(run_id)

    run = warm.wait_for_status(run_id, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)
    assert run.status == dg.DagsterRunStatus.CANCELED
    for role in ("worker", "step"):
        wait_until(lambda pid=pids[role]: process_state(pid)[0] in (None, "Z"), f"the {role} process to stop")
    assert not warm.launcher.terminate(run_id)  # a finished run has nothing to stop
    assert warm.gpu_slots() == []  # and the interrupted step gave its slot back


def test_run_monitoring_fails_a_run_whose_worker_died(warm: Site, tmp_path: Path):
    run_id = warm.submit(tmp_path, wait=True)
    wait_until(lambda: (tmp_path / "pids.json").exists(), "the step to start", timeout=180)
    run = warm.wait_for_status(run_id, dg.DagsterRunStatus.STARTED)
    assert warm.launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING

    pids = json.loads((tmp_path / "pids.json").read_text())
    os.kill(pids["worker"], signal.SIGKILL)
    wait_until(lambda: process_state(pids["worker"])[0] in (None, "Z"), "the killed worker to exit")
    assert warm.launcher.check_run_worker_health(run).status == WorkerStatus.NOT_FOUND

    record = warm.instance.get_run_record_by_id(run_id)
    monitor_started_run(warm.instance, warm.context.create_request_context(), record, logging.getLogger(__name__))
    assert warm.status(run_id) == dg.DagsterRunStatus.FAILURE
    (tmp_path / "release").touch()  # the orphaned step ends on its own
    wait_until(lambda: process_state(pids["step"])[0] in (None, "Z"), "the orphaned step to exit")
    # The killed worker held the step's `gpu` pool slot; run monitoring frees a failed run's slots after
    # `free_slots_after_run_end_seconds` (dagster.production.yaml), done here at once for the tests that follow.
    assert len(warm.gpu_slots()) == 1
    warm.instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    assert warm.gpu_slots() == []


def test_a_reloaded_code_location_gets_a_new_worker_server(warm: Site, tmp_path: Path):
    (old,) = [server for _, server in warm.launcher._servers.values()]
    warm.context.reload_code_location(LOCATION)

    run_id = warm.submit(tmp_path)  # the old server is stopped; this run goes through the code server
    assert warm.wait_for_status(run_id, dg.DagsterRunStatus.SUCCESS).status == dg.DagsterRunStatus.SUCCESS
    wait_until(lambda: old.process.poll() is not None, "the stale worker server to exit")
    (new,) = [server for _, server in warm.launcher._servers.values()]
    assert new is not old


THREADED_LOCATION = """
import threading, time
import dagster as dg

threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
defs = dg.Definitions()
"""


@pytest.mark.parametrize("source", ["import no_such_module\n", THREADED_LOCATION], ids=["import-error", "threads"])
def test_a_worker_server_that_cannot_fork_safely_fails_and_is_not_used(site: Site, tmp_path: Path, source: str):
    # Failed means `launch_run` keeps launching that location through the code server (retried after a while).
    location = tmp_path / "location.py"
    location.write_text(source)
    pointer = FileCodePointer(str(location), "defs", str(tmp_path))
    server = WorkerServer(RepositoryPythonOrigin(sys.executable, pointer), site.instance.get_ref())
    try:
        wait_until(lambda: server.process.poll() is not None, "the worker server to give up", timeout=120)
        assert not server.poll_ready()
        assert server.failed_at is not None
        assert server.process.returncode != 0
    finally:
        server.stop()
