"""Run status sensors on a real SQLite instance: real runs, the sensors called as in
https://docs.dagster.io/guides/automate/sensors/run-status-sensors, and the
signed payload checked where a receiver sees it (an HTTP server on loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from influencer_pipeline.dagster_layer.notifier import NotifierResource, notifier_for
from influencer_pipeline.dagster_layer.settings import Settings, SettingsError
from influencer_pipeline.defs.operations.sensors import notification_sensors, run_failure_notifier, run_success_notifier
from influencer_pipeline.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, NotificationError, verify_signature
from tests.support.webhooks import Receiver

SECRET = "sensor-test-secret"
personas = dg.StaticPartitionsDefinition(["ava"])


@dg.asset(partitions_def=personas)
def dataset() -> int:
    return 16


@dg.asset(partitions_def=personas, deps=[dataset])
def captions() -> int:
    return 16


@dg.op
def prepare() -> int:
    return 1


@dg.op
def render(count: int) -> None:
    raise RuntimeError(f"ComfyUI returned HTTP 500 for prompt {count}")


@dg.job
def render_job() -> None:
    render(prepare())


defs = dg.Definitions(
    assets=[dataset, captions], jobs=[dg.define_asset_job("captions_job", [dataset, captions]), render_job]
)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def notifier(receiver: Receiver) -> NotifierResource:
    return NotifierResource(webhook_urls=receiver.url, webhook_secret=SECRET, ui_url="https://dagster.example.com/")


def succeeded(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def("captions_job").execute_in_process(instance=instance, partition_key="ava")
    assert result.success
    return result


def failed(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def("render_job").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return result


def signed_payloads(receiver: Receiver) -> list[dict]:
    for _, headers, body in receiver.requests:
        assert verify_signature(body, SECRET, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER])
    return receiver.bodies()


def test_success_posts_run_job_partition_and_materialised_assets(instance, receiver, notifier) -> None:
    result = succeeded(instance)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_success_notifier",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_success_event(),
        resources={"notifier": notifier},
    )
    run_success_notifier(context)

    [payload] = signed_payloads(receiver)
    run_id = result.run_id
    assert payload["event"] == "run_success"
    assert (payload["run_id"], payload["job"], payload["partition"]) == (run_id, "captions_job", "ava")
    assert payload["status"] == "SUCCESS"
    assert payload["assets"] == ["dataset", "captions"]
    assert payload["failure"] is None
    assert payload["run_url"] == f"https://dagster.example.com/runs/{run_id}"
    assert payload["timestamp"].endswith("Z")


def test_failure_posts_the_failing_step_and_its_own_error_message(instance, receiver, notifier) -> None:
    result = failed(instance)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_notifier",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={"notifier": notifier},
    ).for_run_failure()
    run_failure_notifier(context)

    [payload] = signed_payloads(receiver)
    assert (payload["event"], payload["status"]) == ("run_failure", "FAILURE")
    assert (payload["run_id"], payload["job"], payload["partition"]) == (result.run_id, "render_job", None)
    assert payload["failure"] == {"step": "render", "message": "RuntimeError: ComfyUI returned HTTP 500 for prompt 1"}
    assert payload["assets"] == []


def test_sensors_evaluated_like_the_daemon_notify_runs_of_any_job(instance, receiver, notifier) -> None:
    """A tick over the instance's event log, cursor included, as the sensor daemon evaluates it."""

    def tick(sensor: dg.RunStatusSensorDefinition, cursor: str | None) -> str | None:
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"notifier": notifier}) as ctx:
            return sensor.evaluate_tick(ctx).cursor

    cursors = {sensor.name: tick(sensor, None) for sensor in notification_sensors}  # first tick: start here
    ok, bad = succeeded(instance), failed(instance)
    for sensor in notification_sensors:
        tick(sensor, cursors[sensor.name])

    by_event = {payload["event"]: payload for payload in signed_payloads(receiver)}
    assert by_event["run_success"]["run_id"] == ok.run_id
    assert by_event["run_failure"]["run_id"] == bad.run_id
    assert by_event["run_failure"]["failure"]["step"] == "render"
    assert {sensor.default_status for sensor in notification_sensors} == {dg.DefaultSensorStatus.RUNNING}


def test_slack_webhook_gets_block_kit(instance, receiver) -> None:
    result = failed(instance)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_notifier",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={"notifier": NotifierResource(slack_webhook_url=receiver.url)},
    ).for_run_failure()
    run_failure_notifier(context)

    [payload] = receiver.bodies()
    assert payload["text"] == "❌ render_job failed"
    assert "ComfyUI returned HTTP 500" in payload["blocks"][2]["text"]["text"]


def test_env_configures_the_resource_and_unset_means_no_webhook(instance, receiver, monkeypatch) -> None:
    result = succeeded(instance)

    def notify_with(notifier: NotifierResource) -> None:
        context = dg.build_run_status_sensor_context(
            sensor_name="run_success_notifier",
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=result.get_run_success_event(),
            resources={"notifier": notifier},
        )
        run_success_notifier(context)

    def notify_with_env() -> None:
        notify_with(notifier_for(Settings.from_env().notifier))

    for name in ("NOTIFY_WEBHOOK_URLS", "NOTIFY_SLACK_WEBHOOK_URL", "NOTIFY_WEBHOOK_SECRET", "DAGSTER_UI_URL"):
        monkeypatch.delenv(name, raising=False)
    notify_with_env()
    assert receiver.requests == []

    monkeypatch.setenv("NOTIFY_WEBHOOK_URLS", f" {receiver.url} ,")
    with pytest.raises(SettingsError, match="NOTIFY_WEBHOOK_SECRET: is not set but NOTIFY_WEBHOOK_URLS is"):
        notify_with_env()  # refused when the definitions load, before any run could end unnotified
    with pytest.raises(NotificationError, match="NOTIFY_WEBHOOK_SECRET"):  # a resource built by hand: at send
        notify_with(NotifierResource(webhook_urls=receiver.url))

    monkeypatch.setenv("NOTIFY_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("DAGSTER_UI_URL", "http://127.0.0.1:3000")
    notify_with_env()
    [payload] = signed_payloads(receiver)
    assert payload["run_url"] == f"http://127.0.0.1:3000/runs/{result.run_id}"
