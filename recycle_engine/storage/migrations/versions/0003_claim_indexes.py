"""claim indexes: the due page in index order, unapplied outcomes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNAPPLIED = "applied_at IS NULL"


# Checked with EXPLAIN on 200,000- and 1,000,000-subscription books (tests/integration/test_query_plans.py,
# bench/submit_benchmark.py --explain):
# - the claim pages due subscriptions ORDER BY next_attempt_on, id LIMIT n FOR UPDATE SKIP LOCKED; with
#   id in the index the page is read in order and stops at n, instead of sorting every due row per page
#   (the old (status, next_attempt_on) index is its prefix and goes);
# - applying outcomes looks for final hand-offs not yet applied, oldest outcome first; without the
#   partial index it walks every outcome ever recorded.
# The statistics object tells the planner that next_attempt_on is set only on recycling subscriptions;
# without it a due page (the dry run's keyset pages above all) is estimated at a fraction of its rows
# and planned as a bitmap scan and a sort of every remaining due row.
def upgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_subscriptions_status_next_attempt_on_id"),
            ["status", "next_attempt_on", "id"],
            unique=False,
        )
        batch_op.drop_index(batch_op.f("ix_subscriptions_status_next_attempt_on"))
    with op.batch_alter_table("handoffs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_handoffs_unapplied_outcome_at",
            ["outcome_at", "id"],
            unique=False,
            postgresql_where=sa.text(UNAPPLIED),
            sqlite_where=sa.text(UNAPPLIED),
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE STATISTICS st_subscriptions_status_next_attempt_on (mcv) "
            "ON status, next_attempt_on FROM subscriptions"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_subscriptions_status_next_attempt_on")
    with op.batch_alter_table("handoffs", schema=None) as batch_op:
        batch_op.drop_index("ix_handoffs_unapplied_outcome_at")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_subscriptions_status_next_attempt_on"), ["status", "next_attempt_on"], unique=False
        )
        batch_op.drop_index(batch_op.f("ix_subscriptions_status_next_attempt_on_id"))
