"""Denial of service through the auth wrapper, and websockets from any origin (issue 11).

The wrapper parsed every GraphQL document on the event loop, once per (query, operationName) pair: a 400 KB body,
or a small document with 200 `operationName` parameters, stalled every other request for 10-16 s. Now a request
without a token is inspected in a worker thread, once, within limits, and what cannot be inspected is refused.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from influencer_pipeline.admin import webserver_auth
from influencer_pipeline.admin.webserver_auth import (
    MAX_BODY_BYTES,
    MAX_TOKENS,
    MutationAuthMiddleware,
    allowed_origins,
)
from tests.support.services import free_port
from tests.support.waiting import scaled, wait_until
from tests.support.webserver import LAUNCH, PARAMS, Server
from tests.support.webserver import server as server

TOKEN = "t" * 32
DEADLINE_S = scaled(60.0)  # generous: a busy machine may be slow, but a stalled event loop never answers


# ---- an in-process wrapper, to observe the order of events --------------------------------------------------------


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


async def server_info(request: Request) -> JSONResponse:
    return JSONResponse({"dagster_webserver_version": "test"})


async def live(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


@dataclass
class Running:
    url: str
    server: uvicorn.Server


def serve(app: object) -> Iterator[Running]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    wait_until(lambda: running.started or not thread.is_alive(), "uvicorn to start", DEADLINE_S, interval=0.05)
    assert running.started, "uvicorn's thread ended before it started serving"
    try:
        yield Running(f"http://127.0.0.1:{port}", running)
    finally:
        running.should_exit = True
        thread.join(DEADLINE_S)


@pytest.fixture
def wrapper() -> Iterator[Running]:
    routes = [
        Route("/graphql", echo, methods=["GET", "POST"]),
        Route("/server_info", server_info),
        WebSocketRoute("/graphql", live),
    ]
    yield from serve(MutationAuthMiddleware(Starlette(routes=routes), TOKEN))


def test_server_info_answers_while_a_hostile_document_is_being_inspected(
    wrapper: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostile request's inspection is held inside `parse` until /server_info has answered: if inspection ran
    on the event loop (as it did), the loop would be blocked and /server_info could not answer at all."""
    inspecting, release = threading.Event(), threading.Event()
    real_parse = webserver_auth.parse

    def held_parse(*args: object, **kwargs: object) -> object:
        inspecting.set()
        release.wait(DEADLINE_S)
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(webserver_auth, "parse", held_parse)
    hostile: dict[str, object] = {}

    def send_hostile() -> None:
        document = "query Q { " + " ".join(f"a{i}: version" for i in range(2000)) + " }"
        hostile["response"] = requests.post(f"{wrapper.url}/graphql", json={"query": document}, timeout=DEADLINE_S)

    thread = threading.Thread(target=send_hostile, daemon=True)
    thread.start()
    try:
        assert inspecting.wait(DEADLINE_S), "the hostile request was never inspected"
        info = requests.get(f"{wrapper.url}/server_info", timeout=DEADLINE_S / 3)
        assert info.status_code == 200
        assert thread.is_alive() and "response" not in hostile, "the hostile request was still being handled"
    finally:
        release.set()
        thread.join(DEADLINE_S)
    assert hostile["response"].status_code == 200  # a query after all: it passes once inspected


def test_a_flood_of_inspections_never_starves_other_requests(wrapper: Running) -> None:
    """Twenty requests at the token limit in flight at once; /server_info still answers while they are handled."""
    document = "query Q { " + " ".join(f"a{i}: version" for i in range(MAX_TOKENS // 3 - 10)) + " }"
    done: list[int] = []

    def send() -> None:
        done.append(requests.post(f"{wrapper.url}/graphql", json={"query": document}, timeout=120).status_code)

    threads = [threading.Thread(target=send, daemon=True) for _ in range(20)]
    for thread in threads:
        thread.start()
    info = requests.get(f"{wrapper.url}/server_info", timeout=DEADLINE_S)
    finished_when_info_answered = len(done)
    for thread in threads:
        thread.join(120)
    assert info.status_code == 200
    assert done == [200] * 20
    print(f"/server_info answered with {20 - finished_when_info_answered} of 20 inspections still in flight")


def test_an_oversized_chunked_body_is_refused_and_answered(wrapper: Running) -> None:
    """No Content-Length (chunked): the guard reads up to the cap, drops the rest, and still answers 413."""

    def chunks() -> Iterator[bytes]:
        yield b'{"query": "{ version }", "pad": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    response = requests.post(f"{wrapper.url}/graphql", data=chunks(), timeout=DEADLINE_S)
    assert response.status_code == 413


def test_a_body_whose_last_chunk_crosses_the_cap_is_refused_without_waiting_for_more() -> None:
    """The cap is crossed by the final chunk: nothing more will come, so the guard must not ask for more."""
    import asyncio

    messages = [
        {"type": "http.request", "body": b"x" * MAX_BODY_BYTES, "more_body": True},
        {"type": "http.request", "body": b"x", "more_body": False},
    ]

    async def receive() -> dict:
        assert messages, "asked for more body after the last chunk"
        return messages.pop(0)

    assert asyncio.run(webserver_auth.read_body(receive)) is None


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        (None, True),  # not a browser
        ("SAME", True),  # a page of this server
        ("https://n8n.example.com", True),  # listed in DAGSTER_WEBSOCKET_ORIGINS
        ("https://evil.example", False),
        ("null", False),  # sandboxed iframes and file:// pages
    ],
)
def test_websocket_handshakes_from_other_origins_are_refused(origin: str | None, accepted: bool) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    origins = allowed_origins({"DAGSTER_WEBSOCKET_ORIGINS": "https://n8n.example.com/, https://other.example"})
    app = MutationAuthMiddleware(Starlette(routes=[WebSocketRoute("/graphql", live)]), TOKEN, origins=origins)
    for running in serve(app):
        ws_url = running.url.replace("http://", "ws://") + "/graphql"
        headers = {} if origin is None else {"Origin": running.url if origin == "SAME" else origin}
        if accepted:
            with connect(ws_url, additional_headers=headers, open_timeout=DEADLINE_S) as socket:
                assert socket.recv(timeout=DEADLINE_S) == "hello"
        else:
            with pytest.raises(InvalidStatus) as refused:
                connect(ws_url, additional_headers=headers, open_timeout=DEADLINE_S)
            assert refused.value.response.status_code == 403


# ---- the real token-guarded webserver -----------------------------------------------------------------------------


def test_two_hundred_operation_names_are_refused_at_once(server: Server) -> None:
    before = server.run_count()
    query = [("query", "query A { version } mutation B { x }")] + [("operationName", "A")] * 200
    response = requests.post(f"{server.url}/graphql", params=query, timeout=DEADLINE_S)
    assert response.status_code == 400, response.text
    assert "more than one" in response.json()["errors"][0]["message"]
    assert server.run_count() == before


@pytest.mark.parametrize(
    ("document", "status"),
    [
        ("{" + " a" * 200_000 + " }", 413),  # a 400 KB body: over the document's length
        ("query Q { " + "a " * (MAX_TOKENS + 1) + "}", 413),  # within the length, over the tokens
        ("\n".join(["#"] * (MAX_TOKENS + 1)) + "\nmutation M { x }", 413),  # comments count as tokens
        ("mutation M { launchRun(", 400),  # does not parse: might be a mutation, so refused
    ],
)
def test_documents_the_guard_cannot_read_cheaply_are_refused_never_passed(
    server: Server, document: str, status: int
) -> None:
    before = server.run_count()
    response = requests.post(
        f"{server.url}/graphql",
        data=document.encode(),
        headers={"Content-Type": "application/graphql"},
        timeout=DEADLINE_S,
    )
    assert response.status_code == status, response.text
    assert "Refused" in response.json()["errors"][0]["message"]
    assert server.run_count() == before


def test_a_mutation_hidden_past_the_token_limit_is_refused(server: Server) -> None:
    before = server.run_count()
    padding = " ".join(f"q{i}: version" for i in range(MAX_TOKENS // 3 + 10))
    document = f"query Q {{ {padding} }}\n{LAUNCH}"
    body = {"query": document, "operationName": "Launch", "variables": {"p": PARAMS}}
    response = server.graphql(body)
    assert response.status_code == 413, response.text
    assert server.run_count() == before


def test_an_oversized_body_is_refused_before_it_is_read_whole(server: Server) -> None:
    response = server.graphql({"query": "{ version }", "variables": {"pad": "x" * MAX_BODY_BYTES}})
    assert response.status_code == 413


def test_the_token_holder_is_not_limited(server: Server) -> None:
    """Limits protect the guard from anonymous clients; automation holding the token passes untouched."""
    document = "query Q { " + " ".join(f"a{i}: version" for i in range(MAX_TOKENS // 3 + 10)) + " }"
    response = server.graphql({"query": document}, token=server.token)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["data"]["a0"]


def test_server_info_answers_while_hostile_requests_hit_the_real_webserver(server: Server) -> None:
    """A hostile mix in flight; /server_info answers and every hostile request is refused. Timings are printed."""
    hostile = [
        ({"query": "{" + " a" * 120_000 + " }"}, None),
        (None, [("query", "query A { version } mutation B { x }")] + [("operationName", "A")] * 200),
        ({"query": "query Q { " + "a " * (MAX_TOKENS + 1) + "}"}, None),
    ] * 4
    statuses: list[int] = []

    def send(body: object, params: object) -> None:
        response = requests.post(f"{server.url}/graphql", json=body, params=params, timeout=120)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=send, args=item, daemon=True) for item in hostile]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    info = requests.get(f"{server.url}/server_info", timeout=DEADLINE_S)
    info_s = time.monotonic() - started
    in_flight = len(hostile) - len(statuses)
    for thread in threads:
        thread.join(120)
    assert info.status_code == 200
    assert sorted(statuses) == sorted([413, 400, 413] * 4)
    print(f"/server_info: {info_s:.3f} s with {in_flight} of {len(hostile)} hostile requests in flight")


def test_websocket_from_another_origin_is_refused_by_the_real_webserver(server: Server) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = server.url.replace("http://", "ws://") + "/graphql"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, subprotocols=["graphql-ws"], additional_headers={"Origin": "https://evil.example"})
    assert refused.value.response.status_code == 403
    with connect(ws_url, subprotocols=["graphql-ws"], additional_headers={"Origin": server.url}) as socket:
        socket.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(socket.recv(timeout=DEADLINE_S))["type"] == "connection_ack"
