"""One store, three protocols: what alice sends over SMTP, bob reads over POP3 and IMAP with the
same bytes, the same UID, and a POP3 deletion is an expunge the IMAP session sees."""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import time

from support.servers import PASSWORDS

ALICE, BOB = "alice@example.test", "bob@example.test"


def test_smtp_to_pop3_and_imap_then_pop3_delete_seen_by_imap(inproc_server_factory):
    srv = inproc_server_factory(listeners=["submission", "pop3", "imap"]).start()
    body = ("From: alice@example.test\r\nTo: bob@example.test\r\nSubject: one store\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nGrüße, Bob.\r\n.a dot line\r\n").encode()
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=20) as s:
        s.starttls(context=srv.ssl_context())
        s.login(ALICE, PASSWORDS[ALICE])
        s.sendmail(ALICE, [BOB], body)

    imap = imaplib.IMAP4("127.0.0.1", srv.port("imap"))
    imap.starttls(ssl_context=srv.ssl_context())
    imap.login(BOB, PASSWORDS[BOB])
    typ, data = imap.select("INBOX")
    assert typ == "OK" and data == [b"1"]
    uidvalidity = int(imap.response("UIDVALIDITY")[1][0])
    typ, data = imap.fetch("1", "(UID BODY.PEEK[])")
    uid = int(re.search(rb"UID (\d+)", data[0][0]).group(1))
    via_imap = data[0][1]
    assert via_imap.endswith(body)

    pop = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=20)
    pop.stls(context=srv.ssl_context())
    pop.user(BOB)
    pop.pass_(PASSWORDS[BOB])
    assert pop.uidl(1).split()[-1].decode() == f"{uid:08x}{uidvalidity:08x}"  # the same numbers ("%08Xu%08Xv")
    _, lines, _ = pop.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == via_imap  # byte for byte (poplib un-stuffs dots)
    pop.dele(1)
    pop.quit()  # the deletion happens here, in the UPDATE state

    deadline = time.monotonic() + 5
    expunged = False
    while time.monotonic() < deadline and not expunged:
        imap.noop()
        expunged = imap.response("EXPUNGE")[1] not in ([None], [])
        time.sleep(0.1)
    assert expunged, "the IMAP session was not told of the POP3 deletion"
    imap.logout()
    check = imaplib.IMAP4("127.0.0.1", srv.port("imap"))
    check.starttls(ssl_context=srv.ssl_context())
    check.login(BOB, PASSWORDS[BOB])
    assert check.select("INBOX", readonly=True)[1] == [b"0"]
    check.logout()


def test_pop3_retr_marks_seen_for_imap(inproc_server_factory):
    srv = inproc_server_factory(listeners=["submission", "pop3", "imap"]).start()
    from mailstack.store import MaildirStore

    MaildirStore(str(srv.store_root)).deliver(BOB, b"Subject: seen?\r\n\r\nx\r\n")
    pop = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=20)
    pop.user(BOB)
    pop.pass_(PASSWORDS[BOB])
    pop.retr(1)
    pop.quit()
    imap = imaplib.IMAP4("127.0.0.1", srv.port("imap"))
    imap.login(BOB, PASSWORDS[BOB])
    imap.select("INBOX", readonly=True)
    typ, data = imap.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0]
    imap.logout()
