"""The same messages through mailstack and through Dovecot (the reference IMAP server, run by
the test itself): BODYSTRUCTURE, ENVELOPE, sizes and every body section must agree.

Where RFC 3501 leaves room, a client written against Dovecot must see the same answer here
(issue 15; moves from and to Dovecot, issue 18).  Compared after what RFC 3501 makes
insignificant: the case of the MIME type, subtype, encoding and parameter names and values in
BODY[STRUCTURE] (the RFC compares them case-insensitively), where FLAGS stands in a FETCH
response, and the text of the tagged OK.

One known disagreement is set aside (:data:`KNOWN`): for a part that is itself a multipart
(or a message/rfc822 holding one), Dovecot counts the CRLF after its closing boundary, before
the enclosing boundary, into the part; RFC 2046 5.1.1 attaches that CRLF to the enclosing
boundary, as mailstack does.  Issue 15 settled it: mailstack keeps to RFC 2046, whose
grammar gives that CRLF to the delimiter of the enclosing multipart.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from support.ci import on_ci
from support.clients import ImapClient
from support.dovecot import run_dovecot, stop
from support.servers import PASSWORDS

BOB = "bob@example.test"
CORPUS = [
    # multipart/mixed with a preamble, quoted-printable text, a base64 attachment, an epilogue
    b"From: A <a@x.test>\r\nTo: Grp: b@y.test, c@z.test;\r\nCc: undisclosed-recipients:;\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@x>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n"
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"caf=C3=A9\r\nline2\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n"
    b"--b1\r\nContent-Type: application/octet-stream; name=\"f.bin\"\r\n"
    b"Content-Disposition: attachment; filename=\"f.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"AAECAw==\r\n--b1--\r\nepilogue\r\n",
    # plain text
    b"Subject: plain\r\nFrom: \"Doe, J\" <j@d.org>, k@e.test\r\nReply-To: r@e.test\r\n\r\nhello\r\nworld\r\n",
    # a message that is a message, twice
    b"From: x@y.test\r\nContent-Type: message/rfc822\r\n\r\nSubject: nested\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: twice\r\n\r\ninner most\r\n",
    # multipart/alternative inside multipart/mixed, a last part without a final CRLF
    b"Subject: alt\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/alternative;"
    b" boundary=i\r\n\r\n--i\r\nContent-Type: text/plain\r\n\r\nplain\r\n--i\r\nContent-Type: text/html;"
    b" charset=\"ISO-8859-1\"\r\n\r\n<b>html</b>\r\n--i--\r\n--o\r\nContent-Type: image/png\r\n\r\nPNG\r\n--o--",
]
SECTIONS = [b"BODYSTRUCTURE", b"BODY", b"ENVELOPE", b"RFC822.SIZE", b"BODY[HEADER]", b"BODY[TEXT]",
            b"BODY[HEADER.FIELDS (Subject From)]", b"BODY[1]", b"BODY[1.MIME]", b"BODY[1.1]", b"BODY[1.TEXT]",
            b"BODY[1.HEADER]", b"BODY[2]", b"BODY[2.MIME]", b"BODY[1.2]", b"BODY[1.1.1]", b"BODY[3]",
            b"BODY[3.MIME]", b"BODY[4]", b"BODY[1]<2.5>",
            # RFC 3516 BINARY: Dovecot's literal8 for 8-bit data without NUL is read as a literal (normalise)
            b"BINARY.PEEK[]", b"BINARY.SIZE[]", b"BINARY.PEEK[1]", b"BINARY.PEEK[1.1]", b"BINARY.PEEK[2]",
            b"BINARY.SIZE[3]", b"BINARY.PEEK[3]<1.2>"]
#: (message, section) answers that differ for the reason in the module docstring.
KNOWN = {(4, b"BODY[1]"), (4, b"BINARY.PEEK[1]")}
STRUCTURE = re.compile(rb"(BODY(?:STRUCTURE)? )(\(.*\))(?=\)$)")


def answers(port: int) -> dict:
    c = ImapClient(port)
    assert c.cmd(b"a", f'LOGIN {BOB} "{PASSWORDS[BOB]}"'.encode())[-1].startswith(b"a OK")
    for message in CORPUS:
        c.send(b"A APPEND INBOX {%d}\r\n" % len(message))
        assert c.line().startswith(b"+")
        c.send(message + b"\r\n")
        assert c.until(b"A")[-1].startswith(b"A OK")
    assert c.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    out = {}
    for n in range(1, len(CORPUS) + 1):
        for section in SECTIONS:
            c.send(b"f FETCH %d (%s)\r\n" % (n, section))
            lines = c.until(b"f")
            assert lines[-1].startswith(b"f OK"), (n, section, lines)
            out[(n, section)] = normalise(b"\r\n".join(lines[:-1]))
    c.close()
    return out


def normalise(response: bytes) -> bytes:
    response = re.sub(rb" ?FLAGS \([^)]*\) ?", b" ", response).replace(b"( ", b"(").replace(b" )", b")")
    if b"\0" not in response:  # RFC 3516 4.3: a literal8 is needed for NUL only
        response = re.sub(rb"(BINARY\[[\d.]*\](?:<\d+>)?) ~\{", rb"\1 {", response)
    return STRUCTURE.sub(lambda m: m.group(1) + m.group(2).lower(), response)


@pytest.fixture
def dovecot():
    if not os.path.exists("/usr/lib/dovecot/imap"):
        reason = "Dovecot's IMAP server is not installed (apt-get install dovecot-imapd)"
        if on_ci():
            pytest.fail(reason + " - CI is set, so the comparison must run", pytrace=False)
        pytest.skip(reason)
    # Not under pytest's tmp_path: Dovecot's auth process (another user) must reach its files,
    # and pytest's directories are private to us.
    base = Path(tempfile.mkdtemp(prefix="mailstack-dovecot-"))
    os.chmod(base, 0o755)
    (base / "Maildir").mkdir()
    proc, port, why = run_dovecot(base, base / "Maildir", BOB, PASSWORDS[BOB], "imap")
    assert proc is not None, why
    yield port
    stop(proc)
    shutil.rmtree(base, ignore_errors=True)


def test_fetch_answers_agree_with_dovecot(server_factory, dovecot):
    ours = answers(server_factory(listeners=["imap"]).start().port("imap"))
    theirs = answers(dovecot)
    differ = [(key, ours[key], theirs[key]) for key in ours if ours[key] != theirs[key] and key not in KNOWN]
    assert all(ours[key] != theirs[key] for key in KNOWN), "a known difference is gone: drop it from KNOWN"
    assert not differ, "\n".join(f"{k}:\n  mailstack {a[:400]!r}\n  dovecot   {b[:400]!r}" for k, a, b in differ[:6])
