"""The token-guarded webserver, started for real on loopback with this code location (SQLite DAGSTER_HOME in tmp).

No daemon runs, so a launched run stays QUEUED: "a run was created" is then exactly what the run count says.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from influencer_pipeline.ops.webserver_auth import (
    MutationAuthMiddleware,
    graphql_request,
    needs_token,
    selects_non_query,
)
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = """
mutation Launch($p: ExecutionParams!) {
  launchRun(executionParams: $p) { __typename ... on LaunchRunSuccess { run { runId status } } }
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
    cmd = [sys.executable, "-m", "influencer_pipeline.ops.webserver_auth", "-h", "127.0.0.1", "-p", str(port)]
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if requests.get(f"{url}/server_info", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT lets uvicorn and the workspace shut the code server down; SIGKILL what is left."""
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def test_launch_run_without_a_token_is_refused_and_creates_no_run(server: Server) -> None:
    before = server.run_count()
    for headers in ({}, {"Authorization": f"Basic {server.token}"}, {"Authorization": "Bearer"}):
        response = requests.post(
            f"{server.url}/graphql", json={"query": LAUNCH, "variables": {"p": PARAMS}}, headers=headers, timeout=60
        )
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "DAGSTER_GRAPHQL_TOKEN" in response.json()["errors"][0]["message"]
    assert server.run_count() == before


def test_a_wrong_token_is_refused(server: Server) -> None:
    before = server.run_count()
    response = server.graphql({"query": LAUNCH, "variables": {"p": PARAMS}}, token=server.token + "x")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert server.run_count() == before


def test_the_right_token_launches_the_run(server: Server) -> None:
    before = server.run_count()
    response = server.graphql({"query": LAUNCH, "variables": {"p": PARAMS}}, token=server.token)
    assert response.status_code == 200, response.text
    result = response.json()["data"]["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    assert result["run"]["status"] == "QUEUED"
    assert server.run_count() == before + 1


def test_queries_server_info_and_the_ui_need_no_token(server: Server) -> None:
    response = server.graphql({"query": "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"})
    assert response.status_code == 200
    assert response.json()["data"]["repositoriesOrError"]["nodes"] == [{"name": "__repository__"}]
    info = requests.get(f"{server.url}/server_info", timeout=10)
    assert info.ok and "dagster_webserver_version" in info.json()
    page = requests.get(f"{server.url}/runs", timeout=10)
    assert page.ok and "text/html" in page.headers["content-type"]
    get_query = requests.get(f"{server.url}/graphql", params={"query": COUNT_RUNS}, timeout=10)
    assert get_query.ok and get_query.json()["data"]["runsOrError"]["count"] >= 0


def test_a_mutation_behind_an_operation_name_in_a_multi_operation_document_is_caught(server: Server) -> None:
    document = f"{COUNT_RUNS}\n{LAUNCH}"
    before = server.run_count()
    hidden = server.graphql({"query": document, "operationName": "Launch", "variables": {"p": PARAMS}})
    assert hidden.status_code == 401
    unnamed = server.graphql({"query": document, "variables": {"p": PARAMS}})  # ambiguous: counts as a mutation
    assert unnamed.status_code == 401
    selected_query = server.graphql({"query": document, "operationName": "CountRuns"})
    assert selected_query.status_code == 200 and selected_query.json()["data"]["runsOrError"]["count"] == before
    assert server.run_count() == before


def test_mutations_in_get_batch_and_raw_bodies_are_caught(server: Server) -> None:
    before = server.run_count()
    variables = json.dumps({"p": PARAMS})
    attempts = [
        requests.get(f"{server.url}/graphql", params={"query": LAUNCH, "variables": variables}, timeout=10),
        requests.post(f"{server.url}/graphql", params={"query": LAUNCH, "variables": variables}, timeout=10),
        server.graphql([{"query": COUNT_RUNS}, {"query": LAUNCH, "variables": {"p": PARAMS}}]),
        requests.post(
            f"{server.url}/graphql",
            data='mutation { launchRun(executionParams: {selector: {repositoryLocationName: "influencer_pipeline", '
            'repositoryName: "__repository__", jobName: "persona_dataset"}}) { __typename } }',
            headers={"Content-Type": "application/graphql"},
            timeout=10,
        ),
    ]
    # A batch is refused outright (400): dagster-webserver executes one document per request.
    assert [response.status_code for response in attempts] == [401, 401, 400, 401]
    assert server.run_count() == before


def test_rest_write_endpoints_need_the_token(server: Server) -> None:
    url = f"{server.url}/report_asset_materialization/content_plan"
    assert requests.post(url, json={"metadata": {"source": "test"}}, timeout=10).status_code == 401
    accepted = requests.post(url, json={"metadata": {"source": "test"}}, headers=bearer(server.token), timeout=10)
    assert accepted.status_code == 200, accepted.text


def test_the_websocket_cannot_run_a_mutation(server: Server) -> None:
    from websockets.sync.client import connect

    before = server.run_count()
    ws_url = server.url.replace("http://", "ws://") + "/graphql"
    with connect(ws_url, subprotocols=["graphql-ws"], open_timeout=10) as socket:
        socket.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(socket.recv(timeout=10))["type"] == "connection_ack"
        start = {"query": LAUNCH, "variables": {"p": PARAMS}}
        socket.send(json.dumps({"id": "1", "type": "start", "payload": start}))
        reply = json.loads(socket.recv(timeout=10))
    assert reply["type"] == "error", reply
    assert "launchRun" in json.dumps(reply["payload"])
    assert server.run_count() == before


def test_it_refuses_to_start_without_a_strong_token(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "influencer_pipeline.ops.webserver_auth", "-w", str(ROOT / "workspace.yaml")]
    for token in ("", "short"):
        env = os.environ | {"DAGSTER_HOME": str(tmp_path), "DAGSTER_GRAPHQL_TOKEN": token}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2 and "DAGSTER_GRAPHQL_TOKEN" in done.stderr, done.stderr


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- the decision on its own: which documents need the token -------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "operation_name", "expected"),
    [
        ("{ version }", None, False),
        ("query Q { version }", None, False),
        ("mutation { launchRun { __typename } }", None, True),
        ("subscription { pipelineRunLogs(runId: 1) { __typename } }", None, True),
        ("query A { version } mutation B { x }", "A", False),
        ("query A { version } mutation B { x }", "B", True),
        ("query A { version } mutation B { x }", None, True),
        ("query A { version } mutation B { x }", "Nope", True),
        ("query A { version } mutation B { x }", ["A"], True),
        ("fragment F on Query { version } query A { ...F }", None, False),
        ("mutation {", None, True),  # unparseable: refused, never passed (we cannot tell what it is)
        ({"not": "a string"}, None, True),
    ],
)
def test_only_queries_pass_without_a_token(query: object, operation_name: object, expected: bool) -> None:
    assert selects_non_query(query, operation_name) is expected


def test_every_place_the_server_reads_a_document_from_is_inspected() -> None:
    mutation = "mutation M { launchRun { __typename } }"
    assert needs_token(b"query=" + mutation.replace(" ", "+").encode(), b"")
    assert needs_token(b"query=%7B+version+%7D&query=mutation+%7B+x+%7D", b"")  # a repeated parameter: refused
    assert needs_token(b"", json.dumps([{"query": "{ version }"}, {"query": mutation}]).encode())  # a batch
    assert needs_token(b"", mutation.encode())  # application/graphql
    assert needs_token(b"query=%7B+version+%7D", json.dumps({"query": mutation}).encode())
    assert not needs_token(b"", json.dumps({"query": "{ version }", "operationName": None}).encode())
    assert graphql_request(b"", b"") is None


def test_the_middleware_guards_paths_under_a_path_prefix() -> None:
    """`-l /dagster` moves every route; the guard follows, and the app behind still gets the body it needs."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"received": (await request.body()).decode()})

    app = Starlette(routes=[Route("/dagster/{path:path}", echo, methods=["GET", "POST"])])
    client = TestClient(MutationAuthMiddleware(app, "t" * 32, "/dagster"))
    mutation = {"query": "mutation { launchRun { __typename } }"}
    assert client.post("/dagster/graphql", json=mutation).status_code == 401
    assert client.post("/dagster/graphql/", json=mutation).status_code == 401
    assert client.post("/dagster/report_asset_check/a", json={}).status_code == 401
    allowed = client.post("/dagster/graphql", json=mutation, headers=bearer("t" * 32))
    assert allowed.status_code == 200 and json.loads(allowed.json()["received"]) == mutation
    assert client.post("/dagster/graphql", json={"query": "{ version }"}).status_code == 200
