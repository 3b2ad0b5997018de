"""A flood of 1,000 idle or garbage-sending connections leaves the server answering a
legitimate client within a second, with bounded memory."""

from __future__ import annotations

import resource
import smtplib
import socket
import time

import pytest

from support.proc import rss_mb


@pytest.fixture
def many_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2500:
        pytest.skip(f"the hard open-file limit ({hard}) is too low for 1,000 client sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096) if hard == resource.RLIM_INFINITY else min(4096, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_flood_of_connections(server_factory, many_files):
    srv = server_factory(listeners=["smtp", "pop3"]).start()
    before = rss_mb(srv.proc.pid)
    flood = []
    # 50 source addresses x 20 connections (the per-address limit): 25 on SMTP, 25 on POP3
    for i in range(50):
        for n in range(20):
            s = socket.create_connection(("127.0.0.1", srv.port("smtp" if i < 25 else "pop3")), timeout=10,
                                         source_address=(f"127.0.1.{i + 1}", 0))
            flood.append(s)
    t_flood = time.monotonic()
    deadline = t_flood + 20
    while srv.log_text().count("session start") < 1000 and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"flood of {len(flood)} in place after {time.monotonic() - t_flood:.1f} s")
    for k, s in enumerate(flood):  # half of them start talking nonsense, without line ends
        if k % 2:
            try:
                s.send(b"X" * 2000)
            except OSError:
                pass
    time.sleep(1.0)
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=5) as c:
        assert c.ehlo("legit.example")[0] == 250
        c.sendmail("someone@remote.test", ["bob@example.test"], b"Subject: through the flood\r\n\r\nhi\r\n")
    answered = time.monotonic() - t0
    during = rss_mb(srv.proc.pid)
    assert srv.log_text().count("session start") >= 1000  # the flood really got in
    assert len([s for s in flood if s.fileno() >= 0]) == 1000
    extra = socket.create_connection(("127.0.0.1", srv.port("smtp")), source_address=("127.0.1.1", 0), timeout=5)
    assert extra.recv(200).startswith(b"421 4.7.0")  # that address is at its limit
    extra.close()
    for s in flood:
        s.close()
    print(f"legitimate client answered in {answered:.3f} s; RSS {before:.1f} MB before, {during:.1f} MB with 1,000 connections")
    assert answered < 1.0
    assert during - before < 150, f"memory grew by {during - before:.0f} MB"
    assert srv.wait_for_messages("bob@example.test", 1)


def test_commands_per_session_on_pop3_and_imap(server_factory):
    srv = server_factory(listeners=["pop3", "imap"], extra="[limits]\ncommands_per_session = 5\n").start()
    pop = socket.create_connection(("127.0.0.1", srv.port("pop3")), timeout=5)
    pop.recv(200)
    replies = b""
    for _ in range(6):
        pop.sendall(b"NOOP\r\n")
        time.sleep(0.05)
    time.sleep(0.3)
    while True:
        chunk = pop.recv(4096)
        if not chunk:
            break
        replies += chunk
    assert replies.endswith(b"-ERR [SYS/PERM] too many commands in one session\r\n")
    imap = socket.create_connection(("127.0.0.1", srv.port("imap")), timeout=5)
    imap.recv(500)
    for n in range(6):
        imap.sendall(b"t%d NOOP\r\n" % n)
        time.sleep(0.05)
    time.sleep(0.3)
    data = b""
    while True:
        chunk = imap.recv(4096)
        if not chunk:
            break
        data += chunk
    assert b"t4 OK" in data and b"t5 OK" not in data and b"* BYE too many commands in one session" in data
