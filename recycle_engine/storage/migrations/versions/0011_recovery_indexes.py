"""recovery indexes: the report's ladder reads approved retries and hand-offs by day from indexes alone

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 19:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_transactions_recovered_cover",
        "transactions",
        ["result", "occurred_at", "attempt", "currency", "amount_minor"],
    )
    op.create_index(
        "ix_handoffs_recovered_cover",
        "handoffs",
        ["state", "outcome_at", "source", "attempt", "currency", "amount_minor"],
    )


def downgrade() -> None:
    op.drop_index("ix_handoffs_recovered_cover", table_name="handoffs")
    op.drop_index("ix_transactions_recovered_cover", table_name="transactions")
