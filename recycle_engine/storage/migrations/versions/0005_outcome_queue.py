"""outcome queue: outcomes waiting to be applied, off the hand-off row

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 15:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTCOME_STATES = "('APPROVED', 'DECLINED', 'EXPIRED', 'CANCELLED')"
UNAPPLIED = "applied_at IS NULL"
QUEUE_COLUMNS = (
    "handoff_id, state, outcome_at, outcome_source, source, order_id, purchase_id, declining_gateway_id, "
    "amount_minor, billing_cycle"
)


# Applying an outcome used to write handoffs.applied_at: a new version of the wide hand-off row and an
# entry in every one of its indexes (no HOT update: applied_at is in a partial index's predicate), which
# cost more than every purchase, order and change write of the outcome together. The queue holds
# only what is still to apply: a row per final outcome, with the hand-off facts applying needs, deleted
# in the transaction that applies it. Hand-offs in a final state with applied_at NULL are queued;
# applied_at and its index go.
# SQLite drops the column in place (ALTER TABLE DROP COLUMN, SQLite 3.35+): a batch copy of handoffs
# would drop the table that handoff_events references.
def upgrade() -> None:
    op.create_table(
        "outcome_queue",
        sa.Column("handoff_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("outcome_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome_source", sa.String(length=8), nullable=True),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("purchase_id", sa.String(length=64), nullable=True),
        sa.Column("declining_gateway_id", sa.String(length=64), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("billing_cycle", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["handoff_id"], ["handoffs.id"], name=op.f("fk_outcome_queue_handoff_id_handoffs")
        ),
        sa.PrimaryKeyConstraint("handoff_id", name=op.f("pk_outcome_queue")),
    )
    op.execute(
        f"INSERT INTO outcome_queue ({QUEUE_COLUMNS}) "
        "SELECT id, state, COALESCE(outcome_at, updated_at), outcome_source, source, order_id, purchase_id, "
        "declining_gateway_id, amount_minor, billing_cycle FROM handoffs "
        f"WHERE state IN {OUTCOME_STATES} AND {UNAPPLIED}"
    )
    with op.batch_alter_table("handoffs", schema=None) as batch_op:
        batch_op.drop_index("ix_handoffs_unapplied_outcome_at")
    op.drop_column("handoffs", "applied_at")


def downgrade() -> None:
    op.add_column("handoffs", sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True))
    # When each outcome was applied is not kept; the hand-off's last write is the nearest known time.
    op.execute(
        "UPDATE handoffs SET applied_at = updated_at "
        f"WHERE state IN {OUTCOME_STATES} AND id NOT IN (SELECT handoff_id FROM outcome_queue)"
    )
    with op.batch_alter_table("handoffs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_handoffs_unapplied_outcome_at",
            ["outcome_at", "id"],
            unique=False,
            postgresql_where=sa.text(UNAPPLIED),
            sqlite_where=sa.text(UNAPPLIED),
        )
    op.drop_table("outcome_queue")
