"""The token-guarded webserver, started for real on loopback with this code location (SQLite DAGSTER_HOME in tmp).

No daemon runs, so a launched run stays QUEUED: "a run was created" is then exactly what the run count says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from influencer_pipeline.admin.webserver_auth import (
    MutationAuthMiddleware,
    graphql_request,
    needs_token,
    selects_non_query,
)
from tests.support.webserver import COUNT_RUNS, LAUNCH, PARAMS, ROOT, Server
from tests.support.webserver import server as server


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
    cmd = [sys.executable, "-m", "influencer_pipeline.admin.webserver_auth", "-w", str(ROOT / "workspace.yaml")]
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
