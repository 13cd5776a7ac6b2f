"""`run submit` on a 1,000,000-subscription PostgreSQL book beside bare baselines measured in the same run.

For each sandbox latency the book is copied fresh from a template database (built once by bench/book.py,
kept between runs unless --rebuild), then:

  selection   the claim's due pages (due_rows, FOR UPDATE SKIP LOCKED, batch_size a page, in one
              transaction that is rolled back) beside one bare indexed SELECT of the same rows and
              columns through psycopg; best of three each, interleaved
  bare        requests.Session POSTs of /evaluate to the same sandbox at the same concurrency for a
              fixed time (bench/client_throughput.py's baseline arm), CPU of this process
  engine      `python -m recycle_engine run submit --at NIGHT` as a child process, timed end to end;
              CPU from os.wait4 (the child and anything it waited for) plus the workers' fork server
              (its own CPU and its reaped workers', as last read while the command ran), peak RSS
              from /proc VmHWM of the child and its workers

Hand-offs per second is the run's FlexFactor hand-offs that FlexFactor accepted (answered with a decision)
over the run's whole wall time (selection, processor attempts and recording included); a hand-off it
refused, whose answer was lost or that was never sent is counted apart and named with its reason, and the
figures then say the run is not a measurement. The sandbox runs in its own process on the same machine and
its CPU is printed too. Prints figures and ratios; times are never asserted, but
a run with failed hand-offs ends with exit code 1.

    .venv/bin/python -m bench.submit_benchmark [--latencies 0,100] [--concurrency 64] [--explain]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

import psutil
import psycopg
import requests
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event

from bench.book import NIGHT, Book, BookShape, build_book, write_settings
from bench.client_throughput import baseline_arm, body_template
from recycle_engine.adapters.clock import SEND_CLOCK_ENV
from recycle_engine.cli.app import EXIT_INCOMPLETE
from recycle_engine.sandbox.state import SANDBOX_SIGNING_KEY_B64, SandboxConfig
from recycle_engine.services.nightly.submit import due_rows
from recycle_engine.storage.db import alembic_config, make_engine

PG_ADMIN: Final = os.environ.get(
    "RECYCLE_ENGINE_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL: Final = os.environ.get("RECYCLE_ENGINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
SANDBOX_ENV: Final = {
    "FLEXFACTOR_APP_KEY": SandboxConfig.app_key,
    "FLEXFACTOR_APP_SECRET": SandboxConfig.app_secret,
    "FLEXFACTOR_MID": SandboxConfig.mid,
    "FLEXFACTOR_SITE_ID": SandboxConfig.site_id,
    "FLEXFACTOR_ENVIRONMENT_KEY": "bench-env-key",
    "FLEXFACTOR_HMAC_SIGNING_KEY": SANDBOX_SIGNING_KEY_B64,
    # The sandbox's clock is frozen at the book's night, so FlexFactor's window must count from the
    # run's `--at` too: by the real clock every expiryDateUtc lies months past the sandbox's 21 days.
    SEND_CLOCK_ENV: "at",
}
_BARE_SELECT: Final = """
SELECT s.id, s.order_id, s.product_id, s.billing_cycle, s.billing_interval_days, s.price_minor, s.currency,
       s.shippable, s.status, s.recycle_profile_id, s.recycle_transaction_id, s.recycle_declined_gateway_id,
       s.recycle_original_minor, s.recycle_last_attempt, s.recycle_last_ran_on, s.next_attempt,
       s.next_attempt_on, d.declined_at, d.utc_offset_minutes, d.response_code, d.response_text,
       d.avs_result, d.cvv_result, d.cavv_result, d.customer_id, d.email, d.phone, d.first_name,
       d.last_name, d.address1, d.address2, d.city, d.state, d.zip, d.country, d.ip_address, d.card_token,
       d.card_bin, d.card_last4, d.card_exp_month, d.card_exp_year, d.card_brand, d.card_type
FROM subscriptions s JOIN declines d ON d.transaction_id = s.recycle_transaction_id
WHERE s.status = 'RECYCLE_BILLING' AND s.next_attempt_on <= %s AND s.open_handoff_id IS NULL
"""


# --- databases -------------------------------------------------------------------------------


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql)


def book_template(shape: BookShape, *, rebuild: bool) -> tuple[str, Book]:
    """A template database holding the book; reused when one of the same shape and schema exists."""
    name = f"re_bench_book_{shape.subscriptions}_{shape.due}_{shape.seed}"
    head = ScriptDirectory.from_config(alembic_config(f"{PG_URL}/{name}")).get_current_head()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    if row and row[0] and not rebuild:
        saved = json.loads(row[0])
        if saved.get("shape") == asdict(shape) and saved.get("schema") == head:
            book = Book(
                shape, date.fromisoformat(saved["today"]), saved["due_flexfactor"], saved["due_processor"]
            )
            book.rows = saved["rows"]
            return name, book
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}"')
    book = build_book(f"{PG_URL}/{name}", shape)
    tag = {
        "shape": asdict(shape),
        "schema": head,
        "today": book.today.isoformat(),
        "due_flexfactor": book.due_flexfactor,
        "due_processor": book.due_processor,
        "rows": book.rows,
    }
    _admin(f"COMMENT ON DATABASE \"{name}\" IS '{json.dumps(tag)}'")
    return name, book


@contextmanager
def book_copy(template: str, label: str) -> Iterator[str]:
    """A fresh copy of the book for one run; dropped afterwards."""
    name = f"re_bench_run_{label}_{os.getpid()}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield f"{PG_URL}/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _plain(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


# --- selection -------------------------------------------------------------------------------


def bare_select(url: str, today: date) -> tuple[float, int]:
    with psycopg.connect(_plain(url)) as conn:
        started = time.perf_counter()
        rows = conn.execute(_BARE_SELECT, (today,)).fetchall()
        return time.perf_counter() - started, len(rows)


def engine_select(engine: Engine, today: date, batch: int) -> tuple[float, int]:
    # One transaction, closed without a commit: every page is locked as the claim locks it, then let go.
    with engine.connect() as conn:
        started = time.perf_counter()
        count, after = 0, None
        while rows := due_rows(conn, today=today, limit=batch, after=after, lock=True):
            count += len(rows)
            after = (rows[-1].next_attempt_on, rows[-1].id)
        return time.perf_counter() - started, count


@dataclass(frozen=True)
class Selection:
    bare_s: float
    engine_s: float
    rows: int


def measure_selection(url: str, today: date, batch: int, rounds: int = 3) -> Selection:
    engine = make_engine(url)
    try:
        bare, ours = [], []
        for _ in range(rounds):
            bare.append(bare_select(url, today))
            ours.append(engine_select(engine, today, batch))
    finally:
        engine.dispose()
    if {n for _, n in bare} != {n for _, n in ours}:
        raise SystemExit(f"selections disagree: bare {bare}, engine {ours}")
    return Selection(min(t for t, _ in bare), min(t for t, _ in ours), bare[0][1])


# --- sandbox and the submit process ----------------------------------------------------------


@dataclass
class Sandbox:
    base_url: str
    admin_url: str
    process: psutil.Process

    def freeze(self, at: datetime) -> None:
        """Stop the sandbox clock at `at`: the engine's bodies are dated on the book's night."""
        requests.post(
            f"{self.admin_url}/clock", json={"now": at.isoformat(), "frozen": True}, timeout=10
        ).raise_for_status()

    def cpu_s(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)


@contextmanager
def sandbox(latency_ms: int) -> Iterator[Sandbox]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [sys.executable, "-m", "recycle_engine", "--log-level", "WARNING", "sandbox"]
    command += ["--port", str(port), "--latency-ms", str(latency_ms)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()  # printed once the socket listens
        if "/v1" not in base_url:
            raise SystemExit(f"the sandbox did not start: {base_url!r}")
        yield Sandbox(base_url, base_url.replace("/v1", "/_sandbox"), psutil.Process(process.pid))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@dataclass(frozen=True)
class SubmitOutput:
    """What `run submit` printed: its counts, its `failed N: reason` lines, and any line not understood."""

    run_id: str | None  # None: no counts line was printed
    counts: dict[str, int]
    failures: tuple[str, ...] = ()
    unparsed: tuple[str, ...] = ()


# Counts of hand-offs without an accepted answer (refused with a 400, answer lost, never sent, left
# unsent) and of calls answered 429: a run with any of them did not measure a clean night.
NOT_HANDED_OFF: Final = ("failed", "unknown", "not_sent", "unsent", "rate_limited")


@dataclass(frozen=True)
class SubmitRun:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float  # the largest single process
    total_rss_mb: float  # the sum of every process's peak (workers), an upper bound
    output: SubmitOutput
    sandbox_cpu_s: float
    returncode: int = 0

    @property
    def counts(self) -> dict[str, int]:
        return self.output.counts

    @property
    def handoffs(self) -> int:
        """Hand-offs FlexFactor accepted; `sent` also counts the ones it refused or never answered."""
        return self.counts.get("accepted", 0)

    @property
    def not_handed_off(self) -> dict[str, int]:
        return {key: self.counts[key] for key in NOT_HANDED_OFF if self.counts.get(key)}

    @property
    def per_second(self) -> float:
        return self.handoffs / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s * 1000 / self.handoffs if self.handoffs else float("nan")

    def problems(self) -> list[str]:
        """Why this run's figures do not measure a night of hand-offs; empty when they do."""
        found = []
        if self.returncode:
            found.append(f"run submit ended with exit code {self.returncode}")
        if self.output.run_id is None:
            found.append("run submit printed no counts line")
        if self.not_handed_off:
            found.append(
                "hand-offs not handed off: " + ", ".join(f"{k} {v:,}" for k, v in self.not_handed_off.items())
            )
        found += [f"  {line}" for line in self.output.failures]
        found += [f"  unrecognised output: {line}" for line in self.output.unparsed]
        return found


def run_submit_process(settings_path: Path, box: Sandbox, *, workers: int = 1) -> SubmitRun:
    """`run submit` in a child process; wall time, CPU and peak RSS of it and its workers."""
    command = [sys.executable, "-m", "recycle_engine", "--log-level", "WARNING", "run", "submit"]
    command += ["--config", str(settings_path), "--at", NIGHT.isoformat(), "--workers", str(workers)]
    env = os.environ | SANDBOX_ENV
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sandbox_before = box.cpu_s()
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        peaks: dict[int, int] = {}
        unwaited: dict[int, float] = {}
        watcher = threading.Thread(target=_watch_peaks, args=(process.pid, peaks, unwaited), daemon=True)
        watcher.start()
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        watcher.join()
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, for rusage
        sandbox_cpu = box.cpu_s() - sandbox_before
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    output = parse_submit_output(text)
    # Exit code 3 is a run that left hand-offs unsent: its counts are printed and reported as a problem.
    if process.returncode not in (0, EXIT_INCOMPLETE) or output.run_id is None:
        raise SystemExit(f"run submit failed ({process.returncode}):\n{text[-2000:]}\n{errors[-3000:]}")
    largest, total = (max(peaks.values()), sum(peaks.values())) if peaks else (0, 0)
    cpu = usage.ru_utime + usage.ru_stime + sum(unwaited.values())
    return SubmitRun(wall, cpu, largest / 1024, total / 1024, output, sandbox_cpu, process.returncode)


def _watch_peaks(pid: int, peaks: dict[int, int], unwaited: dict[int, float]) -> None:
    """Peak RSS (VmHWM, kB) of `pid` and its descendants, read until `pid` exits; and the CPU seconds
    of its fork server, which `pid` never waits for (so os.wait4 misses it and the workers it reaped).

    Not rusage's ru_maxrss: Linux charges a child with its parent's RSS at fork, so that figure would
    be this benchmark's own peak whenever it is the larger."""
    root = psutil.Process(pid)
    while True:
        try:
            family = [root, *root.children(recursive=True)]
            finished = root.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return
        for child in family[1:]:
            try:
                if child.ppid() == pid and "forkserver" in " ".join(child.cmdline()):
                    t = child.cpu_times()
                    unwaited[child.pid] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                continue
        for member in family:
            try:
                with open(f"/proc/{member.pid}/status", encoding="ascii") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peaks[member.pid] = max(peaks.get(member.pid, 0), int(line.split()[1]))
            except OSError:
                continue
        if finished:
            return
        time.sleep(0.2)


_COUNTS_LINE: Final = re.compile(r"^submit (?P<run>\S+): (?P<pairs>.*)$")
_PAIR: Final = re.compile(r"^(?P<key>[a-z_]+) (?P<value>\d+)$")
_FAILURE_LINE: Final = re.compile(r"^(failed|not sent) \d+: |^\.\.\. \d+ more with \d+ other reasons$")


def parse_submit_output(text: str) -> SubmitOutput:
    """`run submit`'s stdout: "submit RUN_ID: key value, key value, ..." and, after it, one
    "failed N: <reason>" (or "not sent N: <reason>") line per distinct reason. Any other line is kept
    as unparsed, never dropped."""
    run_id: str | None = None
    counts: dict[str, int] = {}
    failures: list[str] = []
    unparsed: list[str] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line:
            continue
        if _FAILURE_LINE.match(line):
            failures.append(line)
            continue
        found = _COUNTS_LINE.match(line)
        pairs = [_PAIR.match(pair) for pair in found["pairs"].split(", ")] if found else []
        if not found or run_id is not None or not all(pairs):
            unparsed.append(line)
            continue
        run_id = found["run"]
        counts.update({m["key"]: int(m["value"]) for m in pairs if m})
    return SubmitOutput(run_id, counts, tuple(failures), tuple(unparsed))


# --- plans -----------------------------------------------------------------------------------


def plans_of(engine: Engine, marker: str, *, analyze: bool = False) -> list[str]:
    """Record, as it runs, the plan of each statement on `engine` whose SQL contains `marker`.

    With `analyze` the statement runs twice (EXPLAIN ANALYZE, then itself): use it on reads only."""
    plans: list[str] = []
    explain = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if marker in statement:
            params = parameters[0] if many and parameters else parameters
            rows = cursor.connection.execute(explain + statement, params).fetchall()
            plans.append("\n".join(str(r[0]) for r in rows))

    return plans


def print_claim_plan(url: str, today: date, batch: int) -> None:
    engine = make_engine(url)
    plans = plans_of(engine, "FOR UPDATE OF subscriptions SKIP LOCKED", analyze=True)
    try:
        with engine.connect() as conn:  # closed without a commit: nothing is claimed
            due_rows(conn, today=today, limit=batch, lock=True)
    finally:
        engine.dispose()
    print("\nfirst claim page on the fresh book (EXPLAIN ANALYZE; not committed):")
    print(_indent(plans[0]))


def print_outcome_plan(url: str, settings_path: Path) -> None:
    from recycle_engine.config import load_settings
    from recycle_engine.services.outcomes.applying import apply_outcomes

    settings = load_settings(settings_path, env=SANDBOX_ENV)
    engine = make_engine(url)
    plans = plans_of(engine, "FROM outcome_queue LEFT OUTER JOIN subscriptions")
    try:
        started = time.perf_counter()
        counts = apply_outcomes(settings, engine, now=NIGHT)
        took = time.perf_counter() - started
    finally:
        engine.dispose()
    print(f"\napplying outcomes after the run ({dict(counts)} in {took:.1f} s); plan of its first selection:")
    print(_indent(plans[0] if plans else "(no statement)"))


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# --- the benchmark ---------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--subscriptions", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=50_000)
    parser.add_argument("--latencies", default="0,100", help="comma-separated sandbox latencies (ms)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--baseline-seconds", type=float, default=8.0)
    parser.add_argument("--rebuild", action="store_true", help="build the book even if a template exists")
    parser.add_argument("--explain", action="store_true", help="print the claim and outcome plans")
    args = parser.parse_args()
    latencies = [int(x) for x in args.latencies.split(",")]
    shape = BookShape(subscriptions=args.subscriptions, due=args.due)

    started = time.perf_counter()
    template, book = book_template(shape, rebuild=args.rebuild)
    print(
        f"book: {shape.subscriptions:,} subscriptions, {shape.due:,} due on {book.today} "
        f"({book.due_flexfactor:,} on FlexFactor slots, {book.due_processor:,} on processor slots); "
        f"rows {book.rows}; ready in {time.perf_counter() - started:.0f} s"
    )
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    with book_copy(template, "select") as url:
        selection = measure_selection(url, book.today, args.batch_size)
        if args.explain:
            print_claim_plan(url, book.today, args.batch_size)
    print(
        f"\nselection of {selection.rows:,} due rows with their declines (best of 3):\n"
        f"  bare indexed SELECT, one statement      {selection.bare_s:7.3f} s\n"
        f"  engine claim pages of {args.batch_size} (locked)      {selection.engine_s:7.3f} s"
        f"   ratio {ratio(selection.engine_s, selection.bare_s):.2f}  (target <= 2.00)"
    )
    template_body = body_template()
    rows: list[str] = []
    troubles: list[str] = []
    for latency in latencies:
        with sandbox(latency) as box, book_copy(template, f"l{latency}") as url:
            # The baseline's bodies are dated now, so it runs before the clock is set to the night.
            bare = baseline_arm(box.base_url, args.concurrency, args.baseline_seconds, template_body)
            run = submit_night(
                url,
                box,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                explain_outcomes=args.explain and latency == latencies[-1],
            )
        rows.append(
            f"{latency:>5}ms | {run.wall_s:7.1f} {run.handoffs:>7,} {book.due_flexfactor:>7,} "
            f"{sum(run.not_handed_off.values()):>7,} {run.counts.get('charged', 0):>7,} | "
            f"{run.per_second:8.1f} {bare.per_second:8.1f} {ratio(run.per_second, bare.per_second):6.2f} | "
            f"{run.cpu_per_1000:7.2f} {bare.cpu_ms_per_call:7.2f} {ratio(run.cpu_per_1000, bare.cpu_ms_per_call):6.2f} | "
            f"{run.peak_rss_mb:6.0f} | {run.sandbox_cpu_s:6.1f} | {bare.errors:>6,}"
        )
        troubles += [f"{latency} ms: {line}" for line in run.problems()]
        if bare.errors:
            troubles.append(f"{latency} ms: the bare baseline had {bare.errors:,} failed calls")
    print(
        f"\nrun submit, concurrency {args.concurrency}, batch {args.batch_size} "
        "(targets at 100 ms: ratio >= 0.85; CPU ratio <= 2.00; peak RSS < 400 MB)"
    )
    header = (
        f"{'latency':>7} | {'wall s':>7} {'handoffs':>7} {'due ff':>7} {'NOT ho':>7} {'charged':>7} | "
        f"{'ho/s':>8} {'bare/s':>8} {'ratio':>6} | {'cpu s/1k':>7} {'bare':>7} {'ratio':>6} | "
        f"{'RSS MB':>6} | {'sb cpu':>6} | {'bare err':>6}"
    )
    print(header)
    print("-" * len(header))
    for line in rows:
        print(line)
    print(
        "\nhandoffs: accepted by FlexFactor (ho/s and cpu s/1k count only these); due ff: due tonight on "
        "FlexFactor slots; NOT ho: refused, answer lost, never sent or left unsent."
    )
    if troubles:
        print("\n" + "!" * 100)
        print(
            "NOT A MEASUREMENT: hand-offs failed, so the figures above do not measure a night of hand-offs."
        )
        for line in troubles:
            print(f"  {line}")
        print("!" * 100)
        raise SystemExit(1)


def submit_night(
    url: str,
    box: Sandbox,
    *,
    batch_size: int,
    concurrency: int,
    workers: int = 1,
    rate_limit_per_second: float = 10_000,
    explain_outcomes: bool = False,
) -> SubmitRun:
    """`run submit --at NIGHT` on the book at `url` against `box`, its clock frozen at the night."""
    box.freeze(NIGHT)
    with tempfile.TemporaryDirectory() as folder:
        settings_path = write_settings(
            Path(folder) / "settings.yaml",
            db_url=url,
            base_url=box.base_url,
            batch_size=batch_size,
            concurrency=concurrency,
            rate_limit_per_second=rate_limit_per_second,
        )
        run = run_submit_process(settings_path, box, workers=workers)
        if explain_outcomes:
            print_outcome_plan(url, settings_path)
    return run


if __name__ == "__main__":
    main()
