"""FETCH of whole messages (BODY[], BODY.PEEK[], RFC822 with UID), which mailstack answers
without its general per-item loop: exact bytes from RFC 3501 6.4.5 and 7.4.2, and the same
bytes as the general loop gives, for small, large and streamed messages."""

from __future__ import annotations

import re

import pytest

from mailstack.imap import fetch as fetch_mod
from support.clients import ImapClient

SMALL = b"From: a@example.test\r\nSubject: small\r\n\r\n.dot line\r\nbody\r\n"
MEDIUM = b"Subject: medium\r\n\r\n" + b"x" * 70 + b"\r\n" * 1 + b"".join(b"line %05d\r\n" % i for i in range(900))
LARGE = b"Subject: large\r\n\r\n" + b"".join(b"%07d " % i + b"z" * 50 + b"\r\n" for i in range(6000))  # > 256 KB: streamed


@pytest.fixture
def srv(inproc_server_factory):
    srv = inproc_server_factory(listeners=["imap"], extra="[auth]\nfailure_delay = 0.0\n").start()
    srv.deliver(SMALL, MEDIUM, LARGE)
    return srv


def raw_answer(c: ImapClient, tag: bytes, text: bytes) -> bytes:
    """Everything the server sends for one command, literals included, as it came."""
    c.send(tag + b" " + text + b"\r\n")
    out = b""
    while True:
        line = c.line() + b"\r\n"
        out += line
        m = re.search(rb"\{(\d+)\}\r\n\Z", line)
        if m:
            out += c.recv_exactly(int(m.group(1)))
        elif line.startswith(tag + b" "):
            return out


COMMANDS = [b"UID FETCH 1:* (UID BODY.PEEK[])", b"UID FETCH 1:* BODY.PEEK[]", b"FETCH 1:* (BODY.PEEK[] UID)",
            b"FETCH 1:3 RFC822", b"FETCH 2,1 (UID RFC822)", b"FETCH 1:* BODY[]", b"UID FETCH 2:3 (UID UID BODY.PEEK[])"]


def test_whole_message_fetches_give_the_bytes_of_the_general_loop(srv, monkeypatch):
    answers = {}
    c = ImapClient(srv.port("imap"), timeout=30)
    c.login()
    c.cmd(b"S", b"SELECT INBOX")  # claims \Recent, so that both rounds below see the same flags
    c.close()
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(fetch_mod, "_whole_body_names", lambda items: None)
        c = ImapClient(srv.port("imap"), timeout=30)
        c.login()
        assert c.cmd(b"S", b"SELECT INBOX")[-1].startswith(b"S OK")
        answers[fast] = [raw_answer(c, b"T%d" % n, cmd) for n, cmd in enumerate(COMMANDS)]
        c.cmd(b"X", b"STORE 1:* -FLAGS (\\Seen)")  # BODY[] and RFC822 set \Seen (RFC 3501 6.4.5)
        c.close()
    for cmd, fast, general in zip(COMMANDS, answers[True], answers[False]):
        assert fast == general, cmd


def test_whole_message_fetch_exact_bytes(srv):
    c = ImapClient(srv.port("imap"), timeout=30)
    c.login()
    c.cmd(b"S", b"EXAMINE INBOX")
    answer = raw_answer(c, b"A", b"UID FETCH 1 (UID BODY.PEEK[])")
    assert answer.startswith(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(SMALL) + SMALL + b")\r\nA OK ")
    answer = raw_answer(c, b"B", b"FETCH 2 (BODY.PEEK[] UID)")
    assert answer.startswith(b"* 2 FETCH (BODY[] {%d}\r\n" % len(MEDIUM) + MEDIUM + b" UID 2)\r\nB OK ")
    answer = raw_answer(c, b"C", b"FETCH 3 RFC822")  # EXAMINE: RFC822 sets no \Seen (RFC 3501 6.3.2)
    assert answer.startswith(b"* 3 FETCH (RFC822 {%d}\r\n" % len(LARGE) + LARGE + b")\r\nC OK ")


def test_flag_lists_are_formatted_once_per_set_and_alike_for_every_kind_of_set():
    from mailstack.imap.view import _format_flags, format_flags

    for flags in (frozenset(), frozenset({"\\Seen"}), frozenset({"\\Seen", "\\Flagged", "$Label1"})):
        for recent in (False, True):
            expected = _format_flags(flags, recent)
            assert format_flags(flags, recent) == format_flags(set(flags), recent) == format_flags(sorted(flags), recent) \
                == format_flags(tuple(flags), recent) == expected
            assert format_flags(flags, recent) is format_flags(frozenset(flags), recent)  # the one kept
    assert format_flags(frozenset({"\\Seen", "\\Answered"}), True) == b"(\\Answered \\Seen \\Recent)"
    assert format_flags((), False) == b"()"
