"""Out-of-range launch config is refused before the run is queued (influencer_pipeline/admin/run_coordinator.py)."""

from __future__ import annotations

import shutil
import typing
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.op_definition import OpDefinition

from influencer_pipeline.admin.run_coordinator import CHECKED_CONFIG, run_config_problems
from influencer_pipeline.defs.training.config import LoraTrainingConfig
from tests.support.webserver import LAUNCH, ROOT, Server
from tests.support.webserver import server as server

STATUS = """
query Runs { runsOrError { ... on Runs { results { runId status jobName } } } }
"""


def training_params(lora_weights: dict) -> dict:
    return {
        "selector": {
            "repositoryLocationName": "influencer_pipeline",
            "repositoryName": "__repository__",
            "jobName": "persona_training",
        },
        "runConfigData": {"ops": {"lora_weights": {"config": lora_weights}}},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "ava"}]},
    }


def test_every_out_of_range_value_is_named_with_its_range() -> None:
    problems = run_config_problems(
        {
            "ops": {
                "lora_weights": {"config": {"epochs": 5000, "learning_rate": 0.0001}},
                "lora_samples": {"config": {"steps": 0}},
                "content_plan": {"config": {"posts": 9}},
            }
        }
    )
    assert problems == [
        "ops.content_plan.config.posts: Input should be less than or equal to 5",
        "ops.lora_samples.config 'steps': 0 is out of range 1 to 150",
        "ops.lora_weights.config 'epochs': 5000 is out of range 1 to 1000",
    ]


def test_values_in_range_and_ops_without_config_pass() -> None:
    assert run_config_problems({}) == []
    assert run_config_problems({"ops": {"lora_weights": {"config": {"epochs": 3}}, "other": {}}}) == []


def test_the_training_override_ranges_are_the_presets() -> None:
    low, high, _ = LoraTrainingConfig.model_fields["epochs"].json_schema_extra["range"]
    assert (low, high) == (1, 1000)
    assert "(1 to 1000)" in LoraTrainingConfig.model_fields["epochs"].description


def test_every_op_with_config_in_the_code_location_is_checked() -> None:
    """A new asset with a config class must be added to CHECKED_CONFIG, or its ranges go unchecked at launch."""
    from influencer_pipeline.definitions import defs

    seen = {}
    for job in defs.get_repository_def().get_all_jobs():
        for node in job.all_node_defs:
            if not isinstance(node, OpDefinition):
                continue
            hints = typing.get_type_hints(node.compute_fn.decorated_fn)
            config_class = hints.get("config")
            if isinstance(config_class, type) and issubclass(config_class, dg.Config):
                seen[node.name] = config_class
    assert seen == CHECKED_CONFIG


@pytest.mark.integration
def test_the_launchpad_refuses_epochs_5000_before_the_run_is_queued(server: Server) -> None:
    response = server.graphql({"query": LAUNCH, "variables": {"p": training_params({"epochs": 5000})}}, server.token)
    result = response.json()["data"]["launchRun"]
    assert result["__typename"] == "PythonError", result
    assert "'epochs': 5000 is out of range 1 to 1000" in result["message"]
    assert "Fix:" in result["message"]
    runs = server.graphql({"query": STATUS}).json()["data"]["runsOrError"]["results"]
    training = [run for run in runs if run["jobName"] == "persona_training"]
    # Recorded (nothing is lost) as failed, never queued: no daemon will pick it up or hold the gpu pool for it.
    assert [run["status"] for run in training] == ["FAILURE"]

    accepted = server.graphql({"query": LAUNCH, "variables": {"p": training_params({"epochs": 3})}}, server.token)
    assert accepted.json()["data"]["launchRun"]["run"]["status"] == "QUEUED"


def test_the_local_instance_polls_its_queue_twice_a_second_and_keeps_its_limits(tmp_path: Path) -> None:
    shutil.copy(ROOT / "resources" / "dagster" / "dagster.local.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert type(instance.run_coordinator).__name__ == "CheckedRunCoordinator"
        assert instance.run_coordinator.dequeue_interval_seconds == 0.5
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
    finally:
        instance.dispose()
