"""report indexes: hand-off outcomes and attention flags, hand-off events by time

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The daily report filters hand-offs by outcome time and by attention flag, and finds the hand-offs
# touched on a day through their events; without these the report scans every hand-off.
def upgrade() -> None:
    with op.batch_alter_table("handoffs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_handoffs_outcome_at"), ["outcome_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_handoffs_attention"), ["attention"], unique=False)
    with op.batch_alter_table("handoff_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_handoff_events_occurred_at"), ["occurred_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("handoff_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_handoff_events_occurred_at"))
    with op.batch_alter_table("handoffs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_handoffs_attention"))
        batch_op.drop_index(batch_op.f("ix_handoffs_outcome_at"))
