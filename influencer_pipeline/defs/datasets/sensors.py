"""The upload sensor: a new or changed persona folder becomes one dataset -> LoRA run per distinct content.

What counts as new content is decided by `uploads.content_key`: the photos, their caption sidecars and the
training fields of persona.yaml (trigger word, class word, preset). Editing anything else in persona.yaml (themes,
times, hashtags, platforms, voice) starts no training; it marks the planned days written from the old profile
stale (an observation on `content_plan`), so they can be regenerated. Content that was already curated (by
`make demo`, or before the sensor's cursor was lost) is recognised from `training_images`' metadata and not
started again.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import dagster as dg

from influencer_pipeline.content.plan import ContentPlan
from influencer_pipeline.dagster_layer.partitions import HORIZON_DAYS, personas
from influencer_pipeline.dagster_layer.plans import plan_key
from influencer_pipeline.dagster_layer.resources import MediaStoreResource, UploadPolicy
from influencer_pipeline.defs.datasets.assets import training_images
from influencer_pipeline.errors import InputError
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.personas import load_persona
from influencer_pipeline.profile_inputs import plan_digest
from influencer_pipeline.uploads import UploadCursor, scan


@dg.sensor(
    job_name="persona_pipeline",  # the training group's job: datasets, captions, LoRA and samples
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches uploads/<persona>/ in the media store; adds persona partitions and requests dataset runs.",
)
def upload_sensor(
    context: dg.SensorEvaluationContext, media: MediaStoreResource, upload_policy: UploadPolicy
) -> dg.SensorResult:
    store = media.get_store()
    previous = UploadCursor.parse(context.cursor)
    now = time.time()
    result = scan(
        store,
        previous,
        now=now,
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
    run_requests = []
    for ready in result.ready:
        if ready.persona in known and already_curated(context.instance, ready.persona, ready.content_key):
            context.log.info(f"{ready.persona}: this content was already curated and trained; nothing to start")
            continue
        run_requests.append(
            dg.RunRequest(
                run_key=ready.run_key,
                partition_key=ready.persona,
                tags={
                    "persona": ready.persona,
                    "dataset_content": ready.content_key[:20],
                    "files": str(ready.files),
                },
            )
        )
    changed = [
        slug
        for slug, state in result.cursor.folders.items()
        if slug in known and state.listing != getattr(previous.folders.get(slug), "listing", state.listing)
    ]
    today = datetime.fromtimestamp(now, UTC).date()
    observations = []
    for slug in changed:
        try:
            observations += stale_plans(store, slug, today)
        except InputError as err:  # a broken persona.yaml is reported by the run it starts, not here
            context.log.warning(f"{slug}: persona.yaml does not load, plans not checked: {err}")
    for observation in observations:
        context.log.info(f"{observation.partition}: {observation.metadata['reason'].value}")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[personas.build_add_request(new)] if new else [],
        asset_events=observations,
        cursor=result.cursor.serialize(),
    )


def already_curated(instance: dg.DagsterInstance, persona: str, key: str) -> bool:
    """True when the last training_images of `persona` was made from this exact upload content."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=training_images.key, asset_partitions=[persona]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    recorded = materialization.metadata.get("upload_content") if materialization else None
    return recorded is not None and recorded.value == key


def stale_plans(store: MediaStore, slug: str, today) -> list[dg.AssetObservation]:
    """An observation on each planned day from today to the horizon whose plan no longer matches persona.yaml."""
    current = plan_digest(load_persona(store, slug))
    out = []
    for offset in range(HORIZON_DAYS + 1):
        day = (today + timedelta(days=offset)).isoformat()
        if not store.exists(plan_key(slug, day)):
            continue
        plan = ContentPlan.model_validate_json(store.read_bytes(plan_key(slug, day)))
        if plan.profile_digest != current:
            out.append(
                dg.AssetObservation(
                    asset_key=dg.AssetKey("content_plan"),
                    partition=str(dg.MultiPartitionKey({"date": day, "persona": slug})),
                    metadata={
                        "stale": True,
                        "reason": "persona.yaml changed since this plan was written; launch daily_content with "
                        "content_plan regenerate: true (the calendar does it for the day it prepares)",
                    },
                )
            )
    return out
