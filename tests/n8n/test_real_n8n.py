"""The workflows in resources/n8n run in the real n8n (2.41.1, installed by scripts/n8n-install.sh), set up exactly
as docs/N8N.md says: `n8n import:workflow` of the files as shipped, `n8n import:credentials`, the Config node
edited, `n8n publish:workflow`, `n8n start`. They run against a real dagster-daemon and the token-guarded webserver
(influencer_pipeline.admin.webserver_auth) for the main paths, and against a stand-in Dagster for the failures a real
one cannot be made to produce on demand. What n8n did is read back from its own execution records."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from influencer_pipeline.notify import signed_headers
from tests.n8n.n8n_server import N8n
from tests.n8n.services import TOKEN, Endpoint, endpoint, stop_automation
from tests.n8n.workflow_files import WORKFLOWS, http_requests, load

SECRET = "run-events-secret"
CALLER = {"X-Influencer-Caller": "caller-token", "Content-Type": "application/json"}
CREDENTIALS = [
    {
        "id": "dagsterGraphqlToken",
        "name": "Dagster GraphQL token",
        "type": "httpHeaderAuth",
        "data": {"name": "Authorization", "value": f"Bearer {TOKEN}"},
    },
    {
        "id": "influencerNotifyAuth",
        "name": "Influencer notification webhook",
        "type": "httpHeaderAuth",
        "data": {"name": "Authorization", "value": "Bearer notify-token"},
    },
    {
        "id": "trainPersonaCaller",
        "name": "Train persona caller",
        "type": "httpHeaderAuth",
        "data": {"name": "X-Influencer-Caller", "value": "caller-token"},
    },
]
N8N_ENV = {  # docs/N8N.md, "Credentials and secrets"
    "NOTIFY_WEBHOOK_SECRET": SECRET,
    "N8N_BLOCK_ENV_ACCESS_IN_NODE": "false",
    "NODE_FUNCTION_ALLOW_BUILTIN": "crypto",
}
STANDIN_ID = "ipTrainStandIn01"
STANDIN_PATH = "train-persona-standin"


def configured(name: str, **config: Any) -> dict:
    """The workflow as shipped with its Config node edited, as an operator does after importing it."""
    workflow = load(name)
    node = next(node for node in workflow["nodes"] if node["name"] == "Config")
    node["parameters"]["jsonOutput"] = json.dumps(json.loads(node["parameters"]["jsonOutput"]) | config, indent=2)
    return workflow


def stand_in_copy(graphql_url: str, notify_url: str) -> dict:
    """A second train-persona, under its own id and webhook path, whose Config points at the stand-in Dagster."""
    workflow = configured("train-persona", graphqlUrl=graphql_url, pollSeconds=0, maxPolls=2, notifyUrl=notify_url)
    workflow |= {"id": STANDIN_ID, "name": "Influencer: train persona (stand-in Dagster)"}
    webhook = next(node for node in workflow["nodes"] if node["name"] == "Webhook")
    webhook["parameters"]["path"] = STANDIN_PATH
    webhook["webhookId"] = "7c4f0d8e-2b19-4e6a-9a53-d1e8f6b2c047"
    for node in workflow["nodes"]:
        if node["type"] == "n8n-nodes-base.wait":
            node["webhookId"] = node["webhookId"][:-4] + "beef"
    return workflow


def import_and_publish(n8n: N8n, tmp_path: Path, workflows: list[dict]) -> None:
    """docs/N8N.md's steps: import the folder, create the credentials, edit Config, publish."""
    n8n.cli("import:workflow", "--separate", f"--input={WORKFLOWS}")
    n8n.cli("import:workflow", f"--input={WORKFLOWS / 'train-persona.json'}")
    n8n.import_credentials(CREDENTIALS)
    edited = tmp_path / "edited"
    edited.mkdir()
    for workflow in workflows:
        (edited / f"{workflow['id']}.json").write_text(json.dumps(workflow))
    n8n.cli("import:workflow", "--separate", f"--input={edited}")
    for workflow in workflows:
        n8n.cli("publish:workflow", f"--id={workflow['id']}")


# --- against a real Dagster ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_workflows_in_real_n8n_train_a_persona_make_its_day_and_take_signed_events(
    n8n_installed: Path, dagster_dev: str, tmp_path: Path
) -> None:
    graphql_url = dagster_dev + "/graphql"
    stop_automation(dagster_dev)
    assert_refused_without_the_token(graphql_url)
    n8n = N8n(tmp_path / "n8n", env=N8N_ENV)
    later = (datetime.now(UTC).hour + 12) % 24  # the schedule stays published but never fires during the test
    with endpoint() as receiver, endpoint(standin_answer) as standin:
        content = {
            "ops": {
                "content_plan": {"config": {"posts": 2}},
                "post_images": {"config": {"steps": 2, "image_size": 256, "reel_width": 256, "reel_height": 448}},
                "post_videos": {"config": {"scale": 0.2}},
            }
        }
        daily = configured(
            "daily-content", graphqlUrl=graphql_url, pollSeconds=2, notifyUrl=receiver.url, contentRunConfig=content
        )
        trigger = next(node for node in daily["nodes"] if node["type"] == "n8n-nodes-base.scheduleTrigger")
        trigger["parameters"]["rule"]["interval"][0]["expression"] = f"0 {later} * * *"
        workflows = [
            configured("train-persona", graphqlUrl=graphql_url, pollSeconds=2, notifyUrl=receiver.url),
            daily,
            load("run-events"),
            stand_in_copy(standin.url + "/graphql", receiver.url),
        ]
        import_and_publish(n8n, tmp_path, workflows)
        with n8n.serving():
            for path in ("train-persona", "influencer-run-events", STANDIN_PATH):
                n8n.wait_for_webhook(path)
            check_run_events(n8n)
            check_refusals(n8n, receiver)
            check_failures_against_the_stand_in(n8n, standin, receiver)
            check_training(n8n, receiver)
            check_unknown_preset(n8n, receiver)
            check_out_of_range_training(n8n, receiver)
            check_failed_retraining(n8n, dagster_dev, receiver)
            check_daily_content(n8n, dagster_dev, receiver)


def assert_refused_without_the_token(graphql_url: str) -> None:
    """The workflow's own launch request, sent without its credential, is refused and launches nothing: the
    `Dagster GraphQL token` credential is what lets the workflows in."""
    launch = next(spec for spec in http_requests(load("train-persona")) if spec.graphql and "launchRun" in spec.graphql)
    refused = requests.post(graphql_url, json={"query": launch.graphql, "variables": {}}, timeout=30)
    assert refused.status_code == 401, refused.text
    runs = requests.post(graphql_url, json={"query": "{ runsOrError { ... on Runs { count } } }"}, timeout=30)
    assert runs.json()["data"]["runsOrError"]["count"] == 0


def check_run_events(n8n: N8n) -> None:
    """Signed events are acknowledged and routed once; a replay, a retry, a tampered body, a missing signature and
    a stale timestamp are not handled."""
    workflow = "ipRunEvents00001"
    success = run_event("run_success", "run-1", "SUCCESS")
    body, headers = signed(success)

    def send(body: bytes, headers: dict[str, str]) -> tuple[requests.Response, dict]:
        before = len(n8n.executions(workflow))
        answer = n8n.webhook("influencer-run-events", body, headers, timeout=60)
        return answer, n8n.wait_for_execution(workflow, before)

    answer, execution = send(body, headers)
    assert (answer.status_code, answer.json()) == (200, {"received": True}), answer.text
    assert execution["status"] == "success" and "Handle success" in execution["nodes"], execution
    assert execution["runData"]["Handle success"][0]["data"]["main"][0][0]["json"]["event"] == success

    answer, execution = send(body, headers)  # the same delivery again: a replay
    assert (answer.status_code, answer.json()) == (200, {"received": True, "duplicate": True}), answer.text
    assert "Drop duplicate" in execution["nodes"] and "Run succeeded?" not in execution["nodes"], execution["nodes"]

    answer, execution = send(*signed(success, age_s=1))  # signed afresh: the sender's own retry
    assert answer.json() == {"received": True, "duplicate": True}, answer.text
    assert "Run succeeded?" not in execution["nodes"], execution["nodes"]

    answer, execution = send(*signed(run_event("run_failure", "run-2", "FAILURE")))  # another event: handled
    assert answer.json() == {"received": True}, answer.text
    assert "Handle failure" in execution["nodes"], execution["nodes"]

    tampered = body.replace(b"SUCCESS", b"FAILURE")
    stale = signed(run_event("run_success", "run-3", "SUCCESS"), age_s=3600)
    for (body_sent, headers_sent), reason in [
        ((tampered, headers), "does not match"),
        ((body, {"Content-Type": "application/json"}), "X-Influencer-Timestamp is missing"),
        (stale, "more than 5 minutes off"),
    ]:
        answer, execution = send(body_sent, headers_sent)
        assert answer.status_code == 401 and reason in answer.json()["error"], answer.text
        assert "Acknowledge" not in execution["nodes"] and "Run succeeded?" not in execution["nodes"]


def signed(payload: dict, age_s: int = 0) -> tuple[bytes, dict[str, str]]:
    """Signed exactly as the pipeline's notifier signs (influencer_pipeline.notify), so both ends agree."""
    body = json.dumps(payload).encode()
    return body, signed_headers(body, SECRET, int(time.time()) - age_s)


def run_event(event: str, run_id: str, status: str) -> dict:
    return {"event": event, "run_id": run_id, "job": "persona_training", "partition": "ava", "status": status}


def check_refusals(n8n: N8n, receiver: Endpoint) -> None:
    """A bad request gets 400 naming every bad field, an unknown caller 403; Dagster is not called."""
    bad = n8n.webhook("train-persona", json.dumps({"persona": "../Ava", "test_prompts": []}).encode(), CALLER)
    assert bad.status_code == 400, bad.text
    assert bad.json()["status"] == "REJECTED"
    assert 'persona: got "../Ava"' in bad.json()["error"] and "test_prompts: expected 1-10" in bad.json()["error"]
    anonymous = n8n.webhook("train-persona", b'{"persona": "ava"}', {"Content-Type": "application/json"})
    assert anonymous.status_code == 403, anonymous.text
    assert not receiver.received


def train(n8n: N8n, path: str, payload: dict) -> tuple[requests.Response, dict]:
    """One train-persona request, its answer, and n8n's record of the execution."""
    workflow = "ipTrainPersona01" if path == "train-persona" else STANDIN_ID
    before = len(n8n.executions(workflow))
    answer = n8n.webhook(path, json.dumps(payload).encode(), CALLER)
    return answer, n8n.wait_for_execution(workflow, before)


TRAINING = {
    "persona": "ava",
    "preset": "embedded-tiny",
    "test_prompts": ["ohwx woman smiling at a cafe table, morning light"],
    "training": {"epochs": 1},
    "samples": {"steps": 2},
}


def check_training(n8n: N8n, receiver: Endpoint) -> None:
    """Both runs succeed; the caller gets 200 with the LoRA location, and the notification says the same."""
    receiver.received.clear()
    answer, execution = train(n8n, "train-persona", TRAINING)
    assert answer.status_code == 200, (answer.text, execution["status"], n8n.log_tail())
    assert execution["status"] == "success", execution
    body = answer.json()
    assert body["status"] == "SUCCESS" and body["failure"] is None, body
    assert set(body["runs"]) == {"dataset", "training"}
    assert {run["status"] for run in body["runs"].values()} == {"SUCCESS"}
    assert re.search(r"personas/ava/lora/(versions/\w+/)?ava\.safetensors$", body["lora"]["location"]), body["lora"]
    assert Path(body["lora"]["location"]).stat().st_size > 0
    assert body["lora"]["preset"] == "embedded-tiny" and body["lora"]["epochs"] == 1  # the webhook's overrides
    assert len(body["samples"]["images"]) == 1 and all(Path(p).is_file() for p in body["samples"]["images"])
    assert Path(body["samples"]["grid"]).is_file()
    assert body["duration_s"] >= sum(run["duration_s"] for run in body["runs"].values()) > 0
    [(headers, notification)] = receiver.received
    assert headers["Authorization"] == "Bearer notify-token"
    assert notification == {"event": "train_persona.finished", "n8nExecutionId": execution["id"], **body}


def check_unknown_preset(n8n: N8n, receiver: Endpoint) -> None:
    """An unknown preset is refused by Dagster at launch (the preset is a choice in the run config schema): 502
    ERROR with stage `training` and Dagster's message; no training run; notified."""
    receiver.received.clear()
    answer, execution = train(n8n, "train-persona", TRAINING | {"preset": "no-such-preset"})
    assert answer.status_code == 502, (answer.text, execution["status"])
    body = answer.json()
    assert body["status"] == "ERROR" and body["lora"] is None, body
    failure = body["failure"]
    assert failure["stage"] == "training" and failure["job"] == "persona_training" and failure["step"] is None, body
    assert failure["message"].startswith("run config rejected:") and "no-such-preset" in failure["message"], body
    assert body["runs"]["dataset"]["status"] == "SUCCESS" and "training" not in body["runs"], body
    [(_, notification)] = receiver.received
    assert notification["failure"] == failure and notification["status"] == "ERROR"


def check_out_of_range_training(n8n: N8n, receiver: Endpoint) -> None:
    """5000 epochs (the preset allows 1-1000) is refused at launch by the instance's run coordinator, before the
    run is queued: 502 ERROR with stage `training`, no step, and the field with its range; notified."""
    receiver.received.clear()
    answer, execution = train(n8n, "train-persona", TRAINING | {"training": {"epochs": 5000}})
    assert answer.status_code == 502, (answer.text, execution["status"])
    body = answer.json()
    failure = body["failure"]
    assert body["status"] == "ERROR" and body["lora"] is None and failure["step"] is None, body
    assert failure["stage"] == "training" and failure["job"] == "persona_training", body
    assert "'epochs': 5000 is out of range 1 to 1000" in failure["message"], body
    assert "training" not in body["runs"], body  # no run was queued, so none was followed
    [(_, notification)] = receiver.received
    assert notification["failure"] == failure and notification["status"] == "ERROR"


def check_failed_retraining(n8n: N8n, url: str, receiver: Endpoint) -> None:
    """A retraining whose step fails (a base model that is not on this machine: the step says how to provide it):
    500 with the stage, job, step and the trainer's message, notified. ava keeps the LoRA of the first training,
    which daily-content must still use."""
    receiver.received.clear()
    missing = "/nonexistent/models/no-such-base-model"
    answer, execution = train(n8n, "train-persona", TRAINING | {"training": {"epochs": 1, "base_model": missing}})
    assert answer.status_code == 500, (answer.text, execution["status"])
    body = answer.json()
    assert body["status"] == "FAILURE" and body["lora"] is None, body
    assert body["failure"]["stage"] == "training" and body["failure"]["job"] == "persona_training", body
    assert body["failure"]["step"] == "lora_weights" and "no-such-base-model" in body["failure"]["message"], body
    assert body["runs"]["dataset"]["status"] == "SUCCESS" and body["runs"]["training"]["status"] == "FAILURE"
    [(_, notification)] = receiver.received
    assert notification["failure"] == body["failure"] and notification["status"] == "FAILURE"
    # What daily-content must see through: Dagster now lists ava as failed, not materialized, although the LoRA
    # of the first training is there.
    lora = requests.post(f"{url}/graphql", json={"query": LORA_STATUS}, timeout=30).json()["data"]["assetNodeOrError"]
    assert "ava" in lora["assetPartitionStatuses"]["failedPartitions"], lora
    assert "ava" not in lora["assetPartitionStatuses"]["materializedPartitions"], lora
    assert [event["partition"] for event in lora["latestMaterializationByPartition"]] == ["ava"], lora


LORA_STATUS = """{ assetNodeOrError(assetKey: {path: ["lora_weights"]}) { ... on AssetNode {
  assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } }
  latestMaterializationByPartition { partition } } } }"""


def check_daily_content(n8n: N8n, url: str, receiver: Endpoint) -> None:
    """daily-content, run with `n8n execute` (its Run now trigger leads into the same nodes as its schedule),
    launches today's run for ava, whose latest retraining failed but whose earlier LoRA exists; a second execution
    the same day launches nothing."""
    today = datetime.now(UTC).date().isoformat()
    receiver.received.clear()
    n8n.cli("execute", "--id=ipDailyContent01", "--rawOutput")
    [(_, notification)] = receiver.received
    assert notification["status"] == "SUCCESS" and notification["failure"] is None, notification
    assert notification["partition"] == f"{today}|ava" and notification["posts"] == 2
    assert notification["images"]["count"] >= 2 and Path(notification["images"]["folder"]).is_dir()
    assert notification["reels"]["folder"].endswith(f"content/{today}/videos") and notification["duration_s"] > 0
    [run] = content_runs(url, today)
    tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    assert tags["dagster/partition"] == f"{today}|ava" and tags["source"] == "n8n"
    assert tags["dagster/partition/date"] == today and tags["dagster/partition/persona"] == "ava"

    receiver.received.clear()
    n8n.cli("execute", "--id=ipDailyContent01", "--rawOutput")
    [(_, notification)] = receiver.received
    assert notification["status"] == "SKIPPED" and "already queued, running or done" in notification["reason"]
    assert len(content_runs(url, today)) == 1


def content_runs(url: str, today: str) -> list[dict]:
    query = (
        "query R($f: RunsFilter) { runsOrError(filter: $f) { ... on Runs { results { runId tags { key value } } } } }"
    )
    variables = {"f": {"tags": [{"key": "content_date", "value": today}]}}
    answer = requests.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=30).json()
    return answer["data"]["runsOrError"]["results"]


# --- against a stand-in Dagster: failures on demand -----------------------------------------------------------


def operation(body: dict) -> str:
    return re.match(r"\s*(?:query|mutation)\s+(\w+)", body["query"]).group(1)


def failed_run(run_id: str, events: list[dict], failed_steps: list[str]) -> dict:
    """A `RunResult` answer for a dataset run that ended FAILURE after 12.5 s."""
    return {
        "runOrError": {
            "__typename": "Run",
            "runId": run_id,
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
    "run-step-failed",
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
    "run-run-failed",
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
RESULTS = {"run-step-failed": STEP_FAILED, "run-run-failed": RUN_FAILED}


def standin_answer(body: dict) -> tuple[int, dict] | None:
    """Dagster as seen by n8n, per persona: `step-failed` and `run-failed` runs end FAILURE, `slow`'s run never
    ends, `rejected`'s partition mutation gets a GraphQL error (HTTP 400, as graphene answers), and `unreachable`
    gets its connection closed without an answer."""
    name, variables = operation(body), body.get("variables", {})
    if name == "AddPersona":
        if variables["key"] == "unreachable":
            return None
        if variables["key"] == "rejected":
            return 400, {"errors": [{"message": 'Cannot query field "addDynamicPartition" on type "Mutation".'}]}
        return 200, {
            "data": {
                "addDynamicPartition": {
                    "__typename": "DuplicateDynamicPartitionError",
                    "partitionName": variables["key"],
                }
            }
        }
    if name == "LaunchRun":
        persona = next(t["value"] for t in variables["p"]["executionMetadata"]["tags"] if t["key"] == "persona")
        run = {"runId": f"run-{persona}", "status": "QUEUED"}
        return 200, {"data": {"launchRun": {"__typename": "LaunchRunSuccess", "run": run}}}
    run_id = variables["runId"]
    if name == "RunStatus":
        status = "STARTED" if run_id == "run-slow" else "FAILURE"
        return 200, {"data": {"runOrError": {"__typename": "Run", "runId": run_id, "status": status}}}
    return 200, {"data": RESULTS[run_id]}


def check_failures_against_the_stand_in(n8n: N8n, standin: Endpoint, receiver: Endpoint) -> None:
    """Every failure path answers with the stage, step and message, and notifies."""
    cases = [
        ("step-failed", 500, "FAILURE", "dataset", "training_images", "uploads/ava/: 4 usable images; 10 needed"),
        (
            "run-failed",
            500,
            "FAILURE",
            "dataset",
            None,
            "Could not load job definition. ImportError: cannot import name 'x'",
        ),
        ("slow", 504, "TIMEOUT", "dataset", None, "run run-slow still STARTED after 3 polls"),
        ("rejected", 502, "ERROR", "partition", None, 'GraphQL error: Cannot query field "addDynamicPartition"'),
        ("unreachable", 502, "ERROR", "partition", None, ""),
    ]
    for persona, http, status, stage, step, message in cases:
        receiver.received.clear()
        standin.received.clear()
        answer, execution = train(n8n, STANDIN_PATH, {"persona": persona})
        assert answer.status_code == http, (persona, answer.text, execution["status"])
        body = answer.json()
        assert body["status"] == status and body["failure"]["stage"] == stage, (persona, body)
        assert body["failure"]["step"] == step and message in body["failure"]["message"], (persona, body)
        assert execution["status"] == "success", (persona, execution["status"])
        [(headers, notification)] = receiver.received
        assert headers["Authorization"] == "Bearer notify-token"
        assert notification == {"event": "train_persona.finished", "n8nExecutionId": execution["id"], **body}
        operations = [operation(sent) for _, sent in standin.received]
        if persona == "unreachable":  # tried 3 times (Retry On Fail), then the error output
            assert operations == ["AddPersona"] * 3, operations
        if persona == "slow":  # polls 1 + maxPolls times, then gives up
            assert operations == ["AddPersona", "LaunchRun"] + ["RunStatus"] * 3, operations
        if persona == "step-failed":
            assert body["runs"]["dataset"] == {
                "runId": "run-step-failed",
                "status": "FAILURE",
                "url": standin.url + "/runs/run-step-failed",
                "duration_s": 12.5,
            }
            assert "Launch training run" not in execution["nodes"]
