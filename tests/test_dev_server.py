"""End to end, as a user does it: `dagster dev` running, a persona folder dropped into uploads/, and the
upload sensor starts its dataset run by itself; the run is followed over the real GraphQL endpoint."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.services import free_port
from tests.support.waiting import wait_until
from tests.support.webserver import LAUNCH, stop

pytestmark = pytest.mark.slow  # `dagster dev` for real: minutes (make test-slow)
ROOT = Path(__file__).resolve().parents[1]
RUN_STATUS = """
query Run($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }
"""
BACKFILL = """
mutation Backfill($p: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $p) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
  }
}
"""
GPU_STEPS = {"lora_weights", "lora_samples", "post_images"}
RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    return wait_until(predicate, what, timeout, interval=1, processes=[proc])


@pytest.fixture
def dev_server(tmp_path):
    home, media = tmp_path / "dagster_home", tmp_path / "media"
    home.mkdir()
    shutil.copy(ROOT / "resources" / "dagster" / "dagster.local.yaml", home / "dagster.yaml")
    port = free_port()
    env = os.environ | {"DAGSTER_HOME": str(home), "MEDIA_ROOT": str(media), "UPLOAD_SETTLE_SECONDS": "0"}
    log = (tmp_path / "dev.log").open("w")
    cmd = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/server_info", timeout=2).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, 120, "the webserver", proc)
        yield url, media, proc, home
    finally:
        stop(proc)
        log.close()


def test_dropped_folder_starts_its_dataset_run_and_the_gpu_pool_holds(dev_server) -> None:
    url, media, proc, home = dev_server
    shutil.copytree(ROOT / "resources" / "personas" / "ava", media / "uploads" / "newcomer")

    def finished_run() -> dict | None:
        runs = graphql(url, RUNS_QUERY, {"filter": {"tags": [{"key": "persona", "value": "newcomer"}]}})
        assert runs["runsOrError"]["__typename"] == "Runs"
        done = [r for r in runs["runsOrError"]["results"] if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        return done[0] if done else None

    run = wait_for(finished_run, 300, "the sensor-launched dataset run", proc)
    assert run["status"] == "SUCCESS", run
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/partition"] == "newcomer"
    assert tags["dagster/sensor_name"] == "upload_sensor"
    assert len(list((media / "personas" / "newcomer" / "dataset").glob("*.png"))) == 16
    # dataset -> LoRA in one run: one LoRA version (media/keys.py: personas/<persona>/lora/<version>/)
    assert len(list((media / "personas" / "newcomer" / "lora").rglob("newcomer.safetensors"))) == 1

    # Two training runs launched at once over GraphQL: the `gpu` pool (limit 1) must serialise their GPU steps.
    config = {"ops": {"lora_weights": {"config": {"epochs": 1}}, "lora_samples": {"config": {"steps": 2}}}}
    run_ids = [launch_training(url, "newcomer", config) for _ in range(2)]

    def all_finished() -> bool:
        statuses = [graphql(url, RUN_STATUS, {"id": r})["runOrError"]["status"] for r in run_ids]
        return all(s in ("SUCCESS", "FAILURE", "CANCELED") for s in statuses) and statuses

    statuses = wait_for(all_finished, 600, "both training runs", proc)
    assert statuses == ["SUCCESS", "SUCCESS"]
    spans = gpu_step_spans(home, run_ids)
    assert len(spans) == 4
    for (_, end_a, step_a), (start_b, _, step_b) in itertools.pairwise(spans):
        assert start_b >= end_a, f"{step_b} started before {step_a} finished: the gpu pool did not hold"

    # A range of calendar days backfilled over GraphQL: the daemon plans each day.
    days = ["2026-11-20", "2026-11-21"]
    params = {"assetSelection": [{"path": ["content_plan"]}], "partitionNames": [f"{d}|newcomer" for d in days]}
    backfill = graphql(url, BACKFILL, {"p": params})["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    plans = [media / "personas" / "newcomer" / "content" / day / "plan.json" for day in days]
    wait_for(lambda: all(p.is_file() for p in plans), 300, "the backfilled content plans", proc)


def launch_training(url: str, persona: str, config: dict) -> str:
    selector = {"repositoryLocationName": "influencer_pipeline", "repositoryName": "__repository__"}
    params = {
        "selector": selector | {"jobName": "persona_training"},
        "runConfigData": config,
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": persona}]},
    }
    result = graphql(url, LAUNCH, {"p": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def gpu_step_spans(home: Path, run_ids: list[str]) -> list[tuple[float, float, str]]:
    """(start, end, step) of every GPU-pool step in these runs, read from the instance's own event log."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    spans = []
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        for run_id in run_ids:
            starts = {}
            for entry in instance.all_logs(run_id):
                event = entry.dagster_event
                if event is None or event.step_key not in GPU_STEPS:
                    continue
                if event.event_type_value == "STEP_START":
                    starts[event.step_key] = entry.timestamp
                elif event.event_type_value == "STEP_SUCCESS":
                    spans.append((starts[event.step_key], entry.timestamp, f"{run_id[:8]}:{event.step_key}"))
    return sorted(spans)
