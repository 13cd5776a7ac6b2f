"""report rollups by submission day (a hand-off counts on the local day it was sent, not queued), and
the local day each became final (a past day's report reads states as they were)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The instant a hand-off's rollup day is taken from, as report_sql.submitted() computes it: a rerun
# queued one night and sent the next counts on the night it was sent. Until sent, on its queue day.
SUBMITTED = "coalesce({row}submitted_at, {row}created_at)"
CREATED = "{row}created_at"  # before this revision
INDEX = "ix_handoffs_submitted_or_created"

# Every column a rollup row is computed from (as in 0006); submitted_at was already among them.
ROLLUP_COLUMNS = (
    "created_at transaction_id source slot billing_cycle gateway_id declining_gateway_id amount_minor "
    "currency state submitted_at outcome_at attention"
).split()
TRIGGER_NAMES = ("trg_handoffs_rollup_insert", "trg_handoffs_rollup_update", "trg_handoffs_rollup_delete")
PG_FUNCTIONS = ("report_rollup_note_new_rows", "report_rollup_note_old_rows", "report_rollup_note_row")


def _sqlite_triggers(instant: str) -> list[str]:
    # report_rollup_changes.created_at keeps its name: it holds the instant whose local day changed.
    def note(row: str) -> str:
        at = instant.format(row=f"{row}.")
        return f"""INSERT INTO report_rollup_changes (created_at) SELECT {at}
    WHERE NOT EXISTS (SELECT 1 FROM report_rollup_changes WHERE created_at = {at});"""

    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in ROLLUP_COLUMNS)
    return [
        f"CREATE TRIGGER trg_handoffs_rollup_insert AFTER INSERT ON handoffs\nBEGIN\n    {note('NEW')}\nEND",
        f"""CREATE TRIGGER trg_handoffs_rollup_update AFTER UPDATE OF {", ".join(ROLLUP_COLUMNS)} ON handoffs
WHEN {changed}
BEGIN
    {note("NEW")}
    {note("OLD")}
END""",
        f"CREATE TRIGGER trg_handoffs_rollup_delete AFTER DELETE ON handoffs\nBEGIN\n    {note('OLD')}\nEND",
    ]


def _pg_triggers(instant: str) -> list[str]:
    bare, new, old = instant.format(row=""), instant.format(row="NEW."), instant.format(row="OLD.")
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in ROLLUP_COLUMNS)
    return [
        f"""CREATE FUNCTION report_rollup_note_new_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_rollup_changes (created_at) SELECT DISTINCT {bare} FROM new_rows;
    RETURN NULL;
END $$""",
        f"""CREATE FUNCTION report_rollup_note_old_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_rollup_changes (created_at) SELECT DISTINCT {bare} FROM old_rows;
    RETURN NULL;
END $$""",
        f"""CREATE FUNCTION report_rollup_note_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_rollup_changes (created_at) VALUES ({new});
    IF ({old}) IS DISTINCT FROM ({new}) THEN
        INSERT INTO report_rollup_changes (created_at) VALUES ({old});
    END IF;
    RETURN NULL;
END $$""",
        """CREATE TRIGGER trg_handoffs_rollup_insert AFTER INSERT ON handoffs
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION report_rollup_note_new_rows()""",
        f"""CREATE TRIGGER trg_handoffs_rollup_update AFTER UPDATE OF {", ".join(ROLLUP_COLUMNS)} ON handoffs
FOR EACH ROW WHEN ({changed})
EXECUTE FUNCTION report_rollup_note_row()""",
        """CREATE TRIGGER trg_handoffs_rollup_delete AFTER DELETE ON handoffs
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION report_rollup_note_old_rows()""",
    ]


def _is_pg() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _replace_triggers(instant: str) -> None:
    for name in TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON handoffs" if _is_pg() else ""))
    if _is_pg():
        for function in PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    for statement in _pg_triggers(instant) if _is_pg() else _sqlite_triggers(instant):
        op.execute(statement)


def _forget_rollups() -> None:
    # Rows keyed by the old day are wrong as a whole: with no state row, the next refresh (any run,
    # the report, or `db rebuild-rollups`) rebuilds every day.
    for table in ("report_cohort_rollups", "report_breakdown_rollups", "report_rollup_changes"):
        op.execute(f"DELETE FROM {table}")
    op.execute("DELETE FROM report_rollup_state")


# Plain CREATE INDEX and triggers: a batch operation would copy handoffs on SQLite and drop the triggers.
def upgrade() -> None:
    # A refresh recomputes the hand-offs of a range of submission days; this index finds them.
    op.create_index(INDEX, "handoffs", [sa.text(SUBMITTED.format(row=""))], unique=False)
    for table in ("report_cohort_rollups", "report_breakdown_rollups"):
        op.add_column(table, sa.Column("outcome_day", sa.Date(), nullable=True))
    _replace_triggers(SUBMITTED)
    _forget_rollups()


def downgrade() -> None:
    _replace_triggers(CREATED)
    op.drop_index(INDEX, table_name="handoffs")
    _forget_rollups()
    for table in ("report_cohort_rollups", "report_breakdown_rollups"):
        op.drop_column(table, "outcome_day")
