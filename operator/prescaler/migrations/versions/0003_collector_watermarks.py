"""Watermarks of the live-traffic collector (`prescaler collect`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "collector_watermarks",
        sa.Column("feed", sa.Text, nullable=False),
        sa.Column("series", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("backfill_from", TS, nullable=False),
        sa.Column("collected_until", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("feed", "series", name="collector_watermarks_pkey"),
        sa.CheckConstraint("collected_until >= backfill_from", name="collector_watermarks_ordered"),
    )


def downgrade() -> None:
    op.drop_table("collector_watermarks")
