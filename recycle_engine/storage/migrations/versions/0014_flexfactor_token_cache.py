"""flexfactor token cache: one sealed bearer token per (base_url, app key fingerprint)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "flexfactor_token_cache",
        sa.Column("base_url", sa.String(512), nullable=False),
        sa.Column("key_fingerprint", sa.String(64), nullable=False),
        sa.Column("sealed_token", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("renew_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("base_url", "key_fingerprint", name="pk_flexfactor_token_cache"),
    )


def downgrade() -> None:
    op.drop_table("flexfactor_token_cache")
