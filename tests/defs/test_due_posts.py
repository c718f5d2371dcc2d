"""The due-posts sensor as Dagster evaluates it (a real instance, `build_sensor_context`), on a fake clock.

It registers days whose post_videos materialised (no plan is read on an ordinary tick), honours the persona's
approval policy, asks for posts of any earlier day, and opens the ledger once per process, not once per tick.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from influencer_pipeline.content.plan import ContentPlan, PlannedPost
from influencer_pipeline.dagster_layer import publishing as defs
from influencer_pipeline.dagster_layer.publishing import PublishingResource
from influencer_pipeline.dagster_layer.resources import LocalMediaStoreResource
from influencer_pipeline.defs.content.assets import post_videos
from influencer_pipeline.defs.publishing.sensors import due_posts_sensor
from influencer_pipeline.media import LocalMediaStore
from influencer_pipeline.publishing import review
from influencer_pipeline.publishing.ledger import Ledger

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def render_day(store: LocalMediaStore, instance: dg.DagsterInstance, persona: str, day: str, hours: list[int]) -> None:
    """What the content group leaves: a plan in the store and a post_videos materialization for the day."""
    posts = [
        PlannedPost(
            id=f"{day}-{i + 1}",
            theme="espresso",
            format="image",
            image_prompts=["ohwx woman"],
            captions={"instagram": f"{persona} post {i + 1}"},
            platforms=["instagram"],
            publish_at=datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC),
        )
        for i, hour in enumerate(hours)
    ]
    plan = ContentPlan(persona=persona, date=date.fromisoformat(day), posts=posts)
    store.write_bytes(f"personas/{persona}/content/{day}/plan.json", plan.model_dump_json().encode())
    partition = dg.MultiPartitionKey({"date": day, "persona": persona})
    instance.report_runless_asset_event(dg.AssetMaterialization(post_videos.key, partition=partition))


@pytest.fixture
def world(tmp_path, monkeypatch):
    clock = Clock(NOW)
    monkeypatch.setattr(defs, "CLOCK", clock)
    store = LocalMediaStore(tmp_path / "media")
    resources = {
        "media": LocalMediaStoreResource(root=str(store.root)),
        "publishing": PublishingResource(outbox_dir=str(tmp_path / "outbox"), work_dir=str(tmp_path / "work")),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava", "bob"])
        yield clock, store, instance, resources


def tick(instance: dg.DagsterInstance, resources: dict, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        result = due_posts_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def requested(result: dg.SensorResult) -> list[str]:
    return sorted(str(r.partition_key) for r in result.run_requests or [])


def test_a_rendered_day_is_registered_and_requested_when_due_on_any_later_day(world) -> None:
    clock, store, instance, resources = world
    store.write_bytes("uploads/ava/persona.yaml", b"approval: auto\n")
    render_day(store, instance, "ava", "2026-11-23", [9, 18])
    first = tick(instance, resources, None)
    assert requested(first) == [] and first.cursor
    clock.at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # the daemon was down for four days
    later = tick(instance, resources, first.cursor)
    assert requested(later) == ["2026-11-23|ava"]
    assert tick(instance, resources, later.cursor).run_requests[0].run_key == later.run_requests[0].run_key


def test_drafts_wait_for_approval_under_the_default_policy(world) -> None:
    clock, store, instance, resources = world
    render_day(store, instance, "bob", "2026-11-23", [9])  # no persona.yaml: approval required
    cursor = tick(instance, resources, None).cursor
    clock.at = NOW + timedelta(hours=4)
    assert requested(tick(instance, resources, cursor)) == []
    ledger = resources["publishing"].ledger()
    [row] = review.day_posts(ledger, "bob", "2026-11-23")
    assert row.status == "draft"
    review.publish_now(ledger, row.key, reviewer="bob's creator", now=clock.at)
    assert requested(tick(instance, resources, cursor)) == ["2026-11-23|bob"]


def test_the_ledger_is_opened_and_migrated_once_not_per_tick(world, monkeypatch) -> None:
    clock, _store, instance, resources = world
    upgrades = []
    real = Ledger.upgrade
    monkeypatch.setattr(Ledger, "upgrade", lambda self: (upgrades.append(self.url), real(self))[1])
    cursor = None
    for minute in range(5):
        clock.at = NOW + timedelta(minutes=minute)
        cursor = tick(instance, resources, cursor).cursor
    assert len(upgrades) <= 1, f"the ledger was migrated {len(upgrades)} times in 5 ticks"
