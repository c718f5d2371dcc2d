"""The code location loads, and its asset graph, job selections and schedules match the reviewed snapshots.

A change to keys, groups, partitions, pools, deps, checks, jobs, what each job selects, run tags, sensors or the
schedule's cron and time zone fails these tests until the snapshots are regenerated with `make snapshot` and the
diff is reviewed with the code change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from influencer_pipeline.definitions import defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"
JOBS_SNAPSHOT = Path(__file__).parent / "snapshots" / "jobs_and_schedules.json"


def _partitions(node) -> str | None:
    pd = node.partitions_def
    if pd is None:
        return None
    if isinstance(pd, dg.MultiPartitionsDefinition):
        return "multi(" + ",".join(f"{d.name}:{_dimension(d.partitions_def)}" for d in pd.partitions_defs) + ")"
    name = getattr(pd, "name", None)
    return f"{type(pd).__name__}({name})" if name else type(pd).__name__


def _dimension(pd) -> str:
    """The calendar's reach into the future is part of the graph: `end_offset` 15 is today plus 14 days."""
    if isinstance(pd, dg.TimeWindowPartitionsDefinition):
        return f"{type(pd).__name__}(start={pd.start:%Y-%m-%d},end_offset={pd.end_offset})"
    return type(pd).__name__


def graph_snapshot() -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": _partitions(node),
            "pools": sorted(node.pools or []),
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "kinds": sorted(node.kinds),
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
            "checks": sorted(c.name for c in node.check_keys),
        }
    repo = defs.get_repository_def()
    return {
        "assets": assets,
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "sensors": {s.name: s.default_status.value for s in repo.sensor_defs},
        "schedules": {s.name: s.default_status.value for s in repo.schedule_defs},
    }


def jobs_snapshot() -> dict:
    """What each job runs (its assets and run tags), when the schedules fire, and which job each sensor starts and
    how often it is evaluated, with the default settings."""
    repo = defs.get_repository_def()
    jobs = {
        job.name: {
            "assets": sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys),
            "ops": sorted(node.name for node in job.graph.node_defs) if not job.asset_layer.selected_asset_keys else [],
            "tags": dict(sorted(job.tags.items())),
        }
        for job in repo.get_all_jobs()
        if not job.name.startswith("__")
    }
    schedules = {
        s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone, "job": s.job_name}
        for s in repo.schedule_defs
    }
    sensors = {
        s.name: {"jobs": sorted(t.job_name for t in s.targets), "minimum_interval_seconds": s.minimum_interval_seconds}
        for s in repo.sensor_defs
    }
    return {"jobs": jobs, "schedules": schedules, "sensors": sensors}


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)


def test_asset_graph_matches_snapshot() -> None:
    current = graph_snapshot()
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), "asset graph changed: review it, then run `make snapshot`"


def test_job_selections_and_schedules_match_snapshot() -> None:
    current = jobs_snapshot()
    if os.environ.get("UPDATE_SNAPSHOTS"):
        JOBS_SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(JOBS_SNAPSHOT.read_text()), "jobs or schedules changed: review, then `make snapshot`"


def test_code_location_name_is_stable() -> None:
    root = Path(__file__).resolve().parents[2]
    assert 'code_location_name = "influencer_pipeline"' in (root / "pyproject.toml").read_text()
    assert "location_name: influencer_pipeline" in (root / "workspace.yaml").read_text()
