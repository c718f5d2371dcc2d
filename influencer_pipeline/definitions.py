"""The code location `influencer_pipeline`: every group's definitions merged, with engines chosen from env vars."""

from __future__ import annotations

import dagster as dg

from influencer_pipeline.defs import (
    content,
    datasets,
    notifications,
    publishing,
    review,
    schedules,
    sensors,
    training,
)
from influencer_pipeline.defs.executors import executor_from_env
from influencer_pipeline.defs.resources import resources_from_env


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[
            datasets.training_images,
            datasets.image_captions,
            training.lora_weights,
            training.lora_samples,
            content.content_plan,
            content.post_images,
            content.post_videos,
            publishing.published_posts,
        ],
        jobs=[
            datasets.persona_dataset_job,
            training.persona_training_job,
            training.persona_pipeline_job,
            schedules.daily_content_job,
            publishing.publish_job,
            review.review_posts_job,
        ],
        schedules=[schedules.build_content_calendar(schedules.CalendarSettings.from_env())],
        sensors=[
            sensors.upload_sensor,
            publishing.due_posts_sensor,
            *notifications.notification_sensors,
            dg.AutomationConditionSensorDefinition(
                "follow_upstream",
                target=dg.AssetSelection.all(),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=30,
            ),
        ],
        resources={**resources_from_env(), "notifier": notifications.notifier_resource_from_env()},
        executor=executor_from_env(),
    )


defs = build_definitions()
