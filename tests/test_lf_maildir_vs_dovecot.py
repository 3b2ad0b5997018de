"""A Maildir whose files end lines in a bare LF (Dovecot's own, a procmail one), served by
mailstack exactly as Dovecot serves it (issue 18, item 2): the CRLF form on IMAP and POP3, and
its size as RFC822.SIZE, in LIST and in STAT (RFC 3501 2.3.4, RFC 1939 5 and 11).

Dovecot (dovecot-imapd, dovecot-pop3d) stores the APPENDed messages itself, LF-only, named
``,S=<size>,W=<CRLF size>``; two files are put in ``new/`` by hand as procmail would, one
LF-only and one CRLF, with neither size in their names.  Then Dovecot's answers are taken
(IMAP, then POP3), and mailstack, started on the same store, must give the same bytes.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import socket
import ssl
import tempfile
from pathlib import Path

import pytest

from support.clients import ImapClient
from support.dovecot import dovecot_on_store_maildir, run_dovecot, stop
from support.inprocess import InProcessServer
from support.servers import PASSWORDS

pytestmark = pytest.mark.slow

BOB = "bob@example.test"
BIG = b"Subject: big\r\nFrom: a@example.test\r\n\r\n" + b"".join(
    b"line %06d " % i + b"y" * (i % 97) + b"\r\n" for i in range(20000))  # about 1.2 MB
APPENDED = [
    b"Subject: small\r\nFrom: a@example.test\r\n\r\nhello\r\nworld\r\n",
    BIG,
    b"Subject: cr\r\nFrom: a@example.test\r\n\r\nbare\rcr in a line\r\nend\r\n",
    b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nno line end at the end",
]
BY_HAND = {  # procmail-style names: no ,S= and no ,W=
    "1600000000.M1P1.procmail": b"Subject: lf by hand\nFrom: a@example.test\n\nline one\nline two\n\n.dot\n",
    "1600000001.M2P1.procmail": b"Subject: crlf by hand\r\nFrom: a@example.test\r\n\r\nalready\r\nCRLF\r\n",
}
ITEMS = ["RFC822.SIZE", "BODY.PEEK[]", "BODY.PEEK[]<0.60>", "BODY.PEEK[]<20.100000>", "BODY.PEEK[]<1000000.9>",
         "RFC822.HEADER", "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]", "BODY.PEEK[TEXT]<3.10>"]
SEARCHES = ["LARGER 60", "SMALLER 70", "LARGER 1000000", "BODY \"line two\"", "TEXT \"CRLF\""]


def imap_answers(client: imaplib.IMAP4) -> dict:
    """(sequence number, item) -> what the server answered, literal bytes as they came."""
    typ, data = client.select("INBOX", readonly=True)
    assert typ == "OK"
    count = int(data[0])
    out: dict = {"count": count}
    for n in range(1, count + 1):
        for item in ITEMS:
            typ, data = client.fetch(str(n), f"({item})")
            assert typ == "OK", (n, item, data)
            literals = [part[1] for part in data if isinstance(part, tuple)]
            if literals:
                out[(n, item)] = (re.sub(rb"^\d+ \(|\{\d+\}$", b"", data[0][0]), literals[0])
            else:
                out[(n, item)] = data[0]
    for criteria in SEARCHES:
        typ, data = client.search(None, criteria)
        assert typ == "OK", (criteria, data)
        out[criteria] = sorted(int(x) for x in data[0].split())
    client.logout()
    return out


class RawPop3:
    """POP3 multi-line responses byte for byte (poplib strips line ends and dots)."""

    def __init__(self, port: int, user: str, password: str, context: ssl.SSLContext | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        assert self.line().startswith(b"+OK")
        assert self.cmd(f"USER {user}").startswith(b"+OK")
        assert self.cmd(f"PASS {password}").startswith(b"+OK")

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionResetError(self.buf[-200:])
        self.buf += chunk

    def cmd(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multi(self, text: str) -> tuple[bytes, bytes]:
        """(status line, the body up to and including the final ".")."""
        status = self.cmd(text)
        assert status.startswith(b"+OK"), (text, status)
        while (b"\r\n" + self.buf).find(b"\r\n.\r\n") < 0:
            self._more()
        end = (b"\r\n" + self.buf).find(b"\r\n.\r\n") + 3
        body, self.buf = self.buf[:end], self.buf[end:]
        return status, body

    def quit(self) -> None:
        self.cmd("QUIT")
        self.sock.close()


def pop3_answers(pop: RawPop3, count: int) -> dict:
    out = {"STAT": pop.cmd("STAT"), "LIST": pop.multi("LIST")[1]}
    for n in range(1, count + 1):
        status, out[("RETR", n)] = pop.multi(f"RETR {n}")
        out[("RETR octets", n)] = re.match(rb"\+OK (\d+) octets", status).group(1)
        out[("TOP", n)] = pop.multi(f"TOP {n} 1")[1]
        out[("LIST", n)] = pop.cmd(f"LIST {n}")
    pop.quit()
    return out


def dovecot_append(port: int, message: bytes) -> None:
    """APPEND byte for byte (imaplib would turn the bare CR into CRLF)."""
    c = ImapClient(port)
    assert c.cmd(b"a", b"LOGIN u@x.test pw")[-1].startswith(b"a OK")
    c.send(b"b APPEND INBOX {%d}\r\n" % len(message))
    assert c.line().startswith(b"+")
    c.send(message + b"\r\n")
    assert c.until(b"b")[-1].startswith(b"b OK")
    c.close()


def test_lf_maildir_is_served_as_dovecot_serves_it(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="mailstack-lf-crlf-"))  # Dovecot's processes must enter it
    os.chmod(root, 0o755)
    try:
        (root / "server").mkdir()
        srv = InProcessServer(root / "server")
        maildir = srv.maildir(BOB)
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        for name, data in BY_HAND.items():
            (maildir / "new" / name).write_bytes(data)
        proc, port = dovecot_on_store_maildir(root, maildir)
        try:
            for message in APPENDED:
                dovecot_append(port, message)
            client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            client.login("u@x.test", "pw")
            reference = imap_answers(client)
        finally:
            stop(proc)
        proc, port, why = run_dovecot(root / "dovecot-pop3", maildir, "u@x.test", "pw", "pop3")
        assert proc is not None, why
        try:
            pop_reference = pop3_answers(RawPop3(port, "u@x.test", "pw"), reference["count"])
        finally:
            stop(proc)

        files = {name: (maildir / sub / name).read_bytes() for sub in ("cur", "new") for name in os.listdir(maildir / sub)}
        assert len(files) == len(APPENDED) + len(BY_HAND) == reference["count"]
        dovecots = [n for n in files if ",W=" in n]
        assert len(dovecots) == len(APPENDED)  # Dovecot's names: ,S=<LF size>,W=<CRLF size>
        assert any(b"\r\n" not in data and b"\n" in data for data in files.values())  # LF-only on disk
        assert max(len(reference[(n, "BODY.PEEK[]")][1]) for n in range(1, reference["count"] + 1)) > 1_000_000

        srv.start()
        try:
            client = imaplib.IMAP4_SSL("127.0.0.1", srv.port("imaps"), ssl_context=srv.ssl_context(), timeout=30)
            client.login(BOB, PASSWORDS[BOB])
            typ, data = client.status("INBOX", "(SIZE MESSAGES)")
            assert typ == "OK"
            size = int(re.search(rb"SIZE (\d+)", data[0]).group(1))
            ours = imap_answers(client)
            pop_ours = pop3_answers(RawPop3(srv.port("pop3s"), BOB, PASSWORDS[BOB], srv.ssl_context()), ours["count"])
            assert srv.errors() == []
        finally:
            srv.stop()

        for key in reference:
            assert ours[key] == reference[key], key
        assert ours == reference
        for key in pop_reference:
            assert pop_ours[key] == pop_reference[key], key
        sizes = [int(reference[(n, "RFC822.SIZE")].split(b"RFC822.SIZE ")[1].rstrip(b")")) for n in
                 range(1, reference["count"] + 1)]
        assert size == sum(sizes)  # RFC 8438: the RFC822.SIZEs added up
        for n in range(1, reference["count"] + 1):  # the CRLF form: no bare LF anywhere
            whole = reference[(n, "BODY.PEEK[]")][1]
            assert whole.count(b"\n") == whole.count(b"\r\n") and len(whole) == sizes[n - 1]
        after = {name: (maildir / sub / name).read_bytes() for sub in ("cur", "new") for name in os.listdir(maildir / sub)}
        assert sorted(after.values()) == sorted(files.values())  # served, never rewritten
    finally:
        shutil.rmtree(root, ignore_errors=True)
