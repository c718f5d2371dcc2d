"""Benchmark: Dagster's latency from a GraphQL `launchRun` to run start and end, and its overhead on the demo graph.

    python bench/launch.py [--runs 5] [--skip-demo] [--baseline-rounds 3] [--keep-log dev.log]

One `dagster dev` on loopback serves two code locations from a workspace written to a scratch folder under
bench/.cache/: `bench_launch` (bench/launch_location.py: one op that does nothing and imports nothing but dagster)
and `influencer_pipeline`. Its instance is a fresh DAGSTER_HOME holding resources/dagster/dagster.local.yaml, so the
queue, run launcher and daemon are those of `make dev`. MEDIA_ROOT holds the sample persona as uploads/ava; the
upload sensor is held off by a day-long settle time, and `follow_upstream` and `due_posts_sensor` are stopped, so
that only this script launches runs.

1. Launch latency: `--runs` sequential launches of the no-op job. Each is timed from just before its launchRun POST
   (this machine's clock) to the run's `startTime` (RUN_START, written by the run worker once it has loaded the
   code) and `endTime`, both read back from the server on the same clock, so the polling rate does not matter.
   The instance's run launcher (PreloadedRunLauncher) forks run workers from a worker server per code location,
   which the warm-up launch starts; the no-op location keeps Dagster's default executor (a spawned step process),
   so its run end includes one fresh import.
   Before each launch the script sleeps a random part of the queue daemon's dequeue interval, so the queue wait is
   sampled as a launch at a random moment sees it rather than locked to the daemon's phase. Baseline, measured in
   the same run: a fresh Python process that imports dagster and loads the location, the least a run worker does.
2. Overhead on the demo graph: the demo's work (persona_pipeline for `ava` on the embedded engines, then
   daily_content for today's `date|ava` partition) in small configs, launched over the same GraphQL. Step time is
   the union of the step intervals (STEP_START to STEP_SUCCESS, merged where steps overlap); overhead is the rest of
   the launch-to-run-end time, split into: queued (launch to the daemon's RUN_STARTING), run worker start (to
   RUN_START), step-process start-up (STEP_WORKER_STARTING to STEP_START: the executor forks a process per step
   from the run worker, which opens its instance, plans its step and builds its resources), and the remainder
   (waiting for each step process to exit, the executor's shutdown, event writes). Baseline: a fresh Python process
   that imports the pipeline's code location, as a run worker or step process started afresh must.

Each goal is printed last with its value from this run and "met" or "not met"; nothing is asserted, since the
numbers depend on the machine and its load.

Other work on the machine's cores slows all of it; the load average before the runs is printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
LOCATION_FILE = ROOT / "bench" / "launch_location.py"
NOOP_LOCATION, NOOP_JOB = "bench_launch", "noop_job"
PIPELINE_LOCATION = "influencer_pipeline"
REPOSITORY = "__repository__"
PERSONA = "ava"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
STOPPED_SENSORS = ("follow_upstream", "due_posts_sensor")
# The smallest configs that still run every asset: as tests/n8n/test_real_n8n.py sends them.
PIPELINE_CONFIG = {
    "ops": {
        "lora_weights": {"config": {"preset": "embedded-tiny", "epochs": 1}},
        "lora_samples": {"config": {"steps": 2, "prompts": ["ohwx woman smiling at a cafe table, morning light"]}},
    }
}
CONTENT_CONFIG = {
    "ops": {
        "content_plan": {"config": {"posts": 2}},
        "post_images": {"config": {"steps": 2, "image_size": 256, "reel_width": 256, "reel_height": 448}},
        "post_videos": {"config": {"scale": 0.2}},
    }
}

LAUNCH = """
mutation Launch($p: ExecutionParams!) {
  launchRun(executionParams: $p) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""
STATUS = """
query Status($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } ... on Error { message } } }
"""
TIMES = """
query Times($id: ID!) {
  runOrError(runId: $id) {
    __typename
    ... on Run {
      runId jobName status creationTime startTime endTime
      stepStats { stepKey status startTime endTime }
      eventConnection(limit: 10000) {
        events {
          __typename
          ... on MessageEvent { timestamp eventType stepKey message }
          ... on ExecutionStepFailureEvent { error { message } }
        }
      }
    }
    ... on Error { message }
  }
}
"""
LOCATIONS = """
query Locations {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""
SENSOR = """
query Sensor($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { __typename ... on Sensor { id } } }
"""
STOP_SENSOR = """
mutation Stop($id: String) { stopSensor(id: $id) { __typename ... on PythonError { message } } }
"""
ADD_PARTITION = """
mutation Add($key: String!, $def: String!, $repo: RepositorySelector!) {
  addDynamicPartition(partitionKey: $key, partitionsDefName: $def, repositorySelector: $repo) {
    __typename
    ... on Error { message }
  }
}
"""
DOCUMENTS = [LAUNCH, STATUS, TIMES, LOCATIONS, SENSOR, STOP_SENSOR, ADD_PARTITION]


# --- the dev server -------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    home: Path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if not response.ok or body.get("errors") or "data" not in body:
            raise SystemExit(f"GraphQL answered HTTP {response.status_code}: {response.text[:1000]}")
        return body["data"]

    def fail(self, message: str) -> SystemExit:
        """An error that carries the tail of the server's log."""
        tail = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else "(no log)"
        return SystemExit(f"{message}\n--- last lines of {self.log.name} ---\n{tail}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def dev_server(scratch: Path, with_pipeline: bool, keep_log: Path | None = None) -> Iterator[Server]:
    """`dagster dev` on loopback with a fresh instance, stopped (SIGINT, then SIGKILL) with its process group."""
    home, media = scratch / "dagster_home", scratch / "media"
    home.mkdir()
    shutil.copy(ROOT / "resources" / "dagster" / "dagster.local.yaml", home / "dagster.yaml")
    shutil.copytree(ROOT / "resources" / "personas" / PERSONA, media / "uploads" / PERSONA)
    locations = [
        {
            "python_file": {
                "relative_path": str(LOCATION_FILE),
                "location_name": NOOP_LOCATION,
                "working_directory": str(ROOT),
            }
        }
    ]
    if with_pipeline:
        module = {"module_name": "influencer_pipeline.definitions", "location_name": PIPELINE_LOCATION}
        locations.append({"python_module": module | {"working_directory": str(ROOT)}})
    workspace = scratch / "workspace.yaml"
    workspace.write_text(json.dumps({"load_from": locations}, indent=2))  # JSON is YAML
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "MEDIA_ROOT": str(media),
        "WORK_DIR": str(scratch / "work"),
        "OUTBOX_DIR": str(scratch / "outbox"),
        "UPLOAD_SETTLE_SECONDS": "86400",
    }
    port = free_port()
    log = scratch / "dev.log"
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log, home)
    try:
        wait_until_loaded(server, 1 + with_pipeline, timeout=240)
        yield server
    finally:
        for sig, grace in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
            with suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, sig)
                proc.wait(grace)
        if keep_log:
            shutil.copy(log, keep_log)


def wait_until_loaded(server: Server, count: int, timeout: float) -> None:
    """The webserver answers and every code location has loaded (or the load error, with the log, is raised)."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise server.fail(f"dagster dev exited with {server.proc.returncode} before it was up")
        if time.monotonic() > deadline:
            raise server.fail(f"dagster dev was not up with {count} loaded code locations after {timeout:.0f} s")
        with suppress(requests.ConnectionError, requests.Timeout):
            if requests.get(f"{server.url}/server_info", timeout=5).ok:
                workspace = server.graphql(LOCATIONS)["workspaceOrError"]
                if workspace["__typename"] != "Workspace":
                    raise server.fail(f"workspace failed to load: {workspace.get('message')}")
                entries = workspace["locationEntries"]
                for entry in entries:
                    loaded = entry["locationOrLoadError"] or {}
                    if loaded.get("__typename") == "PythonError":
                        raise server.fail(f"code location {entry['name']} failed to load: {loaded['message']}")
                if len(entries) == count and all(e["loadStatus"] == "LOADED" for e in entries):
                    return
        time.sleep(1)


def queue_settings(home: Path) -> tuple[str, float | None]:
    """The instance's run coordinator and, for the queued one, the daemon's dequeue interval."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        coordinator = instance.run_coordinator
        return type(coordinator).__name__, getattr(coordinator, "dequeue_interval_seconds", None)


def stop_sensors(server: Server) -> None:
    """Only this script launches runs: automation and the publishing sensor would add their own."""
    for name in STOPPED_SENSORS:
        selector = {"repositoryLocationName": PIPELINE_LOCATION, "repositoryName": REPOSITORY, "sensorName": name}
        sensor = server.graphql(SENSOR, {"s": selector})["sensorOrError"]
        if sensor["__typename"] != "Sensor":
            raise server.fail(f"sensor {name}: {sensor}")
        stopped = server.graphql(STOP_SENSOR, {"id": sensor["id"]})["stopSensor"]
        if stopped["__typename"] != "StopSensorMutationResult":
            raise server.fail(f"could not stop sensor {name}: {stopped}")


# --- runs -----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished run: the client's launch time and the server's record, all on this machine's clock."""

    sent: float  # time.time() just before the launchRun POST
    returned: float  # ... and when its answer arrived
    record: dict

    @property
    def start(self) -> float:
        return self.record["startTime"] - self.sent

    @property
    def end(self) -> float:
        return self.record["endTime"] - self.sent

    def event_times(self, event_type: str) -> list[tuple[float, str | None]]:
        """(seconds after the launch, step key) of each event of this type."""
        events = self.record["eventConnection"]["events"]
        return [
            (int(e["timestamp"]) / 1000 - self.sent, e.get("stepKey")) for e in events if e["eventType"] == event_type
        ]

    def first(self, event_type: str) -> float:
        return self.event_times(event_type)[0][0]

    def step_time(self) -> float:
        """Seconds covered by at least one step, from STEP_START to its end, overlapping steps merged."""
        spans = sorted((s["startTime"], s["endTime"]) for s in self.record["stepStats"] if s["startTime"])
        covered, reach = 0.0, -1.0
        for start, end in spans:
            end = end or self.record["endTime"]
            if end > reach:
                covered += end - max(start, reach)
                reach = end
        return covered

    def step_startup(self) -> float:
        """Seconds from each step's STEP_WORKER_STARTING to its STEP_START: spawning its process, loading code."""
        starting = {key: t for t, key in self.event_times("STEP_WORKER_STARTING")}
        return sum(t - starting[key] for t, key in self.event_times("STEP_START") if key in starting)

    def step_startup_parts(self) -> list[float]:
        """Step-process start-up split at the step's own events, summed over steps: [process started (fork, its
        instance), planned (to RESOURCE_INIT_STARTED), resources built, to STEP_START]."""
        marks = ["STEP_WORKER_STARTING", "STEP_WORKER_STARTED", "RESOURCE_INIT_STARTED", "RESOURCE_INIT_SUCCESS"]
        times = [{key: t for t, key in self.event_times(mark)} for mark in [*marks, "STEP_START"]]
        parts = [0.0] * len(marks)
        for key in times[-1]:
            known = [(i, at[key]) for i, at in enumerate(times) if key in at]
            for (i, t), (_, later) in itertools.pairwise(known):
                parts[min(i, len(parts) - 1)] += later - t
        return parts


def launch(
    server: Server, location: str, job: str, config: dict | None = None, tags: dict | None = None, timeout: float = 900
) -> Run:
    """Launch one run over GraphQL, wait for it to end, and return its timings; a failed run stops the bench."""
    params = {
        "selector": {"repositoryLocationName": location, "repositoryName": REPOSITORY, "jobName": job},
        "runConfigData": config or {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
    }
    sent = time.time()
    result = server.graphql(LAUNCH, {"p": params})["launchRun"]
    returned = time.time()
    if result["__typename"] != "LaunchRunSuccess":
        raise server.fail(f"launchRun {job}: {json.dumps(result)[:2000]}")
    run_id = result["run"]["runId"]
    deadline = time.monotonic() + timeout
    poll = 0.2 if location == NOOP_LOCATION else 2.0
    while True:
        status = server.graphql(STATUS, {"id": run_id})["runOrError"]
        if status.get("status") in TERMINAL:
            break
        if time.monotonic() > deadline:
            raise server.fail(f"run {run_id} ({job}) still {status.get('status')} after {timeout:.0f} s")
        time.sleep(poll)
    record = server.graphql(TIMES, {"id": run_id})["runOrError"]
    if record["status"] != "SUCCESS":
        errors = [
            f"{e.get('stepKey') or 'run'}: {(e.get('error') or {}).get('message') or e['message']}"
            for e in record["eventConnection"]["events"]
            if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent", "EngineEvent")
            and e["eventType"] in ("STEP_FAILURE", "RUN_FAILURE")
        ]
        raise server.fail(f"run {run_id} ({job}) ended {record['status']}: {'; '.join(errors)[:3000]}")
    return Run(sent, returned, record)


def process_time(code: str, rounds: int) -> float:
    """Median wall time of a fresh Python process running `code` from the repository root."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def validate_documents() -> None:
    """Every GraphQL document here is valid for the installed Dagster's schema, before any server is started."""
    import graphql
    from dagster_graphql.schema import create_schema

    schema = create_schema().graphql_schema
    for document in DOCUMENTS:
        if problems := graphql.validate(schema, graphql.parse(document)):
            raise SystemExit(f"GraphQL document invalid for this Dagster: {problems}\n{document}")


# --- the two parts --------------------------------------------------------------------------------------------

LAUNCH_GOAL = 1.0  # launch-to-start at most the baseline: Dagster's launch machinery costs no more than the import
DEMO_GOAL = 0.10  # Dagster's share of the demo's wall time


def goal(what: str, measured: str, met: bool) -> str:
    """One goal line: the target, the value measured in this run, and whether it is met (printed, never asserted)."""
    return f"launch: goal: {what}: measured {measured}: {'met' if met else 'not met'}"


def bench_launch(server: Server, runs: int, rounds: int, interval: float | None) -> str:
    jitter = random.Random(20261)
    launch(server, NOOP_LOCATION, NOOP_JOB)  # warm-up: the webserver's and code server's first launch
    results = []
    for _ in range(runs):
        time.sleep(jitter.uniform(0, interval or 0))
        results.append(launch(server, NOOP_LOCATION, NOOP_JOB))
    baseline = process_time(f"import dagster, runpy; runpy.run_path({str(LOCATION_FILE)!r})", rounds)
    starts, ends = [r.start for r in results], [r.end for r in results]
    queue = [r.first("RUN_STARTING") for r in results]
    worker = [r.start - r.first("RUN_STARTING") for r in results]
    execute = [r.end - r.start for r in results]
    mutation = [r.returned - r.sent for r in results]
    startup = [r.step_startup() for r in results]
    step = [r.step_time() for r in results]

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}"

    print(
        f"launch: no-op job x {runs} over GraphQL (after 1 warm-up); median / max seconds from the launchRun POST: "
        f"to run start {med(starts)} / {max(starts):.2f}, to run end {med(ends)} / {max(ends):.2f}"
    )
    print(
        f"launch: median parts: launchRun answered {med(mutation)}; queued until the daemon's RUN_STARTING "
        f"{med(queue)}; RUN_STARTING to RUN_START (run worker started, code loaded) {med(worker)}; RUN_START to end "
        f"{med(execute)}, of which step-process start-up {med(startup)} and the no-op step {med(step)}"
    )
    base = f"{baseline:.2f} s (median of {rounds})"
    print(
        f"launch: baseline: fresh python importing dagster + loading the location {base}; "
        f"launch-to-start / baseline = {statistics.median(starts) / baseline:.2f}, "
        f"launch-to-end / baseline = {statistics.median(ends) / baseline:.2f}"
    )
    ratio = statistics.median(starts) / baseline
    return goal(
        f"launch to run start <= {LAUNCH_GOAL:.1f}x the fresh-import baseline",
        f"{ratio:.2f}x ({statistics.median(starts):.2f} s / {baseline:.2f} s)",
        ratio <= LAUNCH_GOAL,
    )


def bench_demo(server: Server, rounds: int) -> str:
    repo = {"repositoryLocationName": PIPELINE_LOCATION, "repositoryName": REPOSITORY}
    added = server.graphql(ADD_PARTITION, {"key": PERSONA, "def": "personas", "repo": repo})["addDynamicPartition"]
    if added["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
        raise server.fail(f"addDynamicPartition {PERSONA}: {added}")
    today = datetime.now(UTC).date().isoformat()
    day_tags = {
        "dagster/partition": f"{today}|{PERSONA}",
        "dagster/partition/date": today,
        "dagster/partition/persona": PERSONA,
    }
    jobs = [
        ("persona_pipeline", PIPELINE_CONFIG, {"dagster/partition": PERSONA}),
        ("daily_content", CONTENT_CONFIG, day_tags),
    ]
    rows, parts = [], [0.0] * 4
    for job, config, tags in jobs:
        run = launch(server, PIPELINE_LOCATION, job, config, tags)
        parts = [a + b for a, b in zip(parts, run.step_startup_parts(), strict=True)]
        queued, steps = run.first("RUN_STARTING"), len(run.record["stepStats"])
        rows.append((job, run.end, run.step_time(), queued, run.start - queued, run.step_startup(), steps))
    baseline = process_time("import influencer_pipeline.definitions", rounds)
    total = [sum(column) for column in zip(*(row[1:] for row in rows), strict=True)]
    for job, wall, steps, queued, worker, startup, count in [*rows, ("total", *total)]:
        overhead = wall - steps
        other = overhead - queued - worker - startup
        print(
            f"launch: demo {job:16} wall {wall:5.1f} s, steps {steps:5.1f} s ({count:g} steps), "
            f"overhead {overhead:4.1f} s = {overhead / wall:3.0%} of wall: queued {queued:3.1f}, "
            f"run worker start {worker:3.1f}, step-process start-up {startup:4.1f}, other {other:3.1f}"
        )
    wall, steps, _, _, startup, count = total
    print(
        f"launch: demo step-process start-up by part, summed over {count:g} steps: process started (fork, its "
        f"instance) {parts[0]:.2f}, step planned {parts[1]:.2f}, resources built {parts[2]:.2f}, "
        f"to STEP_START {parts[3]:.2f}"
    )
    print(
        f"launch: baseline: fresh python importing influencer_pipeline.definitions {baseline:.2f} s "
        f"(median of {rounds}); step-process start-up per step / baseline = {startup / count / baseline:.2f}; "
        f"demo overhead / baseline = {(wall - steps) / baseline:.1f}"
    )
    share = (wall - steps) / wall
    return goal(
        f"Dagster's share of the demo's wall time <= {DEMO_GOAL:.0%}",
        f"{share:.1%} ({wall - steps:.1f} s of {wall:.1f} s)",
        share <= DEMO_GOAL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="sequential launches of the no-op job")
    parser.add_argument("--skip-demo", action="store_true", help="only the no-op job (no influencer_pipeline)")
    parser.add_argument("--baseline-rounds", type=int, default=3, help="fresh processes per baseline (median)")
    parser.add_argument("--keep-log", type=Path, help="copy the dev server's log here when it stops")
    args = parser.parse_args()
    validate_documents()
    CACHE.mkdir(parents=True, exist_ok=True)
    load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(dir=CACHE, prefix="launch-") as scratch,
        dev_server(Path(scratch), not args.skip_demo, args.keep_log) as server,
    ):
        up = time.perf_counter() - started
        coordinator, interval = queue_settings(server.home)
        every = f", dequeue every {interval:g} s" if interval is not None else ""
        print(
            f"launch: dagster dev up with {1 + (not args.skip_demo)} code locations in {up:.0f} s; "
            f"{coordinator}{every}; {cores} cores, load average {load:.1f} before the runs"
        )
        if not args.skip_demo:
            stop_sensors(server)
        goals = [bench_launch(server, args.runs, args.baseline_rounds, interval)]
        if not args.skip_demo:
            goals.append(bench_demo(server, args.baseline_rounds))
    print(f"launch: whole bench {time.perf_counter() - started:.0f} s")
    print("\n".join(goals))


if __name__ == "__main__":
    main()
