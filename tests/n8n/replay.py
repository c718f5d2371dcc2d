"""Replays an n8n workflow JSON file outside n8n, so tests exercise the exact requests the shipped file makes.

n8n itself (a Node.js server of several hundred MB) is not run in tests. Instead this module reads the workflow
file and executes it the way n8n's v1 execution order does: from the trigger, node by node along `connections`,
depth first, each node seeing its input items. What every node type does is reimplemented for the subset the
workflows in `resources/n8n/` use; anything outside it raises `ReplayError` instead of guessing:

- `webhook` (v2, trigger; `authentication` `none` or `headerAuth`, which answers 403 unless the credential's
  header and value came with the request; `options.rawBody` keeps the raw bytes as binary `data`),
  `scheduleTrigger` (trigger);
- `set` v3.4 in `raw` mode (`jsonOutput`, a JSON text or an expression template), with optional overrides per
  node name (what a user does when editing the Config node after import);
- `httpRequest` v4.2: `method`, `url`, `authentication: genericCredentialType` + `httpHeaderAuth` (the header
  name and value come from the credential named in the node, looked up in the credentials given to `Replay`),
  `sendHeaders`/`headerParameters`, `specifyBody: json` with `jsonBody`, `options.timeout`,
  `options.response.response.neverError`; node settings `retryOnFail`/`maxTries`/`waitBetweenTries` and
  `onError` (`continueErrorOutput` puts `{error: message}` on the second output, `continueRegularOutput` on
  the first, anything else stops the replay);
- `if` v2.2: conditions of type string (`equals`, `notEquals`, `regex`, `empty`, `notEmpty`), number (`lt`,
  `lte`, `gt`, `gte`, `equals`), boolean (`true`, `false`) and `exists`/`notExists` for any type, combined with
  `and`/`or`, `caseSensitive`, strict type validation (a wrong type raises, as in n8n); regexes run on Python's
  `re`, which agrees with JavaScript for the patterns used (anchors, groups, alternation);
- `wait` v1.1 with `resume: timeInterval` (the sleep function is injectable), `respondToWebhook` v1.1
  (`respondWith: json`, `options.responseCode`), `noOp`;
- `code` v2 in both modes, run by the machine's `node` with n8n's Code-node globals: `$input` (`all`, `first`,
  `last`, `item`), `$json` (each-item mode), `$('Name')` (`first`, `last`, `all`, `item` by paired item,
  `isExecuted`), `$env`, `$runIndex`, `$execution.id`, `this.helpers.getBinaryDataBuffer`, and `require` of
  the built-ins allowed by NODE_FUNCTION_ALLOW_BUILTIN (here `crypto` only).

Expressions (`={{ ... }}` parameters and `{{ ... }}` inside `=` templates) are resolved in Python and must stay
inside this grammar:

    expression := "JSON.stringify(" path ")" | path
    path       := root accessor*
    root       := "$json" | "$runIndex" | "$execution" | "$(" quoted node name ")"
    accessor   := "." name | "?." name | "[" quoted key | integer "]" | ".first()" | ".item"

A parameter that is one whole `={{ expression }}` keeps the value's type; inside a longer template, values are
inserted as text (strings raw, numbers and booleans as JavaScript prints them), so objects must go through
`JSON.stringify`. Reading a property of undefined or null raises, as it does in JavaScript; `?.` does not.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

WORKFLOWS = Path(__file__).resolve().parents[2] / "resources" / "n8n"
MAX_NODE_RUNS = 5000
UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
ALLOWED_BUILTINS = ["crypto"]


class ReplayError(Exception):
    """The workflow did something this replay does not model, or something n8n itself would refuse."""


class _Undefined:
    """JavaScript's `undefined`, distinct from `null` (None): a missing key is undefined, not null."""

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED = _Undefined()


def load(name: str) -> dict:
    """A workflow from resources/n8n by file stem, e.g. `load("train-persona")`."""
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


@dataclass
class Item:
    """An n8n item; `lineage` maps each upstream node name to this item's ancestor there (paired items)."""

    json: Any
    binary: dict | None = None
    lineage: dict[str, Any] = field(default_factory=dict)


@dataclass
class Exchange:
    """One HTTP request the workflow made, as sent and as answered."""

    node: str
    method: str
    url: str
    headers: dict[str, str]
    body: Any
    status: int | None = None
    response: Any = None
    error: str | None = None


@dataclass
class WebhookResponse:
    """What the caller of a webhook got back: from a Respond to Webhook node, or n8n's own refusal."""

    status: int
    body: Any


@dataclass
class Execution:
    """What one replay did: nodes in the order they ran, HTTP exchanges, the webhook answer, every output."""

    id: str
    path: list[str] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    response: WebhookResponse | None = None
    outputs: dict[str, list[list[list[Item]]]] = field(default_factory=dict)

    def ran(self, node: str) -> bool:
        return node in self.outputs

    def latest_output(self, node: str) -> list[Item]:
        """The first output of the node's latest run, which is what `$('Node')` reads in n8n."""
        if node not in self.outputs:
            raise ReplayError(f"referenced node {node!r} has not run")
        outputs = self.outputs[node][-1]
        return outputs[0] if outputs else []


@dataclass
class Scope:
    """What an expression can see while a node handles one item."""

    item: Item
    run_index: int
    execution: Execution


# --- expressions -------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<int>\d+)|(?P<op>\?\.|\$\(|[.\[\]()])"
    r"|(?P<name>\$?[A-Za-z_][A-Za-z0-9_]*))"
)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, pos, text = [], 0, text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ReplayError(f"expression outside the supported subset at {text[pos:]!r} in {text!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def parse_expression(text: str) -> tuple:
    """An AST for one `{{ }}` body; raises ReplayError for anything outside the documented grammar."""
    tokens = _tokens(text)
    node, rest = _parse(tokens, text)
    if rest:
        raise ReplayError(f"unexpected {rest[0][1]!r} in expression {text!r}")
    return node


def _parse(tokens: list[tuple[str, str]], text: str) -> tuple[tuple, list[tuple[str, str]]]:
    values = [value for _, value in tokens]
    if values[:4] == ["JSON", ".", "stringify", "("]:
        inner, rest = _parse_path(tokens[4:], text)
        if not rest or rest[0][1] != ")":
            raise ReplayError(f"JSON.stringify( without ) in {text!r}")
        return ("stringify", inner), rest[1:]
    return _parse_path(tokens, text)


def _parse_path(tokens: list[tuple[str, str]], text: str) -> tuple[tuple, list[tuple[str, str]]]:
    if not tokens:
        raise ReplayError(f"empty expression {text!r}")
    value = tokens[0][1]
    if value in ("$json", "$runIndex", "$execution"):
        root, rest = ("var", value), tokens[1:]
    elif value == "$(" and len(tokens) > 2 and tokens[1][0] == "str" and tokens[2][1] == ")":
        root, rest = ("node", json.loads('"' + tokens[1][1][1:-1].replace('"', '\\"') + '"')), tokens[3:]
    else:
        raise ReplayError(f"unsupported start {value!r} in expression {text!r}")
    steps: list[tuple[str, Any]] = []
    while rest and rest[0][1] in (".", "?.", "["):
        op = rest[0][1]
        if op == "[":
            if len(rest) < 3 or rest[1][0] not in ("str", "int") or rest[2][1] != "]":
                raise ReplayError(f"only [integer] or ['key'] indexing is supported in {text!r}")
            key = int(rest[1][1]) if rest[1][0] == "int" else rest[1][1][1:-1]
            steps.append(("get", key))
            rest = rest[3:]
            continue
        if len(rest) < 2 or rest[1][0] != "name":
            raise ReplayError(f"a property name must follow {op!r} in {text!r}")
        name = rest[1][1]
        if name == "first" and len(rest) >= 4 and rest[2][1] == "(" and rest[3][1] == ")":
            steps.append(("first", None))
            rest = rest[4:]
            continue
        steps.append(("optional" if op == "?." else "get", name))
        rest = rest[2:]
    return ("path", root, steps), rest


def evaluate(node: tuple, scope: Scope) -> Any:
    if node[0] == "stringify":
        value = evaluate(node[1], scope)
        return UNDEFINED if value is UNDEFINED else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    _, root, steps = node
    value = _root(root, scope)
    for op, key in steps:
        value = _step(value, op, key, scope)
    return value


def _root(root: tuple[str, str], scope: Scope) -> Any:
    kind, name = root
    if kind == "node":
        return ("noderef", name)
    return {"$json": scope.item.json, "$runIndex": scope.run_index, "$execution": {"id": scope.execution.id}}[name]


def _step(value: Any, op: str, key: Any, scope: Scope) -> Any:
    if isinstance(value, tuple) and value[:1] == ("noderef",):
        name = value[1]
        if op == "first":
            items = scope.execution.latest_output(name)
            return {"json": items[0].json} if items else UNDEFINED
        if key == "item":
            if name not in scope.item.lineage:
                raise ReplayError(f"paired item data for {name!r} is unavailable to this item")
            return {"json": scope.item.lineage[name]}
        raise ReplayError(f"$({name!r}) supports .first() and .item only, not {key!r}")
    if value is UNDEFINED or value is None:
        if op == "optional":
            return UNDEFINED
        raise ReplayError(f"Cannot read properties of {'null' if value is None else 'undefined'} (reading {key!r})")
    if isinstance(value, dict):
        return value.get(key, UNDEFINED)
    if isinstance(value, list) and isinstance(key, int):
        return value[key] if 0 <= key < len(value) else UNDEFINED
    raise ReplayError(f"reading {key!r} of a {type(value).__name__} is outside the supported subset")


_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)


def template_expressions(text: str) -> list[str]:
    """The `{{ }}` bodies of a template (the part after the leading `=`)."""
    return [m.group(1) for m in _TEMPLATE.finditer(text)]


def render(value: Any, scope: Scope) -> Any:
    """Resolve every `=`-prefixed string in a parameter tree, as n8n does before a node runs."""
    if isinstance(value, dict):
        return {k: render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    if not (isinstance(value, str) and value.startswith("=")):
        return value
    text = value[1:]
    whole = _TEMPLATE.fullmatch(text.strip())
    if whole:
        return evaluate(parse_expression(whole.group(1)), scope)
    return _TEMPLATE.sub(lambda m: _as_text(evaluate(parse_expression(m.group(1)), scope), m.group(1)), text)


def _as_text(value: Any, source: str) -> str:
    if value is UNDEFINED:
        raise ReplayError(f"{{{{{source}}}}} is undefined inside a template")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        raise ReplayError(f"{{{{{source}}}}} is an object inside a template: wrap it in JSON.stringify()")
    return str(value)


def defined(value: Any) -> Any:
    return None if value is UNDEFINED else value


# --- static reading ---------------------------------------------------------------------------------------


def expressions(parameters: Any) -> Iterator[str]:
    """Every expression body in a node's parameters (Code nodes hold JavaScript, not expressions)."""
    if isinstance(parameters, dict):
        for key, value in parameters.items():
            if key != "jsCode":
                yield from expressions(value)
    elif isinstance(parameters, list):
        for value in parameters:
            yield from expressions(value)
    elif isinstance(parameters, str) and parameters.startswith("="):
        yield from template_expressions(parameters[1:])


@dataclass(frozen=True)
class HttpRequestSpec:
    """One HTTP Request node as written in the file, before any expression is resolved."""

    node: str
    method: str
    url: str
    credential: str | None
    body_template: str

    @property
    def graphql(self) -> str | None:
        """The GraphQL document in the body template (expressions blanked out), if the body has a `query`."""
        body = json.loads(_TEMPLATE.sub("null", self.body_template.removeprefix("=")))
        return body.get("query") if isinstance(body, dict) else None


def http_requests(workflow: dict) -> list[HttpRequestSpec]:
    specs = []
    for node in workflow["nodes"]:
        if node["type"] != "n8n-nodes-base.httpRequest":
            continue
        p = node["parameters"]
        credential = node.get("credentials", {}).get("httpHeaderAuth", {}).get("name")
        specs.append(HttpRequestSpec(node["name"], p.get("method", "GET"), p["url"], credential, p.get("jsonBody", "")))
    return specs


# --- execution --------------------------------------------------------------------------------------------


Outputs = list[list[Item]]


class Replay:
    """Runs one workflow file against real HTTP endpoints, with credentials and Config edits supplied by a test."""

    def __init__(
        self,
        workflow: dict,
        *,
        credentials: dict[str, dict[str, str]],
        env: dict[str, str] | None = None,
        overrides: dict[str, dict] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.workflow = workflow
        self.nodes = {node["name"]: node for node in workflow["nodes"]}
        self.credentials = credentials
        self.env = env or {}
        self.overrides = overrides or {}
        self.sleep = sleep
        self.handlers: dict[str, Callable[[dict, list[Item], Scope], Outputs]] = {
            "set": self._set,
            "code": self._code,
            "httpRequest": self._http,
            "if": self._if,
            "wait": self._wait,
            "respondToWebhook": self._respond,
            "noOp": lambda node, items, scope: [items],
        }

    def run_webhook(self, node_name: str, body: bytes, headers: dict[str, str] | None = None) -> Execution:
        """A POST to the Webhook node: its item is {headers, params, query, body}, plus the raw body if asked.

        With Header Auth on the node, a request without the credential's header and value gets n8n's 403 and
        starts nothing."""
        node = self._trigger(node_name, "webhook")
        lowered = {k.lower(): v for k, v in (headers or {}).items()} | {"content-type": "application/json"}
        if not self._caller_allowed(node, lowered):
            return Execution(id="refused", response=WebhookResponse(403, "Authorization data is wrong!"))
        item = Item({"headers": lowered, "params": {}, "query": {}, "body": json.loads(body)})
        if node["parameters"].get("options", {}).get("rawBody"):
            item.binary = {"data": {"data": base64.b64encode(body).decode(), "mimeType": "application/json"}}
        return self._execute(node_name, [item])

    def _caller_allowed(self, node: dict, headers: dict[str, str]) -> bool:
        auth = node["parameters"].get("authentication", "none")
        if auth == "none":
            return True
        if auth != "headerAuth":
            raise ReplayError(f"{node['name']!r}: webhook authentication {auth!r} is not modelled")
        credential = self._credential(node)
        return headers.get(credential["name"].lower()) == credential["value"]

    def run_schedule(self, node_name: str) -> Execution:
        self._trigger(node_name, "scheduleTrigger")
        return self._execute(node_name, [Item({"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")})])

    def _trigger(self, name: str, kind: str) -> dict:
        node = self.nodes.get(name)
        if not node or node["type"] != f"n8n-nodes-base.{kind}":
            raise ReplayError(f"{name!r} is not a {kind} node of {self.workflow['name']!r}")
        return node

    def _execute(self, trigger: str, items: list[Item]) -> Execution:
        execution = Execution(id=str(uuid.uuid4().int % 10**6))
        for item in items:
            item.lineage = {trigger: item.json}
        self._record(execution, trigger, [items])
        stack = self._children(trigger, [items])
        while stack:
            if len(execution.path) > MAX_NODE_RUNS:
                raise ReplayError(f"more than {MAX_NODE_RUNS} node runs: an unbounded loop?")
            name, batch = stack.pop()
            outputs = self._run_node(execution, name, batch)
            self._record(execution, name, outputs)
            stack.extend(self._children(name, outputs))
        return execution

    def _record(self, execution: Execution, name: str, outputs: Outputs) -> None:
        execution.path.append(name)
        execution.outputs.setdefault(name, []).append(outputs)

    def _children(self, name: str, outputs: Outputs) -> list[tuple[str, list[Item]]]:
        """The next (node, items) pairs, reversed so the stack runs the first connection first (depth first)."""
        pending = []
        for index, targets in enumerate(self.workflow["connections"].get(name, {}).get("main", [])):
            items = outputs[index] if index < len(outputs) else []
            pending += [(t["node"], items) for t in targets if items]
        return pending[::-1]

    def _run_node(self, execution: Execution, name: str, items: list[Item]) -> Outputs:
        node = self.nodes[name]
        kind = node["type"].removeprefix("n8n-nodes-base.")
        if kind not in self.handlers:
            raise ReplayError(f"node type {node['type']} ({name!r}) is not modelled by the replay")
        scope = Scope(Item(None), len(execution.outputs.get(name, [])), execution)
        outputs = self.handlers[kind](node, items, scope)
        return [[self._descend(name, item) for item in output] for output in outputs]

    @staticmethod
    def _descend(name: str, item: Item) -> Item:
        return Item(item.json, item.binary, item.lineage | {name: item.json})

    @staticmethod
    def _for(item: Item, scope: Scope) -> Scope:
        return Scope(item, scope.run_index, scope.execution)

    # --- node types ---

    def _set(self, node: dict, items: list[Item], scope: Scope) -> Outputs:
        params = node["parameters"]
        if params.get("mode") != "raw":
            raise ReplayError(f"{node['name']!r}: only the Set node's raw (JSON) mode is modelled")
        out = []
        for item in items:
            value = render(params["jsonOutput"], self._for(item, scope))
            data = json.loads(value) if isinstance(value, str) else value
            out.append(Item(data | self.overrides.get(node["name"], {}), None, item.lineage))
        return [out]

    def _if(self, node: dict, items: list[Item], scope: Scope) -> Outputs:
        true, false = [], []
        for item in items:
            filter_ = render(node["parameters"]["conditions"], self._for(item, scope))
            (true if if_passes(filter_) else false).append(item)
        return [true, false]

    def _wait(self, node: dict, items: list[Item], scope: Scope) -> Outputs:
        params = render(node["parameters"], self._for(items[0], scope))
        if params.get("resume", "timeInterval") != "timeInterval":
            raise ReplayError(f"{node['name']!r}: only timed waits are modelled")
        self.sleep(float(params["amount"]) * UNIT_SECONDS[params.get("unit", "hours")])
        return [items]

    def _respond(self, node: dict, items: list[Item], scope: Scope) -> Outputs:
        params = render(node["parameters"], self._for(items[0], scope))
        if params.get("respondWith") != "json":
            raise ReplayError(f"{node['name']!r}: only respondWith=json is modelled")
        if scope.execution.response is None:
            body = params["responseBody"]
            body = json.loads(body) if isinstance(body, str) else body
            scope.execution.response = WebhookResponse(int(params.get("options", {}).get("responseCode", 200)), body)
        return [items]

    def _http(self, node: dict, items: list[Item], scope: Scope) -> Outputs:
        ok, failed = [], []
        for item in items:
            exchange = self._request(node, render(node["parameters"], self._for(item, scope)))
            scope.execution.exchanges.append(exchange)
            if exchange.error is None:
                ok.append(Item(exchange.response, None, item.lineage))
                continue
            error_item = Item({"error": {"message": exchange.error}}, None, item.lineage)
            match node.get("onError"):
                case "continueErrorOutput":
                    failed.append(error_item)
                case "continueRegularOutput":
                    ok.append(error_item)
                case _:
                    raise ReplayError(f"{node['name']!r} failed and stops the workflow: {exchange.error}")
        return [ok, failed] if node.get("onError") == "continueErrorOutput" else [ok]

    def _request(self, node: dict, params: dict) -> Exchange:
        headers = self._auth_headers(node, params)
        if params.get("sendHeaders"):
            headers |= {h["name"]: h["value"] for h in params.get("headerParameters", {}).get("parameters", [])}
        body = None
        if params.get("sendBody"):
            if params.get("specifyBody") != "json":
                raise ReplayError(f"{node['name']!r}: only JSON bodies (specifyBody=json) are modelled")
            raw = params["jsonBody"]
            body = json.loads(raw) if isinstance(raw, str) else raw
        options = params.get("options", {})
        never_error = options.get("response", {}).get("response", {}).get("neverError", False)
        exchange = Exchange(node["name"], params.get("method", "GET"), params["url"], headers, body)
        tries = int(node.get("maxTries", 3)) if node.get("retryOnFail") else 1
        for attempt in range(tries):
            if attempt:
                self.sleep(int(node.get("waitBetweenTries", 1000)) / 1000)
            exchange.error = self._send(exchange, options.get("timeout", 300_000) / 1000, never_error)
            if exchange.error is None:
                break
        return exchange

    def _auth_headers(self, node: dict, params: dict) -> dict[str, str]:
        auth = params.get("authentication", "none")
        if auth == "none":
            return {}
        if auth != "genericCredentialType" or params.get("genericAuthType") != "httpHeaderAuth":
            raise ReplayError(f"{node['name']!r}: only HTTP Header Auth credentials are modelled")
        credential = self._credential(node)
        return {credential["name"]: credential["value"]}

    def _credential(self, node: dict) -> dict[str, str]:
        """The {name, value} of the HTTP Header Auth credential the node names, as n8n would decrypt it."""
        name = node.get("credentials", {}).get("httpHeaderAuth", {}).get("name")
        if name not in self.credentials:
            raise ReplayError(f"{node['name']!r} needs the credential {name!r}, which the replay was not given")
        return self.credentials[name]

    @staticmethod
    def _send(exchange: Exchange, timeout: float, never_error: bool) -> str | None:
        """Send once; the error message n8n would report, or None. Fills in status and response."""
        try:
            answer = requests.request(
                exchange.method, exchange.url, json=exchange.body, headers=exchange.headers, timeout=timeout
            )
        except requests.RequestException as err:
            return f"{type(err).__name__}: {err}"
        exchange.status = answer.status_code
        try:
            exchange.response = answer.json()
        except ValueError:
            exchange.response = {"data": answer.text}
        if not isinstance(exchange.response, dict):
            raise ReplayError(f"{exchange.node!r}: a non-object JSON answer would become several items")
        if answer.status_code >= 400 and not never_error:
            return f"Request failed with status code {answer.status_code}"
        return None

    def _code(self, node: dict, items: list[Item], scope: Scope) -> Outputs:
        params = node["parameters"]
        mode = params.get("mode", "runOnceForAllItems")
        execution = scope.execution
        task = {
            "code": params["jsCode"],
            "mode": mode,
            "items": [{"json": i.json, "binary": i.binary, "lineage": i.lineage} for i in items],
            "outputs": {
                name: [i.json for i in runs[-1][0]] if runs[-1] else [] for name, runs in execution.outputs.items()
            },
            "env": self.env,
            "runIndex": scope.run_index,
            "executionId": execution.id,
            "allowBuiltins": ALLOWED_BUILTINS,
        }
        results = run_javascript(node["name"], task)
        return [[self._paired(result, items) for result in results]]

    @staticmethod
    def _paired(result: dict, inputs: list[Item]) -> Item:
        """n8n's rule: an explicit pairedItem wins; else one input pairs with every output."""
        paired = result.get("pairedItem")
        index = paired.get("item") if isinstance(paired, dict) else paired
        if index is None and len(inputs) == 1:
            index = 0
        lineage = inputs[index].lineage if index is not None else {}
        return Item(result["json"], result.get("binary"), lineage)


def if_passes(filter_: dict) -> bool:
    """n8n's filter semantics for the operators the workflows use (see the module docstring)."""
    options = filter_.get("options", {})
    results = [_condition(c, options) for c in filter_["conditions"]]
    return all(results) if filter_.get("combinator", "and") == "and" else any(results)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
}


def _condition(condition: dict, options: dict) -> bool:
    operator = condition["operator"]
    kind, operation = operator["type"], operator["operation"]
    left, right = defined(condition.get("leftValue")), defined(condition.get("rightValue"))
    if kind == "number" and isinstance(right, str) and right.strip():
        right = float(right)
    if left is not None and options.get("typeValidation") == "strict" and not _TYPES[kind](left):
        raise ReplayError(f"Wrong type: {left!r} is not a {kind} (condition {condition.get('id')})")
    if operation in ("exists", "notExists"):
        return (left is not None) == (operation == "exists")
    if kind == "string":
        return _string_condition(operation, left or "", right or "", options.get("caseSensitive", True))
    if kind == "number" and left is not None:
        return {"lt": left < right, "lte": left <= right, "gt": left > right, "gte": left >= right}.get(
            operation, left == right
        )
    if kind == "boolean" and operation in ("true", "false"):
        return bool(left) == (operation == "true")
    raise ReplayError(f"operator {kind}:{operation} is not modelled")


def _string_condition(operation: str, left: str, right: str, case_sensitive: bool) -> bool:
    if operation == "regex":
        return re.search(right, left, 0 if case_sensitive else re.I) is not None
    if not case_sensitive:
        left, right = left.lower(), right.lower()
    outcomes = {
        "equals": left == right,
        "notEquals": left != right,
        "empty": not left,
        "notEmpty": bool(left),
    }
    if operation not in outcomes:
        raise ReplayError(f"string operation {operation!r} is not modelled")
    return outcomes[operation]


# --- Code nodes -------------------------------------------------------------------------------------------

_RUNNER = r"""
const task = JSON.parse(require('fs').readFileSync(0, 'utf8'));
console.log = console.info = console.warn = (...a) => process.stderr.write(a.join(' ') + '\n');
const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
const allowed = new Set(task.allowBuiltins);
const sandboxRequire = (name) => {
  if (!allowed.has(name)) throw new Error(`Cannot find module '${name}' (not in NODE_FUNCTION_ALLOW_BUILTIN)`);
  return require(name);
};
const asItem = (it) => ({ json: it.json, binary: it.binary ?? undefined });
function nodeRef(name, lineage) {
  const output = task.outputs[name];
  const items = () => {
    if (!output) throw new Error(`Referenced node is unexecuted: "${name}"`);
    return output.map((json) => ({ json }));
  };
  return {
    isExecuted: Boolean(output),
    first: () => items()[0],
    last: () => items().at(-1),
    all: () => items(),
    get item() {
      if (!lineage || !(name in lineage)) throw new Error(`Paired item data for "${name}" is unavailable`);
      return { json: lineage[name] };
    },
  };
}
async function call(index, json, lineage) {
  const items = task.items;
  const helpers = {
    getBinaryDataBuffer: async (i, prop) => {
      const data = items[i]?.binary?.[prop];
      if (!data) throw new Error(`no binary property "${prop}" on item ${i}`);
      return Buffer.from(data.data, 'base64');
    },
  };
  const $input = { all: () => items.map(asItem), first: () => asItem(items[0]), last: () => asItem(items.at(-1)),
    item: items[index] && asItem(items[index]) };
  const fn = new AsyncFunction('$input', '$json', '$', '$env', '$runIndex', '$execution', 'require', task.code);
  return fn.call({ helpers }, $input, json, (name) => nodeRef(name, lineage), task.env, task.runIndex,
    { id: task.executionId }, sandboxRequire);
}
const normalize = (r) => (Array.isArray(r) ? r : [r]).map((x) => (x && 'json' in x ? x : { json: x }));
(async () => {
  let out = [];
  if (task.mode === 'runOnceForEachItem') {
    for (let i = 0; i < task.items.length; i++) {
      const result = normalize(await call(i, task.items[i].json, task.items[i].lineage));
      out.push(...result.map((r) => ({ ...r, pairedItem: { item: i } })));
    }
  } else {
    out = normalize(await call(0, undefined, null));
  }
  process.stdout.write(JSON.stringify(out.map((r) => ({ json: r.json, binary: r.binary, pairedItem: r.pairedItem }))));
})().catch((e) => { process.stderr.write(String((e && e.stack) || e)); process.exit(1); });
"""


def node_available() -> bool:
    return shutil.which("node") is not None


def run_javascript(node_name: str, task: dict) -> list[dict]:
    """Run a Code node's JavaScript in Node.js with n8n's Code-node globals; its returned items."""
    if not node_available():
        raise ReplayError("Code nodes need Node.js (`node` on PATH) to replay")
    done = subprocess.run(["node", "-e", _RUNNER], input=json.dumps(task), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise ReplayError(f"Code node {node_name!r} threw: {done.stderr.strip()}")
    return json.loads(done.stdout)
