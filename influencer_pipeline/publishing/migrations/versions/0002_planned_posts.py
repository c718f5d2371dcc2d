"""Planned posts: one row per (persona, post, platform) with its review status, time and attempt.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

The due-posts selection reads these rows (only `scheduled` ones, by the status/time index) instead of every plan
of every day, and the review actions (approve, hold, reschedule, publish now) and pre-flight verdicts live here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "planned_posts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("persona", sa.String(100), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("post_id", sa.String(200), nullable=False),
        sa.Column("platform", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("publish_at", TIME, nullable=False),
        sa.Column("planned_at", TIME, nullable=False),
        sa.Column("rescheduled", sa.Boolean(), nullable=False),
        sa.Column("approved_at", TIME, nullable=True),
        sa.Column("reviewer", sa.String(200), nullable=True),
        sa.Column("content_version", sa.String(64), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=True),
        sa.Column("attempt_id", sa.Integer(), sa.ForeignKey("post_attempts.id"), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_until", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.UniqueConstraint("persona", "post_id", "platform", name="uq_planned_posts_persona_post_platform"),
    )
    op.create_index("ix_planned_posts_status_publish_at", "planned_posts", ["status", "publish_at"])
    op.create_index("ix_planned_posts_persona_day", "planned_posts", ["persona", "day"])


def downgrade() -> None:
    op.drop_table("planned_posts")
