"""End to end, as a user does it: `dagster dev` running, a persona folder dropped into uploads/, and the
upload sensor starts its dataset run by itself; the run is followed over the real GraphQL endpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dagster dev exited early with {proc.returncode}"
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


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
        yield url, media, proc
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen) -> None:
    """SIGINT to the whole group lets `dagster dev` stop its webserver, daemon and code server cleanly."""
    for sig, grace in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def test_dropping_a_persona_folder_starts_its_dataset_run(dev_server) -> None:
    url, media, proc = dev_server
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
