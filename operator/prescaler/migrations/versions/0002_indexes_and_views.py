"""Time-range indexes and the dashboard's traffic analytics views.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# Buckets are anchored at a UTC origin so hours and days are UTC whatever the session time zone is.
_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"

VIEWS = {
    "traffic_hourly": f"""
        SELECT date_bin(INTERVAL '1 hour', ts, {_ORIGIN}) AS bucket, service,
               sum(requests)::bigint AS requests
        FROM traffic_log
        GROUP BY 1, 2""",
    "traffic_daily": f"""
        SELECT date_bin(INTERVAL '1 day', ts, {_ORIGIN}) AS day, service,
               sum(requests)::bigint AS requests
        FROM traffic_log
        GROUP BY 1, 2""",
    # Average requests per hour bucket for each weekday (0 = Monday) and hour of day, in UTC.
    "traffic_profile": """
        SELECT service,
               (extract(isodow FROM bucket AT TIME ZONE 'UTC')::int - 1) AS weekday,
               extract(hour FROM bucket AT TIME ZONE 'UTC')::int AS hour,
               avg(requests)::double precision AS avg_requests
        FROM traffic_hourly
        GROUP BY 1, 2, 3""",
    # Relative to each service's newest data, so a replayed or imported trace still has a "last week".
    "traffic_top_endpoints": """
        SELECT t.service, t.endpoint, sum(t.requests)::bigint AS requests,
               sum(t.requests)::double precision
                 / nullif(sum(sum(t.requests)) OVER (PARTITION BY t.service), 0) AS share
        FROM traffic_log t
        JOIN (SELECT service, max(ts) AS last_ts FROM traffic_log GROUP BY service) b USING (service)
        WHERE t.ts > b.last_ts - INTERVAL '7 days'
        GROUP BY t.service, t.endpoint""",
}


def upgrade() -> None:
    op.create_index("traffic_log_service_ts_idx", "traffic_log", ["service", "ts"])
    op.create_index("traffic_log_ts_brin", "traffic_log", ["ts"], postgresql_using="brin")
    op.execute("CREATE INDEX forecasts_scaler_generated_idx ON forecasts (scaler_key, generated_at DESC)")
    op.create_index("scaling_decisions_scaler_idx", "scaling_decisions", ["namespace", "name", "decided_at"])
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("scaling_decisions_scaler_idx", "scaling_decisions")
    op.drop_index("forecasts_scaler_generated_idx", "forecasts")
    op.drop_index("traffic_log_ts_brin", "traffic_log")
    op.drop_index("traffic_log_service_ts_idx", "traffic_log")
