"""The code location `influencer_pipeline`: the defs folder's definitions, plus resources and executor from the env.

Every asset, check, job, sensor and schedule lives in `influencer_pipeline/defs/<group>/` and is found by Dagster's
defs-folder loader (https://docs.dagster.io/guides/build/projects/moving-to-components/migrating-definitions): adding
a definition means adding it to its group's module, never listing it here. This module only assembles: it adds what
depends on the deployment (engines, secrets, executor), read when the definitions are built.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import dagster as dg

from influencer_pipeline.dagster_layer.executors import executor_from_env
from influencer_pipeline.dagster_layer.notifier import notifier_resource_from_env
from influencer_pipeline.dagster_layer.resources import resources_from_env

DEFS_MODULE = "influencer_pipeline.defs"


def load_defs_folder() -> dg.Definitions:
    """Every definition under `influencer_pipeline/defs/`.

    Built from the module itself rather than `dg.load_from_defs_folder`'s search for pyproject.toml: an installed
    wheel has no pyproject.toml, and it must load the same definitions as the checkout (pyproject's `[tool.dg]`
    names the same module for the `dg` command line).
    """
    module = importlib.import_module(DEFS_MODULE)
    tree = dg.ComponentTree(defs_module=module, project_root=Path(module.__file__).resolve().parents[2])
    with warnings.catch_warnings():  # the loader calls Dagster's own preview-marked module loaders
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return tree.build_defs()


def build_definitions() -> dg.Definitions:
    deployment = dg.Definitions(
        resources={**resources_from_env(), "notifier": notifier_resource_from_env()},
        executor=executor_from_env(),
    )
    return dg.Definitions.merge(load_defs_folder(), deployment)


defs = build_definitions()
