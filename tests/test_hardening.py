"""The holes of the adversarial round (issue 14), each attacked through a real socket against
a real twistd process, with the server's CPU time and memory measured where the attack is
about resources.  Bounds are generous for two noisy shared cores; the old code exceeded
them by one to two orders of magnitude."""

from __future__ import annotations

import threading
import time

import pytest

from support.clients import ImapClient, SmtpClient
from support.proc import cpu_seconds, rss_mb
from support.servers import PASSWORDS

BOB = "bob@example.test"
MB = 1 << 20


@pytest.fixture
def srv(server_factory):
    return server_factory(listeners=["smtp", "imap"]).start()


def login_and_select_seconds(srv) -> float:
    t0 = time.monotonic()
    c = ImapClient(srv.port("imap"))
    c.login()
    assert c.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    c.close()
    return time.monotonic() - t0


def stream_data(srv, payload_piece: bytes, total: int, results: list) -> None:
    """One unauthenticated MX transaction whose DATA is ``total`` bytes of ``payload_piece``."""
    c = SmtpClient(srv.port("smtp"), timeout=60)
    assert c.cmd("EHLO attacker.example")[0] == 250
    assert c.cmd("MAIL FROM:<x@remote.test>")[0] == 250
    assert c.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    chunk = payload_piece * (65536 // len(payload_piece))
    sent = 0
    while sent < total:
        c.send(chunk)
        sent += len(chunk)
    results.append(c.cmd(b"\r\n."))
    c.close()


@pytest.mark.parametrize("piece", [b".", b".\n", b".\r"], ids=["dots", "dot-LF", "dot-CR"])
def test_data_without_line_breaks_costs_linear_time_and_bounded_memory(srv, piece):
    # Issue 14 item 1: after a CRLF a run of dots (or any run of terminator-like bytes) was held
    # whole and rescanned: 24 MB of dots took 37.9 s of CPU and +65 MB.
    pid = srv.proc.pid
    login_and_select_seconds(srv)  # warm up the IMAP side
    cpu0, rss0 = cpu_seconds(pid), rss_mb(pid)
    results: list = []
    stream_data(srv, piece, 24 * MB, results)
    cpu, grown = cpu_seconds(pid) - cpu0, rss_mb(pid) - rss0
    print(f"{piece!r}: server CPU {cpu:.2f} s, RSS +{grown:.1f} MB, reply {results}")
    assert results and results[0][0] in (250, 550, 554), results  # answered (a protocol reply)
    assert cpu < 3.0, f"server spent {cpu:.1f} s of CPU on 24 MB of DATA"
    assert grown < 20, f"server RSS grew by {grown:.0f} MB"


def test_parallel_data_streams_leave_other_users_responsive(srv):
    # Issue 14 item 1: four parallel 12 MB dot streams slowed another user's login+SELECT to 3.4 s.
    results: list = []
    streams = [threading.Thread(target=stream_data, args=(srv, b".", 12 * MB, results)) for _ in range(4)]
    for t in streams:
        t.start()
    time.sleep(0.5)
    slowest = max(login_and_select_seconds(srv) for _ in range(3))
    for t in streams:
        t.join(120)
    print(f"login+SELECT during 4 streams: slowest {slowest:.2f} s; replies {results}")
    assert len(results) == 4
    assert slowest < 1.0, f"login+SELECT took {slowest:.2f} s during the streams"
