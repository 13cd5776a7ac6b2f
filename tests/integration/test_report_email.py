"""The report by e-mail, against a real SMTP server on loopback (aiosmtpd), on SQLite and PostgreSQL."""

from __future__ import annotations

import email
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from click.testing import CliRunner
from freezegun import freeze_time
from sqlalchemy import Engine, select, text

from recycle_engine.adapters.smtp_mail import send_message
from recycle_engine.cli import main
from recycle_engine.config import Settings, load_settings
from recycle_engine.domain.anomalies import Anomaly
from recycle_engine.domain.night import Night
from recycle_engine.jobs import daily_report
from recycle_engine.services.reporting.report import run_report
from recycle_engine.services.reporting.report_email import email_report, report_files
from recycle_engine.services.reporting.status import gather_status, render_status
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import NightAnomaly, ReportDelivery
from tests.conftest import FixedClock
from tests.integration.test_report import DAY, ENV, NOW, SETTINGS_YAML, seed

PASSWORD = "s3cret-Smtp-Pa55"
USER = "report-bot"
MAIL_ENV = ENV | {"SMTP_USER": USER, "SMTP_PASSWORD": PASSWORD}


@dataclass
class Inbox:
    """What the SMTP server received, and how it is told to behave."""

    messages: list[tuple[Envelope, Message]] = field(default_factory=list)
    refuse_rcpt: bool = False
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)
    password: bytes = PASSWORD.encode()  # the one it takes
    echo_login: bool = False  # refuse recipients with an answer that repeats the login, as some servers do

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.echo_login:
            return f"550 5.7.1 {USER} with password {PASSWORD} may not send to {address}"
        if self.refuse_rcpt:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTPServer, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.messages.append((envelope, email.message_from_bytes(raw)))
        return "250 Message accepted"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login, auth_data.password))
        ok = auth_data.login == USER.encode() and auth_data.password == self.password
        return AuthResult(success=ok, handled=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=inbox.authenticate,
        auth_require_tls=False,
        ready_timeout=10,
    )
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def mail_settings(tmp_path: Path, db_url: str, port: int, **overrides: Any) -> Settings:
    keys = {"host": "127.0.0.1", "port": port, "starttls": "false", "backoff_s": 5, "attempts": 3} | overrides
    block = "".join(f"    {k}: {v}\n" for k, v in keys.items())
    yaml_text = SETTINGS_YAML.replace(
        "reports: {{output_dir: {out}, fee_percent: 2.5}}\n",
        "reports:\n  output_dir: {out}\n  email:\n"
        + block.replace("{", "{{").replace("}", "}}")
        + "    from_address: reports@example.com\n"
        + "    to: [billing@example.com, finance@example.com]\n"
        + "    username: ${{SMTP_USER}}\n    password: ${{SMTP_PASSWORD}}\n",
    )
    path = tmp_path / "settings.yaml"
    path.write_text(yaml_text.format(url=db_url, out=tmp_path / "out"), encoding="utf-8")
    return load_settings(path, MAIL_ENV)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    seed(eng)
    yield eng
    eng.dispose()


def deliveries(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(ReportDelivery)))


def ours_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record the engine logged, with its extra fields (the test server's own log left out)."""
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records if r.name != "mail.log")


def attachments(message: Message) -> dict[str, bytes]:
    found = {}
    for part in message.walk():
        name = part.get_filename()
        if name:
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found[name] = payload
    return found


def test_given_a_report_when_it_is_emailed_then_it_arrives_with_both_files_and_a_rerun_sends_nothing(
    db_url: str, engine: Engine, smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    # given
    inbox, port = smtp
    settings = mail_settings(tmp_path, db_url, port)
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    clock = FixedClock(NOW + timedelta(minutes=1))
    # when
    first = email_report(
        settings, engine, report_files(result), send=send_message, clock=clock, sleep=pytest.fail
    )
    again = email_report(
        settings, engine, report_files(result), send=send_message, clock=clock, sleep=pytest.fail
    )
    # then: one mail, the summary in its body, the HTML and the CSV attached byte for byte
    assert (first.state, first.attempts) == ("SENT", 1)
    assert again.state == "ALREADY_SENT"
    assert len(inbox.messages) == 1
    envelope, message = inbox.messages[0]
    assert sorted(envelope.rcpt_tos) == ["billing@example.com", "finance@example.com"]
    subject = " ".join(str(message["Subject"]).split())  # long headers are folded on the wire
    assert subject == "Recovery report 2026-06-12: recovered 25.00 EUR, 57.00 USD; 10 exceptions to act on"
    assert message["From"] == "reports@example.com"
    body = next(p for p in message.walk() if p.get_content_type() == "text/plain" and not p.get_filename())
    body_text = body.get_payload(decode=True)
    assert isinstance(body_text, bytes)
    assert result.summary_text
    assert result.summary_text.strip() in body_text.decode().replace("\r\n", "\n")
    files = attachments(message)
    assert files == {
        "recovery-2026-06-12.html": result.html_path.read_bytes(),
        "recovery-2026-06-12.csv": result.csv_path.read_bytes(),
    }
    rows = deliveries(engine)
    assert [(r.day, r.channel, r.state, r.attempts) for r in rows] == [(DAY, "email", "SENT", 1)]
    assert inbox.logins == [(USER.encode(), PASSWORD.encode())]


def test_given_an_unreachable_server_when_the_report_is_emailed_then_it_is_retried_with_backoff_and_recorded(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # given: a port nothing listens on
    settings = mail_settings(tmp_path, db_url, free_port(), timeout_s=5)
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    waits: list[float] = []
    alerted: list[Anomaly] = []

    def alert(a: Anomaly) -> bool:
        alerted.append(a)
        return True

    # when
    outcome = email_report(
        settings,
        engine,
        report_files(result),
        send=send_message,
        clock=FixedClock(NOW),
        sleep=waits.append,
        alert=alert,
    )
    # then: three tries, waits of 5 s then 10 s, a FAILED row, an anomaly alerted and recorded
    assert (outcome.state, outcome.attempts) == ("FAILED", 3)
    assert outcome.error is not None
    assert "127.0.0.1" in outcome.error
    assert "ConnectionRefused" in outcome.error
    assert waits == [5.0, 10.0]
    [row] = deliveries(engine)
    assert (row.state, row.attempts) == ("FAILED", 3)
    assert [a.kind.value for a in alerted] == ["REPORT_NOT_SENT"]
    with engine.connect() as conn:
        kinds = conn.execute(select(NightAnomaly.kind, NightAnomaly.alerted)).all()
    assert [(k, bool(a)) for k, a in kinds] == [("REPORT_NOT_SENT", True)]
    status = gather_status(engine, now=NOW, crons={}, next_fire_times={})
    lines = "\n".join(render_status(status, settings.timezone))
    assert "report e-mails:" in lines
    assert "2026-06-12  FAILED" in lines
    assert "--email" in lines


def test_given_many_tries_when_every_send_fails_then_the_waits_double_up_to_ten_minutes(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # given
    settings = mail_settings(tmp_path, db_url, free_port(), attempts=6, backoff_s=100, timeout_s=5)
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    waits: list[float] = []
    # when
    outcome = email_report(
        settings, engine, report_files(result), send=send_message, clock=FixedClock(NOW), sleep=waits.append
    )
    # then
    assert outcome.attempts == 6
    assert waits == [100.0, 200.0, 400.0, 600.0, 600.0]


def test_given_a_server_that_refuses_the_recipients_when_it_accepts_them_later_then_a_rerun_sends_the_day(
    db_url: str, engine: Engine, smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    # given
    inbox, port = smtp
    inbox.refuse_rcpt = True
    settings = mail_settings(tmp_path, db_url, port, attempts=2)
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    waits: list[float] = []
    # when
    failed = email_report(
        settings, engine, report_files(result), send=send_message, clock=FixedClock(NOW), sleep=waits.append
    )
    inbox.refuse_rcpt = False
    sent = email_report(
        settings, engine, report_files(result), send=send_message, clock=FixedClock(NOW), sleep=waits.append
    )
    # then
    assert failed.state == "FAILED"
    assert failed.error is not None
    assert "550" in failed.error
    assert waits == [5.0]
    assert (sent.state, sent.attempts) == ("SENT", 1)
    assert len(inbox.messages) == 1
    [row] = deliveries(engine)
    assert (row.state, row.attempts) == ("SENT", 3)  # every try of the day, across the two runs


def test_given_starttls_and_a_server_without_it_when_the_report_is_emailed_then_nothing_goes_in_clear_text(
    db_url: str, engine: Engine, smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    # given: the server offers no STARTTLS; the settings ask for it
    inbox, port = smtp
    settings = mail_settings(tmp_path, db_url, port, starttls="true", attempts=1)
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    # when
    outcome = email_report(
        settings, engine, report_files(result), send=send_message, clock=FixedClock(NOW), sleep=pytest.fail
    )
    # then: refused before any login or message
    assert outcome.state == "FAILED"
    assert outcome.error is not None
    assert "STARTTLS" in outcome.error
    assert inbox.logins == []
    assert inbox.messages == []


def test_given_a_wrong_password_when_the_report_is_emailed_then_the_password_is_in_no_log_and_no_row(
    db_url: str, engine: Engine, smtp: tuple[Inbox, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given: the server takes another password than ours
    inbox, port = smtp
    settings = mail_settings(tmp_path, db_url, port, attempts=2)
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    caplog.set_level(logging.DEBUG)
    inbox.password = b"the-server-wants-another"
    ours = PASSWORD
    # when
    outcome = email_report(
        settings,
        engine,
        report_files(result),
        send=send_message,
        clock=FixedClock(NOW),
        sleep=lambda _s: None,
    )
    # then: failed with the server's 535, and the password we sent is nowhere
    assert outcome.state == "FAILED"
    assert outcome.error is not None
    assert "535" in outcome.error
    assert inbox.logins
    assert inbox.logins[0][1] == ours.encode()
    logged = ours_logged(caplog)
    assert "report e-mail failed" in logged
    assert ours not in logged
    with engine.connect() as conn:
        for table in ("report_deliveries", "anomalies", "job_runs"):
            dumped = repr(conn.execute(text(f"SELECT * FROM {table}")).all())  # noqa: S608 (fixed names)
            assert ours not in dumped, table
    assert ours not in repr(settings)
    assert ours not in repr(settings.reports.email)


def test_given_a_server_that_repeats_the_credentials_when_it_refuses_then_the_recorded_error_hides_them(
    db_url: str, engine: Engine, smtp: tuple[Inbox, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given
    inbox, port = smtp
    inbox.echo_login = True
    settings = mail_settings(tmp_path, db_url, port, attempts=1)
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    caplog.set_level(logging.DEBUG)
    # when
    outcome = email_report(
        settings, engine, report_files(result), send=send_message, clock=FixedClock(NOW), sleep=pytest.fail
    )
    # then
    assert outcome.error is not None
    assert "550 5.7.1 <hidden> with password <hidden> may not send" in outcome.error
    [row] = deliveries(engine)
    assert row.last_error is not None
    assert USER not in row.last_error
    assert PASSWORD not in row.last_error
    assert PASSWORD not in ours_logged(caplog)


def test_given_email_settings_when_run_report_email_is_called_twice_then_the_day_is_sent_once(
    db_url: str, engine: Engine, smtp: tuple[Inbox, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    inbox, port = smtp
    mail_settings(tmp_path, db_url, port)
    for name, value in MAIL_ENV.items():
        monkeypatch.setenv(name, value)
    args = ["run", "report", "--config", str(tmp_path / "settings.yaml"), "--date", "2026-06-12", "--email"]
    # when
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    # then
    assert first.exit_code == 0, first.output
    assert "e-mail: sent on try 1" in first.output
    assert second.exit_code == 0, second.output
    assert "e-mailed already; nothing sent" in second.output
    assert len(inbox.messages) == 1


def test_given_email_settings_when_the_report_job_runs_twice_then_the_day_is_emailed_once(
    db_url: str, engine: Engine, smtp: tuple[Inbox, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: the scheduled job at 06:00 the morning after DAY (the wall clock is the job's input)
    inbox, port = smtp
    mail_settings(tmp_path, db_url, port)
    for name, value in MAIL_ENV.items():
        monkeypatch.setenv(name, value)
    config = str(tmp_path / "settings.yaml")
    # when
    with freeze_time(NOW):
        first = daily_report.run(config)
        second = daily_report.run(config)
    # then
    assert (first["email_sent"], first["email_failed"]) == (1, 0)
    assert (second["email_sent"], second["email_failed"]) == (0, 0)
    assert len(inbox.messages) == 1
    assert str(inbox.messages[0][1]["Subject"]).startswith("Recovery report 2026-06-12: recovered ")


def test_given_no_email_settings_when_run_report_email_is_called_then_it_says_what_to_add(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    path = tmp_path / "settings.yaml"
    path.write_text(SETTINGS_YAML.format(url=db_url, out=tmp_path / "out"), encoding="utf-8")
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    # when
    result = CliRunner().invoke(main, ["run", "report", "--config", str(path), "--email"])
    # then
    assert result.exit_code != 0
    assert "reports.email is not set" in result.output
    assert "Traceback" not in result.output
