"""The upload sensor: a new or changed persona folder becomes one dataset -> LoRA run per distinct content."""

import time

import dagster as dg

from influencer_pipeline.defs.partitions import personas
from influencer_pipeline.defs.resources import MediaStoreResource, UploadPolicy
from influencer_pipeline.defs.training import persona_pipeline_job
from influencer_pipeline.uploads import UploadCursor, scan


@dg.sensor(
    job=persona_pipeline_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches uploads/<persona>/ in the media store; adds persona partitions and requests dataset runs.",
)
def upload_sensor(
    context: dg.SensorEvaluationContext, media: MediaStoreResource, upload_policy: UploadPolicy
) -> dg.SensorResult:
    result = scan(
        media.get_store(),
        UploadCursor.parse(context.cursor),
        now=time.time(),
        settle_seconds=upload_policy.settle_seconds,
        require_ready_marker=upload_policy.require_ready_marker,
        full_scan_seconds=upload_policy.full_scan_seconds,
    )
    for err in result.newly_invalid:
        context.log.warning(f"ignored upload folder: {err}")
    if result.waiting:
        context.log.info(f"waiting for uploads to settle: {', '.join(result.waiting)}")
    known = set(context.instance.get_dynamic_partitions(personas.name))
    new = [p for p in result.new_personas if p not in known]
    run_requests = [
        dg.RunRequest(
            run_key=ready.run_key,
            partition_key=ready.persona,
            tags={
                "persona": ready.persona,
                "dataset_content": ready.content_key[:20],
                "files": str(ready.files),
            },
        )
        for ready in result.ready
    ]
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[personas.build_add_request(new)] if new else [],
        cursor=result.cursor.serialize(),
    )
