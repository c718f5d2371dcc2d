"""The n8n workflows in resources/n8n: valid n8n files, every GraphQL document valid for Dagster 1.13, and replayed
from their JSON (tests/n8n/replay.py) against stand-ins for the failure paths and a real `dagster dev` for the
main path: dagster-daemon plus the token-guarded webserver (influencer_pipeline.ops.webserver_auth), as deployed.
The queries and variables sent are the ones in the files, never retyped here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import graphql
import pytest
import requests
from dagster_graphql.schema import create_schema

from influencer_pipeline.content.plan import ContentPlan
from influencer_pipeline.notify import signed_headers
from tests.conftest import free_port
from tests.n8n import replay

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["train-persona", "daily-content", "run-events"]
GRAPHQL_CREDENTIAL = "Dagster GraphQL token"
NOTIFY_CREDENTIAL = "Influencer notification webhook"
TOKEN = "n8n-test-token-5f1c9a7e2b"  # the webserver wants at least 16 characters
CREDENTIALS = {
    GRAPHQL_CREDENTIAL: {"name": "Authorization", "value": f"Bearer {TOKEN}"},
    NOTIFY_CREDENTIAL: {"name": "Authorization", "value": "Bearer notify-token"},
    "Train persona caller": {"name": "X-Influencer-Caller", "value": "caller-token"},
}
CALLER = {"X-Influencer-Caller": "caller-token"}
TRIGGERS = {"n8n-nodes-base.webhook", "n8n-nodes-base.scheduleTrigger"}
MODELLED = {
    f"n8n-nodes-base.{kind}" for kind in ("set", "code", "httpRequest", "if", "wait", "respondToWebhook", "noOp")
}
SUCCESS_TYPES = {
    "addDynamicPartition": {"AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"},
    "launchRun": {"LaunchRunSuccess"},
    "runOrError": {"Run"},
    "assetNodeOrError": {"AssetNode"},
    "runsOrError": {"Runs"},
}
SECRET = "run-events-secret"
OPTIONAL_BRANCHES = {"Notify URL set?"}  # IF nodes whose false branch deliberately does nothing

needs_node = pytest.mark.skipif(not replay.node_available(), reason="Code nodes are replayed with Node.js (`node`)")


# --- the files as n8n reads them ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_workflow_is_an_importable_n8n_file(name: str) -> None:
    workflow = replay.load(name)
    nodes = {node["name"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]), "node names must be unique: connections refer to names"
    assert len({uuid.UUID(node["id"]) for node in workflow["nodes"]}) == len(nodes)
    assert workflow["settings"]["executionOrder"] == "v1"
    for node in workflow["nodes"]:
        assert node["type"] in TRIGGERS | MODELLED, f"{node['name']}: {node['type']} is not replayed"
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
    for node in workflow["nodes"]:
        for expression in replay.expressions(node["parameters"]):
            replay.parse_expression(expression)  # inside the subset the replay resolves
        if node["parameters"].get("responseMode") == "responseNode":
            answered = {n for n in reachable(workflow, node["name"]) if "respondToWebhook" in nodes[n]["type"]}
            assert answered, f"{node['name']} waits for a Respond to Webhook node that it never reaches"


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
    workflow = replay.load(name)
    nodes = {node["name"]: node for node in workflow["nodes"]}
    specs = replay.http_requests(workflow)
    assert specs
    for spec in specs:
        node = nodes[spec.node]
        assert node["parameters"]["authentication"] == "genericCredentialType", spec.node
        assert node["parameters"]["genericAuthType"] == "httpHeaderAuth", spec.node
        if spec.graphql is None:
            assert spec.credential == NOTIFY_CREDENTIAL, spec.node
            continue
        assert spec.credential == GRAPHQL_CREDENTIAL, spec.node
        assert spec.method == "POST" and spec.url == "={{ $('Config').first().json.graphqlUrl }}", spec.node
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
    documents = [s.graphql for name in NAMES for s in replay.http_requests(replay.load(name)) if s.graphql]
    assert len(documents) == 11
    for document in documents:
        assert not graphql.validate(schema, graphql.parse(document)), document
        for operation in graphql.parse(document).definitions:
            for root in operation.selection_set.selections:
                fields = {s.name.value for s in root.selection_set.selections if hasattr(s, "name")}
                assert "__typename" in fields, f"{root.name.value} in {document[:60]}..."


# --- run events: signature and routing ----------------------------------------------------------------------


def signed(payload: dict, secret: str = SECRET, age_s: int = 0) -> tuple[bytes, dict[str, str]]:
    """Signed exactly as the pipeline's notifier signs (influencer_pipeline.notify), so both ends agree."""
    body = json.dumps(payload).encode()
    return body, signed_headers(body, secret, int(time.time()) - age_s)


def run_event(status: str) -> dict:
    return {"run_id": "abc123", "job": "persona_training", "partition": "ava", "status": status}


@needs_node
@pytest.mark.parametrize(("status", "branch"), [("SUCCESS", "Handle success"), ("FAILURE", "Handle failure")])
def test_run_events_acknowledges_a_signed_event_and_routes_it(status: str, branch: str) -> None:
    body, headers = signed(run_event(status))
    execution = replay.Replay(
        replay.load("run-events"), credentials={}, env={"NOTIFY_WEBHOOK_SECRET": SECRET}
    ).run_webhook("Run event", body, headers)
    assert execution.response == replay.WebhookResponse(200, {"received": True})
    assert execution.ran(branch)
    assert execution.latest_output(branch)[0].json["event"]["run_id"] == "abc123"


@needs_node
@pytest.mark.parametrize(
    ("tamper", "env", "reason"),
    [
        (lambda body, headers: (body.replace(b"FAILURE", b"SUCCESS"), headers), True, "does not match"),
        (lambda body, headers: (body, {}), True, "X-Influencer-Timestamp is missing"),
        (lambda body, headers: (body, headers), False, "NOTIFY_WEBHOOK_SECRET is not set"),
        (lambda body, headers: signed(json.loads(body), age_s=3600), True, "more than 5 minutes off"),
    ],
)
def test_run_events_refuses_what_it_cannot_verify(tamper: Callable, env: bool, reason: str) -> None:
    body, headers = tamper(*signed(run_event("FAILURE")))
    secrets = {"NOTIFY_WEBHOOK_SECRET": SECRET} if env else {}
    execution = replay.Replay(replay.load("run-events"), credentials={}, env=secrets).run_webhook(
        "Run event", body, headers
    )
    assert execution.response is not None and execution.response.status == 401
    assert reason in execution.response.body["error"]
    assert not execution.ran("Handle success") and not execution.ran("Handle failure")


# --- train persona against a stand-in GraphQL endpoint: refusals and failures ------------------------------


class Endpoint(ThreadingHTTPServer):
    """A loopback HTTP endpoint that records every POST and answers with `answer(body) -> (status, json)`."""

    def __init__(self, answer: Callable[[dict], tuple[int, dict]]):
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
        status, answer = self.server.answer(body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        """Quiet: the test asserts on what was received."""


@contextmanager
def endpoint(answer: Callable[[dict], tuple[int, dict]] = lambda body: (200, {})) -> Iterator[Endpoint]:
    server = Endpoint(answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def operation(body: dict) -> str:
    return re.match(r"\s*(?:query|mutation)\s+(\w+)", body["query"]).group(1)


def stand_in(answers: dict[str, dict]) -> Callable[[dict], tuple[int, dict]]:
    """Dagster as seen by n8n: a fixed `data` answer per GraphQL operation name."""
    return lambda body: (200, {"data": answers[operation(body)]})


RUN_STATUS_FAILED = {"runOrError": {"__typename": "Run", "runId": "run-1", "status": "FAILURE"}}


def failed_run(events: list[dict], failed_steps: list[str]) -> dict:
    """A `RunResult` answer for a dataset run that ended FAILURE after 12.5 s."""
    return {
        "runOrError": {
            "__typename": "Run",
            "runId": "run-1",
            "jobName": "persona_dataset",
            "status": "FAILURE",
            "startTime": 100.0,
            "endTime": 112.5,
            "stepStats": [{"stepKey": step, "status": "FAILURE"} for step in failed_steps],
            "assetMaterializations": [],
            "eventConnection": {"events": [{"__typename": "RunStartEvent"}, *events]},
        }
    }


STEP_FAILED = failed_run(
    [
        {
            "__typename": "ExecutionStepFailureEvent",
            "stepKey": "training_images",
            "message": 'Execution of step "training_images" failed.',
            "error": {
                "className": "DagsterExecutionStepExecutionError",
                "message": 'Error occurred while executing op "training_images":',
                "cause": {"className": "InputError", "message": "uploads/ava/: 4 usable images; 10 needed\n"},
            },
        },
        {"__typename": "RunFailureEvent", "message": "Steps failed: ['training_images'].", "error": None},
    ],
    ["training_images"],
)
RUN_FAILED = failed_run(
    [
        {"__typename": "EngineEvent", "message": "Started process for run (pid: 7).", "error": None},
        {
            "__typename": "EngineEvent",
            "message": "Could not load job definition.",
            "error": {"className": "DagsterImportError", "message": "ImportError: cannot import name 'x'\n"},
        },
        {"__typename": "RunFailureEvent", "message": "This run has been marked as failed.", "error": None},
    ],
    [],
)
STANDARD_ANSWERS = {
    "AddPersona": {"addDynamicPartition": {"__typename": "DuplicateDynamicPartitionError", "partitionName": "ava"}},
    "LaunchRun": {"launchRun": {"__typename": "LaunchRunSuccess", "run": {"runId": "run-1", "status": "QUEUED"}}},
}


def train(graphql_url: str, payload: dict, notify_url: str = "", **config: Any) -> replay.Execution:
    overrides = {"Config": {"graphqlUrl": graphql_url, "pollSeconds": 0, "notifyUrl": notify_url} | config}
    flow = replay.Replay(replay.load("train-persona"), credentials=CREDENTIALS, overrides=overrides, sleep=no_wait)
    return flow.run_webhook("Webhook", json.dumps(payload).encode(), CALLER)


def no_wait(seconds: float) -> None:
    """Stand-ins answer at once; real waits would only slow the test."""


@needs_node
def test_train_persona_refuses_a_bad_request_or_an_unknown_caller_before_calling_dagster() -> None:
    with endpoint() as dagster:
        execution = train(dagster.url + "/graphql", {"persona": "../Ava", "test_prompts": []})
        anonymous = replay.Replay(replay.load("train-persona"), credentials=CREDENTIALS).run_webhook(
            "Webhook", b'{"persona": "ava"}'
        )
    assert execution.response is not None and execution.response.status == 400
    assert execution.response.body["status"] == "REJECTED"
    assert 'persona: got "../Ava"' in execution.response.body["error"]
    assert "test_prompts: expected 1-10" in execution.response.body["error"]
    assert anonymous.response == replay.WebhookResponse(403, "Authorization data is wrong!") and not anonymous.path
    assert not dagster.received and not execution.exchanges


@needs_node
@pytest.mark.parametrize(
    ("result", "step", "message"),
    [
        (STEP_FAILED, "training_images", "uploads/ava/: 4 usable images; 10 needed"),
        (RUN_FAILED, None, "Could not load job definition. ImportError: cannot import name 'x'"),
    ],
    ids=["step-failed", "run-failed-before-any-step"],
)
def test_train_persona_answers_and_notifies_the_failed_stage_step_and_message(
    result: dict, step: str | None, message: str
) -> None:
    answers = STANDARD_ANSWERS | {"RunStatus": RUN_STATUS_FAILED, "RunResult": result}
    with endpoint(stand_in(answers)) as dagster, endpoint() as receiver:
        execution = train(dagster.url + "/graphql", {"persona": "ava"}, receiver.url)
    assert execution.response is not None and execution.response.status == 500
    body = execution.response.body
    assert body["status"] == "FAILURE" and body["lora"] is None and body["samples"] is None
    assert body["failure"] == {"stage": "dataset", "job": "persona_dataset", "step": step, "message": message}
    assert body["runs"]["dataset"] == {
        "runId": "run-1",
        "status": "FAILURE",
        "url": dagster.url + "/runs/run-1",
        "duration_s": 12.5,
    }
    assert not execution.ran("Launch training run")
    [(headers, notification)] = receiver.received
    assert headers["Authorization"] == "Bearer notify-token"
    assert notification["event"] == "train_persona.finished" and notification["failure"] == body["failure"]


@needs_node
def test_train_persona_polls_a_bounded_number_of_times() -> None:
    still_running = {"runOrError": {"__typename": "Run", "runId": "run-1", "status": "STARTED"}}
    with endpoint(stand_in(STANDARD_ANSWERS | {"RunStatus": still_running})) as dagster:
        execution = train(dagster.url + "/graphql", {"persona": "ava"}, maxPolls=2)
    assert [operation(body) for _, body in dagster.received] == ["AddPersona", "LaunchRun"] + ["RunStatus"] * 3
    assert execution.response is not None and execution.response.status == 504
    assert execution.response.body["status"] == "TIMEOUT"
    assert "still STARTED after 3 polls" in execution.response.body["failure"]["message"]


@needs_node
def test_train_persona_reports_graphql_errors_and_an_unreachable_dagster() -> None:
    rejected = {"errors": [{"message": 'Cannot query field "addDynamicPartition" on type "Mutation".'}]}
    with endpoint(lambda body: (400, rejected)) as dagster:
        execution = train(dagster.url + "/graphql", {"persona": "ava"})
    assert execution.response is not None and execution.response.status == 502
    assert execution.response.body["failure"]["stage"] == "partition"
    assert execution.response.body["failure"]["message"].startswith("GraphQL error: Cannot query field")

    execution = train(f"http://127.0.0.1:{free_port()}/graphql", {"persona": "ava"})
    assert [e.node for e in execution.exchanges] == ["Add persona partition"]  # 3 tries, one exchange
    assert execution.response is not None and execution.response.status == 502
    assert "ConnectionError" in execution.response.body["failure"]["message"]


# --- the main path against a real dagster-daemon and the token-guarded webserver -----------------------------


@pytest.fixture
def dagster_dev(tmp_path: Path) -> Iterator[str]:
    """dagster-daemon and `influencer_pipeline.ops.webserver_auth` (DAGSTER_GRAPHQL_TOKEN=TOKEN) on loopback, with the
    sample persona uploaded as `ava`; the upload sensor is held off by a day-long settle time so that only the
    workflows launch runs. Ava posts at 00:00 and 00:01 UTC here, so today's posts are due once they are made and
    the due-posts sensor publishes them (to the outbox) while the test watches."""
    home, media = tmp_path / "dagster_home", tmp_path / "media"
    home.mkdir()
    shutil.copy(ROOT / "resources" / "dagster" / "dagster.local.yaml", home / "dagster.yaml")
    shutil.copytree(ROOT / "resources" / "personas" / "ava", media / "uploads" / "ava")
    persona = media / "uploads" / "ava" / "persona.yaml"
    text = persona.read_text().replace("timezone: Europe/Rome", "timezone: UTC")
    persona.write_text(text.replace('posting_times: ["09:30", "18:00"]', 'posting_times: ["00:00", "00:01"]'))
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
        "webserver": [sys.executable, "-m", "influencer_pipeline.ops.webserver_auth", "-p", str(port), *workspace],
    }
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in commands}
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True)
        for name, cmd in commands.items()
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not server_up(url):
            tails = "\n".join((tmp_path / f"{name}.log").read_text()[-2000:] for name in commands)
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, tails
            time.sleep(1)
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


def stop_automation(url: str) -> None:
    """Declarative automation would also train `ava` once its dataset lands, racing the workflow's own training
    run for the GPU pool; this test measures the workflow alone."""
    selector = {"repositoryLocationName": "influencer_pipeline", "repositoryName": "__repository__"}
    sensor = requests.post(
        f"{url}/graphql",
        json={
            "query": "query S($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { id } } }",
            "variables": {"s": selector | {"sensorName": "follow_upstream"}},
        },
        timeout=30,
    ).json()["data"]["sensorOrError"]
    stopped = requests.post(
        f"{url}/graphql",
        json={"query": "mutation T($id: String) { stopSensor(id: $id) { __typename } }", "variables": sensor},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    ).json()
    assert stopped["data"]["stopSensor"]["__typename"] == "StopSensorMutationResult", stopped


def graphql_exchanges(execution: replay.Execution) -> list[replay.Exchange]:
    """Every GraphQL exchange, each checked: the token sent, no `errors`, a success `__typename`."""
    exchanges = [e for e in execution.exchanges if isinstance(e.body, dict) and "query" in e.body]
    for exchange in exchanges:
        assert exchange.headers["Authorization"] == f"Bearer {TOKEN}", exchange.node
        assert exchange.status == 200 and "errors" not in exchange.response, exchange.response
        for field, value in exchange.response["data"].items():
            assert value["__typename"] in SUCCESS_TYPES[field], (exchange.node, value)
    return exchanges


@pytest.mark.slow
@needs_node
def test_workflows_train_a_persona_and_make_its_day_on_a_real_dagster(dagster_dev: str, tmp_path: Path) -> None:
    graphql_url = dagster_dev + "/graphql"
    stop_automation(dagster_dev)
    assert_refused_without_the_token(replay.load("train-persona"), graphql_url)
    with endpoint() as receiver:
        overrides = {"Config": {"graphqlUrl": graphql_url, "pollSeconds": 2, "notifyUrl": receiver.url}}
        payload = {
            "persona": "ava",
            "preset": "embedded-tiny",
            "test_prompts": ["ohwx woman smiling at a cafe table, morning light"],
            "training": {"epochs": 1},
            "samples": {"steps": 2},
        }
        trained = replay.Replay(replay.load("train-persona"), credentials=CREDENTIALS, overrides=overrides)
        execution = trained.run_webhook("Webhook", json.dumps(payload).encode(), CALLER)
        assert_trained(execution, receiver)

        content = {
            "ops": {
                "content_plan": {"config": {"posts": 2}},
                "post_images": {"config": {"steps": 2, "image_size": 256, "reel_width": 256, "reel_height": 448}},
                "post_videos": {"config": {"scale": 0.2}},
            }
        }
        overrides["Config"] |= {"contentRunConfig": content}
        daily = replay.Replay(replay.load("daily-content"), credentials=CREDENTIALS, overrides=overrides)
        receiver.received.clear()
        assert_day_made(daily.run_schedule("Every morning"), receiver)

        receiver.received.clear()
        again = daily.run_schedule("Every morning")  # same day: nothing is launched twice
        assert [operation(e.body) for e in graphql_exchanges(again)] == ["DailyContentInputs"]
        [(_, notification)] = receiver.received
        assert notification["status"] == "SKIPPED" and "already queued, running or done" in notification["reason"]
    assert_published(dagster_dev, tmp_path)


def assert_refused_without_the_token(workflow: dict, graphql_url: str) -> None:
    """The workflow's own launch request, sent without its credential, is refused and launches nothing."""
    launch = next(spec for spec in replay.http_requests(workflow) if spec.graphql and "launchRun" in spec.graphql)
    refused = requests.post(graphql_url, json={"query": launch.graphql, "variables": {}}, timeout=30)
    assert refused.status_code == 401, refused.text
    runs = requests.post(graphql_url, json={"query": "{ runsOrError { ... on Runs { count } } }"}, timeout=30)
    assert runs.json()["data"]["runsOrError"]["count"] == 0


PUBLISH_RUNS = """
query PublishRuns($f: RunsFilter) {
  runsOrError(filter: $f) { __typename ... on Runs { results { runId status startTime } } }
}"""


def assert_published(url: str, tmp_path: Path) -> None:
    """The day the workflow made goes out: due_posts_sensor, running in the daemon, launches publish_posts, which
    publishes every post due when it started, on every platform of the post, once (outbox markers)."""
    today = datetime.now(UTC).date().isoformat()
    plan = ContentPlan.model_validate_json((tmp_path / f"media/personas/ava/content/{today}/plan.json").read_text())
    deadline = time.monotonic() + 240  # the sensor ticks every 60 s
    while True:
        body = {"query": PUBLISH_RUNS, "variables": {"f": {"pipelineName": "publish_posts"}}}
        runs = requests.post(f"{url}/graphql", json=body, timeout=30).json()["data"]["runsOrError"]["results"]
        assert all(run["status"] != "FAILURE" for run in runs), runs
        done = [run for run in runs if run["status"] == "SUCCESS"]
        if done:
            break
        assert time.monotonic() < deadline, f"no publish_posts run succeeded: {runs}"
        time.sleep(2)
    started = datetime.fromtimestamp(min(run["startTime"] for run in done), UTC)
    due = {(post.id, platform) for post in plan.posts if post.publish_at <= started for platform in post.platforms}
    # The drafts are rendered at 216x384: pre-flight holds TikTok reels back (360 px minimum), the rest goes out.
    held = {(post.id, "tiktok") for post in plan.posts if post.format == "reel"}
    markers = list((tmp_path / "outbox" / "ava").rglob("PUBLISHED"))
    published = [(marker.parent.parent.name, marker.parent.name) for marker in markers]
    every = {(post.id, platform) for post in plan.posts for platform in post.platforms}
    assert due - held and due - held <= set(published) <= every - held, (due, published)
    assert len(published) == len(set(published)), "one release per post and platform"


def assert_trained(execution: replay.Execution, receiver: Endpoint) -> None:
    operations = [operation(e.body) for e in graphql_exchanges(execution)]
    polls = operations.count("RunStatus")
    assert operations[:2] == ["AddPersona", "LaunchRun"] and operations[-1] == "RunResult", operations
    assert operations.count("LaunchRun") == 2 and operations.count("RunResult") == 2 and polls >= 2
    assert execution.response is not None and execution.response.status == 200, execution.response
    body = execution.response.body
    assert body["status"] == "SUCCESS" and body["failure"] is None, body
    assert {run["status"] for run in body["runs"].values()} == {"SUCCESS"} and set(body["runs"]) == {
        "dataset",
        "training",
    }
    assert body["lora"]["location"].endswith("personas/ava/lora/ava.safetensors")
    assert Path(body["lora"]["location"]).stat().st_size > 0
    assert body["lora"]["preset"] == "embedded-tiny" and body["lora"]["epochs"] == 1  # the webhook's overrides
    assert len(body["samples"]["images"]) == 1 and all(Path(p).is_file() for p in body["samples"]["images"])
    assert Path(body["samples"]["grid"]).is_file()
    assert body["duration_s"] >= sum(run["duration_s"] for run in body["runs"].values()) > 0
    [(headers, notification)] = receiver.received
    assert headers["Authorization"] == "Bearer notify-token"
    assert notification == {"event": "train_persona.finished", "n8nExecutionId": execution.id, **body}


def assert_day_made(execution: replay.Execution, receiver: Endpoint) -> None:
    today = datetime.now(UTC).date().isoformat()
    operations = [operation(e.body) for e in graphql_exchanges(execution)]
    assert operations[:2] == ["DailyContentInputs", "LaunchRun"] and operations[-1] == "RunResult", operations
    launch = next(e.body for e in execution.exchanges if e.node == "Launch content run")
    tags = {t["key"]: t["value"] for t in launch["variables"]["p"]["executionMetadata"]["tags"]}
    assert tags["dagster/partition"] == f"{today}|ava" and tags["n8n/execution_id"] == execution.id
    assert tags["dagster/partition/date"] == today and tags["dagster/partition/persona"] == "ava"
    [(_, notification)] = receiver.received
    assert notification["status"] == "SUCCESS" and notification["failure"] is None, notification
    assert notification["partition"] == f"{today}|ava" and notification["posts"] == 2
    assert notification["images"]["count"] >= 2 and Path(notification["images"]["folder"]).is_dir()
    assert notification["reels"]["folder"].endswith(f"content/{today}/videos") and notification["duration_s"] > 0
