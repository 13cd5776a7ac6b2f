"""The one SMTP client: connect with a timeout, STARTTLS, log in, send; failures as ReportDeliveryError."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from recycle_engine.config import EmailSettings
from recycle_engine.errors import ReportDeliveryError

__all__ = ["send_message"]


def send_message(settings: EmailSettings, message: EmailMessage) -> list[str]:
    """Send `message` through the configured server; returns the recipients the server refused while it
    accepted others (the message went to those it accepted).

    Raises ReportDeliveryError when nothing was sent: unreachable, timed out, TLS or login refused,
    every recipient or the message refused. Its message never holds the credentials."""
    where = f"{settings.host}:{settings.port}"
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.username:
                smtp.login(settings.username, settings.password or "")
            refused = smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        raise ReportDeliveryError(f"e-mail via {where} failed: {_describe(exc, settings)}") from None
    return sorted(refused)


def _describe(exc: BaseException, settings: EmailSettings) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = {f"{code} {_text(answer)}" for code, answer in exc.recipients.values()}
        text = f"every recipient refused ({'; '.join(sorted(codes))})"
    elif isinstance(exc, smtplib.SMTPResponseException):
        text = f"{type(exc).__name__}: {exc.smtp_code} {_text(exc.smtp_error)}"
    elif isinstance(exc, TimeoutError):
        text = f"no answer within {settings.timeout_s:g} s"
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{type(exc).__name__}: {exc.strerror}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    # A server may echo what it was given (a login name in a 535); credentials never reach a log or a row.
    for credential in (settings.username, settings.password):
        if credential:
            text = text.replace(credential, "<hidden>")
    return text[:500]


def _text(answer: bytes | str) -> str:
    raw = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else answer
    return " ".join(raw.split())
