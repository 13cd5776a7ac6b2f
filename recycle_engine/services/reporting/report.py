"""The daily report: aggregate in the database, reshape with pandas, render recovery-D.html, its CSV, the index."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.errors import RecycleEngineError, StorageError
from recycle_engine.ports import Clock
from recycle_engine.reports import (
    detail,
    ladder,
    ladder_queries,
    lift,
    lift_queries,
    queries,
    reconciliation,
    recovery,
    render,
    rollup_queries,
    saves,
    svg,
)
from recycle_engine.services.job_runs import finish_run, start_run
from recycle_engine.services.reporting.dashboard import dashboard_context
from recycle_engine.services.reporting.rollups import refresh_rollups
from recycle_engine.storage.anomaly_repo import anomalies_stmt
from recycle_engine.storage.faults import DatabaseFailure

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["ReportResult", "run_report"]

log = logging.getLogger(__name__)

FOLD_AT = 20  # a list longer than this folds away behind its count (the ten-second summary stays short)


@dataclass(frozen=True)
class ReportResult:
    """Where the day's files went and the job run that made them."""

    html_path: Path
    csv_path: Path
    index_path: Path
    run_id: str
    counts: dict[str, int]
    day: date | None = None
    summary_text: str = ""  # the ten-second summary as plain text: the body of the report's e-mail
    headline: str = ""  # its one line: the e-mail's subject


def run_report(
    settings: Settings, engine: Engine, *, day: date, night: Night, clock: Clock | None = None
) -> ReportResult:
    """Render the report for local day `day` (settings.timezone), generated at `night.at` and reading the
    book as of the end of that day (or `night.at`, if earlier), and record a "report" run (its finish
    stamped by `clock` when given).

    Writes `<output_dir>/recovery-D.html`, `recovery-D.csv` and `index.html`. Raises StorageError
    when the database fails and RecycleEngineError when the files cannot be written."""
    with _long_lived_objects_frozen():
        return _run_report(settings, engine, day=day, now=night.at, clock=clock)


@contextmanager
def _long_lived_objects_frozen() -> Iterator[None]:
    # A report allocates a few hundred thousand short-lived rows, frames and strings; each full
    # collection they trigger would also walk every object of the imported libraries (some 100,000,
    # a tenth of the report's time). Those are kept out of the collector until the report is done,
    # unless the process froze objects of its own already.
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run_report(
    settings: Settings, engine: Engine, *, day: date, now: datetime, clock: Clock | None
) -> ReportResult:
    windows = [g.flexfactor.expiry_days for g in settings.flexfactor_gateways() if g.flexfactor]
    window = max(windows, default=21)
    bounds = queries.ReportBounds.for_day(day, settings.timezone, now, window_days=window)
    out_dir = settings.reports.output_dir
    html_path = out_dir / render.report_name(day)
    csv_path = html_path.with_suffix(".csv")
    run_id = start_run(engine, "report", logical_at=bounds.day_start, now=now)
    try:
        # Whatever the runs and webhooks wrote since the last refresh: the report reads current rollups.
        refreshed = refresh_rollups(engine, settings.timezone, now=now)
        with _snapshot(engine) as conn:
            frames = _load(conn, bounds, run_id)
            rows = detail.detail_rows(queries.fetch_detail(conn, bounds), bounds.tz)
            csv_rows = render.write_csv(csv_path, rows, detail.DETAIL_COLUMNS)
            # The dashboard follows the newest report in the folder, so re-rendering a past day leaves it be.
            newest = max([day, *render.existing_reports(out_dir)[:1]])
            dashboard = dashboard_context(conn, last=newest, tz=bounds.tz, now=now, window_days=window)
        context, counts = _context(frames, settings, bounds)
        context |= {"csv_name": csv_path.name, "csv_rows": csv_rows}
        render.write_text(html_path, render.render_template("recovery.html.j2", bounds.tz, context))
        index_path = render.write_index(out_dir, tz=bounds.tz, generated_at=now, dashboard=dashboard)
    except Exception as exc:
        # Close the run whatever went wrong, so `status` never shows a report running forever.
        error = f"{exc.__class__.__name__}: {exc}"[:500]
        finish_run(engine, run_id, now=clock.now() if clock else now, counts={}, error=error)
        if isinstance(exc, DatabaseFailure):
            raise StorageError(f"report for {day}: the database failed ({exc.__class__.__name__})") from exc
        if isinstance(exc, OSError):
            raise RecycleEngineError(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from exc
        raise
    counts |= {"csv_rows": csv_rows, "rollup_days": refreshed.days}
    finish_run(engine, run_id, now=clock.now() if clock else now, counts=counts)
    log.info("report written", extra={"run_id": run_id, "path": str(html_path), **counts})
    return ReportResult(
        html_path, csv_path, index_path, run_id, counts, day, context["summary_text"], context["mail_subject"]
    )


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    # PostgreSQL: one snapshot for every query, so the numbers of one report agree with each other.
    # SQLite (WAL) reads inside one transaction see one snapshot already.
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


def _load(conn: Connection, b: queries.ReportBounds, run_id: str) -> dict[str, pd.DataFrame]:
    dialect = conn.dialect.name
    frames = {
        "facts": rollup_queries.fetch_cohorts(conn, rollup_queries.cohort_facts_stmt(b)),
        "decline_facts": rollup_queries.fetch_cohorts(conn, rollup_queries.decline_cohort_stmt(b)),
        "breakdowns": queries.fetch(conn, rollup_queries.breakdowns_stmt(b)),
        # The final rates: cohorts whose windows have all closed, read apart from the cohort range.
        "closed_facts": rollup_queries.fetch_cohorts(
            conn, rollup_queries.cohort_facts_stmt(b, days=b.closed_cohorts)
        ),
        "closed_breakdowns": queries.fetch(conn, rollup_queries.breakdowns_stmt(b, days=b.closed_cohorts)),
        "activity": queries.fetch(conn, queries.activity_stmt(b)),
        "open": queries.fetch(conn, queries.open_by_age_stmt(b, dialect)),
        "nearing": queries.fetch(conn, queries.nearing_expiry_stmt(b)),
        "webhooks": queries.fetch(conn, queries.webhooks_stmt(b)),
        "crm_refusals": queries.fetch(conn, queries.crm_refusals_stmt(b)),
        "jobs": queries.fetch(conn, queries.job_runs_stmt(b, exclude_run=run_id)),
        "exceptions": queries.fetch_all(
            conn, [queries.exception_stmt(b, k) for k in queries.EXCEPTION_KINDS]
        ),
    }
    frames["lift"] = queries.fetch(conn, lift_queries.lift_facts_stmt(b))
    frames["recoveries"] = queries.fetch(conn, ladder_queries.recoveries_stmt(b, dialect))
    # The checks of the night that opened the day and of the night after it: the morning report of
    # day D is read after the check of night D+1, which is the one the billing team needs first.
    frames["anomalies"] = queries.fetch(conn, anomalies_stmt(b.day_start, b.day_end + timedelta(days=1)))
    return frames


def _context(
    frames: dict[str, pd.DataFrame], settings: Settings, b: queries.ReportBounds
) -> tuple[dict[str, Any], dict[str, int]]:
    fee = settings.reports.fee_percent
    fee_percent = Decimal(str(fee)) if fee is not None else None
    facts = frames["facts"]
    # The day and the month are in progress; the closed cohorts give the final rates.
    closed = frames["closed_facts"].assign(period="final")
    periods = pd.concat([recovery.with_periods(facts, day=b.day, month_first=b.month_first), closed])
    head = recovery.count_summary(periods, ["period"]).set_index("period")
    empty = {c: 0 for c in head.columns} | {"rate_to_date": float("nan"), "rate_settled": float("nan")}
    headline = {p: (head.loc[p].to_dict() if p in head.index else empty) for p in ("day", "month", "final")}
    month = facts[facts["cohort"].astype(str) >= b.month_first.isoformat()]

    cohorts = recovery.cohort_table(facts, day=b.day, window_days=b.window_days)
    curve = recovery.recovery_curve(facts, day=b.day, window_days=b.window_days)
    ticks = [d for d in recovery.CHECKPOINT_DAYS if d <= b.window_days]
    pending = recovery.pending_by_age(frames["open"])
    bucket_counts = pending.groupby("bucket", sort=False)["n"].sum()
    exceptions = reconciliation.exception_rows(frames["exceptions"])
    summary = reconciliation.exception_summary(exceptions, frames["webhooks"], frames["crm_refusals"])
    # No "next day" link: the next day's report does not exist as of this day's end (the index has it).
    prev_day = b.day - timedelta(days=1)
    present = set(render.existing_reports(settings.reports.output_dir))

    by_key = frames["breakdowns"]
    breakdowns = []
    names = list(rollup_queries.BREAKDOWNS)
    finals = recovery.breakdowns(frames["closed_breakdowns"], names, limit=10**9)
    for name, part in recovery.breakdowns(by_key, names).items():
        rows = render.attach_amounts(part.counts, part.amounts, ["key", "code"])
        final = finals[name].counts
        keys = zip(final["key"], final["code"], strict=True)
        final_rates = dict(zip(keys, final["rate_to_date"], strict=True))
        for row in rows:
            row["rate_final"] = final_rates.get((row["key"], row["code"]), float("nan"))
        title = rollup_queries.BREAKDOWNS[name]
        breakdowns.append({"name": name, "title": title, "rows": rows, "hidden": part.hidden})
    cycles = by_key[by_key["breakdown"] == rollup_queries.SAVES].drop(columns="breakdown")

    context: dict[str, Any] = {
        "day": b.day,
        "month_first": b.month_first,
        "first_cohort": b.first_cohort,
        "closed_cohorts": b.closed_cohorts,
        "tz_name": str(b.tz.key),
        "generated_at": b.now,
        "as_of": b.as_of,
        "prev_href": render.report_name(prev_day) if prev_day in present else None,
        "prev_day": prev_day,
        "headline": headline,
        "amounts": render.records(
            _in_period_order(recovery.amount_summary(periods, ["period"], fee_percent=fee_percent))
        ),
        "fee_percent": fee_percent,
        "activity": render.records(recovery.activity_summary(frames["activity"])),
        "breakdowns": breakdowns,
        "cohorts": render.attach_amounts(cohorts, recovery.amount_summary(facts, ["cohort"]), ["cohort"]),
        "decline_cohorts": _decline_cohorts(frames["decline_facts"]),
        "saves": render.attach_amounts(*saves.saves_by_cycle(cycles), ["cycle"]),
        "checkpoint_days": recovery.CHECKPOINT_DAYS,
        "day10": render.records(recovery.checkpoint(facts, day=b.day, n_days=10)),
        "median_days": recovery.median_recovery_days(month),
        "curve_svg": svg.line_chart(
            curve, title="Share recovered by day N of the window", x_max=b.window_days, x_ticks=ticks
        ),
        "window_days": b.window_days,
        "pending": [
            {
                "bucket": k,
                "n": int(part["n"].sum()),
                "overdue": bool(part["overdue"].any()),
                "amounts": render.records(part[part["currency"] != ""]),
            }
            for k, part in pending.groupby("bucket", sort=False)
        ],
        "pending_svg": svg.bar_chart(
            [(k, int(bucket_counts.get(k, 0))) for k in recovery.AGE_BUCKETS],
            title="Open hand-offs by days since submission",
            highlight_last=True,
        ),
        "nearing": render.records(frames["nearing"]),
        "nearing_total": int(frames["nearing"]["total"].max()) if not frames["nearing"].empty else 0,
        "exception_summary": render.records(summary),
        "exception_groups": [
            {"title": title, "rows": render.records(part)}
            for title, part in exceptions.groupby("title", sort=False)
        ],
        "row_limit": queries.EXCEPTION_ROW_LIMIT,
        "fold_at": FOLD_AT,
        "webhooks": render.records(reconciliation.webhook_summary(frames["webhooks"])),
        "job_runs": render.records(reconciliation.job_runs_table(frames["jobs"])),
        "lift": _lift_context(frames["lift"]),
        "anomalies": render.records(frames["anomalies"]),
    }
    summary_facts = ladder.recovery_summary(
        frames["recoveries"],
        frames["open"],
        day=b.day,
        exceptions=int(summary["count"].sum()) if not summary.empty else 0,
    )
    ladder_rows = ladder.ladder_rows(frames["recoveries"], day=b.day)
    context |= {
        "summary": summary_facts,
        "summary_periods": ladder.PERIODS,
        "summary_text": ladder.summary_text(summary_facts),
        "mail_subject": ladder.summary_headline(summary_facts),
        "ladder": ladder_rows,
        "ladder_methods": ladder.method_rows(ladder_rows),
    }
    counts = {
        "handoffs": int(headline["day"]["handoffs"]),
        "recovered": int(headline["day"]["recovered"]),
        "exceptions": int(summary["count"].sum()) if not summary.empty else 0,
        "anomalies": len(frames["anomalies"]),
    }
    return context, counts


def _in_period_order(amounts: pd.DataFrame) -> pd.DataFrame:
    # Per currency: the day, the month to date, then the closed cohorts (not alphabetical).
    order = amounts["period"].map({"day": 0, "month": 1, "final": 2})
    return amounts.assign(_o=order).sort_values(["currency", "_o"]).drop(columns="_o")


def _decline_cohorts(facts: pd.DataFrame) -> list[dict[str, Any]]:
    counts = recovery.count_summary(facts, ["cohort"]).sort_values("cohort", ascending=False)
    return render.attach_amounts(counts, recovery.amount_summary(facts, ["cohort"]), ["cohort"])


def _lift_context(facts: pd.DataFrame) -> dict[str, Any]:
    result = lift.lift_summary(facts)
    return {
        "groups": {r["arm"]: r for r in render.records(result.groups)},
        "amounts": render.records(result.amounts),
        "lift": result.lift,
        "low": result.low,
        "high": result.high,
        "n_flexfactor": result.n_flexfactor,
        "n_holdout": result.n_holdout,
        "assigned": int(result.groups["assigned"].sum()),
    }
