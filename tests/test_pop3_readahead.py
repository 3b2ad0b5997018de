"""RETR answered from the read-ahead (mailstack.pop3.transfer): the same bytes as a message
read on its own, whatever the order of the commands (RFC 1939 sections 3, 5 and 7).

Fast: the service runs in this process; a raw socket reads the responses exactly as sent.
"""

from __future__ import annotations

import random

from support.clients import pop3_login
from mailstack.pop3.transfer import AHEAD_COUNT, READ_CHUNK

BOB = "bob@example.test"


def stuffed(crlf: bytes) -> list[bytes]:
    """RFC 1939 section 3 by the book: the lines of a multi-line response body, as sent."""
    lines = crlf.split(b"\r\n")
    if crlf.endswith(b"\r\n"):
        lines.pop()
    return [(b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines]


def make_messages(count: int) -> list[bytes]:
    rnd = random.Random(16)
    out = []
    for n in range(count):
        lines = [b".dot at the start %d" % n if rnd.random() < 0.2 else b"line %d of %d" % (k, n)
                 for k in range(rnd.randint(1, 300))]
        body = b"\r\n".join(lines) + (b"\r\n" if n % 7 else b"")  # some end without a line end
        out.append(b"From: alice@example.test\r\nSubject: message %d\r\n\r\n" % n + body)
    out[10] = out[10] + b"x" * (READ_CHUNK + 1000) + b"\r\n"  # read in chunks, not ahead
    return out


def lf_only_file(srv, data: bytes, n: int) -> bytes:
    """A file another server wrote with bare LFs and no ``,W=``: served in its CRLF form."""
    path = srv.maildir(BOB) / "new" / f"1700000000.M{n}P1Q{n}.other"
    path.write_bytes(data.replace(b"\r\n", b"\n"))
    return data


def test_retr_in_order_out_of_order_and_after_dele_serve_exact_bytes(inproc_server_factory):
    srv = inproc_server_factory(listeners=["pop3"]).start()
    messages = make_messages(3 * AHEAD_COUNT)
    for n, data in enumerate(messages):
        if n % 9 == 4:
            srv.maildir(BOB).joinpath("new").mkdir(parents=True, exist_ok=True)
            lf_only_file(srv, data, n)
        else:
            srv.deliver(data)
    c = pop3_login(srv)
    assert c.cmd("STAT") == b"+OK %d %d\r\n" % (len(messages), sum(map(len, messages)))

    def retr(n: int) -> None:
        assert c.cmd(f"RETR {n}") == b"+OK %d octets\r\n" % len(messages[n - 1]), n
        assert c.multiline() == stuffed(messages[n - 1]), n

    assert c.cmd("DELE 6") == b"+OK message 6 deleted\r\n"  # before the read-ahead reaches it
    for n in range(1, 40):
        if n == 6:
            assert c.cmd("RETR 6") == b"-ERR message 6 already deleted\r\n"
            continue
        retr(n)
        if n == 20:
            assert c.cmd("DELE 25") == b"+OK message 25 deleted\r\n"  # read ahead already, maybe
        if n == 24:
            assert c.cmd("RETR 25") == b"-ERR message 25 already deleted\r\n"
            assert c.cmd("TOP 26 1") == b"+OK top of message follows\r\n"
            head, _, body = messages[25].partition(b"\r\n\r\n")
            assert c.multiline() == stuffed(head + b"\r\n\r\n" + body.split(b"\r\n")[0] + b"\r\n")
            break
    for n in (3, 60, 2, 61, 62, 90, len(messages), 1):  # back, forward, back
        retr(n)
    c.send(b"".join(b"RETR %d\r\n" % n for n in range(40, 50)))  # pipelined
    for n in range(40, 50):
        assert c.line() == b"+OK %d octets\r\n" % len(messages[n - 1]), n
        assert c.multiline() == stuffed(messages[n - 1]), n
    assert c.cmd("QUIT").startswith(b"+OK")
    c.close()
