"""report rollups: daily cohort and breakdown rollups, the triggers that note changed days, report indexes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every column a rollup row is computed from; an UPDATE that changes none of them changes no rollup.
ROLLUP_COLUMNS = (
    "created_at transaction_id source slot billing_cycle gateway_id declining_gateway_id amount_minor "
    "currency state submitted_at outcome_at attention"
).split()

# SQLite runs one writer at a time, so a trigger may skip an instant already noted: no refresh can
# consume that note between the check and the commit.
SQLITE_NOTE = """INSERT INTO report_rollup_changes (created_at) SELECT {row}.created_at
    WHERE NOT EXISTS (SELECT 1 FROM report_rollup_changes WHERE created_at = {row}.created_at);"""
SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER trg_handoffs_rollup_insert AFTER INSERT ON handoffs
BEGIN
    {SQLITE_NOTE.format(row="NEW")}
END""",
    f"""CREATE TRIGGER trg_handoffs_rollup_update AFTER UPDATE OF {", ".join(ROLLUP_COLUMNS)} ON handoffs
WHEN {" OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in ROLLUP_COLUMNS)}
BEGIN
    {SQLITE_NOTE.format(row="NEW")}
    {SQLITE_NOTE.format(row="OLD")}
END""",
    f"""CREATE TRIGGER trg_handoffs_rollup_delete AFTER DELETE ON handoffs
BEGIN
    {SQLITE_NOTE.format(row="OLD")}
END""",
]

# PostgreSQL: a refresh may be consuming notes while writers commit, so a trigger never skips an
# instant because a committed note exists (that note may be deleted by a refresh whose snapshot
# misses this change). Inserts and deletes are noted once per statement, updates per changed row.
PG_TRIGGERS = [
    """CREATE FUNCTION report_rollup_note_new_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_rollup_changes (created_at) SELECT DISTINCT created_at FROM new_rows;
    RETURN NULL;
END $$""",
    """CREATE FUNCTION report_rollup_note_old_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_rollup_changes (created_at) SELECT DISTINCT created_at FROM old_rows;
    RETURN NULL;
END $$""",
    """CREATE FUNCTION report_rollup_note_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_rollup_changes (created_at) VALUES (NEW.created_at);
    IF OLD.created_at IS DISTINCT FROM NEW.created_at THEN
        INSERT INTO report_rollup_changes (created_at) VALUES (OLD.created_at);
    END IF;
    RETURN NULL;
END $$""",
    """CREATE TRIGGER trg_handoffs_rollup_insert AFTER INSERT ON handoffs
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION report_rollup_note_new_rows()""",
    f"""CREATE TRIGGER trg_handoffs_rollup_update AFTER UPDATE OF {", ".join(ROLLUP_COLUMNS)} ON handoffs
FOR EACH ROW WHEN ({" OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in ROLLUP_COLUMNS)})
EXECUTE FUNCTION report_rollup_note_row()""",
    """CREATE TRIGGER trg_handoffs_rollup_delete AFTER DELETE ON handoffs
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION report_rollup_note_old_rows()""",
]
FLAGGED = "attention IS NOT NULL"
TRIGGER_NAMES = ("trg_handoffs_rollup_insert", "trg_handoffs_rollup_update", "trg_handoffs_rollup_delete")
PG_FUNCTIONS = ("report_rollup_note_new_rows", "report_rollup_note_old_rows", "report_rollup_note_row")


# - report_cohort_rollups and report_breakdown_rollups: hand-offs per local day of creation, so the
#   report reads rollups for the month and the cohorts, and detail rows for its day only;
# - report_rollup_changes: the creation instants of hand-offs written since the last refresh, noted by
#   triggers, so that no write path (run, webhook, operator, future code) can leave a rollup stale;
# - report_rollup_state: the timezone the rollup days are in (a change of timezone rebuilds them);
# - indexes for the report's exception lists, which walked every hand-off of their range before (or,
#   for flags, every flagged hand-off ever: refunds and chargebacks stay flagged).
# The rollups start empty: the first refresh (any run, or `db rebuild-rollups`) builds them.
# NOTE for later migrations: SQLite drops a table's triggers when batch mode recreates the table;
# a migration that recreates `handoffs` must create these triggers again.
def upgrade() -> None:
    op.create_table(
        "report_cohort_rollups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("decline_day", sa.Date(), nullable=True),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("recovery_day", sa.Integer(), nullable=True),
        sa.Column("reversal", sa.String(length=12), nullable=True),
        sa.Column("handoffs", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_cohort_rollups")),
    )
    with op.batch_alter_table("report_cohort_rollups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_report_cohort_rollups_day"), ["day"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_report_cohort_rollups_decline_day"), ["decline_day"], unique=False
        )
    op.create_table(
        "report_breakdown_rollups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("breakdown", sa.String(length=24), nullable=False),
        sa.Column("breakdown_key", sa.Text(), nullable=True),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("handoffs", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_breakdown_rollups")),
    )
    with op.batch_alter_table("report_breakdown_rollups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_report_breakdown_rollups_breakdown_day"), ["breakdown", "day"], unique=False
        )
    op.create_table(
        "report_rollup_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_rollup_changes")),
    )
    with op.batch_alter_table("report_rollup_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_report_rollup_changes_created_at"), ["created_at"], unique=False)
    op.create_table(
        "report_rollup_state",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("rebuilt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_report_rollup_state")),
    )
    with op.batch_alter_table("handoffs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_handoffs_state_created_at"), ["state", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_handoffs_state_expires_at"), ["state", "expires_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_handoffs_late_outcome_outcome_at"), ["late_outcome", "outcome_at"], unique=False
        )
        batch_op.create_index(
            "ix_handoffs_flagged_created_at",
            ["created_at", "id"],
            unique=False,
            postgresql_where=sa.text(FLAGGED),
            sqlite_where=sa.text(FLAGGED),
        )
    with op.batch_alter_table("handoff_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_handoff_events_kind_occurred_at"), ["kind", "occurred_at"], unique=False
        )
    triggers = PG_TRIGGERS if op.get_context().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    for name in TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON handoffs" if _is_pg() else ""))
    if _is_pg():
        for function in PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    with op.batch_alter_table("handoff_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_handoff_events_kind_occurred_at"))
    with op.batch_alter_table("handoffs", schema=None) as batch_op:
        batch_op.drop_index("ix_handoffs_flagged_created_at")
        batch_op.drop_index(batch_op.f("ix_handoffs_late_outcome_outcome_at"))
        batch_op.drop_index(batch_op.f("ix_handoffs_state_expires_at"))
        batch_op.drop_index(batch_op.f("ix_handoffs_state_created_at"))
    op.drop_table("report_rollup_state")
    with op.batch_alter_table("report_rollup_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_rollup_changes_created_at"))
    op.drop_table("report_rollup_changes")
    with op.batch_alter_table("report_breakdown_rollups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_breakdown_rollups_breakdown_day"))
    op.drop_table("report_breakdown_rollups")
    with op.batch_alter_table("report_cohort_rollups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_cohort_rollups_decline_day"))
        batch_op.drop_index(batch_op.f("ix_report_cohort_rollups_day"))
    op.drop_table("report_cohort_rollups")


def _is_pg() -> bool:
    return op.get_context().dialect.name == "postgresql"
