"""The token-guarded webserver (`python -m influencer_pipeline.admin.webserver_auth`) started for real on loopback.

Shared by the webserver, security and studio tests: the `server` fixture, the launch mutation and its parameters,
and starting/stopping a server process. No daemon runs, so a launched run stays QUEUED.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.services import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = """
mutation Launch($p: ExecutionParams!) {
  launchRun(executionParams: $p) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message }
  }
}"""
COUNT_RUNS = "query CountRuns { runsOrError { __typename ... on Runs { count } } }"
PARAMS = {
    "selector": {
        "repositoryLocationName": "influencer_pipeline",
        "repositoryName": "__repository__",
        "jobName": "persona_dataset",
    },
    "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "ava"}]},
}


@dataclass(frozen=True)
class Server:
    url: str
    token: str

    def graphql(self, body: object, token: str | None = None, **kwargs: object) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(f"{self.url}/graphql", json=body, headers=headers, timeout=60, **kwargs)

    def run_count(self) -> int:
        response = self.graphql({"query": COUNT_RUNS})
        assert response.status_code == 200, response.text
        return response.json()["data"]["runsOrError"]["count"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(ROOT / "resources" / "dagster" / "dagster.local.yaml", home / "dagster.yaml")
    token = secrets.token_urlsafe(32)
    port = free_port()
    env = os.environ | {"DAGSTER_HOME": str(home), "MEDIA_ROOT": str(home / "media"), "DAGSTER_GRAPHQL_TOKEN": token}
    cmd = [sys.executable, "-m", "influencer_pipeline.admin.webserver_auth", "-h", "127.0.0.1", "-p", str(port)]
    cmd += ["-w", str(ROOT / "workspace.yaml")]
    with (home / "server.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc, home / "server.log")
        yield Server(url, token)
    finally:
        stop(proc)


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    def up() -> bool:
        try:
            return requests.get(f"{url}/server_info", timeout=2).ok
        except requests.RequestException:  # not listening yet, or too busy starting up to answer in time
            return False

    wait_until(
        up, f"the server at {url}", timeout, interval=0.5, processes=[proc], details=lambda: log.read_text()[-3000:]
    )


def stop(proc: subprocess.Popen) -> None:
    """SIGINT to the process group lets uvicorn (or `dagster dev`) shut its webserver, daemon and code server down
    cleanly; SIGKILL what is left."""
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
