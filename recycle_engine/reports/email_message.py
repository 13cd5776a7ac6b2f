"""The report as an e-mail: the summary as the body, the HTML and the CSV attached."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

__all__ = ["report_message"]


def report_message(
    *,
    subject: str,
    body: str,
    sender: str,
    recipients: Sequence[str],
    sent_at: datetime,
    html_name: str,
    html: bytes,
    csv_name: str,
    csv: bytes,
) -> EmailMessage:
    """A multipart message: `body` as plain text, the report's HTML and CSV as attachments by name.

    `sent_at` (aware) is its Date header; the Message-ID's domain is the sender's."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    message.set_content(body)
    message.add_attachment(html, maintype="text", subtype="html", filename=html_name)
    message.add_attachment(csv, maintype="text", subtype="csv", filename=csv_name)
    return message
