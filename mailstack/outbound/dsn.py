"""Delivery status notifications: RFC 3464 ``message/delivery-status`` in an RFC 6522
``multipart/report``, with the original message's header (``text/rfc822-headers``).

Sent from the null reverse-path (RFC 5321 4.5.5), so a bounce never bounces.
"""

from __future__ import annotations

import email.utils
import secrets
from dataclasses import dataclass


@dataclass
class RecipientReport:
    address: str
    action: str  # "failed" | "delayed"
    status: str  # enhanced status code, e.g. "5.1.1"
    diagnostic: str  # the remote reply, e.g. "550 5.1.1 no such user"
    remote_mta: str = ""


def enhanced_of(code: int, text: str) -> str:
    """The enhanced status code in a reply text, or one derived from the basic code."""
    first = text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in "245":
        return first
    return f"{str(code)[0] if code >= 400 else 4}.0.0"


def build(hostname: str, original_sender: str, reports: list[RecipientReport], original_head: bytes,
          queue_id: str, arrival: float) -> bytes:
    delayed = all(r.action == "delayed" for r in reports)
    boundary = f"mailstack-dsn-{secrets.token_hex(8)}"
    subject = "Delivery delayed" if delayed else "Undelivered Mail Returned to Sender"
    human = [
        f"This is the mail system at {hostname}.",
        "",
        ("Your message could not be delivered yet to the recipients below; delivery will be tried again."
         if delayed else "Your message could not be delivered to the recipients below."),
        "",
    ]
    for r in reports:
        human.append(f"<{r.address}>: {r.diagnostic}" + (f" (from {r.remote_mta})" if r.remote_mta else ""))
    status = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mailstack-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival)}",
    ]
    for r in reports:
        status += [
            "",
            f"Final-Recipient: rfc822; {r.address}",
            f"Action: {r.action}",
            f"Status: {r.status}",
        ]
        if r.remote_mta:
            status.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.diagnostic:
            status.append(f"Diagnostic-Code: smtp; {' '.join(r.diagnostic.split())}")
    head = original_head.split(b"\r\n\r\n", 1)[0].rstrip(b"\r\n") + b"\r\n"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{original_sender}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-ID: <{secrets.token_hex(10)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *status,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    tail = ["", f"--{boundary}--", ""]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8") + head + "\r\n".join(tail).encode()
