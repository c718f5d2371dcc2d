"""Launchpad config of the publishing group's asset and review job (checked before a run is queued, see
admin/run_coordinator.py)."""

from enum import Enum

import dagster as dg
from pydantic import Field


class PublishedPostsConfig(dg.Config):
    only_due: bool = Field(
        True,
        description="true: publish the day's scheduled posts whose time has come. false: 'publish now' for every "
        "post of the day that has not started (drafts and late posts included): an explicit operator decision.",
    )


class Action(Enum):
    keep = "keep"
    approve = "approve"
    hold = "hold"
    reschedule = "reschedule"
    publish_now = "publish_now"
    mark_posted = "mark_posted"


class PostReview(dg.Config):
    post_id: str = Field(description="The post's id, as planned (`<day>-<n>`).")
    platform: str = Field(
        "", description="One platform of the post (instagram, facebook, youtube, tiktok); empty: all of them."
    )
    action: Action = Field(
        Action.keep,
        description="keep: change nothing. approve: a draft or held post goes out at its time (if that time has "
        "passed it waits for publish_now). hold: keep it from going out. reschedule: move it to new_time. "
        "publish_now: release it at once, whatever its time. mark_posted: you posted its outbox bundle by hand.",
    )
    new_time: str = Field(
        "", description="For reschedule only: the new time with its offset, e.g. 2026-12-07T18:30:00+01:00."
    )
    state: str = Field("", description="For reading: the post's state when this config was made (ignored).")
    time: str = Field("", description="For reading: when it is planned to go out, UTC (ignored).")
    caption: str = Field("", description="For reading: the start of its caption (ignored).")


class ReviewPostsConfig(dg.Config):
    persona: str = Field(description="The persona whose posts these are (a folder name under uploads/).")
    day: str = Field(description="The day the posts belong to, YYYY-MM-DD.")
    reviewer: str = Field("dagster-ui", description="Who decided: kept in the ledger with each decision.")
    posts: list[PostReview] = Field(
        default_factory=list,
        description="One entry per post and platform; pick a date and persona partition to fill them in.",
    )
