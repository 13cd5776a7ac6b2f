"""`crm pull` and `crm push` against the CRM fake, beside a bare requests client making the same calls.

The fake runs in a process of its own on loopback (`recycle-engine crm-fake --declines`), holding N
generated declines. Each arm runs in this process:

  pull      pull_declines over the whole window into a fresh SQLite file (checks, classification,
            writes, cursor), 200 rows a page
  bare-pull one requests.Session making the same calls: every transaction page of both decline types
            and, per page, one /order/query/ and one /purchase/query/ call for its ids; JSON parsed,
            nothing checked or written
  push      push_changes delivering the status changes the pull wrote (each SENDING then DELIVERED,
            committed around its call)
  bare-push the same number of /purchase/update/ calls through one Session, one after another

Prints wall seconds and rows a second for each arm and the ratios engine / bare, and the CPU each arm
spent a row, in this process and in the fake's (on busy cores the walls follow the CPU, which the
load does not move); asserts nothing.
With --rounds N, the pull and the bare pull alternate N times (each pull into a fresh database) and
the median of the rounds' ratios is printed beside each round's: on a shared machine one round can
land on a quiet or a busy moment.
With --latency-ms 0,20,100 the whole run is repeated against a fake holding every answer that long
(`crm-fake --latency-ms`), as a CRM across the internet would, and a table of every latency ends the
output. The bare client stays one Session calling one call after another; the pull overlaps a page's
look-ups with each other and with the next page. At 0 ms the pull is bound by its CPU, at a latency
by the fake's answers. A push sends one change after another and waits each answer: at a latency it
pushes the changes of a window of about --push-declines declines (all of them would take the
latency times some ten thousand calls), and the bare push makes as many calls. Not part of the test
suite.

    .venv/bin/python -m bench.crm_benchmark [--declines 20000] [--rounds 3] [--latency-ms 0,20,100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import requests

from recycle_engine.adapters.crm_http import CrmClient
from recycle_engine.services.crm.pull import pull_declines
from recycle_engine.services.crm.push import push_changes
from recycle_engine.storage.db import make_engine, upgrade
from tests.crm_helpers import CRM_LOGIN, CRM_PASSWORD, crm_settings, crm_settings_file, feed_rows, write_csv

DAY = datetime(2026, 6, 1, tzinfo=UTC)
NOW = DAY + timedelta(days=1, hours=1)


SPAN = timedelta(hours=20)  # feed_rows' spread of the declines over the day


def _serve_fake(csv_path: Path, latency_ms: int) -> tuple[subprocess.Popen[str], str]:
    env = os.environ | {"CRM_FAKE_LOGIN_ID": CRM_LOGIN, "CRM_FAKE_PASSWORD": CRM_PASSWORD}
    command = [sys.executable, "-m", "recycle_engine", "crm-fake", "--port", "0", "--declines", str(csv_path)]
    proc = subprocess.Popen(
        [*command, "--latency-ms", str(latency_ms)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()  # the first line, printed once the records are loaded
    return proc, url


class _Cpu:
    """CPU seconds of this process (every thread) and of the fake's since the last lap."""

    def __init__(self, fake: psutil.Process) -> None:
        self.fake = fake
        self.last = self._now()

    def _now(self) -> tuple[float, float]:
        times = self.fake.cpu_times()
        return time.process_time(), times.user + times.system

    def lap(self) -> tuple[float, float]:
        now = self._now()
        spent = (now[0] - self.last[0], now[1] - self.last[1])
        self.last = now
        return spent


def bare_pull(url: str, per_page: int) -> int:
    session = requests.Session()
    credentials = {"loginId": CRM_LOGIN, "password": CRM_PASSWORD}
    rows = 0
    for decline_type in ("SOFT_DECLINE", "HARD_DECLINE"):
        page = 1
        while True:
            form = {
                **credentials,
                "startDate": DAY.strftime("%m/%d/%Y"),
                "endDate": (DAY + timedelta(days=1)).strftime("%m/%d/%Y"),
                "responseType": decline_type,
                "sortDir": "1",
                "resultsPerPage": str(per_page),
                "page": str(page),
            }
            body = session.post(f"{url}/transactions/query/", data=form, timeout=60).json()
            data = body["message"]["data"] if body["result"] == "SUCCESS" else []
            if data:
                rows += len(data)
                for endpoint, key in (("/order/query/", "orderId"), ("/purchase/query/", "purchaseId")):
                    ids = ",".join(sorted({str(r[key]) for r in data if r.get(key)}))
                    session.post(
                        f"{url}{endpoint}",
                        data={**credentials, key: ids, "resultsPerPage": "200"},
                        timeout=60,
                    ).json()
            if len(data) < per_page:
                break
            page += 1
    session.close()
    return rows


def bare_push(url: str, purchase_ids: list[str]) -> None:
    session = requests.Session()
    for purchase_id in purchase_ids:
        form = {
            "loginId": CRM_LOGIN,
            "password": CRM_PASSWORD,
            "purchaseId": purchase_id,
            "status": "RECYCLE_BILLING",
        }
        session.post(f"{url}/purchase/update/", data=form, timeout=60).json()
    session.close()


@dataclass
class Figures:
    """One latency's results: each round's (bare s, bare rows, pull s, pull counts), CPU a row
    (pull, bare) per round, and the push pair."""

    latency_ms: int
    rounds: list[tuple[float, int, float, dict[str, int]]] = field(default_factory=list)
    cpus: list[tuple[float, float]] = field(default_factory=list)
    push_s: float = 0.0
    delivered: int = 0
    bare_push_s: float = 0.0
    bare_calls: int = 0

    def ratios(self) -> list[float]:
        return [(c["read"] / p) / (r / b) for b, r, p, c in self.rounds]

    def cpu_a_row(self) -> tuple[float, float]:
        """The median CPU seconds a row in this process: pull, bare."""
        return statistics.median(c[0] for c in self.cpus), statistics.median(c[1] for c in self.cpus)

    def push_ratio(self) -> float:
        return (self.delivered / self.push_s) / (self.bare_calls / self.bare_push_s)


def run_latency(
    args: argparse.Namespace, folder: Path, csv_path: Path, rows: list[dict[str, str]], latency_ms: int
) -> Figures:
    figures = Figures(latency_ms)
    proc, url = _serve_fake(csv_path, latency_ms)
    fake = psutil.Process(proc.pid)
    try:
        for n in range(args.rounds):
            db_url = f"sqlite:///{folder}/book-{latency_ms}-{n}.db"
            upgrade(db_url)
            settings = crm_settings(crm_settings_file(folder, db_url=db_url, crm_url=url))
            assert settings.crm is not None
            cpu = _Cpu(fake)
            started = time.perf_counter()
            bare_rows = bare_pull(url, 200)
            bare_pull_s = time.perf_counter() - started
            bare_cpu = cpu.lap()
            engine = make_engine(db_url)
            client = CrmClient(settings.crm)
            cpu.lap()
            started = time.perf_counter()
            pulled = pull_declines(
                settings, engine, client, now=NOW, since=DAY, until=DAY + timedelta(days=1)
            )
            pull_s = time.perf_counter() - started
            pull_cpu = cpu.lap()
            figures.rounds.append((bare_pull_s, bare_rows, pull_s, pulled.counts))
            read = pulled.counts["read"]
            figures.cpus.append((pull_cpu[0] / read, bare_cpu[0] / bare_rows))
            print(
                f"{latency_ms} ms, round {n + 1}: pull {pull_s:.2f} s ({read / pull_s:.0f} rows/s),"
                f" bare {bare_pull_s:.2f} s ({bare_rows / bare_pull_s:.0f} rows/s):"
                f" {(read / pull_s) / (bare_rows / bare_pull_s):.2f};"
                f" CPU a row: pull {pull_cpu[0] / read * 1e6:.0f} µs (fake {pull_cpu[1] / read * 1e6:.0f}),"
                f" bare {bare_cpu[0] / bare_rows * 1e6:.0f} µs (fake {bare_cpu[1] / bare_rows * 1e6:.0f});"
                f" load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            client.close()
            engine.dispose()

        if latency_ms:  # a book of its own, of a window short enough to push one change at a time
            db_url = f"sqlite:///{folder}/push-{latency_ms}.db"
            upgrade(db_url)
            settings = crm_settings(crm_settings_file(folder, db_url=db_url, crm_url=url))
            assert settings.crm is not None
            until = DAY + SPAN * min(1.0, args.push_declines / args.declines)
            with closing(CrmClient(settings.crm)) as client:
                engine = make_engine(db_url)
                pull_declines(settings, engine, client, now=NOW, since=DAY, until=until)
                engine.dispose()
        # else: the last round's book holds the changes to push
        engine = make_engine(db_url)
        client = CrmClient(settings.crm)
        started = time.perf_counter()
        pushed = push_changes(settings, engine, client, now=NOW + timedelta(hours=1), since=DAY)
        figures.push_s = time.perf_counter() - started
        figures.delivered = pushed.counts["delivered"]
        purchases = [r["purchase_id"] for r in rows if r["purchase_id"]][: figures.delivered]
        started = time.perf_counter()
        bare_push(url, purchases)
        figures.bare_push_s = time.perf_counter() - started
        figures.bare_calls = len(purchases)
        client.close()
        engine.dispose()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    report(args, figures)
    return figures


def report(args: argparse.Namespace, figures: Figures) -> None:
    bare_pull_s, bare_rows, pull_s, counts = figures.rounds[-1]
    read = counts["read"]
    print(f"--- latency {figures.latency_ms} ms")
    print(
        f"declines {args.declines}: pull read {read} (accepted {counts['accepted']}), bare read {bare_rows}"
    )
    print(f"pull       {pull_s:8.2f} s  {read / pull_s:10.0f} rows/s")
    print(f"bare pull  {bare_pull_s:8.2f} s  {bare_rows / bare_pull_s:10.0f} rows/s")
    ratios = figures.ratios()
    print(
        f"pull / bare throughput: {statistics.median(ratios):.2f}"
        + (
            f" (median of {len(ratios)} rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
            if len(ratios) > 1
            else ""
        )
    )
    pull_row, bare_row = figures.cpu_a_row()
    print(
        f"CPU a row in this process (median): pull {pull_row * 1e6:.0f} µs, bare {bare_row * 1e6:.0f} µs:"
        f" {bare_row / pull_row:.2f}"
    )
    delivered, push_s = figures.delivered, figures.push_s
    print(f"push       {push_s:8.2f} s  {delivered / push_s:10.0f} changes/s ({delivered} delivered)")
    print(
        f"bare push  {figures.bare_push_s:8.2f} s  {figures.bare_calls / figures.bare_push_s:10.0f} calls/s"
    )
    print(f"push / bare throughput: {figures.push_ratio():.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--declines", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--latency-ms", default="0", help="comma-separated fake latencies (ms), e.g. 0,20,100"
    )
    parser.add_argument(
        "--push-declines",
        type=int,
        default=400,
        help="at a latency, push the changes of a window of about this many declines",
    )
    args = parser.parse_args()
    latencies = [int(x) for x in args.latency_ms.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = feed_rows(args.declines, DAY)
        csv_path = write_csv(folder / "declines.csv", rows)
        for latency_ms in latencies:
            results.append(run_latency(args, folder, csv_path, rows, latency_ms))
    print()
    print(
        f"{'latency':>7} | {'pull rows/s':>11} {'bare rows/s':>11} {'pull/bare':>9} {'CPU µs pull':>11} "
        f"{'bare':>5} | {'push ch/s':>9} {'bare calls/s':>12} {'push/bare':>9}"
    )
    for f in results:
        bare_pull_s, bare_rows, pull_s, counts = f.rounds[-1]
        pull_row, bare_row = f.cpu_a_row()
        print(
            f"{f.latency_ms:>5}ms | {counts['read'] / pull_s:>11.0f} {bare_rows / bare_pull_s:>11.0f}"
            f" {statistics.median(f.ratios()):>9.2f} {pull_row * 1e6:>11.0f}"
            f" {bare_row * 1e6:>5.0f} | {f.delivered / f.push_s:>9.0f}"
            f" {f.bare_calls / f.bare_push_s:>12.0f} {f.push_ratio():>9.2f}"
        )


if __name__ == "__main__":
    main()
