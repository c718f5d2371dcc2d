"""The upload sensor on a real SQLite instance: partitions added and runs requested in one SensorResult."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from influencer_pipeline.dagster_layer.resources import (
    LocalMediaStoreResource,
    S3MediaStoreResource,
    TemplateWriterResource,
    UploadPolicy,
)
from influencer_pipeline.defs.content.assets import content_plan
from influencer_pipeline.defs.datasets.assets import training_images
from influencer_pipeline.defs.datasets.sensors import upload_sensor
from influencer_pipeline.media import LocalMediaStore, S3MediaStore
from tests.defs.test_datasets import SAMPLE, upload_sample


def evaluate(instance, resources, cursor=None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return upload_sensor(context)


def apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """What the daemon does with a result: add the partitions (tests get requests back, not applied)."""
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path):
    """(resources for the sensor, a store view of the same place for the test to upload into)."""
    policy = UploadPolicy(settle_seconds=0)
    if request.param == "local":
        root = tmp_path / "media"
        return {"media": LocalMediaStoreResource(root=str(root)), "upload_policy": policy}, LocalMediaStore(root)
    from dagster_aws.s3 import S3Resource

    client, bucket = request.getfixturevalue("s3_bucket")
    s3 = S3Resource(endpoint_url=client.meta.endpoint_url, region_name="us-east-1")
    resources = {"media": S3MediaStoreResource(bucket=bucket, prefix="p", s3=s3), "upload_policy": policy}
    return resources, S3MediaStore(client, bucket, "p")


def test_new_persona_adds_partition_and_requests_its_dataset_run(instance, backend) -> None:
    resources, store = backend
    store.write_bytes("uploads/ava/a.jpg", b"A")
    store.write_bytes("uploads/ava/READY", b"")
    result = evaluate(instance, resources)
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [["ava"]]
    assert [r.partition_key for r in result.run_requests] == ["ava"]
    assert upload_sensor.job_name == "persona_pipeline"
    assert result.run_requests[0].run_key.startswith("dataset:ava:")
    apply(instance, result)

    again = evaluate(instance, resources, cursor=result.cursor)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []


def test_known_persona_is_not_added_twice(instance, backend) -> None:
    resources, store = backend
    instance.add_dynamic_partitions("personas", ["ava"])
    store.write_bytes("uploads/ava/a.jpg", b"A")
    result = evaluate(instance, resources)
    assert result.dynamic_partitions_requests == []
    assert [r.partition_key for r in result.run_requests] == ["ava"]


def test_changed_dataset_requests_a_new_run_with_a_new_key(instance, backend) -> None:
    resources, store = backend
    store.write_bytes("uploads/ava/a.jpg", b"A")
    first = evaluate(instance, resources)
    store.write_bytes("uploads/ava/b.jpg", b"B")
    second = evaluate(instance, resources, cursor=first.cursor)
    assert len(second.run_requests) == 1
    assert second.run_requests[0].run_key != first.run_requests[0].run_key


def test_settle_window_holds_runs_back(instance, tmp_path) -> None:
    root = tmp_path / "media"
    resources = {"media": LocalMediaStoreResource(root=str(root)), "upload_policy": UploadPolicy(settle_seconds=3600)}
    LocalMediaStore(root).write_bytes("uploads/ava/a.jpg", b"A")
    result = evaluate(instance, resources)
    assert result.run_requests == []
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [["ava"]]


def test_sensor_is_on_by_default() -> None:
    assert upload_sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_content_curated_before_the_sensor_ran_is_not_started_again(instance, tmp_path) -> None:
    """`make demo` curates and trains the sample persona without the sensor; `make dev` afterwards starts the
    sensor with an empty cursor, and it must not redo that work."""
    root = tmp_path / "media"
    resources = {"media": LocalMediaStoreResource(root=str(root)), "upload_policy": UploadPolicy(settle_seconds=0)}
    upload_sample(LocalMediaStore(root))
    instance.add_dynamic_partitions("personas", ["ava"])
    curated = dg.materialize(
        [training_images], partition_key="ava", instance=instance, resources={"media": resources["media"]}
    )
    assert curated.success
    result = evaluate(instance, resources)
    assert result.run_requests == []

    LocalMediaStore(root).write_bytes("uploads/ava/extra.jpg", (SAMPLE / "ava_01.jpg").read_bytes())
    changed = evaluate(instance, resources, cursor=result.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["ava"], "new photos still start a run"


def test_profile_edit_outside_training_inputs_retrains_nothing_and_marks_planned_days_stale(instance, tmp_path):
    root = tmp_path / "media"
    store = LocalMediaStore(root)
    resources = {"media": LocalMediaStoreResource(root=str(root)), "upload_policy": UploadPolicy(settle_seconds=0)}
    store.write_bytes("uploads/ava/a.jpg", b"A")
    store.write_bytes("uploads/ava/persona.yaml", b"trigger_word: ohwx\nthemes: [espresso]\n")
    first = evaluate(instance, resources)
    assert len(first.run_requests) == 1
    apply(instance, first)
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    partition = dg.MultiPartitionKey({"date": tomorrow, "persona": "ava"})
    planned = dg.materialize(
        [content_plan],
        partition_key=partition,
        instance=instance,
        resources={"media": resources["media"], "writer": TemplateWriterResource()},
    )
    assert planned.success

    store.write_bytes("uploads/ava/persona.yaml", b"trigger_word: ohwx\nthemes: [beaches]\nposting_times: ['10:00']\n")
    edited = evaluate(instance, resources, cursor=first.cursor)
    assert edited.run_requests == [], "themes and posting times are not training inputs"
    [stale] = edited.asset_events
    assert stale.asset_key == content_plan.key and stale.partition == str(partition)
    assert stale.metadata["stale"].value is True

    store.write_bytes("uploads/ava/persona.yaml", b"trigger_word: sks\nthemes: [beaches]\nposting_times: ['10:00']\n")
    retrain = evaluate(instance, resources, cursor=edited.cursor)
    assert [r.partition_key for r in retrain.run_requests] == ["ava"], "a new trigger word is a new LoRA"
    assert retrain.run_requests[0].run_key != first.run_requests[0].run_key
