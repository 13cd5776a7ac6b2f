"""`run submit --workers N` for N = 1, 2, 4 on one PostgreSQL book: throughput and speed-up against 1 worker.

Each worker count gets a fresh copy of the same book (bench/book.py's template, as in
bench/submit_benchmark.py) and a fresh sandbox process at the same latency. The settings give every
worker `--concurrency` requests in flight and share `--rate-limit` among the workers, so the gateway
bounds a run at min(rate limit, workers x concurrency / latency) hand-offs a second; the table prints
that bound beside the measured rate. Beside it, measured in the same run on the same sandbox: bare
`requests` clients in as many processes as the run has workers, each with `--concurrency` threads
(bench/client_throughput.py's baseline arm), which is what the gateway and this machine give a client
that does nothing else. A run near both is limited by the gateway; one well below them is limited by
the engine or the machine (the CPU columns and the load average tell which). Prints figures; exits
with 1 when a hand-off failed.

    .venv/bin/python -m bench.workers_benchmark [--workers 1,2,4] [--latency 100] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import time

from bench.book import BookShape
from bench.client_throughput import Run, baseline_processes, body_template
from bench.submit_benchmark import (
    SubmitRun,
    book_copy,
    book_template,
    ratio,
    sandbox,
    submit_night,
)


def _bound(workers: int, concurrency: int, latency_ms: int, rate_limit: float) -> float:
    by_latency = workers * concurrency / (latency_ms / 1000) if latency_ms else float("inf")
    return min(rate_limit, by_latency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--subscriptions", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=50_000)
    parser.add_argument(
        "--workers", default="1,2,4", help="comma-separated worker counts; the first is the base"
    )
    parser.add_argument("--latency", type=int, default=100, help="sandbox latency (ms)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight per worker")
    parser.add_argument("--rate-limit", type=float, default=10_000, help="FlexFactor's limit, shared (1/s)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--baseline-seconds", type=float, default=8.0)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    shape = BookShape(subscriptions=args.subscriptions, due=args.due)
    template, book = book_template(shape, rebuild=False)
    print(
        f"book: {shape.subscriptions:,} subscriptions, {shape.due:,} due ({book.due_flexfactor:,} on "
        f"FlexFactor slots); latency {args.latency} ms, concurrency {args.concurrency} per worker, "
        f"rate limit {args.rate_limit:g}/s shared, batch {args.batch_size}; {os.cpu_count()} cores"
    )
    runs: list[tuple[int, SubmitRun, Run, float]] = []
    troubles: list[str] = []
    bodies = body_template()
    for workers in counts:
        load = os.getloadavg()[0]
        with sandbox(args.latency) as box, book_copy(template, f"w{workers}") as url:
            # The baseline's bodies are dated now, so it runs before the clock is set to the night.
            bare = baseline_processes(box.base_url, workers, args.concurrency, args.baseline_seconds, bodies)
            started = time.perf_counter()
            run = submit_night(
                url,
                box,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                workers=workers,
                rate_limit_per_second=args.rate_limit,
            )
            print(f"  {workers} workers: {time.perf_counter() - started:.0f} s", flush=True)
        runs.append((workers, run, bare, load))
        troubles += [f"{workers} workers: {line}" for line in run.problems()]
        if bare.errors:
            troubles.append(f"{workers} workers: the bare baseline had {bare.errors:,} failed calls")
    base = runs[0][1].per_second
    header = (
        f"{'workers':>7} | {'wall s':>7} {'handoffs':>8} {'NOT ho':>6} | {'ho/s':>7} {'speed-up':>8} | {'bound/s':>7} "
        f"{'of bound':>8} | {'bare/s':>7} {'of bare':>7} | {'cpu s/1k':>8} {'bare':>5} | {'sb cpu s':>8} "
        f"{'RSS MB':>6} {'sum MB':>6} | {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for workers, run, bare, load in runs:
        bound = _bound(workers, args.concurrency, args.latency, args.rate_limit)
        print(
            f"{workers:>7} | {run.wall_s:7.1f} {run.handoffs:>8,} {sum(run.not_handed_off.values()):>6,} | {run.per_second:7.1f} "
            f"{ratio(run.per_second, base):8.2f} | {bound:7.0f} {run.per_second / bound:8.2f} | "
            f"{bare.per_second:7.1f} {ratio(run.per_second, bare.per_second):7.2f} | "
            f"{run.cpu_per_1000:8.2f} {bare.cpu_ms_per_call:5.2f} | {run.sandbox_cpu_s:8.1f} "
            f"{run.peak_rss_mb:6.0f} {run.total_rss_mb:6.0f} | {load:5.2f}"
        )
    print(
        "\nhandoffs are those FlexFactor accepted; NOT ho those refused, unanswered, never sent or left "
        "unsent. ho/s is accepted hand-offs over the whole run (start-up, claim, processor attempts, recording and the "
        "report rollups included); bare/s is bare clients in as many processes, over a fixed time. "
        "cpu s/1k is the engine's CPU seconds per 1,000 hand-offs (every process), bare the bare "
        "clients' per 1,000 calls. RSS MB is the largest single process, sum MB the sum of every "
        "process's peak."
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


if __name__ == "__main__":
    main()
