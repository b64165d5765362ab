"""The scorecard's inputs on each decision row: the effective mode, what the target ran, what the baseline would
run while the plan is in charge, and the units and times that turn counts and loads into replica-hours and
requests. NULL in older rows, which the scorecard leaves out.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = (
    ("mode", sa.Text),
    ("target_replicas", sa.Integer),
    ("ready_replicas", sa.Integer),
    ("baseline_replicas", sa.Integer),
    ("capacity", sa.Double),
    ("step_seconds", sa.Integer),
    ("lead_seconds", sa.Integer),
    ("interval_seconds", sa.Integer),
)


def upgrade() -> None:
    # Nullable columns without a default: PostgreSQL adds them without rewriting the table.
    for name, kind in COLUMNS:
        op.add_column("scaling_decisions", sa.Column(name, kind(), nullable=True))


def downgrade() -> None:
    for name, _ in reversed(COLUMNS):
        op.drop_column("scaling_decisions", name)
