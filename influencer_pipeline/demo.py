"""`make demo`: the sample persona end to end with the embedded defaults: dataset, LoRA, tomorrow's content planned
and rendered, reviewed (drafts listed, approved with the review_posts job, one post "publish now") and published
to the outbox, where it waits as `ready_to_post` until a person posts it.

Runs on the same instance as `make dev` (DAGSTER_HOME), so every run shows up in the UI afterwards.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from influencer_pipeline import cli
from influencer_pipeline.dagster_layer.partitions import personas
from influencer_pipeline.dagster_layer.plans import read_plan
from influencer_pipeline.definitions import defs
from influencer_pipeline.defs.publishing.assets import content_version, register
from influencer_pipeline.defs.publishing.review import OP_NAME, review_posts_job
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
from influencer_pipeline.publishing.outbox import MARKER

STUDIO = "http://127.0.0.1:3001/studio"
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
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    partition = dg.MultiPartitionKey({"date": tomorrow, "persona": PERSONA})
    print(f"\nplanning and rendering tomorrow's content ({tomorrow}), so there is time to review it ...")
    content_run, content_s = run_job(instance, "daily_content", partition)
    plan = json.loads(store.read_bytes(content_prefix(PERSONA, tomorrow) + "plan.json"))
    print(f"content run {content_run} succeeded in {content_s:.1f} s")
    for post in plan["posts"]:
        print(f"  {post['publish_at'][11:16]} {post['format']:8} {', '.join(post['platforms']):28} {post['theme']}")
    print(f"  images         : {store.uri(content_prefix(PERSONA, tomorrow) + 'images/')}")
    for video in (o for o in store.list(content_prefix(PERSONA, tomorrow) + "videos/") if o.key.endswith(".mp4")):
        print(f"  reel           : {store.uri(video.key)} ({video.size / 1e6:.1f} MB)")

    register_for_review(instance, store, tomorrow)
    print("\nreview: the day's posts are drafts (persona.yaml approval: required); `influencer-pipeline posts list`:")
    cli.main(["posts", "list", "--persona", PERSONA, "--day", tomorrow])

    print("\napproving them with the review_posts job (the launchpad's config, actions filled in) ...")
    review_run, actions = review_day(instance, tomorrow)
    print(f"review run {review_run}: " + (", ".join(f"{post} {action}" for post, action in actions) or "no posts"))
    cli.main(["posts", "list", "--persona", PERSONA, "--day", tomorrow])

    print("\npublishing the 'publish now' post to the outbox (the due-posts sensor's run, done here at once) ...")
    publish_run, publish_s = run_job(instance, "publish_posts", partition)
    outbox = Path(defs.resources["publishing"].outbox_dir)
    bundles = sorted(p.parent for p in outbox.glob(f"{PERSONA}/{tomorrow}-*/*/{MARKER}"))
    print(f"publish run {publish_run} succeeded in {publish_s:.1f} s: {len(bundles)} bundle(s) ready_to_post")
    for bundle in bundles:
        print(f"  {bundle}")
    cli.main(["posts", "list", "--persona", PERSONA, "--day", tomorrow])
    print("  the other posts are scheduled: the due-posts sensor publishes each at its time while `make dev` runs.")
    if bundles:
        first = bundles[0]
        print("  posted a bundle by hand? record it:")
        print(f"    influencer-pipeline posts mark-posted --persona {PERSONA} --post {first.parent.name} "
              f"--platform {first.name}")  # fmt: skip

    print("\nWhere to look:")
    print("  Dagster UI : `make dev`, then http://127.0.0.1:3000 (Runs; Assets -> published_posts, post_videos, ...)")
    print(f"  Studio     : `make studio` beside it, then {STUDIO} (every persona, week grid, reels)")
    print(f"  Review     : http://127.0.0.1:3000/locations/influencer_pipeline/jobs/review_posts/playground "
          f"(pick {tomorrow} and {PERSONA}), or `influencer-pipeline posts ...`")  # fmt: skip
    print(f"  Outbox     : {outbox / PERSONA}")


def register_for_review(instance: dg.DagsterInstance, store: MediaStore, day: str) -> None:
    """What the due-posts sensor does when a day's videos land: record the posts in the ledger for review."""
    plan = read_plan(store, PERSONA, day)
    version = content_version(instance, PERSONA, day, plan)
    register(defs.resources["publishing"].ledger(), store, PERSONA, day, plan, version, datetime.now(UTC))


def review_day(instance: dg.DagsterInstance, day: str) -> tuple[str, list[tuple[str, str]]]:
    """Launch review_posts as a creator does in the launchpad: the first post `publish_now`, the others `approve`
    (posts a run already took stay as they are, so the demo can run again)."""
    key = dg.MultiPartitionKey({"date": day, "persona": PERSONA})
    config = review_posts_job.partitioned_config.get_run_config_for_partition_key(key)
    posts = config["ops"][OP_NAME]["config"]["posts"]
    first = min((p["time"], p["post_id"]) for p in posts)[1] if posts else ""
    actions = []
    for post in posts:
        if post["state"] in ("draft", "held", "approved", "scheduled") and post["post_id"] == first:
            post["action"] = "publish_now"
        elif post["state"] in ("draft", "held"):
            post["action"] = "approve"
        actions.append((f"{post['post_id']}/{post['platform']}", post["action"]))
    run_id, _ = run_job(instance, "review_posts", key, config)
    return run_id, actions


if __name__ == "__main__":
    main()
