"""webhook inbox: accepted deliveries acknowledged and waiting for the service's single writer

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_inbox",
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name="fk_webhook_inbox_delivery_id_webhook_deliveries",
        ),
        sa.PrimaryKeyConstraint("delivery_id", name="pk_webhook_inbox"),
    )


def downgrade() -> None:
    op.drop_table("webhook_inbox")
