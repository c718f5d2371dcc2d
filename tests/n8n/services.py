"""What the n8n tests run the workflows against: a real dagster-daemon plus the token-guarded webserver
(influencer_pipeline.admin.webserver_auth), as deployed, and loopback HTTP endpoints that record what n8n sends
(the notification receiver, a stand-in Dagster for failures a real one cannot be made to produce on demand)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.services import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "n8n-test-token-5f1c9a7e2b"  # DAGSTER_GRAPHQL_TOKEN: the webserver wants at least 16 characters


class Endpoint(ThreadingHTTPServer):
    """A loopback HTTP endpoint that records every POST and answers with `answer(body) -> (status, json)`, or
    closes the connection without an answer when `answer` returns None."""

    def __init__(self, answer: Callable[[dict], tuple[int, dict] | None]):
        self.answer = answer
        self.received: list[tuple[dict[str, str], dict]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    server: Endpoint

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.received.append((dict(self.headers), body))
        answered = self.server.answer(body)
        if answered is None:  # as if the server had gone away: no status line, connection closed
            self.close_connection = True
            return
        status, answer = answered
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        """Quiet: the test asserts on what was received."""


@contextmanager
def endpoint(answer: Callable[[dict], tuple[int, dict] | None] = lambda body: (200, {})) -> Iterator[Endpoint]:
    server = Endpoint(answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def dagster_dev(tmp_path: Path) -> Iterator[str]:
    """dagster-daemon and `influencer_pipeline.admin.webserver_auth` (DAGSTER_GRAPHQL_TOKEN=TOKEN) on loopback, with the
    sample persona uploaded as `ava`; the upload sensor is held off by a day-long settle time so that only the
    workflows launch runs."""
    home, media = tmp_path / "dagster_home", tmp_path / "media"
    home.mkdir()
    shutil.copy(ROOT / "resources" / "dagster" / "dagster.local.yaml", home / "dagster.yaml")
    shutil.copytree(ROOT / "resources" / "personas" / "ava", media / "uploads" / "ava")
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "MEDIA_ROOT": str(media),
        "WORK_DIR": str(tmp_path / "work"),
        "UPLOAD_SETTLE_SECONDS": "86400",
        "DAGSTER_GRAPHQL_TOKEN": TOKEN,
        "OUTBOX_DIR": str(tmp_path / "outbox"),
    }
    port = free_port()
    workspace = ["-w", str(ROOT / "workspace.yaml")]
    commands = {
        "daemon": [sys.executable, "-m", "dagster._daemon", "run", *workspace],
        "webserver": [sys.executable, "-m", "influencer_pipeline.admin.webserver_auth", "-p", str(port), *workspace],
    }
    # The storage's tables first: a daemon and a webserver that both find an empty SQLite storage both create them,
    # and one fails with "table ... already exists".
    migrate = [sys.executable, "-m", "dagster", "instance", "migrate"]
    subprocess.run(migrate, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in commands}
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True)
        for name, cmd in commands.items()
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: server_up(url),
            "the webserver and daemon",
            120,
            interval=1,
            processes=procs,
            details=lambda: "\n".join((tmp_path / f"{name}.log").read_text()[-2000:] for name in commands),
        )
        yield url
    finally:
        for proc in procs:
            for sig, grace in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
                with suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, sig)
                    proc.wait(grace)
        for log in logs.values():
            log.close()


def server_up(url: str) -> bool:
    try:
        return requests.get(f"{url}/server_info", timeout=2).ok
    except requests.ConnectionError:
        return False


STOP_SENSOR = "mutation T($id: String) { stopSensor(id: $id) { __typename ... on PythonError { message } } }"


def stop_automation(url: str) -> None:
    """Declarative automation would also train `ava` once its dataset lands, racing the workflow's own training
    run for the GPU pool; this test measures the workflow alone. Right after startup the mutation can fail while
    the daemon still writes the sensor's first state, so a PythonError is tried again."""
    selector = {"repositoryLocationName": "influencer_pipeline", "repositoryName": "__repository__"}
    sensor = requests.post(
        f"{url}/graphql",
        json={
            "query": "query S($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { id } } }",
            "variables": {"s": selector | {"sensorName": "follow_upstream"}},
        },
        timeout=30,
    ).json()["data"]["sensorOrError"]

    def stopped() -> bool:
        reply = requests.post(
            f"{url}/graphql",
            json={"query": STOP_SENSOR, "variables": sensor},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        ).json()
        if reply["data"]["stopSensor"]["__typename"] == "StopSensorMutationResult":
            return True
        assert reply["data"]["stopSensor"]["__typename"] == "PythonError", reply
        return False

    wait_until(stopped, "the follow_upstream sensor to stop", 120, interval=2)
