"""report covering indexes: open hand-offs by expiry, outcomes by time and events by time hold what
the report reads

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The report's open hand-offs by age, the day's outcomes and the hand-offs touched on the day read
# tens of thousands of index entries, and each entry sent them to the table for a few more columns.
# Each narrow index is replaced by one that also holds those columns: the same indexes to keep up on
# every write, each a little wider, and the statements that used the narrow ones use their first
# columns. Plain op.create_index/op.drop_index: a batch operation may copy handoffs on SQLite, which
# would drop the rollup triggers (migration 0006) and the table handoff_events references.
OPEN_COVER = ["state", "expires_at", "submitted_at", "created_at", "currency", "amount_minor"]
OUTCOME_COVER = ["outcome_at", "state", "currency", "late_outcome", "amount_minor"]


def upgrade() -> None:
    op.create_index("ix_handoffs_state_expires_at_cover", "handoffs", OPEN_COVER, unique=False)
    op.drop_index("ix_handoffs_state_expires_at", table_name="handoffs")
    op.create_index("ix_handoffs_outcome_at_cover", "handoffs", OUTCOME_COVER, unique=False)
    op.drop_index("ix_handoffs_outcome_at", table_name="handoffs")
    op.create_index(
        "ix_handoff_events_occurred_at_handoff_id",
        "handoff_events",
        ["occurred_at", "handoff_id"],
        unique=False,
    )
    op.drop_index("ix_handoff_events_occurred_at", table_name="handoff_events")


def downgrade() -> None:
    op.create_index("ix_handoff_events_occurred_at", "handoff_events", ["occurred_at"], unique=False)
    op.drop_index("ix_handoff_events_occurred_at_handoff_id", table_name="handoff_events")
    op.create_index("ix_handoffs_outcome_at", "handoffs", ["outcome_at"], unique=False)
    op.drop_index("ix_handoffs_outcome_at_cover", table_name="handoffs")
    op.create_index("ix_handoffs_state_expires_at", "handoffs", ["state", "expires_at"], unique=False)
    op.drop_index("ix_handoffs_state_expires_at_cover", table_name="handoffs")
