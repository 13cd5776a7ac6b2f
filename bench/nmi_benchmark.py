"""A night of NMI attempts beside FlexFactor hand-offs, with a bare NMI client measured in the same run.

The NMI fake and the FlexFactor sandbox each run in a process of their own on loopback; the book is a
temporary SQLite file (claims run in a thread, so this process's CPU covers the whole night).

  engine   run_submit in this process over N NMI attempts (attempt 1) and N FlexFactor hand-offs
           (attempt 4): CPU seconds of this process (time.process_time), wall seconds
  nmi-only the same with N NMI attempts and no hand-offs
  bare     N sales through one requests.Session to the same fake at the same concurrency: form post
           and key=value parse, nothing recorded

Prints CPU per attempt for each arm and the ratios; exits with 1 when an attempt or hand-off failed. Not part of the test suite.

    .venv/bin/python -m bench.nmi_benchmark [--attempts 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import requests

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.bootstrap import flexfactor_clients, processors
from recycle_engine.domain.night import Night
from recycle_engine.services.nightly.submit import run_submit
from recycle_engine.storage.db import make_engine, upgrade
from tests.factories import (
    NMI_TEST_KEY,
    SANDBOX_ENV,
    a_settings_file,
    insert_recycling_many,
    load_test_settings,
)

NIGHT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serving(args: list[str], env: dict[str, str], health: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", *args], env=os.environ | env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(health, timeout=1).raise_for_status()
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def engine_night(
    folder: Path, nmi_url: str, ff_url: str, n_nmi: int, n_ff: int, concurrency: int
) -> tuple[float, float, list[str]]:
    """CPU and wall seconds of the night, and what went wrong in it (empty when every NMI attempt was
    charged and every hand-off accepted)."""
    db_url = f"sqlite:///{folder}/book.db"
    upgrade(db_url)
    settings_path = a_settings_file(
        folder, db_url=db_url, base_url=ff_url, nmi_url=nmi_url, batch_size=500, concurrency=concurrency
    )
    settings = load_test_settings(settings_path)
    engine = make_engine(db_url)
    insert_recycling_many(engine, n_nmi, due_on=date(2026, 6, 10), attempt=1, prefix="n")
    if n_ff:
        insert_recycling_many(engine, n_ff, due_on=date(2026, 6, 10), attempt=4, prefix="f")
    clients = flexfactor_clients(settings, FixedClock(NIGHT))
    cpu, wall = time.process_time(), time.perf_counter()
    # The sandbox's clock stands at NIGHT, so FlexFactor's window counts from it too.
    result = run_submit(
        settings,
        engine,
        clients,
        processors(settings),
        night=Night.of(NIGHT, settings.timezone),
        send_clock=FixedClock(NIGHT),
    )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    engine.dispose()
    counts = result.counts
    wrong = [f"{key} {counts[key]}" for key in ("failed", "unknown", "not_sent", "unsent") if counts.get(key)]
    if counts.get("charged", 0) != n_nmi:
        wrong.append(f"charged {counts.get('charged', 0)} of {n_nmi} NMI attempts")
    if counts.get("accepted", 0) != n_ff:
        wrong.append(f"accepted {counts.get('accepted', 0)} of {n_ff} hand-offs")
    return cpu, wall, wrong


def bare_sales(nmi_url: str, n: int, concurrency: int) -> tuple[float, float]:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=concurrency)
    session.mount("http://", adapter)

    def sale(i: int) -> str:
        form = {
            "security_key": NMI_TEST_KEY,
            "type": "sale",
            "customer_vault_id": f"bare-{i}",
            "amount": "49.99",
            "currency": "USD",
            "orderid": f"bare-{i}",
            "dup_seconds": "0",
        }
        body = session.post(f"{nmi_url}/api/transact.php", data=form, timeout=(5, 30)).text
        return dict(parse_qsl(body))["response"]

    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(sale, range(n)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert len(answers) == n
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attempts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the sandbox's scripted rejections would flood the output
    n, conc = args.attempts, args.concurrency
    nmi_port, ff_port = _free_port(), _free_port()
    nmi_args = ["recycle_engine.nmi_fake", "--port", str(nmi_port), "--default-code", "202"]
    ff_args = ["recycle_engine", "sandbox", "--port", str(ff_port)]
    nmi_url, ff_url = f"http://127.0.0.1:{nmi_port}", f"http://127.0.0.1:{ff_port}/v1"
    with (
        _serving(nmi_args, {"NMI_FAKE_SECURITY_KEY": NMI_TEST_KEY}, f"{nmi_url}/_fake/health"),
        _serving(ff_args, SANDBOX_ENV, f"http://127.0.0.1:{ff_port}/_sandbox/health"),
        tempfile.TemporaryDirectory() as mixed,
        tempfile.TemporaryDirectory() as alone,
    ):
        # The book's declines are dated on NIGHT: the sandbox stands there, as the tests' sandboxes do.
        requests.post(
            f"http://127.0.0.1:{ff_port}/_sandbox/clock",
            json={"now": NIGHT.isoformat(), "frozen": True},
            timeout=10,
        ).raise_for_status()
        bare_cpu, bare_wall = bare_sales(nmi_url, n, conc)
        only_cpu, only_wall, only_wrong = engine_night(Path(alone), nmi_url, ff_url, n, 0, conc)
        mixed_cpu, mixed_wall, mixed_wrong = engine_night(Path(mixed), nmi_url, ff_url, n, n, conc)
    bare_ms, only_ms = 1000 * bare_cpu / n, 1000 * only_cpu / n
    print(f"attempts per arm: {n} NMI (mixed night: + {n} FlexFactor hand-offs), concurrency {conc}")
    print(f"bare client      CPU {bare_ms:.3f} ms/sale     wall {bare_wall:.2f} s")
    print(
        f"engine NMI only  CPU {only_ms:.3f} ms/attempt  wall {only_wall:.2f} s  ({only_ms / bare_ms:.1f}x bare)"
    )
    print(
        f"engine mixed     CPU {1000 * mixed_cpu / (2 * n):.3f} ms/attempt (NMI and hand-offs)  wall {mixed_wall:.2f} s"
    )
    troubles = [f"NMI only: {w}" for w in only_wrong] + [f"mixed: {w}" for w in mixed_wrong]
    if troubles:
        print("\n" + "!" * 100)
        print("NOT A MEASUREMENT: attempts or hand-offs failed, so the figures above do not measure a night.")
        for line in troubles:
            print(f"  {line}")
        print("!" * 100)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
