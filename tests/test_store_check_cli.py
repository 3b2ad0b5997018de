"""``mailstack store check`` on mail that is delivered but not yet listed (issue 14 item 9).

SMTP delivery links the file into new/ without a UID (the next listing numbers it, so the UID
log stays out of the delivery path): that is the normal state of fresh mail, not a problem.
"""

from __future__ import annotations

import smtplib

from support.clients import imap_login
from test_cli import cli


def deliver(srv, to: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
        s.sendmail("someone@remote.test", [to], f"From: someone@remote.test\r\nSubject: {subject}\r\n\r\nhi\r\n")


def test_fresh_delivery_waiting_in_new_is_not_a_problem(server):
    deliver(server, "carol@example.test", "never listed")  # carol's INBOX: never opened by anyone
    out = cli("store", "check", "carol@example.test", config=server.config_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "carol@example.test INBOX: 1 messages, ok" in out.stdout, out.stdout
    assert "1 in new/ waiting for their first listing" in out.stdout
    assert "without UID" not in out.stdout and "PROBLEMS" not in out.stdout


def test_delivery_after_a_listing_is_not_a_problem_either(server):
    deliver(server, "bob@example.test", "first")
    imap = imap_login(server)
    assert imap.cmd(b"a1", b"SELECT INBOX")[-1].startswith(b"a1 OK")  # numbers the first message
    imap.close()
    deliver(server, "bob@example.test", "second")  # waits in new/ without a UID
    out = cli("store", "check", "bob@example.test", config=server.config_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bob@example.test INBOX: 2 messages, ok" in out.stdout, out.stdout
    imap = imap_login(server)
    assert b"* 2 EXISTS" in b"".join(imap.cmd(b"a1", b"SELECT INBOX"))
    imap.close()
    assert cli("store", "check", "bob@example.test", config=server.config_path).returncode == 0
