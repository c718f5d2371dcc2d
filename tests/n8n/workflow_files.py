"""The workflow files as n8n reads them, and what the tests need to know about them (no interpretation)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

WORKFLOWS = Path(__file__).resolve().parents[2] / "resources" / "n8n"
NAMES = ["train-persona", "daily-content", "run-events"]
ALL = sorted(path.stem for path in WORKFLOWS.glob("*.json"))  # every file `import:workflow --separate` takes


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP Request node: where it sends, with which credential, and the GraphQL document of its JSON body."""

    node: str
    method: str
    url: str
    credential: str | None
    graphql: str | None


def http_requests(workflow: dict) -> list[HttpRequest]:
    """Every HTTP Request node; `graphql` is the `query` string of a `={ "query": "...", ... }` JSON body template."""
    found = []
    for node in workflow["nodes"]:
        if node["type"] != "n8n-nodes-base.httpRequest":
            continue
        params = node["parameters"]
        body = params.get("jsonBody", "")
        document = None
        if body.startswith('={ "query": '):
            document = json.JSONDecoder().raw_decode(body, len('={ "query": '))[0]
        credential = node.get("credentials", {}).get("httpHeaderAuth", {}).get("name")
        found.append(HttpRequest(node["name"], params.get("method", "GET"), params["url"], credential, document))
    return found
