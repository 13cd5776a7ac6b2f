"""Load benchmark of `serve`: 50 concurrent signed webhooks, inbox path vs the synchronous path.

Run: .venv/bin/python -m bench.webhook_load [--db sqlite|postgres|both] [--concurrency 50] [--rounds 6]

For each database, two fresh copies of one book of SUBMITTED RECYCLE hand-offs (each with its
RECYCLE_BILLING subscription and DECLINED rebill order, as bench.outcomes_benchmark builds them), and
on each the webhook service in a process of its own (services.outcomes.applying.apply_outcomes wired as `serve`
wires it):

- inline (baseline, the former path): each request applies its event to the hand-off before it
  answers, and applies the outcome to order and subscription after the answer (create_app's
  `apply_inline=True`).
- inbox: each request journals the delivery and puts it in the inbox, then answers; the service's
  single writer applies the inbox in batches, then the outcomes.

Each round, `--concurrency` threads wait at a barrier and then each post one signed `order.completed`
for a hand-off of its own (a distinct hand-off per post). The answer latency of every post counts:
p50, p99 and max per side, and the inbox's figures as ratios of the baseline's; FlexFactor waits 5 s,
the target is 1 s. Then it waits for every hand-off to be APPROVED with its outcome applied (nothing
queued, nothing in the inbox) and shows when that happened after the first post. Not a test: it prints
figures. PostgreSQL uses $RECYCLE_ENGINE_TEST_PG (admin DSN) and $RECYCLE_ENGINE_TEST_PG_URL, as the
test suite does, and drops its databases afterwards.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from sqlalchemy import Engine, func, insert, select

from bench.outcomes_benchmark import FAKE_ENV, ROOT, PostgresCopies, SqliteCopies, book
from recycle_engine.adapters.clock import SystemClock
from recycle_engine.config import load_settings
from recycle_engine.sandbox.signing import http_date, new_nonce, sign_webhook
from recycle_engine.storage.models import Handoff, Order, OutcomeQueue, Subscription, WebhookInbox

GATEWAY = "flexfactor-main"
SIGNING_KEY = FAKE_ENV["FLEXFACTOR_HMAC_SIGNING_KEY"]
VENDOR_WAIT_S = 5.0
TARGET_S = 1.0


# --- the service, in a process of its own ------------------------------------------------------------


def _serve_child(url: str, apply_inline: bool, ready: Connection, stop: EventType) -> None:
    from recycle_engine.services.outcomes.applying import apply_outcomes
    from recycle_engine.storage.db import make_engine
    from recycle_engine.web.webhook_app import create_app, serving

    settings = load_settings(ROOT / "settings.yaml", FAKE_ENV)
    engine = make_engine(url)
    clock = SystemClock()

    def on_accepted(ids: list[str]) -> None:
        apply_outcomes(settings, engine, now=clock.now(), handoff_ids=ids)

    app = create_app(settings, engine, clock, on_accepted=on_accepted, apply_inline=apply_inline)
    with serving(app) as base_url:
        ready.send(base_url)
        stop.wait()
    engine.dispose()


@contextmanager
def service(url: str, *, apply_inline: bool) -> Iterator[str]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve_child, args=(url, apply_inline, child, stop), daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the webhook service did not start")
        yield str(parent.recv())
    finally:
        stop.set()
        proc.join(60)
        if proc.is_alive():
            proc.kill()


# --- the load ------------------------------------------------------------------------------------------


def completed_event(handoff: dict[str, Any]) -> bytes:
    payload = {
        "Event": "order.completed",
        "TimeStamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
        "EventData": None,
        "ExternalOrderId": handoff["id"],
        "OrderId": handoff["flexfactor_order_id"],
        "ConfirmationId": None,
        "IsTestMode": True,
        "IsResent": False,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def post(session: requests.Session, hook_url: str, handoff: dict[str, Any]) -> float:
    """Sign and post one event; seconds until the answer. Raises unless it is a 200."""
    body = completed_event(handoff)
    nonce, date = new_nonce(), http_date(SystemClock().now())
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "x-fc-nonce": nonce,
        "x-fc-date": date,
        **sign_webhook(body, SIGNING_KEY, nonce=nonce, date=date, host=urlsplit(hook_url).netloc),
    }
    started = time.perf_counter()
    answer = session.post(hook_url, data=body, headers=headers, timeout=60)
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"webhook answered {answer.status_code}: {answer.text[:200]}")
    return elapsed


def load(base_url: str, handoffs: list[dict[str, Any]], concurrency: int, rounds: int) -> list[float]:
    hook_url = f"{base_url}/webhooks/flexfactor/{GATEWAY}"
    barrier = threading.Barrier(concurrency)
    sessions = [requests.Session() for _ in range(concurrency)]

    def worker(n: int) -> list[float]:
        latencies = []
        for r in range(rounds):
            barrier.wait()
            latencies.append(post(sessions[n], hook_url, handoffs[r * concurrency + n]))
        return latencies

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(worker, range(concurrency)))
    for s in sessions:
        s.close()
    return [x for per_worker in results for x in per_worker]


def all_applied(engine: Engine, expected: int, deadline_s: float = 300) -> None:
    """Wait until every hand-off is APPROVED and nothing is queued or in the inbox."""
    deadline = time.monotonic() + deadline_s
    while True:
        with engine.connect() as conn:
            approved = conn.execute(
                select(func.count()).select_from(Handoff).where(Handoff.state == "APPROVED")
            ).scalar_one()
            queued = conn.execute(select(func.count()).select_from(OutcomeQueue)).scalar_one()
            waiting = conn.execute(select(func.count()).select_from(WebhookInbox)).scalar_one()
        if approved == expected and queued == 0 and waiting == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"not applied: {approved}/{expected} approved, {queued} queued, {waiting} waiting"
            )
        time.sleep(0.05)


# --- one side on one database --------------------------------------------------------------------------


@dataclass
class Side:
    db: str
    path: str
    latencies: list[float]
    applied_s: float

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return self.pct(99)

    @property
    def worst(self) -> float:
        return max(self.latencies)


def run_side(
    db: str, copies: Any, url_of: Any, apply_inline: bool, handoffs: list[dict[str, Any]], args: Any
) -> Side:
    with copies.copy() as engine:
        url = url_of(engine)
        with service(url, apply_inline=apply_inline) as base_url:
            started = time.perf_counter()
            latencies = load(base_url, handoffs, args.concurrency, args.rounds)
            all_applied(engine, len(handoffs))
            applied_s = time.perf_counter() - started
    return Side(db, "inline" if apply_inline else "inbox", latencies, applied_s)


def fill(rows: int) -> tuple[list[dict[str, Any]], Any]:
    handoffs, subs, orders = book(rows)
    for h in handoffs:
        h.update(
            state="SUBMITTED", outcome_at=None, outcome_source=None, poll_count=0, updated_at=h["created_at"]
        )

    def write(engine: Engine) -> None:
        with engine.begin() as conn:
            for model, batch in ((Handoff, handoffs), (Subscription, subs), (Order, orders)):
                conn.execute(insert(model), batch)

    return handoffs, write


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    handoffs, write = fill(args.concurrency * args.rounds)
    sides: list[Side] = []
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        for db in dbs:
            copies: Any = SqliteCopies(Path(tmp)) if db == "sqlite" else PostgresCopies()
            try:
                copies.build(write)
                for apply_inline in (True, False):
                    print(f"{db}: {'inline' if apply_inline else 'inbox'}: {args.rounds} rounds of {args.concurrency} concurrent posts ...", flush=True)  # fmt: skip
                    sides.append(run_side(db, copies, _url_of, apply_inline, handoffs, args))
            finally:
                copies.close()
    print()
    print(
        f"{'database':<10} {'path':<7} {'posts':>5} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'all applied s':>14}"
    )
    for s in sides:
        print(f"{s.db:<10} {s.path:<7} {len(s.latencies):>5} {s.p50:>7.3f} {s.p99:>7.3f} {s.worst:>7.3f} {s.applied_s:>14.2f}")  # fmt: skip
    print()
    for db in dbs:
        base, new = (next(s for s in sides if s.db == db and s.path == p) for p in ("inline", "inbox"))
        verdict = "within" if new.worst <= TARGET_S else "misses"
        print(
            f"{db}: inbox / inline: p50 {new.p50 / base.p50:.2f}x, p99 {new.p99 / base.p99:.2f}x, "
            f"max {new.worst / base.worst:.2f}x; inbox max {new.worst:.3f} s {verdict} the {TARGET_S:g} s target "
            f"(FlexFactor waits {VENDOR_WAIT_S:g} s)"
        )


def _url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


if __name__ == "__main__":
    main()
