"""One builder of the small RFC 5322 messages the tests deliver, fetch and compare.

The default is the IMAP tests' message (From with a display name, To, Subject, Date,
Message-ID); each header can be changed or left out (None), so the other suites build theirs
byte for byte as before.
"""

from __future__ import annotations

__all__ = ["ALICE", "BOB", "message"]

ALICE, BOB = "alice@example.test", "bob@example.test"


def message(n: int = 0, subject: str | None = None, body: bytes = b"", extra: str | bytes = "", *,
            sender: str | None = f"Alice <{ALICE}>", to: str | None = BOB,
            date: str | None = "Mon, 0{day} Jan 2024 10:00:00 +0000",
            message_id: str | None = "<m{n}@example.test>") -> bytes:
    """Message number ``n``: ``Subject: message n`` unless ``subject``; ``extra`` header lines
    (with their CRLFs) after the others; ``body`` or a two-line default.  ``date`` and
    ``message_id`` are templates of ``n`` and ``day`` (1 to 9, from ``n``)."""
    headers = [("From", sender), ("To", to), ("Subject", subject or f"message {n}"),
               ("Date", date and date.format(n=n, day=1 + n % 9)), ("Message-ID", message_id and message_id.format(n=n))]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers if value is not None).encode()
    return head + (extra.encode() if isinstance(extra, str) else extra) + b"\r\n" \
        + (body or f"body of message {n}\r\nsecond line\r\n".encode())
