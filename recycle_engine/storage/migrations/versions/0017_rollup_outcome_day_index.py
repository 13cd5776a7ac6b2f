"""rollup outcome day index: the dashboard's outcomes per day read a covering index, not the whole table

The dashboard charts the outcomes reached on each of the last 60 local days, whatever their submission
day, so it cannot narrow `report_cohort_rollups` by submission day; without this index it read every
row (about 270,000 for 1,000,000 hand-offs over two years, a tenth of a second on SQLite).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 03:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_report_cohort_rollups_outcome_cover"
COLUMNS = ["outcome_day", "state", "currency", "handoffs", "amount_minor"]


def upgrade() -> None:
    op.create_index(INDEX, "report_cohort_rollups", COLUMNS, unique=False)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="report_cohort_rollups")
