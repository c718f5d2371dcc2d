"""The instance's run coordinator: Dagster's run queue, after a check of the launch's config values.

Dagster's config schema has types and choice lists but no numeric ranges, so `epochs: 5000` would pass the
launchpad, wait in the queue (and for the `gpu` pool), and only fail when its step starts. This coordinator reads
each op's config into its pydantic model (the same class the asset declares) and refuses the launch, before
anything is queued, with every field outside its range named in one message; the run is recorded as failed with
that message, so nothing is lost and the launchpad (or n8n's GraphQL call) shows it at once.

It imports only the groups' `config` modules (dagster and pydantic), never the code location itself, because it
runs inside the webserver and the daemon. Configured in resources/dagster/*.yaml and resources/k8s/dagster.k8s.yaml;
see https://docs.dagster.io/deployment/execution/run-coordinators for the queue it extends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import BaseModel, ValidationError

from influencer_pipeline.dagster_layer.errors import range_problems
from influencer_pipeline.defs.content.config import ContentPlanConfig, PostImagesConfig, PostVideosConfig
from influencer_pipeline.defs.datasets.config import ImageCaptionsConfig, TrainingImagesConfig
from influencer_pipeline.defs.publishing.config import PublishedPostsConfig, ReviewPostsConfig
from influencer_pipeline.defs.training.config import LoraSamplesConfig, LoraTrainingConfig
from influencer_pipeline.errors import InputError

# Op name -> the config class its compute function takes (tests/admin/test_run_coordinator.py keeps it complete).
CHECKED_CONFIG: dict[str, type[BaseModel]] = {
    "training_images": TrainingImagesConfig,
    "image_captions": ImageCaptionsConfig,
    "lora_weights": LoraTrainingConfig,
    "lora_samples": LoraSamplesConfig,
    "content_plan": ContentPlanConfig,
    "post_images": PostImagesConfig,
    "post_videos": PostVideosConfig,
    "published_posts": PublishedPostsConfig,
    "record_decisions": ReviewPostsConfig,
}


def run_config_problems(run_config: Mapping[str, Any]) -> list[str]:
    """Every value of a run's op config that its model refuses or that lies outside its declared range."""
    problems = []
    for op, section in sorted((run_config.get("ops") or {}).items()):
        config_class = CHECKED_CONFIG.get(op)
        raw = section.get("config") if isinstance(section, Mapping) else None
        if config_class is None or not isinstance(raw, Mapping):
            continue
        try:
            config = config_class(**raw)
        except ValidationError as err:
            problems += [f"ops.{op}.config.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
            continue
        problems += [f"ops.{op}.config {problem}" for problem in range_problems(config)]
    return problems


class CheckedRunCoordinator(dg.QueuedRunCoordinator):
    """`QueuedRunCoordinator` (same config: dequeue interval, limits, pools) that refuses out-of-range config.

    One more option, `dequeue_poll_seconds`: a dequeue interval below Dagster's whole-second minimum, for the local
    instance, where a launch otherwise waits half a second on average for the daemon's next look at the queue
    (bench/launch.py). The daemon sleeps in half-second steps, so 0.5 is the shortest interval it keeps.
    """

    _poll_seconds: float | None = None

    @classmethod
    def config_type(cls) -> dict[str, dg.Field]:
        return {
            **super().config_type(),
            "dequeue_poll_seconds": dg.Field(
                float,
                is_required=False,
                description="Seconds between the daemon's looks at the queue, below 1 allowed (0.5 at least); "
                "overrides dequeue_interval_seconds.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Mapping[str, Any]) -> CheckedRunCoordinator:
        coordinator = super().from_config_value(inst_data, config_value)  # reads only the keys it knows
        coordinator._poll_seconds = config_value.get("dequeue_poll_seconds")
        return coordinator

    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]
        return max(self._poll_seconds, 0.5) if self._poll_seconds else super().dequeue_interval_seconds

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        problems = run_config_problems(run.run_config)
        if problems:
            # Dagster records the run as failed with this message (DagsterInstance.submit_run) and the launch
            # answers with it; the run never reaches the queue.
            raise InputError(
                f"run config of {run.job_name}",
                "; ".join(problems),
                "use values within the ranges the launchpad shows in each field's description, then launch again",
            )
        return super().submit_run(context)
