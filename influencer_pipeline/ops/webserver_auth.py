"""dagster-webserver, with a bearer token required for every write.

    DAGSTER_GRAPHQL_TOKEN=... python -m influencer_pipeline.ops.webserver_auth -h 127.0.0.1 -p 3000 -w workspace.yaml

Why: OSS dagster-webserver has no authentication (dagster-io/dagster#2219); anyone who reaches `/graphql` can launch,
terminate or wipe runs. This builds the same app `dagster-webserver` builds for a workspace and serves it with
uvicorn behind `MutationAuthMiddleware`, which requires ``Authorization: Bearer $DAGSTER_GRAPHQL_TOKEN`` (compared
in constant time) for:

* every GraphQL operation that is not a query, wherever the server could read it from: a JSON body (one request or
  a batch list), an ``application/graphql`` body, or ``?query=`` on GET and POST. The operation that would run
  decides (``operationName``); when that is ambiguous (several operations and no matching name), any non-query
  operation in the document requires the token;
* the REST write endpoints ``/report_asset_materialization|observation|check/...``.

Everything else passes without a token: queries, ``/server_info``, the UI's static files, and the GraphQL
websocket. The websocket only executes subscriptions: dagster-webserver runs whatever arrives there through
``subscribe``, which resolves fields against the Subscription type, so a mutation sent there fails (tested).

Trade-off, by design: read access stays open. Anyone who can reach the port can browse runs, logs, asset metadata
and run config (secrets passed as `dg.EnvVar` are never shown), and the UI's own buttons (Materialize, Launch,
Terminate) get 401 because a browser sends no token: people read, automation holding the token (n8n) writes.
For read access control keep the server on 127.0.0.1 or a VPN, or put an authenticating reverse proxy in front
(oauth2-proxy, traefik-forward-auth), which can also inject the token for trusted users.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

import click
import uvicorn
from dagster._cli.utils import assert_no_remaining_opts, get_possibly_temporary_instance_for_cli
from dagster._cli.workspace.cli_target import WorkspaceOpts, workspace_opts_to_load_target
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._utils.log import configure_loggers
from dagster_shared.cli import workspace_options
from dagster_webserver import cli as webserver_cli
from dagster_webserver.app import create_app_from_workspace_process_context
from dagster_webserver.version import __version__
from graphql import GraphQLError, OperationDefinitionNode, OperationType, parse

TOKEN_ENV = "DAGSTER_GRAPHQL_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_BODY_BYTES = 10 * 1024 * 1024
GRAPHQL_PATH = "/graphql"
WRITE_PATH_PREFIXES = ("/report_asset_materialization", "/report_asset_observation", "/report_asset_check")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]
log = logging.getLogger(__name__)


def selects_non_query(query: object, operation_name: object) -> bool:
    """Whether executing `query` with `operation_name` could run a mutation (or anything but a query).

    A document the server could not execute (not a string, not parseable) needs no token: it fails either way.
    """
    if not isinstance(query, str):
        return False
    try:
        document = parse(query)
    except GraphQLError:
        return False
    operations = [node for node in document.definitions if isinstance(node, OperationDefinitionNode)]
    named = [op for op in operations if op.name is not None and op.name.value == operation_name]
    return any(op.operation != OperationType.QUERY for op in named or operations)


def graphql_requests(query_string: bytes, body: bytes) -> list[tuple[object, object]]:
    """Every (query, operationName) the server might execute for this request, whatever the content type says.

    Inspecting all places at once means a client cannot hide a mutation where we do not look but the server does.
    """
    params = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    queries = [value for key, value in params if key == "query"]
    names = [value for key, value in params if key == "operationName"] or [None]
    found: list[tuple[object, object]] = [(query, name) for query in queries for name in names]
    if not body:
        return found
    try:
        data = json.loads(body)
    except ValueError:
        return [*found, (body.decode("utf-8", "replace"), None)]  # application/graphql: the body is the document
    items = data if isinstance(data, list) else [data]
    return found + [(item.get("query"), item.get("operationName")) for item in items if isinstance(item, dict)]


def needs_token(query_string: bytes, body: bytes) -> bool:
    return any(selects_non_query(query, name) for query, name in graphql_requests(query_string, body))


class MutationAuthMiddleware:
    """ASGI middleware: GraphQL mutations and REST writes need the bearer token; everything else passes."""

    def __init__(self, app: ASGIApp, token: str, path_prefix: str = "") -> None:
        self.app = app
        self.path_prefix = path_prefix
        self._token_digest = hashlib.sha256(token.encode()).digest()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(self.path_prefix).rstrip("/")
        if path.startswith(WRITE_PATH_PREFIXES):
            if not self.authorized(scope):
                await self.deny(scope, send, "this endpoint writes to the instance")
                return
        elif path == GRAPHQL_PATH:
            body = await read_body(receive)
            if body is None:
                await respond(send, 413, {"errors": [{"message": "GraphQL request body too large"}]})
                return
            if needs_token(scope.get("query_string", b""), body) and not self.authorized(scope):
                await self.deny(scope, send, "GraphQL mutations need a token")
                return
            receive = replaying(body, receive)
        await self.app(scope, receive, send)

    def authorized(self, scope: dict[str, Any]) -> bool:
        """A `Bearer` token equal to ours; digests keep the comparison constant-time whatever the length."""
        credentials = bearer_token(scope["headers"])
        if credentials is None:
            return False
        return hmac.compare_digest(hashlib.sha256(credentials.encode()).digest(), self._token_digest)

    async def deny(self, scope: dict[str, Any], send: Send, why: str) -> None:
        presented = bearer_token(scope["headers"]) is not None
        client = (scope.get("client") or ("?",))[0]
        what = "a wrong" if presented else "no"
        log.warning("refused %s %s from %s with %s token", scope["method"], scope["path"], client, what)
        challenge = 'Bearer realm="dagster"' + (', error="invalid_token"' if presented else "")
        message = f"Unauthorized: {why}; send 'Authorization: Bearer <{TOKEN_ENV}>'."
        await respond(send, 401, {"errors": [{"message": message}]}, [(b"www-authenticate", challenge.encode())])


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The credentials of the first `Authorization: Bearer ...` header, else None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None
    return None


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body (None past MAX_BODY_BYTES): the decision needs the document before the app runs."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body we consumed, then defers to the client (disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def respond(send: Send, status: int, payload: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def load_token() -> str:
    """The token from the environment; refuse to serve an unprotected or guessable write API."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if len(token) < MIN_TOKEN_CHARS:
        state = "is not set" if not token else f"is shorter than {MIN_TOKEN_CHARS} characters"
        raise click.UsageError(
            f"{TOKEN_ENV} {state}. Fix: export {TOKEN_ENV}=$(python -c "
            "'import secrets; print(secrets.token_urlsafe(32))') and give the same value to n8n's credential."
        )
    return token


@click.command(name="webserver_auth", help="dagster-webserver with a bearer token required for mutations.")
@click.option("--host", "-h", default="127.0.0.1", show_default=True, help="Host to bind.")
@click.option("--port", "-p", type=int, default=3000, show_default=True, help="Port to bind.")
@click.option("--path-prefix", "-l", default="", help="Serve under this prefix, e.g. /dagster.")
@click.option("--uvicorn-log-level", default="warning", show_default=True, help="uvicorn's log level.")
@workspace_options  # dagster-webserver's own -w/-f/-m/... options: code loads exactly as there
def main(host: str, port: int, path_prefix: str, uvicorn_log_level: str, **workspace: object) -> None:
    token = load_token()
    workspace_opts = WorkspaceOpts.extract_from_cli_options(workspace)
    assert_no_remaining_opts(workspace)
    configure_loggers()
    with get_possibly_temporary_instance_for_cli("webserver_auth") as instance:
        instance.optimize_for_webserver(
            webserver_cli.DEFAULT_DB_STATEMENT_TIMEOUT,
            webserver_cli.DEFAULT_POOL_RECYCLE,
            webserver_cli.DEFAULT_POOL_MAX_OVERFLOW,
        )
        load_target = workspace_opts_to_load_target(workspace_opts)
        with WorkspaceProcessContext(instance, version=__version__, workspace_load_target=load_target) as context:
            app = MutationAuthMiddleware(
                create_app_from_workspace_process_context(context, path_prefix), token, path_prefix
            )
            log.warning("serving http://%s:%d%s; GraphQL mutations need a token", host, port, path_prefix)
            uvicorn.run(app, host=host, port=port, log_level=uvicorn_log_level)


if __name__ == "__main__":
    main()
