"""The `review_posts` job: approve, hold, reschedule or publish now a persona's day from the launchpad or n8n.

Pick a date and a persona in the launchpad and the config arrives filled with that day's posts as the ledger has
them now (state, time, caption) and `action: keep` for each: change the actions you want and launch. n8n launches
the same job over GraphQL with the decisions it collected (`resources/n8n/approve-posts.json`). The job changes
the ledger only, through `publishing/decisions.py` like the CLI; the due-posts sensor publishes what becomes due.
"""

from datetime import datetime
from typing import Any

import dagster as dg

from influencer_pipeline.dagster_layer import publishing as shared
from influencer_pipeline.dagster_layer.metadata import table
from influencer_pipeline.dagster_layer.partitions import calendar
from influencer_pipeline.dagster_layer.publishing import PublishingResource
from influencer_pipeline.dagster_layer.resources import media_store_for
from influencer_pipeline.dagster_layer.settings import load_settings
from influencer_pipeline.defs.publishing.config import Action, ReviewPostsConfig
from influencer_pipeline.errors import InputError
from influencer_pipeline.publishing import decisions, review
from influencer_pipeline.publishing.decisions import Decision
from influencer_pipeline.publishing.review import ReviewError
from influencer_pipeline.studio import studio_url
from influencer_pipeline.studio.overview import captions_of_day

OP_NAME = "record_decisions"  # the run config path: ops.record_decisions.config


def day_review_config(persona: str, day: str) -> dict[str, Any]:
    """The launchpad config of a persona's day: its posts as the ledger has them now, each with `keep`."""
    ledger = decisions.ledger_from_env()
    captions = captions_of_day(media_store_for(load_settings().media).get_store(), persona, day)
    posts = [
        {
            "post_id": row.post_id,
            "platform": row.platform,
            "action": Action.keep.value,
            "new_time": "",
            "state": row.status,
            "time": f"{row.publish_at:%Y-%m-%d %H:%M} UTC",
            "caption": captions.get((row.post_id, row.platform), "")[:120],
        }
        for row in review.day_posts(ledger, persona, day)
    ]
    config = {"persona": persona, "day": day, "reviewer": "dagster-ui", "posts": posts}
    return {"ops": {OP_NAME: {"config": config}}}


def _config_for_partition(partition_key: str) -> dict[str, Any]:
    keys = calendar.get_partition_key_from_str(partition_key).keys_by_dimension
    return day_review_config(keys["persona"], keys["date"])


review_config = dg.PartitionedConfig(partitions_def=calendar, run_config_for_partition_key_fn=_config_for_partition)


def to_decisions(config: ReviewPostsConfig) -> list[Decision]:
    """The config's posts as decisions (entries left at `keep` are dropped); a bad time is a user error."""
    wanted = []
    for index, post in enumerate(config.posts):
        if post.action == Action.keep:
            continue
        publish_at: datetime | None = None
        if post.action == Action.reschedule:
            where = f"posts[{index}].new_time ({post.post_id})"
            if not post.new_time.strip():
                raise InputError(where, "reschedule needs a new time", "set new_time, e.g. 2026-12-07T18:30:00+00:00")
            try:
                publish_at = decisions.parse_time(post.new_time, where)
            except ReviewError:
                rule = f"{post.new_time!r} is not a time with its timezone offset"
                raise InputError(where, rule, "write it as 2026-12-07T18:30:00+00:00") from None
        wanted.append(Decision(config.persona, post.post_id, post.action.value, post.platform, publish_at))
    return wanted


@dg.op(
    name=OP_NAME,
    description="Apply the review decisions in the config to the post ledger; fails listing every decision that "
    "did not apply (the others are kept).",
)
def review_posts_op(
    context: dg.OpExecutionContext, config: ReviewPostsConfig, publishing: PublishingResource
) -> dg.Output[None]:
    if context.has_partition_key:
        keys = calendar.get_partition_key_from_str(context.partition_key).keys_by_dimension
        if (keys["persona"], keys["date"]) != (config.persona, config.day):
            raise dg.Failure(
                f"config is for {config.persona} on {config.day} but the run's partition is "
                f"{keys['persona']} on {keys['date']}. Fix: pick the partition again so the config is refilled",
                allow_retries=False,
            )
    try:
        wanted = to_decisions(config)
    except InputError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
    outbox = None
    if publishing.mode == "outbox":
        from pathlib import Path

        outbox = Path(publishing.outbox_dir)
    ledger = publishing.ledger()
    outcomes = decisions.apply(ledger, wanted, reviewer=config.reviewer, now=shared.CLOCK(), outbox=outbox)
    for line in decisions.summary(outcomes).splitlines():
        context.log.info(line)
    rows = [
        {"post": o.key.post_id, "platform": o.key.platform, "action": o.action, "state": o.status, "error": o.error}
        for o in outcomes
    ]
    refused = [o for o in outcomes if not o.ok]
    if refused:
        raise dg.Failure(
            f"{len(refused)} of {len(outcomes)} decision(s) did not apply:\n"
            + decisions.summary(refused)
            + "\nThe others were recorded.",
            metadata={
                "decisions": table(rows, [(c, "string") for c in ("post", "platform", "action", "state", "error")])
            },
            allow_retries=False,
        )
    columns = [(c, "string") for c in ("post", "platform", "action", "state", "error")]
    return dg.Output(
        None,
        metadata={
            "decisions": table(rows, columns),
            "applied": len(outcomes),
            "studio": dg.MetadataValue.url(studio_url(config.persona)),
        },
    )


@dg.job(
    name="review_posts",
    partitions_def=calendar,
    config=review_config,
    description="Review a persona's day before it goes out: pick the date and persona partition, set each post's "
    f"action (approve, hold, reschedule, publish_now, mark_posted) and launch. Overview: [studio]({studio_url()}).",
    tags={"kind": "review"},
)
def review_posts_job() -> None:
    review_posts_op()
