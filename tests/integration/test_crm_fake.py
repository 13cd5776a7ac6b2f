"""The CRM fake over real HTTP: its latency holds each answer, and calls made at once are served at once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import requests

from recycle_engine.adapters.crm_http import CrmClient
from recycle_engine.crm_fake.server import start_fake_crm
from recycle_engine.crm_fake.state import FakeCrm
from recycle_engine.errors import CrmError
from tests.crm_helpers import CRM_LOGIN, CRM_PASSWORD, crm_settings, crm_settings_file

WINDOW = {"startDate": "06/01/2026", "endDate": "06/02/2026", "responseType": "SOFT_DECLINE"}


def test_given_a_latency_when_two_calls_are_made_at_once_then_both_are_answered_and_held_together(
    tmp_path: Path,
) -> None:
    # given: a latency far longer than the test, so an answer is only ever held
    running = start_fake_crm(FakeCrm(CRM_LOGIN, CRM_PASSWORD, latency_ms=600_000))
    path = crm_settings_file(tmp_path, db_url=f"sqlite:///{tmp_path}/unused.db", crm_url=running.url)
    crm = crm_settings(path).crm
    assert crm is not None
    client = CrmClient(crm, sleep=lambda _s: None)
    returned: list[str] = []

    def one_call() -> None:
        try:
            client.query_page("/transactions/query/", WINDOW, 1)
        except CrmError:
            pass  # the server stopped under it
        returned.append(threading.current_thread().name)

    callers = [threading.Thread(target=one_call, name=f"caller-{n}", daemon=True) for n in (1, 2)]

    # when
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 10
    while len([e for e in running.fake.log() if "result" in e]) < 2:
        assert time.monotonic() < deadline, "the fake did not answer two calls at once within 10 s"
        time.sleep(0.01)

    # then: both answered by the fake, both held by its latency, each logged beside the other
    assert running.fake.in_flight() == {"/transactions/query/": 2}
    assert returned == []
    assert [e["alongside"] for e in running.fake.log()] == [["/transactions/query/"]] * 2
    running.stop()  # lets the held answers go
    for caller in callers:
        caller.join(timeout=10)
    assert sorted(returned) == ["caller-1", "caller-2"]
    client.close()


def test_given_an_update_when_the_purchases_are_read_then_they_show_it_and_answers_already_written_do_not(
    tmp_path: Path,
) -> None:
    # given: a purchase, and a query answered (written, not yet sent) before the purchase changes
    fake = FakeCrm(CRM_LOGIN, CRM_PASSWORD)
    fake.purchases["P-1"] = {"purchaseId": "P-1", "status": "ACTIVE"}
    running = start_fake_crm(fake)
    credentials = {"loginId": CRM_LOGIN, "password": CRM_PASSWORD}
    earlier = fake.call("/purchase/query/", {**credentials, "purchaseId": "P-1"}, "127.0.0.1")
    path = crm_settings_file(tmp_path, db_url=f"sqlite:///{tmp_path}/unused.db", crm_url=running.url)
    crm = crm_settings(path).crm
    assert crm is not None
    client = CrmClient(crm, sleep=lambda _s: None)

    # when
    client.update("/purchase/update/", {"purchaseId": "P-1", "status": "RECYCLE_BILLING"})
    shown = requests.get(f"{running.url}/_fake/purchases", timeout=10).json()

    # then
    assert shown["P-1"]["status"] == "RECYCLE_BILLING"
    assert earlier.body is not None
    assert earlier.body["message"]["data"][0]["status"] == "RECYCLE_BILLING"  # the record itself
    assert earlier.text is not None
    assert json.loads(earlier.text)["message"]["data"][0]["status"] == "ACTIVE"  # as it was answered
    client.close()
    running.stop()
