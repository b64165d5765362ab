"""Base tables: traffic, events, forecasts, scaling decisions.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

TS = sa.DateTime(timezone=True)
DOUBLE: sa.types.TypeEngine[float] = sa.Double()


def upgrade() -> None:
    op.create_table(
        "traffic_log",
        sa.Column("ts", TS, nullable=False),
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False, server_default="*"),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("service", "endpoint", "ts", name="traffic_log_pkey"),
        sa.CheckConstraint("requests >= 0", name="traffic_log_requests_nonnegative"),
    )
    op.create_table(
        "traffic_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("service", sa.Text, nullable=True),
        sa.Column("starts_at", TS, nullable=False),
        sa.Column("ends_at", TS, nullable=False),
        sa.Column("lift_percent", DOUBLE, nullable=True),
        sa.UniqueConstraint("name", "starts_at", name="traffic_events_name_starts_at_key"),
        sa.CheckConstraint("ends_at > starts_at", name="traffic_events_ends_after_start"),
    )
    op.create_table(
        "forecasts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("scaler_key", sa.Text, nullable=False),
        sa.Column("series", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("params_hash", sa.Text, nullable=False),
        sa.Column("generated_at", TS, nullable=False),
        sa.Column("step_seconds", sa.Integer, nullable=False),
        sa.Column("horizon_seconds", sa.Integer, nullable=False),
        sa.Column("smape", DOUBLE, nullable=True),
        sa.Column("fit_seconds", DOUBLE, nullable=True),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "forecast_points",
        sa.Column("forecast_id", sa.BigInteger, sa.ForeignKey("forecasts.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("ds", TS, nullable=False),
        sa.Column("yhat", DOUBLE, nullable=False),
        sa.Column("yhat_lower", DOUBLE, nullable=False),
        sa.Column("yhat_upper", DOUBLE, nullable=False),
        sa.PrimaryKeyConstraint("forecast_id", "ds", name="forecast_points_pkey"),
    )
    op.create_table(
        "scaling_decisions",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("decided_at", TS, nullable=False),
        sa.Column("namespace", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("target_kind", sa.Text, nullable=False),
        sa.Column("target_name", sa.Text, nullable=False),
        sa.Column("current_replicas", sa.Integer, nullable=False),
        sa.Column("desired_replicas", sa.Integer, nullable=False),
        sa.Column("recommended_replicas", sa.Integer, nullable=False),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("stale", sa.Boolean, nullable=False),
        sa.Column("forecast_load", DOUBLE, nullable=True),
        sa.Column("observed_load", DOUBLE, nullable=True),
        sa.Column("peak_at", TS, nullable=True),
        sa.Column("peak_load", DOUBLE, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("applied", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    for table in ("scaling_decisions", "forecast_points", "forecasts", "traffic_events", "traffic_log"):
        op.drop_table(table)
