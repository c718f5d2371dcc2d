"""dagster-webserver, with a bearer token required for every write.

    DAGSTER_GRAPHQL_TOKEN=... python -m influencer_pipeline.admin.webserver_auth -h 127.0.0.1 -p 3000 -w workspace.yaml

Why: OSS dagster-webserver has no authentication (dagster-io/dagster#2219); anyone who reaches `/graphql` can launch,
terminate or wipe runs. This builds the same app `dagster-webserver` builds for a workspace and serves it with
uvicorn behind `MutationAuthMiddleware`, which requires ``Authorization: Bearer $DAGSTER_GRAPHQL_TOKEN`` (compared
in constant time) for:

* every GraphQL operation that is not a query, wherever the server could read it from: a JSON body, an
  ``application/graphql`` body, or ``?query=`` on GET and POST. The operation that would run decides
  (``operationName``); when that is ambiguous (several operations and no matching name), any non-query
  operation in the document requires the token;
* the REST write endpoints ``/report_asset_materialization|observation|check/...``.

Without a token, the guard must stay cheaper than the attack. A GraphQL request is read up to 1 MiB (else 413)
and inspected in a worker thread, never on the event loop that serves every other client, parsing its one
document once (graphql-core's ``max_tokens``: at most 10,000 tokens, else 413). A request naming more than one
document or ``operationName`` (repeated parameters, URL and body, a batch list) gets 400, and so does a
document that does not parse: what we cannot read could be a mutation, so it is refused, never passed.

Everything else passes without a token: queries, ``/server_info``, the UI's static files, the studio page
(``/studio``, read-only: ``ops/studio.py``) and its media, and the GraphQL websocket. The websocket only
executes subscriptions: dagster-webserver runs whatever arrives there through
``subscribe``, which resolves fields against the Subscription type, so a mutation sent there fails (tested).
Its handshake must come from no browser (no ``Origin``), from a page of this server (``Origin`` matches
``Host``), or from an origin listed in ``DAGSTER_WEBSOCKET_ORIGINS``: other web pages cannot read live run data
through a user's browser (cross-site websocket hijacking; browsers apply no CORS to websockets, RFC 6455 §10.2).

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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread
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
from graphql import DocumentNode, GraphQLError, OperationDefinitionNode, OperationType, parse

from influencer_pipeline.admin.studio import studio_routes
from influencer_pipeline.redaction import redact_and_clip

TOKEN_ENV = "DAGSTER_GRAPHQL_TOKEN"
ORIGINS_ENV = "DAGSTER_WEBSOCKET_ORIGINS"
MIN_TOKEN_CHARS = 16
# Limits for requests without a token. The UI's documents are far inside them: its largest query with every
# fragment the UI defines is under 5,000 tokens and 50 KB. Parsing cost grows with tokens (graphql-core's
# `max_tokens`, which also counts comments, stops the lexer at the limit instead of reading the whole body).
MAX_BODY_BYTES = 1024 * 1024
MAX_DOCUMENT_CHARS = 256 * 1024
MAX_TOKENS = 10_000
INSPECTION_THREADS = 4  # documents inspected at once; more wait their turn without holding the event loop
GRAPHQL_PATH = "/graphql"
WRITE_PATH_PREFIXES = ("/report_asset_materialization", "/report_asset_observation", "/report_asset_check")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    """Why a request without a valid token is not passed on: the HTTP status and a message saying what to fix."""

    status: int
    message: str


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.refusal = Refusal(status, message)


NEEDS_TOKEN = Refusal(401, "GraphQL mutations need a token")


def selects_non_query(query: object, operation_name: object) -> bool:
    """Whether executing `query` with `operation_name` could run anything but a query.

    A document we cannot read within the limits (not a string, too long, too many tokens, not GraphQL) counts
    as one that could: it is refused, never passed, since what the server makes of it is not ours to guess.
    """
    try:
        document = parse_document(query)
    except _Refused:
        return True
    return _selects_non_query(document, operation_name)


def parse_document(query: object) -> DocumentNode:
    """The parsed document, or `_Refused` (400/413) when it is not a string, over the limits, or not GraphQL."""
    if not isinstance(query, str):
        raise _Refused(400, "the GraphQL query must be a string")
    if len(query) > MAX_DOCUMENT_CHARS:
        raise _Refused(413, f"GraphQL document longer than {MAX_DOCUMENT_CHARS} characters")
    try:
        return parse(query, no_location=True, max_tokens=MAX_TOKENS)
    except GraphQLError as error:
        if "tokens" in error.message and str(MAX_TOKENS) in error.message:
            raise _Refused(413, f"GraphQL document with more than {MAX_TOKENS} tokens") from None
        raise _Refused(400, f"GraphQL document that does not parse ({redact_and_clip(error.message, 200)})") from None


def _selects_non_query(document: DocumentNode, operation_name: object) -> bool:
    operations = [node for node in document.definitions if isinstance(node, OperationDefinitionNode)]
    named = [op for op in operations if op.name is not None and op.name.value == operation_name]
    return any(op.operation != OperationType.QUERY for op in named or operations)


def graphql_request(query_string: bytes, body: bytes) -> tuple[object, object] | None:
    """The one (query, operationName) the server might execute for this request, whatever the content type says.

    Looking in every place at once means a client cannot hide a mutation where we do not look but the server
    does. A request that names more than one document or operation (a repeated `query` or `operationName`
    parameter, one in both the URL and the body, a batch list) is refused with 400: dagster-webserver executes
    one, and which one would be a guess. Raises `_Refused`.
    """
    params = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    queries: list[object] = [value for key, value in params if key == "query"]
    names: list[object] = [value for key, value in params if key == "operationName"]
    if body:
        try:
            data = json.loads(body)
        except ValueError:
            data = {"query": body.decode("utf-8", "replace")}  # application/graphql: the body is the document
        if not isinstance(data, dict):
            raise _Refused(400, "the GraphQL request body must be one JSON object (batches are not served)")
        queries += [data["query"]] if "query" in data else []
        names += [data["operationName"]] if data.get("operationName") is not None else []
    if len(queries) > 1 or len(names) > 1:
        raise _Refused(400, "more than one GraphQL document or operationName in the request")
    if names and not isinstance(names[0], str):
        raise _Refused(400, "'operationName' must be a string")
    return (queries[0], names[0] if names else None) if queries else None


def inspect_request(query_string: bytes, body: bytes) -> Refusal | None:
    """None when the request can only run a query (it passes without a token); else why it is not passed.

    Blocking (JSON decoding and parsing are CPU work): the middleware runs it in a worker thread. The document
    is parsed once, whatever the request names.
    """
    try:
        request = graphql_request(query_string, body)
        if request is None:
            return None
        query, operation_name = request
        return NEEDS_TOKEN if _selects_non_query(parse_document(query), operation_name) else None
    except _Refused as refused:
        return refused.refusal


def needs_token(query_string: bytes, body: bytes) -> bool:
    """Whether this request may not pass without the token (a mutation, or anything we refuse to guess about)."""
    return inspect_request(query_string, body) is not None


def allowed_origins(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """Extra browser origins allowed on the websocket (`DAGSTER_WEBSOCKET_ORIGINS`, comma-separated)."""
    return frozenset(o.strip().rstrip("/").lower() for o in environ.get(ORIGINS_ENV, "").split(",") if o.strip())


def origin_allowed(headers: Iterable[tuple[bytes, bytes]], extra: frozenset[str]) -> bool:
    """A websocket handshake from a browser page of this server or of a configured origin; no `Origin`: no browser.

    Browsers send `Origin` on every websocket handshake and do not apply CORS to websockets (RFC 6455 §10.2),
    so without this check any web page a user visits could open the UI's live connection to this server.
    """
    origin = host = None
    for name, value in headers:
        if name.lower() == b"origin" and origin is None:
            origin = value.decode("latin-1").strip().rstrip("/").lower()
        elif name.lower() == b"host" and host is None:
            host = value.decode("latin-1").strip().lower()
    if origin is None:
        return True
    if origin in extra:
        return True
    return host is not None and origin.split("://", 1)[-1] == host


class MutationAuthMiddleware:
    """ASGI middleware: GraphQL mutations and REST writes need the bearer token; everything else passes.

    A request with the token passes untouched. Without it, a GraphQL request is read (at most MAX_BODY_BYTES) and
    inspected in a worker thread, so a costly document never holds the event loop that serves everyone else.
    Websocket handshakes from a browser page of another origin are refused.
    """

    def __init__(self, app: ASGIApp, token: str, path_prefix: str = "", origins: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.path_prefix = path_prefix
        self.origins = origins
        self._token_digest = hashlib.sha256(token.encode()).digest()
        self._limiter: anyio.CapacityLimiter | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not origin_allowed(scope["headers"], self.origins):
            log.warning("refused a websocket from another origin (%s lists allowed ones)", ORIGINS_ENV)
            await send({"type": "websocket.close", "code": 1008})  # before accept: the client gets HTTP 403
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(self.path_prefix).rstrip("/")
        if path.startswith(WRITE_PATH_PREFIXES):
            if not self.authorized(scope):
                await self.deny(scope, send, "this endpoint writes to the instance")
                return
        elif path == GRAPHQL_PATH and not self.authorized(scope):
            if declared_length(scope["headers"]) > MAX_BODY_BYTES:
                await discard_body(receive)  # a client still sending would get a reset instead of the answer
                body = None
            else:
                body = await read_body(receive)
            if body is None:
                await self.refuse(send, Refusal(413, f"GraphQL request body over {MAX_BODY_BYTES} bytes"))
                return
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(INSPECTION_THREADS)
            query_string = scope.get("query_string", b"")
            refusal = await anyio.to_thread.run_sync(inspect_request, query_string, body, limiter=self._limiter)
            if refusal == NEEDS_TOKEN:
                await self.deny(scope, send, refusal.message)
                return
            if refusal is not None:
                await self.refuse(send, refusal)
                return
            receive = replaying(body, receive)
        await self.app(scope, receive, send)

    async def refuse(self, send: Send, refusal: Refusal) -> None:
        message = (
            f"Refused: {refusal.message}. Send one GraphQL document (at most {MAX_TOKENS} tokens), "
            f"or send 'Authorization: Bearer <{TOKEN_ENV}>'."
        )
        await respond(send, refusal.status, {"errors": [{"message": message}]})

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


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The `Content-Length` a client announced (0 when absent or malformed): an oversized body is refused unread."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else 0
    return 0


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
            if message.get("more_body", False):
                await discard_body(receive)
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def discard_body(receive: Receive, limit: int = 4 * MAX_BODY_BYTES) -> None:
    """Read and drop what is left of a refused body, up to `limit` bytes (past that the connection just closes)."""
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        size += len(message.get("body", b""))


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
            dagster_app = create_app_from_workspace_process_context(context, path_prefix)
            # The creator's overview (/studio) and its media, read-only, behind the same guard as the UI.
            studio = studio_routes(dagster_app, instance, path_prefix)
            app = MutationAuthMiddleware(studio, token, path_prefix, allowed_origins())
            log.warning("serving http://%s:%d%s; GraphQL mutations need a token", host, port, path_prefix)
            uvicorn.run(app, host=host, port=port, log_level=uvicorn_log_level)


if __name__ == "__main__":
    main()
