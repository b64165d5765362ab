"""Kafka offsets of the live-traffic collector, stored with the rows they produced.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "collector_kafka_offsets",
        sa.Column("feed", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("stream_time", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("feed", "source", "topic", "partition", name="collector_kafka_offsets_pkey"),
        sa.CheckConstraint("next_offset >= 0", name="collector_kafka_offsets_nonnegative"),
    )


def downgrade() -> None:
    op.drop_table("collector_kafka_offsets")
