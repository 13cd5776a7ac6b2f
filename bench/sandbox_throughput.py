"""How many /v1/evaluate calls per second the sandbox serves on loopback (target: 2,000/s).

Starts `python -m recycle_engine sandbox` in its own process, then drives it from this one over
keep-alive connections, either with http.client in threads or with raw asyncio streams (lighter, so the
client is less of a bottleneck on a small machine). Every call is a distinct managed-MIT hand-off.

    .venv/bin/python bench/sandbox_throughput.py [--seconds 10] [--client asyncio|threads] [--connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil

DEFAULT_MID = "11111111-1111-4111-8111-111111111111"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_sandbox(port: int) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "recycle_engine",
        "--log-level",
        "WARNING",
        "sandbox",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # the base URL, printed once the socket listens
    if "/v1" not in line:
        process.kill()
        raise SystemExit(f"the sandbox did not start: {line!r}")
    return process


def get_token(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"AppKey": "sandbox-app-key", "AppSecret": "sandbox-app-secret"})
    connection.request("POST", "/v1/oauth2/token", body, {"Content-Type": "application/json"})
    answer = connection.getresponse()
    token: str = json.loads(answer.read())["accessToken"]
    connection.close()
    return token


def body_template() -> str:
    """A full MIT evaluate body with %(order_id)s and %(key)s placeholders, built once."""
    expiry = (datetime.now(UTC) + timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body: dict[str, Any] = {
        "isDeclined": True,
        "isMIT": True,
        "isRecurring": True,
        "expiryDateUtc": expiry,
        "mid": DEFAULT_MID,
        "siteId": "22222222-2222-4222-8222-222222222222",
        "orderId": "ORDER_ID",
        "idempotencyKey": "IDEMPOTENCY_KEY",
        "transaction": {
            "id": "txn-1",
            "amount": 2749,
            "currency": "USD",
            "timestampUtc": "2026-06-12T14:30:00Z",
            "timezoneUtcOffset": -5,
            "responseCode": "51",
            "responseCodeSource": "nmi",
            "responseStatus": "DECLINED",
            "responseDescription": "Insufficient funds",
            "avsResultCode": "Y",
            "cvvResultCode": "NA",
            "cavvResultCode": "NA",
            "cardNotPresent": True,
        },
        "subscription": {"subscriptionId": "P-1", "interval": "monthly", "price": 2999, "currency": "USD"},
        "payer": {"email": "jo@example.com", "phone": "+15551234567", "id": "C-42"},
        "billingInformation": {
            "firstName": "Jo",
            "lastName": "Doe",
            "addressLine1": "1 Main St",
            "city": "X",
        },
        "paymentMethod": {"cardNumber": "tok_bench_4242", "token": True, "cardLast4Digits": "4242"},
    }
    text = json.dumps(body)
    return text.replace("ORDER_ID", "%(order_id)s").replace("IDEMPOTENCY_KEY", "%(key)s")


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0


def run_threads(port: int, token: str, seconds: float, connections: int) -> Tally:
    template, tally, lock = body_template(), Tally(), threading.Lock()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        ok = failed = 0
        while time.perf_counter() < deadline:
            body = template % {"order_id": uuid.uuid4().hex, "key": uuid.uuid4()}
            connection.request("POST", "/v1/evaluate", body, headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status == 200:
                ok += 1
            else:
                failed += 1
        connection.close()
        with lock:
            tally.ok += ok
            tally.failed += failed

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


async def run_asyncio(port: int, token: str, seconds: float, connections: int) -> Tally:
    template, tally = body_template(), Tally()
    head = (
        "POST /v1/evaluate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: %d\r\n\r\n"
    )
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            body = (template % {"order_id": uuid.uuid4().hex, "key": uuid.uuid4()}).encode()
            writer.write((head % len(body)).encode() + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status_line.split(b" ", 2)[1] == b"200":
                tally.ok += 1
            else:
                tally.failed += 1
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client", choices=("asyncio", "threads"), default="asyncio")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    port = free_port()
    process = start_sandbox(port)
    server = psutil.Process(process.pid)
    try:
        token = get_token(port)
        run_threads(port, token, 1.0, 2)  # warm-up: token cache, allocator, branch predictors
        cpu_before = server.cpu_times()
        started = time.perf_counter()
        if args.client == "threads":
            tally = run_threads(port, token, args.seconds, args.connections)
        else:
            tally = asyncio.run(run_asyncio(port, token, args.seconds, args.connections))
        elapsed = time.perf_counter() - started
        cpu_after = server.cpu_times()
    finally:
        process.terminate()
        process.wait(timeout=10)
    server_cpu_s = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    per_call_us = server_cpu_s / max(tally.ok, 1) * 1e6
    print(
        f"/v1/evaluate: {tally.ok} ok, {tally.failed} failed in {elapsed:.1f} s = {tally.ok / elapsed:,.0f} calls/s "
        f"({args.client} client, {args.connections} keep-alive connections)"
    )
    print(
        f"sandbox process: {server_cpu_s:.1f} CPU s = {per_call_us:.0f} us per call, "
        f"so about {1e6 / per_call_us:,.0f} calls/s on one free core"
    )


if __name__ == "__main__":
    main()
