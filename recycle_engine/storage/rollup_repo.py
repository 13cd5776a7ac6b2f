"""Report rollups: recompute the rollup rows of whole local days from hand-offs, set-based, and the
notes of which days changed. The caller owns the transaction (see services/reporting/rollups.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection, case, delete, func, insert, literal, select, union_all, update

from recycle_engine.domain.states import Source, State
from recycle_engine.storage.models import (
    BreakdownRollup,
    CohortRollup,
    Decline,
    Handoff,
    RecoveryRollup,
    RollupChange,
    RollupState,
)
from recycle_engine.storage.report_sql import (
    days_between,
    local_date,
    local_midnight,
    reason_key,
    slot_key,
    submitted,
    whole_days,
    within,
)
from recycle_engine.storage.upsert import insert_ignore

__all__ = [
    "BREAKDOWN_NAMES",
    "MAX_SPAN_DAYS",
    "RECOVERIES_STATE_NAME",
    "clear_recoveries",
    "clear_rollups",
    "day_spans",
    "handoff_days",
    "lock_state",
    "recompute_days",
    "recompute_recovery_days",
    "rollup_rows_from_scratch",
    "save_state",
    "take_changes",
]

STATE_NAME: Final = "handoffs"
# The recovery rollup (migration 0020) keeps a state of its own: it is built in full, once, by the
# first refresh after the migration, which leaves the other rollups as they are.
RECOVERIES_STATE_NAME: Final = "recoveries"
# The breakdowns rolled up, each keyed as rollup_selects() computes it per hand-off.
BREAKDOWN_NAMES: Final = (
    "slot",
    "reason",
    "declining_gateway",
    "flexfactor_gateway",
    "card_brand",
    "card_bin",
    "cycle",
)
MAX_SPAN_DAYS: Final = 31  # days recomputed by one statement: bounds its sort, whatever the history
# Declines are recycled within weeks and rerun within months; older ones are dated with the offset
# their zone had this long before the hand-offs (exact unless the zone changed its rules since).
DECLINE_LOOKBACK: Final = timedelta(days=5 * 366)
REVERSAL_FLAGS: Final = ("REFUNDED", "CHARGEBACK")
# Outcomes (late rescues included) come within weeks of the send; later ones are dated with the offset
# in force this long after the days recomputed (exact unless the zone changed its rules in between).
OUTCOME_LOOKAHEAD: Final = timedelta(days=120)


def lock_state(conn: Connection, *, now: datetime, name: str = STATE_NAME) -> str:
    """Lock the rollups' state row until the caller's transaction ends (refreshes run one at a time) and
    return the timezone their days are in; "" when never built (a missing row is created so)."""
    insert_ignore(
        conn,
        RollupState,
        [{"name": name, "timezone": "", "rebuilt_at": now, "refreshed_at": now}],
        ["name"],
    )
    stmt = select(RollupState.timezone).where(RollupState.name == name)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()  # SQLite: BEGIN IMMEDIATE already holds the only write lock
    return conn.execute(stmt).scalar_one()


def save_state(
    conn: Connection, tz: ZoneInfo, *, now: datetime, rebuilt: bool, name: str = STATE_NAME
) -> None:
    values: dict[str, Any] = {"timezone": tz.key, "refreshed_at": now}
    if rebuilt:
        values["rebuilt_at"] = now
    conn.execute(update(RollupState).where(RollupState.name == name).values(values))


def take_changes(conn: Connection) -> list[datetime]:
    """Delete the noted submission instants and return exactly those deleted.

    On PostgreSQL the DELETE sees only notes committed before it; a writer committing later keeps
    its note for the next refresh, so no change is lost between the read and the recompute."""
    return list(conn.execute(delete(RollupChange).returning(RollupChange.created_at)).scalars())


def handoff_days(conn: Connection, tz: ZoneInfo) -> list[date]:
    """Every local submission day from the first hand-off's to the last one's (an index answers both ends)."""
    # Two statements: SQLite answers a lone MIN or MAX from the index's end, not both in one.
    first = conn.execute(select(func.min(submitted()))).scalar()
    last = conn.execute(select(func.max(submitted()))).scalar()
    if first is None or last is None:
        return []
    start, end = first.astimezone(tz).date(), last.astimezone(tz).date()
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def day_spans(days: Iterable[date], *, max_days: int = MAX_SPAN_DAYS) -> Iterator[tuple[date, date]]:
    """Runs of consecutive days as (first, last), each at most `max_days` long, in order."""
    ordered = sorted(set(days))
    i = 0
    while i < len(ordered):
        j = i
        while (
            j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + timedelta(days=1) and j + 1 - i < max_days
        ):
            j += 1
        yield ordered[i], ordered[j]
        i = j + 1


def clear_rollups(conn: Connection) -> None:
    conn.execute(delete(CohortRollup))
    conn.execute(delete(BreakdownRollup))
    clear_recoveries(conn)


def clear_recoveries(conn: Connection) -> None:
    conn.execute(delete(RecoveryRollup))


def recompute_days(conn: Connection, tz: ZoneInfo, first: date, last: date) -> None:
    """Replace the rollup rows of local days first..last with a fresh aggregation of their hand-offs."""
    conn.execute(delete(CohortRollup).where(CohortRollup.day >= first, CohortRollup.day <= last))
    conn.execute(
        delete(BreakdownRollup).where(
            BreakdownRollup.breakdown.in_(BREAKDOWN_NAMES),
            BreakdownRollup.day >= first,
            BreakdownRollup.day <= last,
        )
    )
    cohorts, breakdowns = rollup_selects(conn.dialect.name, tz, first, last)
    conn.execute(insert(CohortRollup).from_select(list(cohorts.selected_columns.keys()), cohorts))
    conn.execute(insert(BreakdownRollup).from_select(list(breakdowns.selected_columns.keys()), breakdowns))
    recompute_recovery_days(conn, tz, first, last)


def recompute_recovery_days(conn: Connection, tz: ZoneInfo, first: date, last: date) -> None:
    """Replace the recovery rollup rows of local submission days first..last."""
    conn.execute(delete(RecoveryRollup).where(RecoveryRollup.day >= first, RecoveryRollup.day <= last))
    recoveries = recovery_select(conn.dialect.name, tz, first, last)
    conn.execute(insert(RecoveryRollup).from_select(list(recoveries.selected_columns.keys()), recoveries))


def rollup_rows_from_scratch(conn: Connection, tz: ZoneInfo) -> dict[str, list[tuple[Any, ...]]]:
    """The rows a rebuild would write, by table, sorted; reads only (tests compare them with the tables)."""
    found: dict[str, list[tuple[Any, ...]]] = {"cohorts": [], "breakdowns": [], "recoveries": []}
    for first, last in day_spans(handoff_days(conn, tz)):
        selects = [*rollup_selects(conn.dialect.name, tz, first, last)]
        selects.append(recovery_select(conn.dialect.name, tz, first, last))
        for name, stmt in zip(found, selects, strict=True):
            found[name].extend(tuple(r) for r in conn.execute(stmt))
    return {name: sorted(rows, key=repr) for name, rows in found.items()}


# --- the aggregations ------------------------------------------------------------------------------


def _count_and_sum(amount: Any) -> list[Any]:
    # PostgreSQL sums BIGINT as NUMERIC; cast back so both databases store and return integers.
    return [
        sa.cast(func.count(), sa.BigInteger).label("handoffs"),
        sa.cast(func.coalesce(func.sum(amount), 0), sa.BigInteger).label("amount_minor"),
    ]


def rollup_selects(dialect: str, tz: ZoneInfo, first: date, last: date) -> tuple[Any, Any]:
    """(cohort rows, breakdown rows) of the hand-offs submitted on local days first..last (a hand-off not
    yet sent, on the day it was queued), columns named as the rollup tables name them. Grouped over labelled subquery columns: PostgreSQL refuses to match
    computed keys with bound parameters otherwise.

    Declines are read as they are when the day is recomputed: a hand-off is made from a decline on
    record, and a decline never changes once imported (no trigger watches `declines`)."""
    start, end = local_midnight(first, tz), local_midnight(last + timedelta(days=1), tz)
    h, d = Handoff, Decline
    # Grouped by submission day (docs/domain.md section 10): a rerun queued one night and sent the
    # next counts on the night it was sent.
    day = local_date(submitted(), tz, start=start, end=end, dialect=dialect)
    decline_day = local_date(d.declined_at, tz, start=start - DECLINE_LOOKBACK, end=end, dialect=dialect)
    flag = func.upper(h.attention)  # a refund or chargeback on a recovery: shown, never subtracted
    approved_on = whole_days(dialect, days_between(dialect, submitted(), h.outcome_at), up=True)
    outcome_day = local_date(h.outcome_at, tz, start=start, end=end + OUTCOME_LOOKAHEAD, dialect=dialect)
    joined = select().select_from(h).outerjoin(d, d.transaction_id == h.transaction_id)
    where = within(submitted(), start, end)

    facts = joined.add_columns(
        day.label("day"),
        decline_day.label("decline_day"),
        h.state.label("state"),
        h.currency.label("currency"),
        case((h.state == State.APPROVED.value, approved_on), else_=None).label("recovery_day"),
        case((flag.in_(REVERSAL_FLAGS), flag), else_=None).label("reversal"),
        outcome_day.label("outcome_day"),
        h.amount_minor.label("amount_minor"),
    ).where(where)
    f = facts.subquery("facts")
    names = ("day", "decline_day", "state", "currency", "recovery_day", "reversal", "outcome_day")
    keys = [f.c[k] for k in names]
    cohorts = select(*keys, *_count_and_sum(f.c.amount_minor)).group_by(*keys)

    per_handoff = joined.add_columns(
        day.label("day"),
        slot_key().label("slot"),
        reason_key().label("reason"),
        d.response_code.label("code"),
        h.declining_gateway_id.label("declining_gateway"),
        h.gateway_id.label("flexfactor_gateway"),
        d.card_brand.label("card_brand"),
        d.card_bin.label("card_bin"),
        # Recycle saves per billing cycle: reruns and cascades are initial sales, not recycling.
        case((h.source == Source.RECYCLE.value, sa.cast(h.billing_cycle, sa.String)), else_=None).label(
            "cycle"
        ),
        h.state.label("state"),
        h.currency.label("currency"),
        outcome_day.label("outcome_day"),
        h.amount_minor.label("amount_minor"),
    ).where(where)
    # One pass over the days' hand-offs feeds every breakdown: both databases materialize a CTE that
    # is read more than once.
    r = per_handoff.cte("per_handoff")
    parts = []
    for name in BREAKDOWN_NAMES:
        code = r.c.code if name == "reason" else sa.cast(sa.null(), sa.String(64))
        code_key = [r.c.code] if name == "reason" else []
        group = [r.c.day, r.c[name], *code_key, r.c.state, r.c.currency, r.c.outcome_day]
        part = select(
            r.c.day,
            sa.cast(literal(name), sa.String(24)).label("breakdown"),
            sa.cast(r.c[name], sa.Text).label("breakdown_key"),
            code.label("code"),
            r.c.state,
            r.c.currency,
            r.c.outcome_day,
            *_count_and_sum(r.c.amount_minor),
        ).group_by(*group)
        parts.append(part.where(r.c.cycle.is_not(None)) if name == "cycle" else part)
    return cohorts, union_all(*parts)


def recovery_select(dialect: str, tz: ZoneInfo, first: date, last: date) -> Any:
    """The approved hand-offs submitted on local days first..last, counted and summed by local day of
    approval, the ladder's method, attempt and currency: the hand-off rows of the ladder's recoveries
    (reports/ladder_queries.py), columns named as report_recovery_rollups names them."""
    start, end = local_midnight(first, tz), local_midnight(last + timedelta(days=1), tz)
    h = Handoff
    method = case(
        (h.source == Source.RERUN.value, literal("rerun")),
        (h.source == Source.CASCADE.value, literal("cascade")),
        else_=literal("flexfactor"),
    )
    facts = (
        select(
            local_date(submitted(), tz, start=start, end=end, dialect=dialect).label("day"),
            local_date(h.outcome_at, tz, start=start, end=end + OUTCOME_LOOKAHEAD, dialect=dialect).label(
                "outcome_day"
            ),
            sa.cast(method, sa.String(12)).label("method"),
            case((h.source == Source.RECYCLE.value, h.attempt), else_=None).label("attempt"),
            h.currency.label("currency"),
            h.amount_minor.label("amount_minor"),
        )
        .where(within(submitted(), start, end), h.state == State.APPROVED.value)
        .subquery("approved")
    )
    keys = [facts.c.day, facts.c.outcome_day, facts.c.method, facts.c.attempt, facts.c.currency]
    return select(
        *keys,
        sa.cast(func.count(), sa.BigInteger).label("recoveries"),
        sa.cast(func.coalesce(func.sum(facts.c.amount_minor), 0), sa.BigInteger).label("amount_minor"),
    ).group_by(*keys)
