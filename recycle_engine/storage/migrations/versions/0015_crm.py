"""crm: the pull cursor, the rows the import checks refused, the deliveries of the change outbox

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 18:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crm_cursors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_crm_cursors"),
    )
    op.create_table(
        "crm_rejects",
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("row", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("transaction_id", name="pk_crm_rejects"),
    )
    op.create_index("ix_crm_rejects_rejected_at", "crm_rejects", ["rejected_at"])
    op.create_table(
        "crm_deliveries",
        sa.Column("change_id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("field", sa.String(64), nullable=False),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.Column("endpoint", sa.String(64), nullable=True),
        sa.Column("params", sa.Text(), nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("change_id", name="pk_crm_deliveries"),
    )
    op.create_index("ix_crm_deliveries_state_change_id", "crm_deliveries", ["state", "change_id"])


def downgrade() -> None:
    op.drop_index("ix_crm_deliveries_state_change_id", table_name="crm_deliveries")
    op.drop_table("crm_deliveries")
    op.drop_index("ix_crm_rejects_rejected_at", table_name="crm_rejects")
    op.drop_table("crm_rejects")
    op.drop_table("crm_cursors")
