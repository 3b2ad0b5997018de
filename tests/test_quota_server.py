"""Quotas through a real twistd process and real clients (issue 19 section 4, "done when"):
smtplib is refused with 452 4.2.2 at RCPT once the mailbox is full, APPEND and COPY get
NO [OVERQUOTA], GETQUOTAROOT reports the usage, and the warning arrives once."""

from __future__ import annotations

import os
import smtplib

import pytest

from support.clients import ImapClient

BOB = "bob@example.test"
QUOTA = '[quota]\nstorage = "1M"\nmessages = 4\nwarning_percent = 50\n'


def send(server, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as s:
        s.sendmail("someone@remote.test", [BOB], f"From: someone@remote.test\r\nSubject: mail {n}\r\n\r\nhello {n}\r\n")


def stored_bytes(server) -> int:
    total = 0
    for folder in [server.maildir(BOB)] + [p for p in server.maildir(BOB).iterdir() if p.name.startswith(".")]:
        for sub in ("cur", "new"):
            if (folder / sub).is_dir():
                total += sum(os.path.getsize(folder / sub / n) for n in os.listdir(folder / sub))
    return total


@pytest.mark.slow
def test_quota_refusals_usage_and_warning(server_factory):
    server = server_factory(listeners=["smtp", "imap"], extra=QUOTA).start()
    send(server, 1)
    send(server, 2)  # 2 of 4: 50%, the warning makes 3
    messages = server.wait_for_messages(BOB, 3)
    warnings = [m for m in messages if b"Subject: Your mailbox is 50% full" in m]
    assert len(warnings) == 1 and b"From: Mail System <postmaster@example.test>" in warnings[0]
    send(server, 3)  # 4 of 4
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        send(server, 4)
    assert e.value.recipients == {BOB: (452, f"4.2.2 <{BOB}>: mailbox is full".encode())}
    assert len(server.messages(BOB)) == 4
    assert sum(b"Subject: Your mailbox is" in m for m in server.messages(BOB)) == 1  # once

    c = ImapClient(server.port("imap"))
    c.login(BOB)
    assert c.cmd(b"A003", b"GETQUOTAROOT INBOX") == [
        b'* QUOTAROOT INBOX ""', b'* QUOTA "" (STORAGE %d 1024 MESSAGE 4 4)' % (-(-stored_bytes(server) // 1024)),
        b"A003 OK Getquotaroot completed"]
    body = b"Subject: appended\r\n\r\nx\r\n"
    c.send(b"A1 APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
    assert c.until(b"A1") == [b"A1 NO [OVERQUOTA] APPEND Failed"]
    c.cmd(b"S", b"SELECT INBOX")
    assert c.cmd(b"C1", b"COPY 1 Archive") == [b"C1 NO [OVERQUOTA] COPY Failed"]
    # Room made by expunging is usable at once, over SMTP too.
    c.cmd(b"E1", b"STORE 1:2 +FLAGS (\\Deleted)")
    assert c.cmd(b"E2", b"EXPUNGE")[-1] == b"E2 OK EXPUNGE completed"
    assert c.cmd(b"Q", b'GETQUOTA ""')[0].endswith(b" MESSAGE 2 4)")
    send(server, 5)
    assert len(server.messages(BOB)) == 3
