"""The smallest run config each job of the code location needs, for tests that plan or resolve every job."""

from __future__ import annotations

from typing import Any

import dagster as dg

from influencer_pipeline.defs.publishing.review import OP_NAME


def run_config_for(job: dg.JobDefinition) -> dict[str, Any]:
    """Empty for asset jobs; review_posts needs the day it reviews (any day gives its one step)."""
    if job.name == "review_posts":
        return {"ops": {OP_NAME: {"config": {"day": "2026-01-01", "persona": "ava"}}}}
    return {}
