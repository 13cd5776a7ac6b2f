"""processor charges: NMI attempts recorded with their order id before the call

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "processor_charges",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("decline_transaction_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("result", sa.String(16), nullable=True),
        sa.Column("response_text", sa.Text(), nullable=True),
        sa.Column("resume_attempt", sa.Integer(), nullable=True),
        sa.Column("resume_on", sa.Date(), nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("lookups", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_processor_charges"),
        sa.UniqueConstraint(
            "subscription_id",
            "decline_transaction_id",
            "attempt",
            name="uq_processor_charges_attempt",
        ),
    )
    op.create_index(
        "ix_processor_charges_state_claimed_until", "processor_charges", ["state", "claimed_until"]
    )


def downgrade() -> None:
    op.drop_index("ix_processor_charges_state_claimed_until", table_name="processor_charges")
    op.drop_table("processor_charges")
