"""The default executor forks step processes from a preloaded server, and run config can still choose otherwise."""

from __future__ import annotations

import os

import dagster as dg

from influencer_pipeline.dagster_layer.executors import executor_for, forkserver_multiprocess_executor
from influencer_pipeline.dagster_layer.settings import Settings


@dg.op
def parent_pid() -> int:
    return os.getppid()


@dg.job(executor_def=forkserver_multiprocess_executor())
def pid_job():
    parent_pid()


def step_parent(run_config: dict | None = None) -> int:
    with (
        dg.instance_for_test() as instance,
        dg.execute_job(dg.reconstructable(pid_job), instance=instance, run_config=run_config or {}) as result,
    ):
        assert result.success
        return result.output_for_node("parent_pid")


def test_steps_fork_from_a_preloaded_server_not_from_the_run_worker():
    # Under `spawn` the run worker is the step's parent; under forkserver the server it started is.
    assert step_parent() != os.getpid()
    spawned = {"execution": {"config": {"multiprocess": {"start_method": {"spawn": {}}}}}}
    assert step_parent(spawned) == os.getpid()


def test_run_config_can_still_run_every_step_in_process():
    assert step_parent({"execution": {"config": {"in_process": {}}}}) == os.getppid()


def test_multiprocess_is_the_default_deployment():
    assert executor_for(Settings.from_env({}).executor).name == dg.multi_or_in_process_executor.name
