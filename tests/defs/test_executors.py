"""The default executor forks each step process from the run worker, and run config can still choose otherwise."""

from __future__ import annotations

import os
import sys

import dagster as dg
import pytest

from influencer_pipeline.dagster_layer.executors import executor_for, forked_multiprocess_executor
from influencer_pipeline.dagster_layer.settings import ExecutorSettings

# Set by the test in the run worker (this process) before the run; a step process sees the value only if it is a
# fork of the run worker, since spawn and forkserver import this module afresh.
MARKER = {"value": "imported afresh"}


@dg.op
def where_am_i() -> dict:
    return {"parent": os.getppid(), "marker": MARKER["value"]}


@dg.job(executor_def=forked_multiprocess_executor())
def where_job():
    where_am_i()


def step_view(run_config: dict | None = None) -> dict:
    with (
        dg.instance_for_test() as instance,
        dg.execute_job(dg.reconstructable(where_job), instance=instance, run_config=run_config or {}) as result,
    ):
        assert result.success
        return result.output_for_node("where_am_i")


@pytest.fixture(autouse=True)
def marked(monkeypatch):
    monkeypatch.setitem(MARKER, "value", f"set in the run worker {os.getpid()}")


@pytest.mark.skipif(sys.platform != "linux", reason="fork is the default on Linux only (forkserver elsewhere)")
def test_steps_are_forks_of_the_run_worker():
    # That a real run worker has no thread when it forks is checked in tests/admin/test_run_launcher.py: this
    # process, made the run worker by execute_job, may hold threads of other tests.
    view = step_view()
    assert view["parent"] == os.getpid()
    assert view["marker"] == MARKER["value"]  # nothing was imported again: the step is a fork


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_run_config_can_still_choose_a_fresh_interpreter(method):
    view = step_view({"execution": {"config": {"multiprocess": {"start_method": {method: {}}}}}})
    assert view["marker"] == "imported afresh"
    assert (view["parent"] == os.getpid()) == (method == "spawn")  # a forkserver's children are its own


def test_run_config_can_still_run_every_step_in_process():
    view = step_view({"execution": {"config": {"in_process": {}}}})
    assert view["parent"] == os.getppid()
    assert view["marker"] == MARKER["value"]


def test_multiprocess_is_the_default_deployment():
    default = executor_for(ExecutorSettings())
    assert default.name == dg.multi_or_in_process_executor.name
    assert default.config_schema.as_field().default_value == {"multiprocess": {}}
