"""resources/dagster/dagster.production.yaml on the machine's real PostgreSQL, with a real `dagster-daemon run`.

The jobs below are the code location the daemon loads (`pool_defs`, via a workspace.yaml in tmp), launched over
GraphQL as n8n does. A burst of GPU-pool runs checks both concurrency layers and that the queue drains. A long GPU
step's run worker is SIGKILLed: with DefaultRunLauncher the code server that started the worker notices it died and
fails the run (run monitoring cannot health-check this launcher's workers), run monitoring then reclaims the GPU
slot the dead worker never returned, and run retries re-execute the crashed run. The same step with a short
`dagster/max_runtime` checks that run monitoring stops a hung run. Compute logs go to an S3 server on loopback
(moto) through the S3ComputeLogManager.

PostgreSQL unreachable: skipped locally, failed when CI=true.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from tests.support.services import require_service
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_YAML = ROOT / "resources" / "dagster" / "dagster.production.yaml"
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
GPU_RUN_TAGS = {"gpu": "1"}  # = GPU_TAGS of influencer_pipeline.dagster_layer.tags, checked below; not imported here
# because every run worker and step process of the daemon imports this module, and that import costs 1.5 s each.
GPU_SLOTS = 2
BURST_RUNS = 4
GPU_STEP_SECONDS = 2.0
# The test copy of the production yaml differs only in these daemon intervals and in the GPU run-tag limit, which
# `home` sets to GPU_SLOTS as the yaml's comment asks.
TEST_OVERRIDES = {
    ("run_coordinator", "config", "dequeue_interval_seconds"): 1,
    ("run_monitoring", "poll_interval_seconds"): 1,
    ("run_monitoring", "free_slots_after_run_end_seconds"): 1,
}
LAUNCH = """
mutation Launch($p: ExecutionParams!) {
  launchRun(executionParams: $p) { __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } }
}"""


# ---- the code location the daemon loads --------------------------------------------------------------------------


@dg.op
def prepare() -> int:
    """A CPU root step: the queue does not hold the run back for the pool, so the run-tag limit gates runs."""
    return 1


@dg.op(pool="gpu")
def gpu_a(ready: int) -> int:
    time.sleep(GPU_STEP_SECONDS)
    return ready


@dg.op(pool="gpu")
def gpu_b(ready: int) -> int:
    time.sleep(GPU_STEP_SECONDS)
    return ready


# Both GPU steps of a run may start together (whatever the CPU count): the pool, not the executor, must hold them.
@dg.job(tags=GPU_RUN_TAGS, executor_def=dg.multiprocess_executor.configured({"max_concurrent": 4}))
def gpu_burst() -> None:
    ready = prepare()
    gpu_a(ready)
    gpu_b(ready)


@dg.op(pool="gpu")
def long_gpu_step(context: dg.OpExecutionContext) -> None:
    """Hangs on a first attempt (to be killed or timed out); an automatic retry of a crashed run returns at once."""
    if "dagster/retry_number" not in context.run.tags:
        time.sleep(300)


@dg.job(tags=GPU_RUN_TAGS, executor_def=dg.in_process_executor)  # the step runs in the run worker: one process
def long_gpu() -> None:
    long_gpu_step()


pool_defs = dg.Definitions(jobs=[gpu_burst, long_gpu])


# ---- fixtures ------------------------------------------------------------------------------------------------------


def admin_sql(statement: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def production_env(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[dict[str, str]]:
    """A throwaway database and compute-log bucket, and the env vars the production yaml reads."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    import boto3

    database = f"dagster_prod_test_{uuid.uuid4().hex[:10]}"
    bucket = f"compute-logs-{uuid.uuid4().hex[:10]}"
    admin_sql(f'CREATE DATABASE "{database}"')
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    env = {
        "DAGSTER_PG_HOST": PG_HOST,
        "DAGSTER_PG_PORT": str(PG_PORT),
        "DAGSTER_PG_USERNAME": PG_USER,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": database,
        "DAGSTER_COMPUTE_LOG_BUCKET": bucket,
        "S3_ENDPOINT_URL": s3_endpoint,
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env
    admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, production_env: dict[str, str]) -> Path:
    """DAGSTER_HOME with the test copy of the production yaml."""
    config = yaml.safe_load(PRODUCTION_YAML.read_text())
    for path, value in TEST_OVERRIDES.items():
        *parents, leaf = path
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value
    [gpu_limit] = [e for e in config["concurrency"]["runs"]["tag_concurrency_limits"] if e["key"] == "gpu"]
    gpu_limit["limit"] = GPU_SLOTS
    directory = tmp_path_factory.mktemp("dagster_home")
    (directory / "dagster.yaml").write_text(yaml.safe_dump(config))
    return directory


@pytest.fixture(scope="module")
def instance(home: Path) -> Iterator[dg.DagsterInstance]:
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as inst:
        yield inst


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    location = {
        "relative_path": str(Path(__file__).resolve()),
        "attribute": "pool_defs",
        "working_directory": str(ROOT),
        "location_name": "gpu_pool_test",
    }
    path = tmp_path_factory.mktemp("workspace") / "workspace.yaml"
    path.write_text(yaml.safe_dump({"load_from": [{"python_file": location}]}))
    return path


@pytest.fixture(scope="module")
def daemon(home: Path, workspace: Path, instance: dg.DagsterInstance) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` on the test instance, as production runs it; up once its daemons heartbeat."""
    log_path = home / "daemon.log"
    env = os.environ | {"DAGSTER_HOME": str(home)}
    cmd = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    needed = {"QUEUED_RUN_COORDINATOR", "MONITORING", "EVENT_LOG_CONSUMER"}
    try:
        wait_for(lambda: needed <= set(instance.get_daemon_heartbeats()), 90, f"daemon heartbeats ({log_path})", proc)
        yield proc
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def launch(daemon: subprocess.Popen, instance: dg.DagsterInstance, workspace: Path) -> Callable[..., list[str]]:
    """launchRun over GraphQL, as n8n does, through a webserver app on the same instance and workspace.

    Each call loads the workspace afresh and shuts its code server down after launching: the daemon's own code
    server runs the runs, so nothing here needs to outlive the launch.
    """
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_webserver.app import create_app_from_workspace_process_context
    from starlette.testclient import TestClient

    def launch_runs(job: str, count: int = 1, tags: dict[str, str] | None = None) -> list[str]:
        selector = {"repositoryLocationName": "gpu_pool_test", "repositoryName": "__repository__", "jobName": job}
        metadata = {"tags": [{"key": key, "value": value} for key, value in (tags or {}).items()]}
        body = {"query": LAUNCH, "variables": {"p": {"selector": selector, "executionMetadata": metadata}}}
        run_ids = []
        with (
            WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace)])) as context,
            TestClient(create_app_from_workspace_process_context(context)) as client,
        ):
            for _ in range(count):
                result = client.post("/graphql", json=body).json()["data"]["launchRun"]
                assert result["__typename"] == "LaunchRunSuccess", result
                run_ids.append(result["run"]["runId"])
        return run_ids

    return launch_runs


# ---- helpers -------------------------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen | None = None) -> Any:
    return wait_until(predicate, what, timeout, interval=0.5, processes=[proc] if proc is not None else [])


def stop_group(proc: subprocess.Popen) -> None:
    """SIGINT lets the daemon stop cleanly; then SIGKILL the rest of its process group. Its code server waits for
    run workers before exiting and would outlive the test (and its dropped database) otherwise."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def bootstrap(home: Path, slots: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "influencer_pipeline.admin.bootstrap", "--gpu-slots", str(slots)]
    env = os.environ | {"DAGSTER_HOME": str(home)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


def status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.status


def finished(instance: dg.DagsterInstance, run_ids: list[str]) -> bool:
    done = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    return all(status(instance, run_id) in done for run_id in run_ids)


def spans(instance: dg.DagsterInstance, run_id: str, start: str, end: str, step: bool) -> list[tuple[float, float]]:
    """(start, end) times of each step (step=True) or of the run, from the event log."""
    starts: dict[str | None, float] = {}
    found = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or (step and event.step_key is None):
            continue
        key = event.step_key if step else None
        if event.event_type_value == start:
            starts[key] = entry.timestamp
        elif event.event_type_value == end and key in starts:
            found.append((starts[key], entry.timestamp))
    return found


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t opens)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    open_now = peak = 0
    for _, delta in edges:
        open_now += delta
        peak = max(peak, open_now)
    return peak


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker's pid, from its own "Started process for run (pid: N)." engine event."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if entry.message.startswith("Started process for run (pid: "):
            return int(entry.message.split("pid: ")[1].rstrip(")."))
    return None


def step_started(instance: dg.DagsterInstance, run_id: str) -> bool:
    return bool(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START))


def gpu_slots_held_by(instance: dg.DagsterInstance, run_id: str) -> int:
    claimed = instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
    return sum(slot.run_id == run_id for slot in claimed)


# ---- tests ---------------------------------------------------------------------------------------------------------


def test_instance_loads_from_the_production_yaml(instance: dg.DagsterInstance) -> None:
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from influencer_pipeline.dagster_layer.tags import GPU_TAGS

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(instance.compute_log_manager, S3ComputeLogManager)
    assert type(instance.run_coordinator).__name__ == "CheckedRunCoordinator"  # the queue, checking config ranges
    assert instance.event_log_storage.supports_global_concurrency_limits
    assert instance.run_monitoring_enabled and instance.run_monitoring_max_runtime_seconds == 6 * 3600
    assert instance.run_monitoring_start_timeout_seconds > 0
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
    assert instance.run_retries_retry_on_asset_or_op_failure is False
    assert not instance.telemetry_enabled

    production = yaml.safe_load(PRODUCTION_YAML.read_text())["concurrency"]
    queue = instance.get_concurrency_config().run_queue_config
    assert queue is not None and queue.max_concurrent_runs == production["runs"]["max_concurrent_runs"]
    assert GPU_TAGS == GPU_RUN_TAGS
    [(key, value)] = GPU_TAGS.items()
    assert {"key": key, "value": value, "limit": 1} in production["runs"]["tag_concurrency_limits"]  # 1 GPU
    assert {"key": key, "value": value, "limit": GPU_SLOTS} in queue.tag_concurrency_limits  # the test copy's
    assert instance.get_concurrency_config().pool_config.default_pool_limit == production["pools"]["default_limit"]


def test_bootstrap_sets_the_gpu_pool_limit_idempotently(home: Path, instance: dg.DagsterInstance) -> None:
    first, again, three = bootstrap(home, 1), bootstrap(home, 1), bootstrap(home, 3)
    assert "limit set to 1 slot(s)" in first.stdout
    assert "already 1 slot(s); nothing changed" in again.stdout
    assert "limit set to 3 slot(s) (was 1)" in three.stdout
    assert "lets 2 run(s) tagged gpu=1 run at once, but the pool has 3 slot(s)" in three.stderr
    info = instance.event_log_storage.get_concurrency_info("gpu")
    assert (info.limit, info.slot_count, info.using_default_limit) == (3, 3, False)


@pytest.mark.slow
def test_gpu_runs_launched_at_once_hold_both_limits_and_the_queue_drains(
    home: Path, instance: dg.DagsterInstance, launch: Callable[..., list[str]], production_env: dict[str, str]
) -> None:
    assert bootstrap(home, GPU_SLOTS).stderr == ""  # yaml run-tag limit and pool agree: no warning
    run_ids = launch("gpu_burst", BURST_RUNS)
    wait_for(lambda: finished(instance, run_ids), 180, "the burst to drain")
    assert [status(instance, run_id) for run_id in run_ids] == [dg.DagsterRunStatus.SUCCESS] * BURST_RUNS
    for run_id in run_ids:  # every run went through the queue, which the daemon drained
        assert instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED)

    gpu_steps = [
        span
        for run_id in run_ids
        for span in spans(instance, run_id, "STEP_START", "STEP_SUCCESS", step=True)
        if span[1] - span[0] >= GPU_STEP_SECONDS
    ]
    run_start, run_success = dg.DagsterEventType.RUN_START.value, dg.DagsterEventType.RUN_SUCCESS.value
    runs = [span for run_id in run_ids for span in spans(instance, run_id, run_start, run_success, step=False)]
    assert len(gpu_steps) == 2 * BURST_RUNS and len(runs) == BURST_RUNS
    print(f"max concurrent GPU steps {max_overlap(gpu_steps)}, max concurrent GPU runs {max_overlap(runs)}")
    assert max_overlap(gpu_steps) == GPU_SLOTS  # never more than the pool; and the slots were actually shared
    assert max_overlap(runs) <= GPU_SLOTS
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []

    import boto3

    s3 = boto3.client("s3", endpoint_url=production_env["S3_ENDPOINT_URL"], region_name="us-east-1")
    listing = s3.list_objects_v2(Bucket=production_env["DAGSTER_COMPUTE_LOG_BUCKET"], Prefix="compute-logs/")
    assert any(run_ids[0] in obj["Key"] for obj in listing.get("Contents", [])), "no compute logs in S3"


@pytest.mark.slow
def test_a_killed_run_worker_fails_the_run_frees_its_gpu_slot_and_is_retried(
    home: Path, instance: dg.DagsterInstance, launch: Callable[..., list[str]]
) -> None:
    bootstrap(home, GPU_SLOTS)
    [run_id] = launch("long_gpu")
    wait_for(lambda: step_started(instance, run_id), 60, "the GPU step to start")
    assert gpu_slots_held_by(instance, run_id) == 1
    pid = worker_pid(instance, run_id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    wait_for(lambda: status(instance, run_id) == dg.DagsterRunStatus.FAILURE, 30, "the crash to be detected")
    messages = [entry.message for entry in instance.all_logs(run_id)]
    assert any("terminated by signal 9 (SIGKILL)" in message for message in messages), messages[-5:]
    wait_for(lambda: gpu_slots_held_by(instance, run_id) == 0, 30, "run monitoring to reclaim the GPU slot")

    def retry_run() -> dg.DagsterRun | None:
        children = instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": run_id}))
        return children[0] if children else None

    retry = wait_for(retry_run, 60, "the crashed run to be retried")
    assert retry.tags["dagster/retry_number"] == "1"
    wait_for(lambda: finished(instance, [retry.run_id]), 60, "the retry to finish")
    assert status(instance, retry.run_id) == dg.DagsterRunStatus.SUCCESS


@pytest.mark.slow
def test_run_monitoring_stops_a_run_past_its_max_runtime(home: Path, instance: dg.DagsterInstance, launch) -> None:
    bootstrap(home, GPU_SLOTS)
    [run_id] = launch("long_gpu", tags={"dagster/max_runtime": "3", "dagster/max_retries": "0"})
    wait_for(lambda: finished(instance, [run_id]), 60, "run monitoring to stop the hung run")
    assert status(instance, run_id) == dg.DagsterRunStatus.FAILURE
    messages = [entry.message for entry in instance.all_logs(run_id)]
    assert any("exceeding maximum runtime of 3 seconds" in message for message in messages), messages[-5:]
    wait_for(lambda: gpu_slots_held_by(instance, run_id) == 0, 30, "its GPU slot to be free")
