"""The code location `influencer_pipeline`: the defs folder's definitions, plus resources and executor from settings.

Every asset, check, job, sensor and schedule lives in `influencer_pipeline/defs/<group>/` and is found by Dagster's
defs-folder loader (https://docs.dagster.io/guides/build/projects/moving-to-components/migrating-definitions): adding
a definition means adding it to its group's module, never listing it here. This module only assembles: it adds what
depends on the deployment (engines, secrets, executor), from the one `Settings` read when the definitions are built
(`dagster_layer/settings.py`).
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import dagster as dg

from influencer_pipeline.dagster_layer.executors import executor_for
from influencer_pipeline.dagster_layer.notifier import notifier_for
from influencer_pipeline.dagster_layer.partitions import HORIZON_DAYS
from influencer_pipeline.dagster_layer.resources import resources_for
from influencer_pipeline.dagster_layer.settings import HORIZON_ENV, Settings, settings_in_use
from influencer_pipeline.errors import InputError

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


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """The code location for `settings` (default: read now from the environment, every problem reported at once).

    The defs folder is loaded with the same settings in use, so its `@dg.definitions` factories (the calendar
    schedule) see the object given here rather than reading the environment again (`settings.load_settings`).
    """
    settings = Settings.from_env() if settings is None else settings
    if settings.calendar.horizon_days != HORIZON_DAYS:
        raise InputError(
            HORIZON_ENV,
            f"is {settings.calendar.horizon_days} in these settings, but the date partitions were built with "
            f"{HORIZON_DAYS} when the code was imported (see settings.horizon_days_at_import)",
            "set it in the environment before the code location starts, and restart it after changing it",
        )
    with settings_in_use(settings):
        folder = load_defs_folder()
    deployment = dg.Definitions(
        resources={**resources_for(settings), "notifier": notifier_for(settings.notifier)},
        executor=executor_for(settings.executor),
    )
    return dg.Definitions.merge(folder, deployment)


defs = build_definitions()
