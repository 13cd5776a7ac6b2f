"""FlexFactorClient.evaluate throughput and CPU cost beside bare requests.Session POSTs, on the sandbox.

Starts `python -m recycle_engine sandbox --port P --latency-ms L` in its own process for each latency,
then, for each worker count, runs two arms for a fixed time with a ThreadPoolExecutor:

  client    FlexFactorClient.evaluate (token cache, throttle, retries, JSON parsing, status mapping)
  baseline  requests.Session.post on one pooled session with a token fetched once, nothing else

Both arms send distinct managed-MIT bodies (one template, a new orderId and idempotencyKey per call).
The throttle is set far above the achievable rate so that it costs its bookkeeping but never waits.
CPU is time.process_time() of this process (the sandbox runs in its own). Prints figures; asserts nothing.

    .venv/bin/python bench/client_throughput.py [--seconds 3] [--workers 1,16,64] [--latencies 0,100]
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from recycle_engine.adapters.clock import SystemClock
from recycle_engine.adapters.flexfactor_http import FlexFactorClient
from recycle_engine.adapters.flexfactor_payload import HandoffRequest, build_evaluate_body
from recycle_engine.config import BatchingSettings, FlexFactorSettings, HttpSettings
from recycle_engine.domain.states import Source

APP_KEY, APP_SECRET = "sandbox-app-key", "sandbox-app-secret"
MID, SITE_ID = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


@dataclass(frozen=True)
class Run:
    calls: int
    errors: int
    wall_s: float
    cpu_s: float

    @property
    def per_second(self) -> float:
        return self.calls / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_per_call(self) -> float:
        # CPU seconds per 1,000 calls equals CPU milliseconds per call.
        return self.cpu_s * 1000 / self.calls if self.calls else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def sandbox_process(latency_ms: int) -> Iterator[str]:
    """The sandbox CLI in a child process; yields its base URL once it listens."""
    port = free_port()
    command = [sys.executable, "-m", "recycle_engine", "--log-level", "WARNING", "sandbox"]
    command += ["--port", str(port), "--latency-ms", str(latency_ms)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()  # printed once the socket listens
        if "/v1" not in base_url:
            raise SystemExit(f"the sandbox did not start: {base_url!r}")
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def body_template() -> dict[str, Any]:
    now = datetime.now(UTC)
    request = HandoffRequest(
        source=Source.RECYCLE,
        submission_id="sub-template",
        idempotency_key=str(uuid.uuid4()),
        mid=MID,
        site_id=SITE_ID,
        expiry_at=now + timedelta(days=20),
        amount_minor=2749,
        currency="USD",
        transaction_id="txn-bench",
        declined_at=now - timedelta(hours=1),
        response_code="51",
        response_text="Insufficient funds",
        processor_type="nmi",
        card_token="tok_bench_0001",
        card_bin="400000",
        card_last4="3184",
        card_exp_month=9,
        card_exp_year=2030,
        email="bench@example.com",
        phone="+15551234567",
        first_name="Bench",
        last_name="Mark",
        country="US",
        purchase_id="P-bench",
        billing_interval_days=30,
        regular_price_minor=2999,
        billing_cycle=4,
    )
    return build_evaluate_body(request)


def fresh(template: dict[str, Any]) -> dict[str, Any]:
    # The same cheap work in both arms: a new hand-off id and key on a shallow copy.
    return {**template, "orderId": f"sub-{uuid.uuid4()}", "idempotencyKey": str(uuid.uuid4())}


def drive(call: Callable[[], None], workers: int, seconds: float) -> Run:
    """Run `call` from `workers` threads until `seconds` have passed; count calls, errors, CPU."""
    deadline = time.monotonic() + seconds
    counts = [0] * workers
    errors = [0] * workers
    barrier = threading.Barrier(workers + 1)

    def worker(i: int) -> None:
        barrier.wait()
        while time.monotonic() < deadline:
            try:
                call()
                counts[i] += 1
            except Exception:
                errors[i] += 1

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(worker, i) for i in range(workers)]
        cpu0, wall0 = time.process_time(), time.monotonic()
        barrier.wait()
        for future in futures:
            future.result()
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    return Run(sum(counts), sum(errors), wall, cpu)


def client_arm(base_url: str, workers: int, seconds: float, template: dict[str, Any]) -> Run:
    settings = FlexFactorSettings(
        base_url=base_url,
        app_key=APP_KEY,
        app_secret=APP_SECRET,
        mid=MID,
        site_id=SITE_ID,
        environment_key="unused",
        hmac_signing_key="dW51c2Vk",
    )
    batching = BatchingSettings(concurrency=workers, rate_limit_per_second=1_000_000)
    with FlexFactorClient(settings, HttpSettings(), batching, SystemClock(), gateway_id="bench") as client:
        client.evaluate(fresh(template))  # warm: token and one connection

        def call() -> None:
            client.evaluate(fresh(template))

        return drive(call, workers, seconds)


def baseline_arm(base_url: str, workers: int, seconds: float, template: dict[str, Any]) -> Run:
    with requests.Session() as session:
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(workers, 10), max_retries=0)
        session.mount("http://", adapter)
        answer = session.post(
            f"{base_url}/oauth2/token", json={"AppKey": APP_KEY, "AppSecret": APP_SECRET}, timeout=(5, 30)
        )
        headers = {"Authorization": f"Bearer {answer.json()['accessToken']}", "Accept": "application/json"}
        url = f"{base_url}/evaluate"
        session.post(url, json=fresh(template), headers=headers, timeout=(5, 30)).raise_for_status()

        def call() -> None:
            session.post(url, json=fresh(template), headers=headers, timeout=(5, 30)).raise_for_status()

        return drive(call, workers, seconds)


def baseline_processes(
    base_url: str, processes: int, workers: int, seconds: float, template: dict[str, Any]
) -> Run:
    """baseline_arm in `processes` processes at once (as many as a run has workers), summed: what bare
    clients get from the same sandbox at the same total concurrency. CPU is the processes' own."""
    start_at = time.time() + 1.0 + 0.3 * processes  # past every process's start-up
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        runs = pool.starmap(_baseline_at, [(base_url, workers, seconds, template, start_at)] * processes)
    return Run(
        sum(r.calls for r in runs),
        sum(r.errors for r in runs),
        max(r.wall_s for r in runs),
        sum(r.cpu_s for r in runs),
    )


def _baseline_at(
    base_url: str, workers: int, seconds: float, template: dict[str, Any], start_at: float
) -> Run:
    time.sleep(max(0.0, start_at - time.time()))
    return baseline_arm(base_url, workers, seconds, template)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per arm and cell")
    parser.add_argument("--workers", default="1,16,64", help="comma-separated worker counts")
    parser.add_argument("--latencies", default="0,100", help="comma-separated sandbox latencies (ms)")
    args = parser.parse_args()
    workers_list = [int(w) for w in args.workers.split(",")]
    latencies = [int(lat) for lat in args.latencies.split(",")]
    template = body_template()

    print("sandbox: separate process via `python -m recycle_engine sandbox --port P --latency-ms L`")
    print(f"{args.seconds:g} s per arm; CPU is this process only (client side)\n")
    header = (
        f"{'latency':>7} {'workers':>7} | {'client/s':>9} {'base/s':>9} {'ratio':>6} | "
        f"{'client cpu s/1k':>15} {'base cpu s/1k':>13} {'ratio':>6} | {'errors c/b':>10}"
    )
    print(header)
    print("-" * len(header))
    for latency in latencies:
        with sandbox_process(latency) as base_url:
            for workers in workers_list:
                client = client_arm(base_url, workers, args.seconds, template)
                base = baseline_arm(base_url, workers, args.seconds, template)
                throughput_ratio = client.per_second / base.per_second if base.per_second else float("nan")
                cpu_ratio = client.cpu_ms_per_call / base.cpu_ms_per_call
                print(
                    f"{latency:>5}ms {workers:>7} | {client.per_second:>9.1f} {base.per_second:>9.1f} "
                    f"{throughput_ratio:>6.2f} | {client.cpu_ms_per_call:>15.3f} {base.cpu_ms_per_call:>13.3f} "
                    f"{cpu_ratio:>6.2f} | {client.errors:>4}/{base.errors:<5}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
