"""`make demo`: run everything that exists so far on the sample persona, with the embedded defaults.

Runs on the same instance as `make dev` (DAGSTER_HOME), so every run shows up in the UI afterwards.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from influencer_pipeline.definitions import defs
from influencer_pipeline.defs.partitions import personas
from influencer_pipeline.media import MediaStore
from influencer_pipeline.media.keys import (
    captions_manifest_key,
    contact_sheet_key,
    content_prefix,
    dataset_manifest_key,
    dataset_prefix,
    lora_manifest_key,
    lora_version_prefix,
    samples_prefix,
    uploads_prefix,
)

SAMPLE = Path(__file__).resolve().parent.parent / "resources" / "personas" / "ava"
PERSONA = "ava"


def upload_sample(store: MediaStore) -> int:
    """Copy the sample persona into uploads/ava/, adding missing files only: a user's own files are never touched."""
    copied = 0
    for path in sorted(SAMPLE.iterdir()):
        key = uploads_prefix(PERSONA) + path.name
        if path.is_file() and not store.exists(key):
            store.write_bytes(key, path.read_bytes())
            copied += 1
    return copied


def run_job(
    instance: dg.DagsterInstance, name: str, partition: str = PERSONA, run_config: dict | None = None
) -> tuple[str, float]:
    started = time.perf_counter()
    result = defs.resolve_job_def(name).execute_in_process(
        instance=instance, partition_key=partition, run_config=run_config, raise_on_error=False
    )
    if not result.success:
        failure = result.get_run_failure_event()
        raise SystemExit(f"demo run {result.run_id} ({name}) failed: {failure.message if failure else 'see its log'}")
    return result.run_id, time.perf_counter() - started


def main() -> None:
    store = defs.resources["media"].get_store()
    copied = upload_sample(store)
    print(f"sample persona '{PERSONA}': {copied} files copied to {store.uri(uploads_prefix(PERSONA))}")
    instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(personas.name, PERSONA):
        instance.add_dynamic_partitions(personas.name, [PERSONA])

    dataset_run, dataset_s = run_job(instance, "persona_dataset")

    manifest = json.loads(store.read_bytes(dataset_manifest_key(PERSONA)))
    kept = [i for i in manifest["images"] if i["status"] == "kept"]
    rejected = [i for i in manifest["images"] if i["status"] == "rejected"]
    captions = json.loads(store.read_bytes(captions_manifest_key(PERSONA)))["captions"]
    print(f"\ndataset run {dataset_run} succeeded in {dataset_s:.1f} s")
    print(f"  curated images : {len(kept)} kept, {len(rejected)} rejected -> {store.uri(dataset_prefix(PERSONA))}")
    for image in rejected:
        print(f"    rejected {image['source_key'].rsplit('/', 1)[-1]}: {image['reason']}")
    sources = sorted({c["source"] for c in captions})
    print(f"  captions       : {len(captions)} kohya .txt sidecars next to the images ({', '.join(sources)})")
    print(f"  contact sheet  : {store.uri(contact_sheet_key(PERSONA))}")

    print("\ntraining the LoRA on the embedded tiny model (a few minutes on 2 CPU cores) ...")
    training_run, training_s = run_job(instance, "persona_training")
    record = json.loads(store.read_bytes(lora_manifest_key(PERSONA)))
    print(f"training run {training_run} succeeded in {training_s:.1f} s")
    summary = f"{record['steps']} steps, final loss {record['final_loss']:.3f}"
    version_folder = lora_version_prefix(PERSONA, record["version"])
    print(f"  LoRA (kohya)   : {store.uri(record['lora_key'])} ({summary}, version {record['version']})")
    print(f"  checkpoints    : {len(record['checkpoints'])} in {store.uri(version_folder + 'checkpoints/')}")
    print(f"  loss curve     : {store.uri(version_folder + 'loss_curve.png')}")
    print(f"  sample grid    : {store.uri(samples_prefix(PERSONA, record['version']) + 'grid.png')} (a .json each)")
    today = datetime.now(UTC).date().isoformat()
    print(f"\nplanning and rendering today's content ({today}) ...")
    partition = dg.MultiPartitionKey({"date": today, "persona": PERSONA})
    content_run, content_s = run_job(instance, "daily_content", partition)
    plan = json.loads(store.read_bytes(content_prefix(PERSONA, today) + "plan.json"))
    print(f"content run {content_run} succeeded in {content_s:.1f} s")
    for post in plan["posts"]:
        print(f"  {post['publish_at'][11:16]} {post['format']:8} {', '.join(post['platforms']):28} {post['theme']}")
    videos = [o for o in store.list(content_prefix(PERSONA, today) + "videos/")]
    print(f"  images         : {store.uri(content_prefix(PERSONA, today) + 'images/')}")
    for video in videos:
        print(f"  reel           : {store.uri(video.key)} ({video.size / 1e6:.1f} MB)")

    print("\npublishing today's posts to the outbox (every post now, not at its planned time) ...")
    config = {"ops": {"published_posts": {"config": {"only_due": False}}}}
    publish_run, publish_s = run_job(instance, "publish_posts", partition, config)
    outbox = Path(defs.resources["publishing"].outbox_dir)
    bundles = sorted(p.parent for p in outbox.glob(f"{PERSONA}/*/*/PUBLISHED"))
    print(f"publish run {publish_run} succeeded in {publish_s:.1f} s: {len(bundles)} post bundles")
    for bundle in bundles:
        print(f"  {bundle}")

    print("\nLook at it in the UI: run `make dev`, open http://127.0.0.1:3000, then")
    print("  Runs -> the run above (logs, steps), and Assets -> training_images -> partition 'ava'")
    print("  (contact sheet, rejection table, kept/rejected plots), image_captions (caption table),")
    print("  lora_weights (loss curve, final_loss plot) and lora_samples (sample grid, consistency_score);")
    print("  content_plan (calendar table), post_images (previews), post_videos (thumbnail, loudness table)")
    print("  and published_posts (state, id and permalink per post and platform).")


if __name__ == "__main__":
    main()
