"""hand-offs: first_sent_at, the instant a hand-off was first sent (FlexFactor's window counts from it)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Plain add/drop column: a batch operation would copy handoffs on SQLite and drop the rollup triggers.


def upgrade() -> None:
    op.add_column("handoffs", sa.Column("first_sent_at", sa.DateTime(timezone=True), nullable=True))
    # Hand-offs already sent (or maybe sent) keep the window their stored body carries: a resend must
    # send it unchanged. Only those never sent get their window from their first send.
    op.execute(
        "UPDATE handoffs SET first_sent_at = COALESCE(submitted_at, send_started_at, created_at) "
        "WHERE NOT (state = 'PENDING' AND send_started_at IS NULL AND resend_count = 0)"
    )


def downgrade() -> None:
    op.drop_column("handoffs", "first_sent_at")
