"""planned_posts.reported_at: when a check last named a failed or blocked post.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

A failed or blocked post not yet named by a `posts_on_time` check gets a run of its own (which publishes nothing
and evaluates the check), so a failure recorded by a run that then died is still reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("planned_posts") as batch:
        batch.add_column(sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("planned_posts") as batch:
        batch.drop_column("reported_at")
