"""schedule versions, holdout assignments, anomalies

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# - subscriptions.recycle_profile_version: the schedule a subscription entered with, so an edit of
#   settings.yaml reaches new entrants only (NULL for subscriptions that entered before this);
# - recycle_profile_versions: each content of a profile as first seen, which those versions name;
# - holdout_assignments: FlexFactor group or holdout group, once per recycled decline, for the lift;
# - anomalies: what the check after each nightly run found and alerted, for the report.
def upgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recycle_profile_version", sa.String(length=16), nullable=True))
    op.create_table(
        "recycle_profile_versions",
        sa.Column("profile_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "version", name=op.f("pk_recycle_profile_versions")),
    )
    op.create_table(
        "holdout_assignments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subscription_id", sa.String(length=64), nullable=False),
        sa.Column("decline_transaction_id", sa.String(length=64), nullable=False),
        sa.Column("billing_cycle", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.String(length=64), nullable=False),
        sa.Column("arm", sa.String(length=12), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("slot", sa.String(length=8), nullable=False),
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holdout_assignments")),
        sa.UniqueConstraint(
            "subscription_id",
            "decline_transaction_id",
            name=op.f("uq_holdout_assignments_subscription_id_decline_transaction_id"),
        ),
    )
    with op.batch_alter_table("holdout_assignments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_holdout_assignments_assigned_at"), ["assigned_at"], unique=False)
    op.create_table(
        "anomalies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("alerted", sa.Boolean(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_anomalies")),
    )
    with op.batch_alter_table("anomalies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_anomalies_detected_at"), ["detected_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("anomalies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_anomalies_detected_at"))
    op.drop_table("anomalies")
    with op.batch_alter_table("holdout_assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_holdout_assignments_assigned_at"))
    op.drop_table("holdout_assignments")
    op.drop_table("recycle_profile_versions")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("recycle_profile_version")
