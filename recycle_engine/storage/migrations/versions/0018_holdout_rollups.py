"""holdout rollups: each holdout assignment's final outcome, a daily rollup of the final ones, and the
triggers that note which recycled declines changed (so the report's holdout section stops reading every
assignment)

Existing assignments are classified here from their approvals and subscriptions; the rollup's days are
built by the next refresh (any run, the report, or `db rebuild-rollups`), which has the timezone.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTES = "report_holdout_changes"
RECYCLING = "RECYCLE_BILLING"

# What each watched table notes for one row ({r} is NEW or OLD): the recycled decline it may change.
# Only approvals change a settled outcome, and only a subscription entering or leaving a decline's
# ladder changes whether an unapproved one is lost. Leaving is always noted (an assignment committed
# meanwhile would be missed by a look-up); entering only for a decline with an assignment, which can
# only be final, and so committed, long before: the ladder's every new decline stays out of the notes.
_PAIR = f"INSERT INTO {NOTES} (subscription_id, decline_transaction_id)"
NOTE_SQL = {
    "holdout_assignments": f"INSERT INTO {NOTES} (subscription_id, decline_transaction_id, assigned_at) "
    "SELECT {r}.subscription_id, {r}.decline_transaction_id, {r}.assigned_at",
    "transactions": _PAIR + " SELECT {r}.subscription_id, {r}.decline_transaction_id "
    "WHERE {r}.result = 'APPROVED'",
    "handoffs": _PAIR + " SELECT {r}.purchase_id, {r}.transaction_id "
    "WHERE {r}.state = 'APPROVED' AND {r}.source = 'RECYCLE'",
    "subscriptions": _PAIR + " SELECT {r}.id, {r}.recycle_transaction_id "
    f"WHERE {{r}}.status = '{RECYCLING}'",
}
ENTERING_ONLY_WITH_AN_ASSIGNMENT = (
    " AND EXISTS (SELECT 1 FROM holdout_assignments a "
    "WHERE a.subscription_id = NEW.id AND a.decline_transaction_id = NEW.recycle_transaction_id)"
)
# The columns whose change can change an outcome, and when a row is worth a note at all.
WATCHED = {
    "holdout_assignments": "subscription_id decline_transaction_id arm currency amount_minor assigned_at",
    "transactions": "subscription_id decline_transaction_id result amount_minor occurred_at",
    "handoffs": "purchase_id transaction_id source state outcome_at amount_minor",
    "subscriptions": "status recycle_transaction_id",
}
WHEN = {
    "holdout_assignments": None,
    "transactions": "{r}.result = 'APPROVED'",
    "handoffs": "({r}.state = 'APPROVED' AND {r}.source = 'RECYCLE')",
    "subscriptions": f"{{r}}.status = '{RECYCLING}'",
}


def _note(table: str, row: str) -> str:
    extra = ENTERING_ONLY_WITH_AN_ASSIGNMENT if table == "subscriptions" and row == "NEW" else ""
    return NOTE_SQL[table].format(r=row) + extra + ";"


def _is_pg() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _trigger_sql(table: str) -> list[str]:
    when, columns = WHEN[table], WATCHED[table].split()
    distinct = "IS DISTINCT FROM" if _is_pg() else "IS NOT"
    changed = " OR ".join(f"OLD.{c} {distinct} NEW.{c}" for c in columns)
    conditions = {
        "insert": when.format(r="NEW") if when else None,
        "update": f"({changed})"
        + (f" AND ({when.format(r='OLD')} OR {when.format(r='NEW')})" if when else ""),
        "delete": when.format(r="OLD") if when else None,
    }
    events = {"insert": "INSERT", "update": f"UPDATE OF {', '.join(columns)}", "delete": "DELETE"}
    if not _is_pg():
        sides = {"insert": ["NEW"], "update": ["NEW", "OLD"], "delete": ["OLD"]}
        return [
            f"CREATE TRIGGER trg_{table}_holdout_{kind} AFTER {events[kind]} ON {table}\n"
            + (f"WHEN {conditions[kind]}\n" if conditions[kind] else "")
            + "BEGIN\n    "
            + "\n    ".join(_note(table, row) for row in sides[kind])
            + "\nEND"
            for kind in events
        ]
    function = f"report_holdout_note_{table}"
    statements = [
        f"""CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'DELETE' THEN
        {_note(table, "NEW")}
    END IF;
    IF TG_OP <> 'INSERT' THEN
        {_note(table, "OLD")}
    END IF;
    RETURN NULL;
END $$"""
    ]
    for kind, event in events.items():
        condition = f"WHEN ({conditions[kind]}) " if conditions[kind] else ""
        statements.append(
            f"CREATE TRIGGER trg_{table}_holdout_{kind} AFTER {event} ON {table} "
            f"FOR EACH ROW {condition}EXECUTE FUNCTION {function}()"
        )
    return statements


# Each assignment's approvals, as the report's holdout statement reads them (without its as-of bound),
# through the recycled decline's keys: coalesce() keeps SQLite off the state and result indexes.
_KEY = (
    "{t}.{s} = holdout_assignments.subscription_id AND {t}.{d} = holdout_assignments.decline_transaction_id"
)
_HANDOFF = (
    "FROM handoffs h WHERE "
    + _KEY.format(t="h", s="purchase_id", d="transaction_id")
    + " AND h.source = 'RECYCLE' AND coalesce(h.state, '') = 'APPROVED' AND h.outcome_at IS NOT NULL"
)
_RETRY = (
    "FROM transactions t WHERE "
    + _KEY.format(t="t", s="subscription_id", d="decline_transaction_id")
    + " AND coalesce(t.result, '') = 'APPROVED'"
)
FF_AT, FF_MINOR = f"(SELECT max(h.outcome_at) {_HANDOFF})", f"(SELECT max(h.amount_minor) {_HANDOFF})"
RETRY_AT, RETRY_MINOR = f"(SELECT max(t.occurred_at) {_RETRY})", f"(SELECT max(t.amount_minor) {_RETRY})"


def _classify() -> None:
    # Recovered: final at its last approval, with what the report counts as collected.
    op.execute(
        f"""UPDATE holdout_assignments SET
    final_at = CASE WHEN {FF_AT} IS NULL THEN {RETRY_AT}
                    WHEN {RETRY_AT} IS NULL OR {FF_AT} > {RETRY_AT} THEN {FF_AT}
                    ELSE {RETRY_AT} END,
    recovered_minor = coalesce({FF_MINOR}, {RETRY_MINOR})"""
    )
    op.execute("UPDATE holdout_assignments SET final_outcome = 'recovered' WHERE final_at IS NOT NULL")
    # Lost: never approved and off that decline's ladder, which the report reads as lost on any day.
    op.execute(
        f"""UPDATE holdout_assignments SET final_outcome = 'lost', final_at = assigned_at, recovered_minor = 0
WHERE final_at IS NULL AND NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = holdout_assignments.subscription_id
    AND s.status = '{RECYCLING}' AND s.recycle_transaction_id = holdout_assignments.decline_transaction_id)"""
    )


def upgrade() -> None:
    for name, column in (
        ("final_outcome", sa.String(length=12)),
        ("final_at", sa.DateTime(timezone=True)),
        ("recovered_minor", sa.BigInteger()),
    ):
        op.add_column("holdout_assignments", sa.Column(name, column, nullable=True))
    op.create_table(
        "report_holdout_rollups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("arm", sa.String(length=12), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("outcome_day", sa.Date(), nullable=False),
        sa.Column("assignments", sa.BigInteger(), nullable=False),
        sa.Column("assigned_minor", sa.BigInteger(), nullable=False),
        sa.Column("recovered_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_holdout_rollups")),
    )
    op.create_index(op.f("ix_report_holdout_rollups_day"), "report_holdout_rollups", ["day"], unique=False)
    op.create_table(
        NOTES,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("subscription_id", sa.String(length=64), nullable=True),
        sa.Column("decline_transaction_id", sa.String(length=64), nullable=True),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{NOTES}")),
    )
    _classify()
    op.create_index(
        "ix_holdout_assignments_open",
        "holdout_assignments",
        ["assigned_at", "arm", "currency", "amount_minor"],
        unique=False,
        postgresql_where=sa.text("final_at IS NULL"),
        sqlite_where=sa.text("final_at IS NULL"),
    )
    op.create_index(
        "ix_holdout_assignments_final_at",
        "holdout_assignments",
        ["final_at"],
        unique=False,
        postgresql_where=sa.text("final_at IS NOT NULL"),
        sqlite_where=sa.text("final_at IS NOT NULL"),
    )
    for table in NOTE_SQL:
        for statement in _trigger_sql(table):
            op.execute(statement)
    if _is_pg():
        # The planner has no statistics for the new columns yet, and would take the open assignments'
        # partial index for the whole table until autovacuum came by.
        op.execute("ANALYZE holdout_assignments")


def downgrade() -> None:
    for table in NOTE_SQL:
        for kind in ("insert", "update", "delete"):
            op.execute(
                f"DROP TRIGGER IF EXISTS trg_{table}_holdout_{kind}" + (f" ON {table}" if _is_pg() else "")
            )
        if _is_pg():
            op.execute(f"DROP FUNCTION IF EXISTS report_holdout_note_{table}()")
    op.drop_index("ix_holdout_assignments_final_at", table_name="holdout_assignments")
    op.drop_index("ix_holdout_assignments_open", table_name="holdout_assignments")
    op.drop_table(NOTES)
    op.drop_index(op.f("ix_report_holdout_rollups_day"), table_name="report_holdout_rollups")
    op.drop_table("report_holdout_rollups")
    op.execute("DELETE FROM report_rollup_state WHERE name = 'holdout'")
    with op.batch_alter_table("holdout_assignments") as batch_op:
        for name in ("recovered_minor", "final_at", "final_outcome"):
            batch_op.drop_column(name)
