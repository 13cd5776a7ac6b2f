"""recovery rollups: approved hand-offs by local day of submission, day of approval, method, attempt and
currency, so the ladder's recoveries read the approval days' rollup rows instead of every hand-off
approved since the first of the previous month (140,000 at 5,000,000 hand-offs)

The rollup's days are built by the next refresh (any run, the report, or `db rebuild-rollups`), which
has the timezone: about as long as one pass over the approved hand-offs. The hand-offs' update trigger
also notes a change of `attempt`, which the rollup is keyed by.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "report_recovery_rollups"
TRIGGER = "trg_handoffs_rollup_update"
# The columns whose change the update trigger notes (as in 0013), then with `attempt`.
BEFORE = (
    "created_at transaction_id source slot billing_cycle gateway_id declining_gateway_id amount_minor "
    "currency state submitted_at outcome_at attention"
).split()
AFTER = [*BEFORE, "attempt"]
SUBMITTED = "coalesce({row}.submitted_at, {row}.created_at)"


def _is_pg() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _update_trigger(columns: list[str]) -> str:
    if _is_pg():  # report_rollup_note_row() (0013) notes the new instant, and the old one if it differs
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)
        return f"""CREATE TRIGGER {TRIGGER} AFTER UPDATE OF {", ".join(columns)} ON handoffs
FOR EACH ROW WHEN ({changed})
EXECUTE FUNCTION report_rollup_note_row()"""

    def note(row: str) -> str:
        at = SUBMITTED.format(row=row)
        return f"""INSERT INTO report_rollup_changes (created_at) SELECT {at}
    WHERE NOT EXISTS (SELECT 1 FROM report_rollup_changes WHERE created_at = {at});"""

    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in columns)
    return f"""CREATE TRIGGER {TRIGGER} AFTER UPDATE OF {", ".join(columns)} ON handoffs
WHEN {changed}
BEGIN
    {note("NEW")}
    {note("OLD")}
END"""


def _replace_trigger(columns: list[str]) -> None:
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}" + (" ON handoffs" if _is_pg() else ""))
    op.execute(_update_trigger(columns))


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("outcome_day", sa.Date(), nullable=True),
        sa.Column("method", sa.String(length=12), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("recoveries", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{TABLE}")),
    )
    op.create_index(op.f(f"ix_{TABLE}_day"), TABLE, ["day"], unique=False)
    op.create_index(
        f"ix_{TABLE}_outcome_cover",
        TABLE,
        ["outcome_day", "method", "attempt", "currency", "recoveries", "amount_minor"],
        unique=False,
    )
    _replace_trigger(AFTER)


def downgrade() -> None:
    _replace_trigger(BEFORE)
    op.drop_index(f"ix_{TABLE}_outcome_cover", table_name=TABLE)
    op.drop_index(op.f(f"ix_{TABLE}_day"), table_name=TABLE)
    op.drop_table(TABLE)
    op.execute("DELETE FROM report_rollup_state WHERE name = 'recoveries'")
