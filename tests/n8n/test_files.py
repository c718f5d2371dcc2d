"""The workflow files themselves: importable by `n8n import:workflow`, every request authenticated and every GraphQL
answer checked, every GraphQL document valid for Dagster 1.13. What n8n does with them is test_real_n8n.py's job."""

from __future__ import annotations

import re
import uuid

import graphql
import pytest
from dagster_graphql.schema import create_schema

from tests.n8n.workflow_files import ALL, NAMES, http_requests, load

GRAPHQL_CREDENTIAL = "Dagster GraphQL token"
NOTIFY_CREDENTIAL = "Influencer notification webhook"
TRIGGERS = {"n8n-nodes-base.webhook", "n8n-nodes-base.scheduleTrigger", "n8n-nodes-base.manualTrigger"}
OPTIONAL_BRANCHES = {"Notify URL set?"}  # IF nodes whose false branch deliberately does nothing


@pytest.mark.parametrize("name", ALL)
def test_workflow_is_an_importable_n8n_file(name: str) -> None:
    workflow = load(name)
    # `n8n import:workflow --input=<file>` inserts the file's own id (NOT NULL); n8n's ids are 16 alphanumerics.
    assert re.fullmatch(r"[0-9A-Za-z]{16}", workflow.get("id", "")), "the file needs a top-level id"
    # Tags are created once per import batch, so the same tag in two files breaks `import:workflow --separate`.
    assert "tags" not in workflow
    nodes = {node["name"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]), "node names must be unique: connections refer to names"
    assert len({uuid.UUID(node["id"]) for node in workflow["nodes"]}) == len(nodes)
    assert workflow["settings"]["executionOrder"] == "v1"
    for node in workflow["nodes"]:
        assert isinstance(node["typeVersion"], (int, float)) and isinstance(node["parameters"], dict)
        assert len(node["position"]) == 2
    for source, kinds in workflow["connections"].items():
        assert source in nodes and set(kinds) == {"main"}, source
        for output in kinds["main"]:
            for target in output:
                assert target["node"] in nodes and target["type"] == "main" and target["index"] == 0, target
    for node in workflow["nodes"]:
        if node["type"] == "n8n-nodes-base.if" and node["name"] not in OPTIONAL_BRANCHES:
            outputs = workflow["connections"].get(node["name"], {}).get("main", [])
            assert len(outputs) == 2 and all(outputs), f"{node['name']}: both branches must lead somewhere"
    reached = reachable(workflow)
    assert reached == set(nodes), f"not reachable from a trigger: {set(nodes) - reached}"


@pytest.mark.parametrize("name", ALL)
def test_references_to_other_nodes_name_the_output(name: str) -> None:
    """`$('Node').first()`/`.last()`/`.all()` without an output index read the output through which `Node` reaches
    the current node, which for a node with an error output can be the error output (n8n 2.x). Every reference
    names output 0 (or uses `.item`, which follows the item's own path)."""
    text = str(load(name))
    assert not re.findall(r"\$\([^)]*\)\.(?:first|last|all)\(\)", text)


@pytest.mark.parametrize("name", ALL)
def test_if_conditions_use_no_regex(name: str) -> None:
    """n8n 2.41 evaluates a filter's regex in a VM with a 250 ms limit ("Regular expression execution timed out"),
    which a busy host exceeds, failing the execution; `equals` and a list's `includes` have no such limit."""
    for node in load(name)["nodes"]:
        if node["type"] == "n8n-nodes-base.if":
            operations = {c["operator"]["operation"] for c in node["parameters"]["conditions"]["conditions"]}
            assert "regex" not in operations, node["name"]


def reachable(workflow: dict, start: str | None = None) -> set[str]:
    todo = [start] if start else [n["name"] for n in workflow["nodes"] if n["type"] in TRIGGERS]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [t["node"] for out in workflow["connections"].get(name, {}).get("main", []) for t in out]
    return seen


@pytest.mark.parametrize("name", ["train-persona", "daily-content"])
def test_every_request_sends_a_credential_and_every_graphql_answer_is_checked(name: str) -> None:
    workflow = load(name)
    nodes = {node["name"]: node for node in workflow["nodes"]}
    specs = http_requests(workflow)
    assert specs
    for spec in specs:
        node = nodes[spec.node]
        assert node["parameters"]["authentication"] == "genericCredentialType", spec.node
        assert node["parameters"]["genericAuthType"] == "httpHeaderAuth", spec.node
        if spec.graphql is None:
            assert spec.credential == NOTIFY_CREDENTIAL, spec.node
            continue
        assert spec.credential == GRAPHQL_CREDENTIAL, spec.node
        assert spec.method == "POST" and spec.url == "={{ $('Config').first(0).json.graphqlUrl }}", spec.node
        assert node["onError"] == "continueErrorOutput", f"{spec.node}: transport errors must reach a failure path"
        success, failure = workflow["connections"][spec.node]["main"]
        assert failure, f"{spec.node}: its error output goes nowhere"
        [check] = [nodes[t["node"]] for t in success]
        assert check["type"] == "n8n-nodes-base.if", f"{spec.node}: its answer goes unchecked"
        filter_ = check["parameters"]["conditions"]
        checks = {(c["leftValue"], c["operator"]["operation"]) for c in filter_["conditions"]}
        assert filter_["combinator"] == "and" and ("={{ $json.errors }}", "notExists") in checks, check["name"]
        assert any("__typename" in left for left, _ in checks), f"{check['name']}: no __typename check"


def test_every_graphql_document_is_valid_for_dagster_and_asks_for_typename() -> None:
    schema = create_schema().graphql_schema
    documents = [s.graphql for name in NAMES for s in http_requests(load(name)) if s.graphql]
    assert len(documents) == 11
    for document in documents:
        assert not graphql.validate(schema, graphql.parse(document)), document
        for operation in graphql.parse(document).definitions:
            for root in operation.selection_set.selections:
                fields = {s.name.value for s in root.selection_set.selections if hasattr(s, "name")}
                assert "__typename" in fields, f"{root.name.value} in {document[:60]}..."


def test_daily_content_counts_a_persona_trained_once_even_if_its_latest_training_failed() -> None:
    """`materializedPartitions` drops a partition whose latest run failed; the latest materialization per partition
    stays (the LoRA it wrote is still there)."""
    [listing] = [s.graphql for s in http_requests(load("daily-content")) if s.node == "List personas"]
    assert "latestMaterializationByPartition" in listing and "materializedPartitions" not in listing
