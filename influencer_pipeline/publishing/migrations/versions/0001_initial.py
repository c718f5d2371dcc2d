"""The post ledger: attempts per (post, account) and their transition history.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Types are spelled out here rather than imported from the models: a migration is history and must not change
when the models do.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "post_attempts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("post_id", sa.String(200), nullable=False),
        sa.Column("account_id", sa.String(200), nullable=False),
        sa.Column("platform", sa.String(40), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("handle_value", sa.Text(), nullable=True),
        sa.Column("handle_extra", sa.JSON(), nullable=True),
        sa.Column("handle_failures", sa.Integer(), nullable=False),
        sa.Column("handle_committed", sa.Boolean(), nullable=False),
        sa.Column("remote_id", sa.String(200), nullable=True),
        sa.Column("permalink", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("commit_count", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("error_kind", sa.String(20), nullable=True),
        sa.Column("next_attempt_at", TIME, nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_until", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("published_at", TIME, nullable=True),
        sa.UniqueConstraint("post_id", "account_id", name="uq_post_attempts_post_account"),
    )
    op.create_index("ix_post_attempts_fingerprint", "post_attempts", ["fingerprint"])
    op.create_index("ix_post_attempts_state_next", "post_attempts", ["state", "next_attempt_at"])
    op.create_table(
        "transitions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("attempt_id", sa.Integer(), sa.ForeignKey("post_attempts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("from_state", sa.String(20), nullable=True),
        sa.Column("to_state", sa.String(20), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_transitions_attempt_id", "transitions", ["attempt_id"])


def downgrade() -> None:
    op.drop_table("transitions")
    op.drop_table("post_attempts")
