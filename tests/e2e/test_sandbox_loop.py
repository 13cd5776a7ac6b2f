"""The README's loop against the bundled sandbox, with the settings `recycle-engine sandbox` prints, as
printed: sandbox, db upgrade, import, submit, serve, a webhook, reconcile, report."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT

GATEWAY = "flexfactor-main"  # the FlexFactor gateway of the shipped settings.yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(printed: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXFACTOR_")}
    return env | printed | {"RECYCLE_ENGINE_CONFIG": ""}


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(url, timeout=1).raise_for_status()
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_given_the_settings_the_sandbox_prints_when_the_readme_loop_runs_then_a_report_comes_out(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    # given: the sandbox, started as the README says, and what it prints
    serve_port = _free_port()
    sandbox = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recycle_engine",
            "sandbox",
            "--port",
            "0",
            "--webhook-url",
            f"http://127.0.0.1:{serve_port}/webhooks/flexfactor/{GATEWAY}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    processes.append(sandbox)
    assert sandbox.stdout is not None
    printed: list[str] = []
    while not printed or not printed[-1].startswith("export FLEXFACTOR_HMAC_SIGNING_KEY="):
        printed.append(sandbox.stdout.readline().rstrip("\n"))
    base_url = printed[0]
    [base_url_line] = [line for line in printed if line.startswith("#   base_url: ")]
    env = _env(
        dict(line.removeprefix("export ").split("=", 1) for line in printed if line.startswith("export "))
    )
    admin = base_url.removesuffix("/v1") + "/_sandbox"
    _wait_for(f"{admin}/health")
    site = tmp_path / "site"
    (site / "var").mkdir(parents=True)
    settings = (ROOT / "settings.yaml").read_text(encoding="utf-8")
    settings = settings.replace(
        "base_url: https://api-sandbox.flexfactor.io/v1", base_url_line.removeprefix("#   ")
    )
    (site / "settings.yaml").write_text(settings, encoding="utf-8")
    shutil.copyfile(ROOT / "recycle_engine" / "sample" / "declines-sample.csv", site / "feed.csv")

    def cli(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "recycle_engine", "--log-level", "WARNING", *args],
            cwd=site,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    # when: the loop
    cli("db", "upgrade")
    cli("import", "declines", "feed.csv")
    today = datetime.now(UTC).replace(microsecond=0)
    for days in (0, 3, 5, 7):  # the nights that bring the sample's attempts to a FlexFactor slot
        at = (today + timedelta(days=days)).isoformat()
        requests.post(f"{admin}/clock", json={"now": at}, timeout=5).raise_for_status()
        cli("run", "submit", "--at", at)
    requests.post(f"{admin}/clock", json={"now": datetime.now(UTC).isoformat()}, timeout=5).raise_for_status()
    serve = subprocess.Popen(
        [sys.executable, "-m", "recycle_engine", "serve", "--port", str(serve_port)],
        cwd=site,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    processes.append(serve)
    _wait_for(f"http://127.0.0.1:{serve_port}/healthz")
    handoffs = [json.loads(line) for line in cli("export", "submissions", "--format", "jsonl").splitlines()]
    submitted = [h for h in handoffs if h["state"] == "SUBMITTED"]
    assert submitted, handoffs
    rescued = submitted[0]
    sent = requests.post(
        f"{admin}/webhooks/send",
        json={"flexfactor_order_id": rescued["flexfactor_order_id"], "event": "order.completed"},
        timeout=10,
    )
    cli("run", "reconcile")
    cli("run", "report", "--date", datetime.now(UTC).date().isoformat())

    # then
    assert sent.json() == {"delivered": True, "error": None}
    after = {
        h["submission_id"]: h
        for h in map(json.loads, cli("export", "submissions", "--format", "jsonl").splitlines())
    }
    assert after[rescued["submission_id"]]["state"] == "APPROVED"
    assert after[rescued["submission_id"]]["outcome_source"] == "WEBHOOK"
    assert not [h for h in after.values() if h["state"] == "FAILED"]
    assert list((site / "reports" / "out").glob("recovery-*.html"))
