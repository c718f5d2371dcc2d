"""The datasets group materialised for real: sample persona, local and S3 stores, tiny BLIP, bad persona.yaml."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import pytest

from influencer_pipeline.dagster_layer.resources import (
    BlipCaptionerResource,
    CaptionerResource,
    LocalMediaStoreResource,
    MediaStoreResource,
    S3MediaStoreResource,
    SidecarCaptionerResource,
)
from influencer_pipeline.defs.datasets.assets import image_captions, training_images
from influencer_pipeline.media import LocalMediaStore, MediaStore, S3MediaStore

SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "personas" / "ava"
SAMPLE_IMAGES = 18  # 16 portraits + a near-duplicate + a too-small image


def upload_sample(store: MediaStore, persona: str = "ava") -> dict[str, str]:
    digests = {}
    for path in sorted(SAMPLE.iterdir()):
        store.write_bytes(f"uploads/{persona}/{path.name}", path.read_bytes())
        digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def run(media: MediaStoreResource, captioner: CaptionerResource | None = None, persona: str = "ava", **kw):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", [persona])
        return dg.materialize(
            [training_images, image_captions],
            partition_key=persona,
            instance=instance,
            resources={"media": media, "captioner": captioner or SidecarCaptionerResource()},
            raise_on_error=False,
            **kw,
        )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure with its cause chain, as the run log in the UI shows it."""
    errors = [e.event_specific_data.error for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return "\n".join(error.to_string() for error in errors)


def checks(result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, str]]:
    evaluations = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    return {e.check_name: (e.passed, e.severity.value) for e in evaluations}


def test_sample_persona_end_to_end_on_local_store(tmp_path) -> None:
    store = LocalMediaStore(tmp_path / "media")
    before = upload_sample(store)
    result = run(LocalMediaStoreResource(root=str(store.root)))
    assert result.success

    meta = metadata(result, "training_images")
    assert (meta["kept"], meta["rejected"]) == (16, 2)
    assert meta["mean_sharpness"] > 0
    assert "data:image/jpeg;base64," in meta["contact_sheet"]
    reasons = {r.data["file"]: r.data["reason"] for r in meta["rejections"].records}
    assert "near-duplicate" in reasons["ava_dup_of_01.jpg"]
    assert "512" in reasons["ava_tiny.jpg"]

    captions = metadata(result, "image_captions")
    assert (captions["from_sidecars"], captions["fallback"], captions["from_model"]) == (12, 4, 0)
    txts = sorted(o.key for o in store.list("personas/ava/dataset/") if o.key.endswith(".txt"))
    assert len(txts) == 16
    assert all(store.read_bytes(k).decode().startswith("ohwx") for k in txts)

    assert checks(result) == {
        "min_images": (True, "ERROR"),
        "recommended_images": (True, "WARN"),
        "caption_coverage": (False, "WARN"),  # four images have only the fallback caption
    }
    uploads = store.list("uploads/ava/")
    after = {o.key.rsplit("/", 1)[-1]: hashlib.sha256(store.read_bytes(o.key)).hexdigest() for o in uploads}
    assert after == before, "uploads must never be modified, deleted or added to"


def test_tiny_blip_captions_what_sidecars_do_not_cover(tmp_path, tiny_blip_dir) -> None:
    store = LocalMediaStore(tmp_path / "media")
    upload_sample(store)
    result = run(LocalMediaStoreResource(root=str(store.root)), BlipCaptionerResource(model=str(tiny_blip_dir)))
    assert result.success
    captions = metadata(result, "image_captions")
    assert (captions["from_sidecars"], captions["from_model"], captions["fallback"]) == (12, 4, 0)
    assert captions["captioner"].startswith("blip")
    assert checks(result)["caption_coverage"] == (True, "WARN")


def test_missing_caption_model_fails_with_the_fix(tmp_path) -> None:
    store = LocalMediaStore(tmp_path / "media")
    upload_sample(store)
    result = run(LocalMediaStoreResource(root=str(store.root)), BlipCaptionerResource(model=str(tmp_path / "no-model")))
    assert not result.success
    message = failure_text(result)
    assert "no-model" in message and "CAPTION_MODEL" in message


def test_too_few_images_fail_the_dataset_and_nothing_downstream_runs(tmp_path) -> None:
    """A 3-to-5-photo persona is shown as failed (not green with a failed check), with the fix as the message,
    and automation does not caption it."""
    store = LocalMediaStore(tmp_path / "media")
    for i, path in enumerate(sorted(SAMPLE.glob("ava_0*.jpg"))[:5]):
        store.write_bytes(f"uploads/ava/{i}.jpg", path.read_bytes())
    assets = [training_images, image_captions]
    resources = {"media": LocalMediaStoreResource(root=str(store.root)), "captioner": SidecarCaptionerResource()}
    graph = dg.Definitions(assets=assets, resources=resources)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        before = dg.evaluate_automation_conditions(defs=graph, instance=instance)
        result = dg.materialize(
            assets, partition_key="ava", instance=instance, resources=resources, raise_on_error=False
        )
        after = dg.evaluate_automation_conditions(defs=graph, instance=instance, cursor=before.cursor)
    assert not result.success
    assert checks(result)["min_images"] == (False, "ERROR")
    assert not result.asset_materializations_for_node("training_images"), "a failed dataset is not materialized"
    assert not result.asset_materializations_for_node("image_captions")
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "training_images"
    description = failure.event_specific_data.user_failure_data.description
    assert "5 usable images" in description and "at least 10" in description and "uploads/ava/" in description
    assert after.total_requested == 0, "automation must not caption a dataset that failed its blocking check"


def test_bad_persona_yaml_fails_before_any_work(tmp_path) -> None:
    store = LocalMediaStore(tmp_path / "media")
    upload_sample(store)
    store.write_bytes("uploads/ava/persona.yaml", b"trigger_word: ohwx\ntimezone: Mars/Olympus\n")
    result = run(LocalMediaStoreResource(root=str(store.root)))
    assert not result.success
    message = failure_text(result)
    assert "uploads/ava/persona.yaml: field 'timezone'" in message and "Fix:" in message
    assert list(store.list("personas/ava/")) == []
    [error] = [e.event_specific_data for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert (
        error.user_failure_data.description.startswith("/")
        and "field 'timezone'" in error.user_failure_data.description
    )
    assert error.error.cause is None and error.error.context is None, "the message alone, no chained stack trace"


def test_s3_media_store_end_to_end(s3_bucket) -> None:
    from dagster_aws.s3 import S3Resource

    client, bucket = s3_bucket
    store = S3MediaStore(client, bucket, "studio")
    upload_sample(store)
    s3 = S3Resource(endpoint_url=client.meta.endpoint_url, region_name="us-east-1")
    result = run(S3MediaStoreResource(bucket=bucket, prefix="studio", s3=s3))
    assert result.success
    meta = metadata(result, "training_images")
    assert meta["kept"] == 16 and meta["media_store"] == "s3"
    assert meta["manifest"].startswith(f"s3://{bucket}/studio/personas/ava/")
    manifest = json.loads(store.read_bytes("personas/ava/manifests/training_images.json"))
    assert sum(i["status"] == "kept" for i in manifest["images"]) == 16
    pngs = [o for o in store.list("personas/ava/dataset/") if o.key.endswith(".png")]
    assert len(pngs) == 16


@pytest.mark.parametrize(("field", "bad"), [("resolution", 100), ("workers", 0), ("animated", "loop")])
def test_invalid_config_fails_before_any_work(tmp_path, field, bad) -> None:
    store = LocalMediaStore(tmp_path / "media")
    upload_sample(store)
    result = run(
        LocalMediaStoreResource(root=str(store.root)),
        run_config=dg.RunConfig(ops={"training_images": {"config": {field: bad}}}),
    )
    assert not result.success
    assert field in failure_text(result)
    assert list(store.list("personas/")) == []
