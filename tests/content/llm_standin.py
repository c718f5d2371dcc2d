"""An OpenAI-compatible `/v1/chat/completions` stand-in on loopback, scripted reply by reply.

Each request takes the next behaviour from the script (a valid plan once the script runs out) and is recorded
with its arrival time, headers and body, so tests can count attempts and measure the waits between them.
Valid plans are written by `TemplateWriter` from the persona and day in the request's brief (the first user
message), then shaped like a model's answer: `{"posts": [...]}` without ids. Every completion carries `usage`
with token counts and, unless told otherwise, OpenRouter's `cost`.

Stricter than OpenRouter where that catches client mistakes, checked before the script is consulted (a refused
request does not use up a scripted behaviour): the bearer token must be the stand-in's `api_key` (401, as
OpenRouter answers a missing or unknown key), the model must be one of `models` (400, "not a valid model ID"),
and JSON mode must be asked for (`response_format` of type `json_object` or `json_schema`; 400 otherwise, since
a plan must come back as JSON). On demand it answers 401 for a revoked key (`revoke_key`), 402 once the credits
are spent (`exhaust_credits`) and 429 with Retry-After (`rate_limit`), besides any scripted `Status`.
https://openrouter.ai/docs/api-reference/errors
https://openrouter.ai/docs/features/structured-outputs
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from influencer_pipeline.content.writers import TemplateWriter
from influencer_pipeline.personas import Persona

PostsEdit = Callable[[list[dict[str, Any]]], None]
STANDIN_KEY = "sk-or-v1-0123456789abcdef-test-key"
# Real OpenRouter model ids the tests use, and the writer's default.
STANDIN_MODELS = ("test/model", "openai/gpt-4o-mini", "openrouter/auto")
JSON_MODES = ("json_object", "json_schema")


@dataclass(frozen=True)
class Valid:
    """A valid plan for the request's brief; `edit` may change its posts first, `cost=None` omits `usage.cost`."""

    cost: float | None = 0.0005
    edit: PostsEdit | None = None
    fenced: bool = False  # wrap the JSON in a ```json fence, as chatty models do


@dataclass(frozen=True)
class InvalidJson:
    """A reply whose content is not JSON at all."""


@dataclass(frozen=True)
class SchemaInvalid:
    """Valid JSON, but the first post carries `hashtags` tags (over every platform's limit by default)."""

    hashtags: int = 40


@dataclass(frozen=True)
class Status:
    """An HTTP error in OpenAI's `{"error": {...}}` shape; `echo_key` quotes the request's Authorization back."""

    code: int
    retry_after: str | None = None
    message: str = "scripted failure"
    echo_key: bool = False


@dataclass(frozen=True)
class Slow:
    """A valid reply sent only after `seconds` (longer than the client's timeout in the tests)."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """Read the request, then close the connection without a reply."""


Behaviour = Valid | InvalidJson | SchemaInvalid | Status | Slow | Drop


@dataclass
class Received:
    """One request as the stand-in saw it."""

    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    body: dict[str, Any]
    behaviour: Behaviour

    @property
    def brief(self) -> dict[str, Any]:
        first_user = next(m for m in self.body["messages"] if m["role"] == "user")
        return json.loads(first_user["content"])


@dataclass
class LLMStandin:
    """Start with `start()` or as a context manager; `url` is then the base URL (`.../v1`) for the writer.

    `received` holds every request that passed the checks; `refused` the (status, reason) of those that did not.
    """

    script: deque[Behaviour] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    api_key: str = STANDIN_KEY
    models: tuple[str, ...] = STANDIN_MODELS
    refused: list[tuple[int, str]] = field(default_factory=list)
    key_revoked: bool = False
    credits_spent: bool = False
    rate_limited: int = 0
    retry_after: str = "1"
    _server: http.server.ThreadingHTTPServer | None = None

    def revoke_key(self) -> None:
        """Every later request is answered 401, as for a key deleted in the OpenRouter dashboard."""
        self.key_revoked = True

    def exhaust_credits(self) -> None:
        """Every later request is answered 402 (OpenRouter: insufficient credits)."""
        self.credits_spent = True

    def rate_limit(self, times: int, retry_after: str = "1") -> None:
        """The next `times` requests are answered 429 with this Retry-After."""
        self.rate_limited, self.retry_after = times, retry_after

    def then(self, *behaviours: Behaviour) -> LLMStandin:
        self.script.extend(behaviours)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> LLMStandin:
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                standin._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> LLMStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check(self, handler: http.server.BaseHTTPRequestHandler, body: dict[str, Any]) -> Status | None:
        """The refusal for a request OpenRouter (or this stricter stand-in) would not serve, else None."""
        if handler.path != "/v1/chat/completions":
            return Status(404, message=f"no route {handler.path}")
        if handler.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            return Status(401, message="No auth credentials found")
        if self.key_revoked:
            return Status(401, message="User not found.")
        if self.credits_spent:
            return Status(402, message="Insufficient credits. Add more using https://openrouter.ai/credits")
        if self.rate_limited > 0:
            self.rate_limited -= 1
            return Status(429, retry_after=self.retry_after, message="Rate limit exceeded")
        if body.get("model") not in self.models:
            return Status(400, message=f"{body.get('model')!r} is not a valid model ID")
        response_format = body.get("response_format")
        if not isinstance(response_format, dict) or response_format.get("type") not in JSON_MODES:
            return Status(400, message=f"response_format must be one of {JSON_MODES}: the plan must come back as JSON")
        return None

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", 0))) or b"{}")
        refusal = self._check(handler, body)
        if refusal is not None:
            self.refused.append((refusal.code, refusal.message))
            _send_status(handler, refusal)
            return
        behaviour = self.script.popleft() if self.script else Valid()
        record = Received(time.monotonic(), dict(handler.headers.items()), body, behaviour)
        self.received.append(record)
        if isinstance(behaviour, Drop):
            handler.close_connection = True
        elif isinstance(behaviour, Status):
            _send_status(handler, behaviour)
        else:
            if isinstance(behaviour, Slow):
                time.sleep(behaviour.seconds)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                _send(handler, 200, _completion(record))


def _send(
    handler: http.server.BaseHTTPRequestHandler, code: int, payload: Any, headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def _send_status(handler: http.server.BaseHTTPRequestHandler, status: Status) -> None:
    message = status.message
    if status.echo_key:
        message += f" (you sent {handler.headers.get('Authorization', 'nothing')})"
    headers = {"Retry-After": status.retry_after} if status.retry_after is not None else {}
    _send(handler, status.code, {"error": {"message": message, "code": status.code}}, headers)


def _completion(record: Received) -> dict[str, Any]:
    """An OpenAI-shaped completion answering the request with the behaviour's content and usage."""
    content = _content(record)
    usage: dict[str, Any] = {
        "prompt_tokens": len(json.dumps(record.body["messages"])) // 4,
        "completion_tokens": max(1, len(content) // 4),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    cost = record.behaviour.cost if isinstance(record.behaviour, Valid) else 0.0005
    if cost is not None:
        usage["cost"] = cost
    return {
        "id": f"gen-{len(content)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": record.body.get("model", ""),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage,
    }


def _content(record: Received) -> str:
    behaviour = record.behaviour
    if isinstance(behaviour, InvalidJson):
        return "Sure! Here is your plan: posts = [first, second]"
    posts = planned_posts(record.brief)
    if isinstance(behaviour, SchemaInvalid):
        posts[0]["hashtags"] = [f"tag{i}" for i in range(behaviour.hashtags)]
    if isinstance(behaviour, Valid) and behaviour.edit is not None:
        behaviour.edit(posts)
    text = json.dumps({"posts": posts}, ensure_ascii=False)
    return f"```json\n{text}\n```" if isinstance(behaviour, Valid) and behaviour.fenced else text


def planned_posts(brief: dict[str, Any]) -> list[dict[str, Any]]:
    """The posts a well-behaved model would send for `brief`: the template writer's, without ids."""
    persona = Persona(**brief["persona"])
    plan, _ = TemplateWriter().plan_day(persona, date.fromisoformat(brief["date"]), brief["posts"])
    posts = [post.model_dump(mode="json") for post in plan.posts]
    for post in posts:
        post.pop("id")
    return posts
