"""IMAP and POP3 over LF-only Maildir files (issue 18, item 2): every item sees the CRLF form,
exact bytes (RFC 3501 2.3.4 and 6.4.5, RFC 3516 BINARY, RFC 4469 CATENATE, RFC 8438 STATUS
SIZE, RFC 1939 5, 7 and 11).  In process; the comparison with Dovecot itself is
tests/test_lf_maildir_vs_dovecot.py."""

from __future__ import annotations

import re

import pytest

from support.clients import ImapClient, pop3_login

BOB = "bob@example.test"
SMALL = b"From: a@example.test\nSubject: lf\nMessage-ID: <lf@x>\n\nfirst line\nneedle here\n.dot\n"
BIG = b"Subject: big lf\n\n" + b"".join(b"%07d " % i + b"z" * (i % 61) + b"\n" for i in range(9000))  # > 256 KB


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


@pytest.fixture
def srv(inproc_server_factory):
    srv = inproc_server_factory(listeners=["imap", "pop3"], extra="[auth]\nfailure_delay = 0.0\n")
    inbox = srv.maildir(BOB)
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True)
    # Dovecot's name (,W= the CRLF size), and a procmail one with no size at all.
    (inbox / "cur" / f"1700000000.M1P2.dove,S={len(SMALL)},W={len(crlf(SMALL))}:2,S").write_bytes(SMALL)
    (inbox / "new" / "1700000001.M2P3.procmail").write_bytes(BIG)
    return srv.start()


def session(srv) -> ImapClient:
    c = ImapClient(srv.port("imap"), timeout=30)
    c.login()
    return c


def literal(c: ImapClient, tag: bytes, command: bytes) -> tuple[bytes, bytes]:
    """(the FETCH line up to its literal, the literal) of a one-item FETCH."""
    c.send(tag + b" " + command + b"\r\n")
    line = c.line()
    size = int(re.search(rb"\{(\d+)\}$", line).group(1))
    data = c.recv_exactly(size)
    rest = c.until(tag)
    assert rest[-1].startswith(tag + b" OK"), rest
    return line, data


def test_fetch_items_see_the_crlf_form(srv):
    c = session(srv)
    assert c.cmd(b"s", b"EXAMINE INBOX")[-1].startswith(b"s OK")
    small, big = crlf(SMALL), crlf(BIG)
    assert c.cmd(b"a", b"FETCH 1:2 RFC822.SIZE")[:2] == [b"* 1 FETCH (RFC822.SIZE %d)" % len(small),
                                                        b"* 2 FETCH (RFC822.SIZE %d)" % len(big)]
    assert literal(c, b"b", b"FETCH 1 BODY.PEEK[]") == (b"* 1 FETCH (BODY[] {%d}" % len(small), small)
    assert literal(c, b"c", b"FETCH 1 BODY.PEEK[]<10.30>")[1] == small[10:40]
    header = small[: small.index(b"\r\n\r\n") + 4]
    assert literal(c, b"d", b"FETCH 1 RFC822.HEADER")[1] == header
    assert literal(c, b"e", b"FETCH 1 BODY.PEEK[TEXT]")[1] == small[len(header):]
    assert literal(c, b"f", b"FETCH 1 BODY.PEEK[1]")[1] == small[len(header):]
    assert literal(c, b"g", b"FETCH 1 BINARY.PEEK[]")[1] == small
    assert c.cmd(b"h", b"FETCH 1 BINARY.SIZE[]")[0] == b"* 1 FETCH (BINARY.SIZE[] %d)" % len(small)
    # The large one is streamed from its file, converted on the way.
    assert literal(c, b"i", b"FETCH 2 BODY.PEEK[]") == (b"* 2 FETCH (BODY[] {%d}" % len(big), big)
    assert literal(c, b"j", b"FETCH 2 BODY.PEEK[]<200000.70000>")[1] == big[200000:270000]
    assert literal(c, b"k", b"FETCH 2 BINARY.PEEK[]<5.100>")[1] == big[5:105]
    assert c.cmd(b"l", b"FETCH 2 BINARY.SIZE[]")[0] == b"* 2 FETCH (BINARY.SIZE[] %d)" % len(big)
    m = re.search(rb"BODYSTRUCTURE \(\"text\" \"plain\" .* (\d+) (\d+) NIL NIL NIL NIL\)\)",
                  c.cmd(b"m", b"FETCH 1 BODYSTRUCTURE")[0], re.I)
    assert m and (int(m.group(1)), int(m.group(2))) == (len(small) - len(header), 3)


def test_search_status_copy_and_catenate_see_the_crlf_form(srv):
    c = session(srv)
    small, big = crlf(SMALL), crlf(BIG)
    [line, _] = c.cmd(b"v", b"STATUS INBOX (UIDVALIDITY SIZE)")
    assert b"SIZE %d" % (len(small) + len(big)) in line
    v = int(re.search(rb"UIDVALIDITY (\d+)", line).group(1))
    assert c.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    assert c.cmd(b"a", b"SEARCH LARGER %d" % (len(small) - 1))[0] == b"* SEARCH 1 2"
    assert c.cmd(b"b", b"SEARCH LARGER %d" % len(small))[0] == b"* SEARCH 2"
    assert c.cmd(b"c", b"SEARCH SMALLER %d" % (len(small) + 1))[0] == b"* SEARCH 1"
    assert c.cmd(b"d", b'SEARCH BODY "needle here"')[0] == b"* SEARCH 1"
    assert c.cmd(b"e", b"CREATE Archive")[-1].startswith(b"e OK")
    assert c.cmd(b"e2", b"CREATE Drafts")[-1].startswith(b"e2 OK")
    assert c.cmd(b"f", b"COPY 1:2 Archive")[-1].startswith(b"f OK")
    c.send(b'g APPEND Drafts CATENATE (URL "/INBOX;UIDVALIDITY=%d/;UID=1" TEXT {2+}\r\n--'
           b' URL "/INBOX;UIDVALIDITY=%d/;UID=1/;SECTION=TEXT")\r\n' % (v, v))
    assert c.until(b"g")[-1].startswith(b"g OK")
    assert c.cmd(b"h", b"EXAMINE Archive")[-1].startswith(b"h OK")
    assert c.cmd(b"i", b"FETCH 1:2 RFC822.SIZE")[:2] == [b"* 1 FETCH (RFC822.SIZE %d)" % len(small),
                                                        b"* 2 FETCH (RFC822.SIZE %d)" % len(big)]
    assert literal(c, b"j", b"FETCH 1 BODY.PEEK[]")[1] == small
    assert literal(c, b"k", b"FETCH 2 BODY.PEEK[]")[1] == big
    assert c.cmd(b"l", b"EXAMINE Drafts")[-1].startswith(b"l OK")
    text = small[small.index(b"\r\n\r\n") + 4 :]
    assert literal(c, b"m", b"FETCH 1 BODY.PEEK[]")[1] == small + b"--" + text


def test_pop3_sizes_and_bytes_are_the_crlf_form(srv):
    small, big = crlf(SMALL), crlf(BIG)
    p = pop3_login(srv)
    assert p.cmd("STAT") == b"+OK 2 %d\r\n" % (len(small) + len(big))
    assert p.cmd("LIST").startswith(b"+OK")
    assert p.multiline() == [b"1 %d\r\n" % len(small), b"2 %d\r\n" % len(big)]
    assert p.cmd("RETR 1") == b"+OK %d octets\r\n" % len(small)
    assert b"".join(p.multiline()) == small.replace(b"\r\n.", b"\r\n..")  # dot-stuffed (RFC 1939 3)
    assert p.cmd("RETR 2") == b"+OK %d octets\r\n" % len(big)
    assert b"".join(p.multiline()) == big
    assert p.cmd("TOP 1 1").startswith(b"+OK")
    assert b"".join(p.multiline()) == small[: small.index(b"\r\n\r\n") + 4] + b"first line\r\n"
    p.cmd("QUIT")
    p.close()
