"""The `review_posts` job (issue 13, item 2): the launchpad lists the day's posts, decisions reach the ledger, and
the due-posts sensor's run publishes what was approved, nothing held and nothing late.

A real instance and real runs (`execute_in_process`), the real sensor (`build_sensor_context`), the real outbox
publisher and brand-safety scan; the clock is injected.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from influencer_pipeline.content.plan import ContentPlan, PlannedPost
from influencer_pipeline.dagster_layer import publishing as publishing_defs
from influencer_pipeline.dagster_layer.publishing import PublishingResource
from influencer_pipeline.dagster_layer.resources import LocalMediaStoreResource
from influencer_pipeline.defs.content.assets import post_videos
from influencer_pipeline.defs.publishing.assets import published_posts
from influencer_pipeline.defs.publishing.review import review_posts_job
from influencer_pipeline.defs.publishing.sensors import due_posts_sensor
from influencer_pipeline.media import LocalMediaStore
from influencer_pipeline.publishing import review
from influencer_pipeline.publishing.due import day_statuses

NOW = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
TODAY, TOMORROW, YESTERDAY = "2026-11-23", "2026-11-24", "2026-11-22"


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1080, 1350), (200, 170, 140)).save(buffer, "PNG")
    return buffer.getvalue()


def render_day(store: LocalMediaStore, instance: dg.DagsterInstance, day: str, hours: list[int]) -> None:
    """What the content group leaves for a day: plan.json, one image per post, a post_videos materialization."""
    posts = []
    for n, hour in enumerate(hours, start=1):
        post_id = f"{day}-{n}"
        posts.append(
            PlannedPost(
                id=post_id,
                theme="espresso at the market",
                format="image",
                image_prompts=["ohwx woman"],
                captions={"instagram": f"Morning espresso number {n}"},
                platforms=["instagram"],
                publish_at=datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC),
            )
        )
        store.write_bytes(f"personas/ava/content/{day}/images/{post_id}-1.png", photo())
    plan = ContentPlan(persona="ava", date=date.fromisoformat(day), posts=posts)
    store.write_bytes(f"personas/ava/content/{day}/plan.json", plan.model_dump_json().encode())
    partition = dg.MultiPartitionKey({"date": day, "persona": "ava"})
    instance.report_runless_asset_event(dg.AssetMaterialization(post_videos.key, partition=partition))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    clock = Clock(NOW)
    monkeypatch.setattr(publishing_defs, "CLOCK", clock)
    monkeypatch.setenv("WORK_DIR", str(tmp_path / "work"))  # what the launchpad's config reads
    monkeypatch.setenv("MEDIA_ROOT", str(tmp_path / "media"))
    monkeypatch.delenv("POST_LEDGER_URL", raising=False)
    monkeypatch.delenv("STUDIO_URL", raising=False)  # the link is the wrapper's own /studio
    store = LocalMediaStore(tmp_path / "media")
    store.write_bytes("uploads/ava/persona.yaml", b"approval: required\n")
    resources = {
        "media": LocalMediaStoreResource(root=str(store.root)),
        "publishing": PublishingResource(outbox_dir=str(tmp_path / "outbox"), work_dir=str(tmp_path / "work")),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        yield clock, store, instance, resources


def tick(instance: dg.DagsterInstance, resources: dict, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        result = due_posts_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def launchpad_config(day: str) -> dict:
    key = dg.MultiPartitionKey({"date": day, "persona": "ava"})
    return review_posts_job.partitioned_config.get_run_config_for_partition_key(key)


def review_run(instance, resources, day: str, actions: dict[str, str], **extra) -> dg.ExecuteInProcessResult:
    """Launch review_posts as a creator does: the partition's config, with some actions changed."""
    config = launchpad_config(day)
    for post in config["ops"]["record_decisions"]["config"]["posts"]:
        post["action"] = actions.get(post["post_id"], post["action"])
        post.update(extra.get(post["post_id"], {}))
    return review_posts_job.execute_in_process(
        run_config=config,
        instance=instance,
        resources=resources,
        partition_key=dg.MultiPartitionKey({"date": day, "persona": "ava"}),
        raise_on_error=False,
    )


def states(resources, day: str) -> dict[str, str]:
    return {s.post_id: s.state for s in day_statuses(resources["publishing"].ledger(), "ava", day)}


def test_the_launchpad_lists_the_day_posts_with_state_time_and_caption(world) -> None:
    _clock, store, instance, resources = world
    render_day(store, instance, TOMORROW, [9, 18])
    tick(instance, resources, None)
    config = launchpad_config(TOMORROW)["ops"]["record_decisions"]["config"]
    assert (config["persona"], config["day"]) == ("ava", TOMORROW)
    first, second = config["posts"]
    assert first == {
        "post_id": f"{TOMORROW}-1",
        "platform": "instagram",
        "action": "keep",
        "new_time": "",
        "state": "draft",
        "time": f"{TOMORROW} 09:00 UTC",
        "caption": "Morning espresso number 1",
    }
    assert second["time"] == f"{TOMORROW} 18:00 UTC"
    assert launchpad_config(TODAY)["ops"]["record_decisions"]["config"]["posts"] == []  # nothing planned today


def test_approved_posts_go_out_through_the_sensor_held_and_late_ones_do_not(world, tmp_path) -> None:
    clock, store, instance, resources = world
    render_day(store, instance, YESTERDAY, [9])  # rendered late: its time passed before anyone approved it
    render_day(store, instance, TOMORROW, [9, 18])
    cursor = tick(instance, resources, None).cursor
    assert set(states(resources, TOMORROW).values()) == {"draft"}

    tomorrow = review_run(instance, resources, TOMORROW, {f"{TOMORROW}-1": "approve", f"{TOMORROW}-2": "hold"})
    assert tomorrow.success
    late = review_run(instance, resources, YESTERDAY, {f"{YESTERDAY}-1": "approve"})
    assert late.success
    assert states(resources, TOMORROW) == {f"{TOMORROW}-1": "scheduled", f"{TOMORROW}-2": "held"}
    assert states(resources, YESTERDAY) == {f"{YESTERDAY}-1": "approved"}, "late content waits for publish now"

    clock.at = datetime(2026, 11, 24, 9, 1, tzinfo=UTC)
    result = tick(instance, resources, cursor)
    [request] = result.run_requests
    assert str(request.partition_key) == f"{TOMORROW}|ava"
    run = dg.materialize(  # the run the sensor asked for: publish_posts is published_posts for that partition
        [published_posts], instance=instance, resources=resources, partition_key=request.partition_key
    )
    assert run.success
    assert states(resources, TOMORROW) == {f"{TOMORROW}-1": "ready_to_post", f"{TOMORROW}-2": "held"}
    metadata = run.asset_materializations_for_node("published_posts")[0].metadata
    assert metadata["studio"] == dg.MetadataValue.url("/studio#ava"), "one click from the UI to the studio"
    assert metadata["ready_to_post"].value == 1 and metadata["held"].value == 1
    bundles = sorted(p.parent.parent.name for p in (tmp_path / "outbox" / "ava").rglob("READY_TO_POST"))
    assert bundles == [f"{TOMORROW}-1"], "only the approved post was released"

    clock.at = datetime(2026, 11, 24, 19, 0, tzinfo=UTC)
    assert not tick(instance, resources, result.cursor).run_requests, "held and late posts are never due"
    assert states(resources, YESTERDAY) == {f"{YESTERDAY}-1": "approved"}


def test_reschedule_and_refused_decisions_are_reported_and_the_rest_applied(world) -> None:
    _clock, store, instance, resources = world
    render_day(store, instance, TOMORROW, [9, 18])
    tick(instance, resources, None)
    bad_time = {f"{TOMORROW}-1": {"new_time": "tomorrow evening"}}
    refused = review_run(instance, resources, TOMORROW, {f"{TOMORROW}-1": "reschedule"}, **bad_time)
    assert not refused.success
    message = refused.get_run_failure_event().message or ""
    failure = next(e for e in refused.all_events if e.is_step_failure)
    text = failure.step_failure_data.user_failure_data.description
    assert "new_time" in text and "2026-12-07T18:30:00+00:00" in text, (message, text)

    moved = {f"{TOMORROW}-1": {"new_time": "2026-11-24T20:15:00+01:00"}}
    actions = {f"{TOMORROW}-1": "reschedule", f"{TOMORROW}-2": "mark_posted"}
    mixed = review_run(instance, resources, TOMORROW, actions, **moved)
    assert not mixed.success
    text = next(e for e in mixed.all_events if e.is_step_failure).step_failure_data.user_failure_data.description
    assert "1 of 2 decision(s) did not apply" in text and "ready_to_post" in text
    [row] = [r for r in review.day_posts(resources["publishing"].ledger(), "ava", TOMORROW) if r.post_id.endswith("-1")]
    assert row.publish_at == datetime(2026, 11, 24, 19, 15, tzinfo=UTC) and row.rescheduled, "the valid one applied"


def test_n8n_can_launch_it_without_a_partition(world) -> None:
    """Over GraphQL, n8n sends the config it built from the drafts it showed, with no partition tags."""
    _clock, store, instance, resources = world
    render_day(store, instance, TOMORROW, [9])
    tick(instance, resources, None)
    config = {"persona": "ava", "day": TOMORROW, "reviewer": "n8n:mia", "posts": [
        {"post_id": f"{TOMORROW}-1", "action": "approve"}]}  # fmt: skip
    result = review_posts_job.execute_in_process(
        run_config={"ops": {"record_decisions": {"config": config}}}, instance=instance, resources=resources
    )
    assert result.success
    [row] = review.day_posts(resources["publishing"].ledger(), "ava", TOMORROW)
    assert (row.status, row.reviewer) == ("scheduled", "n8n:mia")
    assert json.loads(json.dumps(launchpad_config(TOMORROW)))  # the launchpad config is plain JSON


def test_the_launchpad_explains_every_field_and_offers_the_actions_as_a_choice() -> None:
    schema = review_posts_job.get_config_schema_snapshot()
    fields = {}
    for config_type in schema.all_config_snaps_by_key.values():
        for field in config_type.fields or []:
            fields[field.name] = field
    for name in ("persona", "day", "reviewer", "posts", "post_id", "platform", "action", "new_time"):
        assert fields[name].description, f"{name} has no description in the launchpad"
    enums = [c for c in schema.all_config_snaps_by_key.values() if c.enum_values]
    assert any({v.value for v in c.enum_values} >= {"approve", "hold", "reschedule", "publish_now"} for c in enums)
