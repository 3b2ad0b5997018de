"""The in-process harness (tests/support/inprocess.py): the real service on the reactor thread,
blocking clients in the test thread.  Each protocol test here should take milliseconds."""

from __future__ import annotations

import imaplib
import logging
import poplib
import smtplib
import socket
import threading
import time

import dns.resolver
import pytest

from support.clients import ImapClient, Pop3Client, SmtpClient, pop3_login
from support.inprocess import InProcessServer, in_reactor
from support.messages import ALICE, BOB, message
from support.servers import PASSWORDS
from support.waiting import wait_for


def test_smtp_greeting_ehlo_quit(inproc_server):
    c = SmtpClient(inproc_server.port("smtp"))
    assert c.greeting[0] == 220 and "mail.example.test" in c.greeting[1]
    code, text = c.cmd("EHLO client.example")
    assert code == 250 and "PIPELINING" in text
    assert c.cmd("QUIT")[0] == 221
    c.close()


def test_imap_login_select(inproc_server):
    inproc_server.deliver(message(1), message(2))
    m = imaplib.IMAP4("127.0.0.1", inproc_server.port("imap"), timeout=10)
    m.starttls(inproc_server.ssl_context())
    assert m.login(BOB, PASSWORDS[BOB])[0] == "OK"
    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"2"]
    m.logout()


def test_pop3_user_pass_stat(inproc_server):
    inproc_server.deliver(message(1), message(2))
    p = poplib.POP3("127.0.0.1", inproc_server.port("pop3"), timeout=10)
    p.stls(inproc_server.ssl_context())
    p.user(BOB)
    p.pass_(PASSWORDS[BOB])
    count, size = p.stat()
    assert count == 2 and size == sum(len(m) for m in inproc_server.messages(BOB))
    p.quit()


def test_mx_delivery_lands_in_the_maildir(inproc_server):
    with smtplib.SMTP("127.0.0.1", inproc_server.port("smtp"), timeout=10) as s:
        s.sendmail("someone@remote.test", [BOB], message(7))
    [stored] = inproc_server.wait_for_messages(BOB, 1)
    assert stored.endswith(message(7))


def test_implicit_tls_listener(inproc_server):
    with smtplib.SMTP_SSL("127.0.0.1", inproc_server.port("submissions"), context=inproc_server.ssl_context(),
                          timeout=10) as s:
        s.login(ALICE, PASSWORDS[ALICE])
        s.sendmail(ALICE, [BOB], message(3))
    assert len(inproc_server.wait_for_messages(BOB, 1)) == 1


def test_log_text_has_the_service_log(inproc_server):
    with socket.create_connection(("127.0.0.1", inproc_server.port("smtp")), timeout=5) as s:
        s.recv(100)
    assert wait_for(lambda: "session end smtp from 127.0.0.1" in inproc_server.log_text())
    assert "mailstack is running" in inproc_server.log_text()


def test_an_error_in_the_reactor_thread_is_visible(inproc_server, caplog):
    """A traceback raised in the reactor thread reaches log_text(), errors() and pytest's log."""

    def broken():
        from twisted.logger import Logger

        try:
            raise ValueError("broken on purpose")
        except ValueError:
            Logger().failure("a protocol error")

    with caplog.at_level(logging.ERROR, logger="mailstack.inprocess"):
        in_reactor(broken)
    assert "ValueError: broken on purpose" in inproc_server.log_text()
    assert any("broken on purpose" in error for error in inproc_server.errors())
    assert any("broken on purpose" in r.getMessage() for r in caplog.records)


def test_in_reactor_raises_the_reactor_side_exception():
    def fails():
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope") as info:
        in_reactor(fails)
    assert any("raised in the reactor thread" in note for note in info.value.__notes__)


def test_stop_drops_open_sessions_and_the_pop3_lock(tmp_path):
    """Two servers in a row on one store: a POP3 session left open by the first (its maildrop
    locked) is dropped at stop, so the second logs in; the first's ports are closed."""
    first = InProcessServer(tmp_path, listeners=["pop3"]).start()
    first.deliver(message(1))
    left_open = pop3_login(first)
    port = first.port("pop3")
    first.stop()
    try:  # the server dropped it (aborted: a reset, or an end of file)
        assert left_open.line() == b""
    except ConnectionResetError:
        pass
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    second = InProcessServer(tmp_path, listeners=["pop3"]).start()
    try:
        again = pop3_login(second)
        assert again.cmd("STAT").startswith(b"+OK 1 ")
        again.close()
    finally:
        second.stop()


def test_two_servers_at_once(inproc_server_factory):
    a = inproc_server_factory(listeners=["smtp"]).start()
    b = inproc_server_factory(listeners=["smtp"]).start()
    assert a.port("smtp") != b.port("smtp")

    def send(srv, n):
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
            s.sendmail("someone@remote.test", [BOB], message(n))

    threads = [threading.Thread(target=send, args=(srv, n)) for n, srv in enumerate((a, b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(a.wait_for_messages(BOB, 2)) == 2 and len(b.wait_for_messages(BOB, 1)) == 1


def test_globals_are_put_back(inproc_server_factory):
    before = dns.resolver.default_resolver
    srv = inproc_server_factory(listeners=["smtp"]).start()
    srv.stop()
    assert dns.resolver.default_resolver is before
    assert srv.stop() is None  # a second stop is harmless


def test_raw_clients_speak_each_protocol(inproc_server):
    imap = ImapClient(inproc_server.port("imap"))
    assert imap.greeting.startswith(b"* OK")
    assert imap.cmd(b"a", b"CAPABILITY")[-1].startswith(b"a OK")
    imap.close()
    pop = Pop3Client(inproc_server.port("pop3"))
    assert pop.greeting.startswith(b"+OK")
    assert pop.cmd("CAPA").startswith(b"+OK") and b"STLS\r\n" in pop.multiline()
    pop.close()


def test_a_protocol_test_takes_milliseconds(inproc_server):
    started = time.perf_counter()
    for _ in range(10):
        c = SmtpClient(inproc_server.port("smtp"))
        assert c.cmd("EHLO x")[0] == 250
        c.cmd("QUIT")
        c.close()
    assert (time.perf_counter() - started) / 10 < 0.5  # generous: the machine is shared
