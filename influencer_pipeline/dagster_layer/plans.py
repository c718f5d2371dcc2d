"""A day's content plan and rendered media as later steps read them back from the media store.

Shared by the content and publishing groups and the calendar schedule, which depend on `content_plan`,
`post_images` and `post_videos` by asset key.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from influencer_pipeline.content.plan import ContentPlan
from influencer_pipeline.dagster_layer.partitions import calendar
from influencer_pipeline.errors import InputError
from influencer_pipeline.media.keys import content_prefix
from influencer_pipeline.media.store import MediaStore


def day_and_persona(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """(date, persona) of the run's partition; a run launched over GraphQL with only `dagster/partition`
    ("2026-11-23|ava") hands us a plain string, so parse it with the partitions definition."""
    key = context.partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        key = calendar.get_partition_key_from_str(key)
    keys = key.keys_by_dimension
    return keys["date"], keys["persona"]


def plan_key(persona: str, day: str) -> str:
    return content_prefix(persona, day) + "plan.json"


def read_plan(store: MediaStore, persona: str, day: str) -> ContentPlan:
    key = plan_key(persona, day)
    if not store.exists(key):
        raise InputError(key, "no content plan for this day", f"materialize content_plan for {day}|{persona} first")
    return ContentPlan.model_validate_json(store.read_bytes(key))


def published_count(instance: dg.DagsterInstance, partition: str) -> int:
    """How many of the day's posts went out (or may have), as the last published_posts materialization recorded.

    Content of a day with published posts is never rewritten: the media must stay what the ledger says was posted.
    """
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("published_posts"), asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return 0
    materialization = records[0].asset_materialization
    metadata = materialization.metadata if materialization else {}
    return sum(int(metadata[state].value) for state in OUT_OF_OUR_HANDS if state in metadata)


# Post states whose media may already be in the world: posted, handed to a person in the outbox, sent but not
# confirmed, or being sent. Their day's media must stay what they are.
OUT_OF_OUR_HANDS = ("published", "ready_to_post", "unconfirmed", "pending")


def post_image_keys(store: MediaStore, slug: str, day: str, post_id: str) -> list[str]:
    prefix = content_prefix(slug, day) + "images/"
    keys = sorted(o.key for o in store.list(prefix) if o.key.rsplit("/", 1)[-1].startswith(f"{post_id}-"))
    keys = [k for k in keys if k.endswith(".png")]
    if not keys:
        raise InputError(prefix, f"no images for post {post_id}", f"materialize post_images for {day}|{slug}")
    return keys


def day_media(store: MediaStore, slug: str, day: str, work: Path) -> list[Path]:
    """Every image and reel of the day, as local files: what brand safety scans before anything is posted."""
    keys = [o.key for o in store.list(content_prefix(slug, day)) if o.key.endswith((".png", ".mp4"))]
    return [fetch(store, key, work / "scan") for key in sorted(keys)]


def fetch(store: MediaStore, key: str, work: Path) -> Path:
    """A local copy of a media-store object, for ffmpeg."""
    path = work / "inputs" / key.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(store.read_bytes(key))
    return path
