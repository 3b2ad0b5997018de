"""BINARY (RFC 3516, RFC 9051 6.4.5) and CATENATE (RFC 4469) from the RFC text, exact bytes.

In process (fast) but for the last test, which runs both through a real twistd.
"""

from __future__ import annotations

import re

import pytest

from support.clients import ImapClient

PARTS = (b"From: a@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
         b'Content-Type: multipart/mixed; boundary="xx"\r\n\r\n'
         b"--xx\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
         b"caf=C3=A9 =\r\nsoft\r\n"
         b"--xx\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         b"AAECA/8=\r\n"
         b"--xx\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: BASE64\r\n\r\n"
         b"aGVsbG8Kd29ybGQK\r\n"
         b"--xx\r\nContent-Type: application/x-foo\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
         b"begin 644 x\r\n"
         b"--xx\r\nContent-Type: message/rfc822\r\n\r\n"
         b"Subject: inner\r\n\r\ninner body\r\n"
         b"--xx--\r\n")


@pytest.fixture
def srv(inproc_server_factory):
    return inproc_server_factory(listeners=["imap"], extra="[auth]\nfailure_delay = 0.0\n").start()


def session(srv) -> ImapClient:
    c = ImapClient(srv.port("imap"))
    c.login()
    return c


def raw(c: ImapClient, tag: bytes, command: bytes) -> bytes:
    """The exact bytes of the answer to ``command``, up to and including its tagged line."""
    c.send(tag + b" " + command + b"\r\n")
    return b"\r\n".join(c.until(tag)) + b"\r\n"


def appended(c: ImapClient, message: bytes, folder: bytes = b"INBOX") -> None:
    c.send(b"A APPEND " + folder + b" {%d+}\r\n" % len(message) + message + b"\r\n")
    assert c.until(b"A")[-1].startswith(b"A OK")


def selected(srv, message: bytes = PARTS) -> ImapClient:
    c = session(srv)
    appended(c, message)
    assert c.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    return c


# -- RFC 3516 4.2, 4.3: FETCH BINARY ----------------------------------------------------------------


def test_binary_decodes_quoted_printable_base64_and_uses_literal8_for_nul(srv):
    c = selected(srv)
    assert raw(c, b"f", b"FETCH 1 (BINARY.PEEK[1] BINARY.PEEK[2])") == (
        b"* 1 FETCH (BINARY[1] {10}\r\ncaf\xc3\xa9 soft BINARY[2] ~{5}\r\n\x00\x01\x02\x03\xff)\r\n"
        b"f OK FETCH completed\r\n")
    # RFC 9051 7.5.2: a text part goes out with CRLF line ends, whatever was encoded
    assert raw(c, b"g", b"FETCH 1 (BINARY.PEEK[3] BINARY.SIZE[3] BINARY.SIZE[2] BINARY.SIZE[1])") == (
        b"* 1 FETCH (BINARY[3] {14}\r\nhello\r\nworld\r\n BINARY.SIZE[3] 14 BINARY.SIZE[2] 5 BINARY.SIZE[1] 10)\r\n"
        b"g OK FETCH completed\r\n")
    # <partial> counts decoded octets; the answer names the origin as BODY's does
    assert raw(c, b"p", b"UID FETCH 1 BINARY.PEEK[1]<3.3>") == (
        b"* 1 FETCH (UID 1 BINARY[1]<3> {3}\r\n\xc3\xa9 )\r\np OK FETCH completed\r\n")
    assert raw(c, b"n", b"FETCH 1 BINARY.PEEK[2]<1.3>") == (
        b"* 1 FETCH (BINARY[2]<1> {3}\r\n\x01\x02\x03)\r\nn OK FETCH completed\r\n")


MIXED = (b"Subject: m\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\npreamble\r\n"
         b"--b1\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n"
         b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n"
         b"--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n"
         b"--b1--\r\nepilogue\r\n")
#: BINARY[] of MIXED, byte for byte what Dovecot 2.3 answers: every encoded leaf decoded, its
#: Content-Transfer-Encoding field saying binary, everything else as stored.
MIXED_BINARY = (b"Subject: m\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\npreamble\r\n"
                b"--b1\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n\r\ncaf\xc3\xa9\r\n"
                b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
                b"\x00\x01\x02\x03\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n"
                b"Content-Transfer-Encoding: binary\r\n\r\nhi\r\n--b1--\r\nepilogue\r\n")


def test_binary_of_the_message_of_a_multipart_and_of_a_message_part(srv):
    # RFC 3516 4.2: the section "after performing CTE-related decoding"; for a multipart or
    # message/rfc822 (RFC 2046 allows only the identity encodings on them) that is their
    # encoded parts decoded, as Dovecot answers.
    c = selected(srv, MIXED)
    assert raw(c, b"w", b"FETCH 1 (BINARY.SIZE[] BINARY.PEEK[])") == (
        b"* 1 FETCH (BINARY.SIZE[] 343 BINARY[] ~{343}\r\n%s)\r\nw OK FETCH completed\r\n" % MIXED_BINARY)
    assert raw(c, b"r", b"FETCH 1 (BINARY.PEEK[3] BINARY.PEEK[3.1])") == (
        b"* 1 FETCH (BINARY[3] {52}\r\nSubject: in\r\nContent-Transfer-Encoding: binary\r\n\r\nhi BINARY[3.1] {2}\r\nhi)"
        b"\r\nr OK FETCH completed\r\n")
    c = selected(srv)  # PARTS is message 2
    assert raw(c, b"m", b"FETCH 2 BINARY.PEEK[5]") == (
        b"* 2 FETCH (BINARY[5] {28}\r\nSubject: inner\r\n\r\ninner body)\r\nm OK FETCH completed\r\n")
    assert raw(c, b"i", b"FETCH 2 BINARY.PEEK[5.1]") == (
        b"* 2 FETCH (BINARY[5.1] {10}\r\ninner body)\r\ni OK FETCH completed\r\n")
    assert raw(c, b"z", b"FETCH 2 (BINARY.SIZE[9] BINARY.PEEK[9])") == (
        b"* 2 FETCH (BINARY.SIZE[9] 0 BINARY[9] {0}\r\n)\r\nz OK FETCH completed\r\n")


def test_an_unknown_encoding_is_no_unknown_cte(srv):
    c = selected(srv)
    for item in (b"BINARY.PEEK[4]", b"BINARY.SIZE[4]", b"BINARY.SIZE[]", b"BINARY.PEEK[]"):  # [] holds part 4
        assert raw(c, b"u", b"FETCH 1 " + item) == b"u NO [UNKNOWN-CTE] cannot decode Content-Transfer-Encoding x-uuencode\r\n"
    bad = b'Subject: m\r\nContent-Type: multipart/mixed; boundary="b"\r\nContent-Transfer-Encoding: base64\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n'
    appended(c, bad)
    assert raw(c, b"v", b"FETCH 2 BINARY.PEEK[]") == b"v NO [UNKNOWN-CTE] a multipart/mixed part cannot be base64-encoded\r\n"
    assert raw(c, b"v", b"FETCH 2 BINARY.PEEK[1]") == b"* 2 FETCH (BINARY[1] {1}\r\nx)\r\nv OK FETCH completed\r\n"


def test_binary_sets_seen_and_binary_peek_does_not(srv):
    c = selected(srv)
    assert raw(c, b"a", b"FETCH 1 (BINARY.PEEK[1]<0.3> BINARY.SIZE[1])") == (
        b"* 1 FETCH (BINARY[1]<0> {3}\r\ncaf BINARY.SIZE[1] 10)\r\na OK FETCH completed\r\n")
    assert c.cmd(b"b", b"FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))"
    assert raw(c, b"c", b"FETCH 1 BINARY[1]<0.3>") == (
        b"* 1 FETCH (BINARY[1]<0> {3}\r\ncaf FLAGS (\\Seen \\Recent))\r\nc OK FETCH completed\r\n")


def test_binary_is_the_same_after_enable_imap4rev2(srv):
    # RFC 9051 makes BINARY base protocol: the same answers in either mode.
    c = session(srv)
    appended(c, PARTS)
    assert c.cmd(b"e", b"ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2"
    c.cmd(b"s", b"SELECT INBOX")
    answer = raw(c, b"f", b"FETCH 1 (BINARY[2] BINARY.SIZE[2])")
    assert answer.startswith(b"* 1 FETCH (BINARY[2] ~{5}\r\n\x00\x01\x02\x03\xff BINARY.SIZE[2] 5 FLAGS (\\Seen")
    assert answer.endswith(b"))\r\nf OK FETCH completed\r\n")  # \Recent or not: the session's business


@pytest.mark.parametrize("item", [b"BINARY[1.MIME]", b"BINARY[HEADER]", b"BINARY[0]", b"BINARY.SIZE[1]<0.4>",
                                  b"BINARY.PEEK[1", b"BINARY[1.]"])
def test_binary_sections_are_part_numbers_only(srv, item):
    # RFC 3516 4.2 / RFC 9051 9: section-binary = "[" [section-part] "]"; no partial with .SIZE
    c = selected(srv)
    assert c.cmd(b"x", b"FETCH 1 " + item)[-1].startswith(b"x BAD syntax error: invalid BINARY attribute")


# -- RFC 3516 4.4: APPEND of literal8 ----------------------------------------------------------------


def test_append_of_a_literal8_with_and_without_literal_plus(srv):
    c = session(srv)
    eight = b"Subject: 8\r\nContent-Transfer-Encoding: binary\r\n\r\n\xc3\xa9\xff\x01\r\n"
    c.send(b"a APPEND INBOX (\\Seen) ~{%d}\r\n" % len(eight))
    assert c.line() == b"+ Ready for literal data"
    c.send(eight + b"\r\n")
    assert re.fullmatch(rb"a OK \[APPENDUID \d+ 1\] APPEND completed", c.until(b"a")[-1])
    c.send(b"b APPEND INBOX ~{%d+}\r\n" % len(eight) + eight + b"\r\n")
    assert re.fullmatch(rb"b OK \[APPENDUID \d+ 2\] APPEND completed", c.until(b"b")[-1])
    c.cmd(b"s", b"EXAMINE INBOX")
    assert raw(c, b"f", b"FETCH 2 (BODY[] BINARY[1])") == (
        b"* 2 FETCH (BODY[] {%d}\r\n%s BINARY[1] {6}\r\n\xc3\xa9\xff\x01\r\n)\r\nf OK FETCH completed\r\n" % (len(eight), eight))


def test_a_literal8_holding_nul_is_refused_and_literal8_elsewhere_is_bad(srv):
    # RFC 3516 4.4: a server that cannot store binary content answers NO [UNKNOWN-CTE].
    c = session(srv)
    nul = b"Subject: n\r\n\r\na\x00b\r\n"
    c.send(b"a APPEND INBOX ~{%d+}\r\n" % len(nul) + nul + b"\r\n")
    assert c.until(b"a")[-1] == (b"a NO [UNKNOWN-CTE] this server stores no NUL octets: "
                                 b"send binary parts base64-encoded")
    assert raw(c, b"s", b"STATUS INBOX (MESSAGES)") == b'* STATUS "INBOX" (MESSAGES 0)\r\ns OK STATUS completed\r\n'
    assert raw(c, b"x", b"SELECT ~{5}") == b"x BAD literal8 (~{n}) is only for APPEND message data (RFC 3516 4.4)\r\n"
    assert raw(c, b"y", b"SELECT ~{5+}\r\nINBOX") == (
        b"y BAD syntax error: literal8 (~{n}) is only for APPEND message data (RFC 3516 4.4)\r\n")
    assert c.cmd(b"z", b"SELECT INBOX")[-1].startswith(b"z OK")


# -- RFC 4469 CATENATE ---------------------------------------------------------------------------------


def uidvalidity(c: ImapClient, folder: bytes = b"INBOX") -> int:
    [line, _] = c.cmd(b"v", b"STATUS " + folder + b" (UIDVALIDITY)")
    return int(re.search(rb"UIDVALIDITY (\d+)", line).group(1))


def stored(c: ImapClient, folder: bytes, seq: int) -> bytes:
    c.cmd(b"e", b"EXAMINE " + folder)
    c.send(b"g FETCH %d BODY.PEEK[]\r\n" % seq)
    size = int(re.search(rb"\{(\d+)\}$", c.line()).group(1))
    data = c.recv_exactly(size)
    assert c.until(b"g")[-1] == b"g OK FETCH completed"
    return data


def test_catenate_joins_text_and_url_parts(srv):
    # RFC 4469 5's example: the header of one message, new text, a part of it.
    c = session(srv)
    appended(c, PARTS)
    v = uidvalidity(c)
    text = b"--new\r\nContent-Type: text/plain\r\n\r\n"
    c.send(b'A APPEND Drafts (\\Draft) CATENATE (URL "/INBOX;UIDVALIDITY=%d/;UID=1/;SECTION=HEADER" '
           b"TEXT {%d}\r\n" % (v, len(text)))
    assert c.line() == b"+ Ready for literal data"
    c.send(text + b' URL "/INBOX;UIDVALIDITY=%d/;UID=1/;section=1" TEXT ~{11+}\r\n\r\n--new--\r\n'
           b" URL /INBOX/;UID=1/;PARTIAL=0.4)\r\n" % v)
    assert re.fullmatch(rb"A OK \[APPENDUID \d+ 1\] APPEND completed", c.until(b"A")[-1])
    header = PARTS[: PARTS.index(b"\r\n\r\n") + 4]
    assert stored(c, b"Drafts", 1) == header + text + b"caf=C3=A9 =\r\nsoft" + b"\r\n--new--\r\n" + b"From"


def test_multiappend_of_catenated_messages_all_or_none(srv):
    c = session(srv)
    appended(c, b"Subject: one\r\n\r\nbody one\r\n")
    v = uidvalidity(c)
    url = b'URL "/INBOX;UIDVALIDITY=%d/;UID=1"' % v
    c.send(b"A APPEND Archive CATENATE (%s) (\\Seen) CATENATE (TEXT {3+}\r\nX:  %s)\r\n" % (url, url))
    assert re.fullmatch(rb"A OK \[APPENDUID \d+ 1:2\] APPEND completed", c.until(b"A")[-1])
    assert stored(c, b"Archive", 2) == b"X: Subject: one\r\n\r\nbody one\r\n"
    c.send(b"B APPEND Archive CATENATE (%s) CATENATE (URL \"/INBOX;UIDVALIDITY=%d/;UID=7\")\r\n" % (url, v))
    assert c.until(b"B")[-1] == b"B NO [BADURL /INBOX;UIDVALIDITY=%d/;UID=7] no such message" % v
    assert raw(c, b"s", b"STATUS Archive (MESSAGES)") == b'* STATUS "Archive" (MESSAGES 2)\r\ns OK STATUS completed\r\n'


@pytest.mark.parametrize("url, why", [
    (b"/INBOX;UIDVALIDITY=1/;UID=1", b"the mailbox's UIDVALIDITY has changed"),
    (b"/Nowhere/;UID=1", b"no such mailbox"),
    (b"/..%2F..%2Falice@example.test/;UID=1", b"no such mailbox"),  # the user's own mailboxes only
    (b"/INBOX/;UID=1/;SECTION=7", b"no such part"),
    (b"/INBOX/;UID=1/;SECTION=BOGUS", b"invalid SECTION"),
    (b"imap://bob@example.test/INBOX/;UID=1", b"only relative IMAP URLs /mailbox;UIDVALIDITY=n/;UID=m[/;SECTION=s] "
                                              b"to this account"),
    (b"/INBOX/;UID=1;URLAUTH=anonymous", b"only relative IMAP URLs /mailbox;UIDVALIDITY=n/;UID=m[/;SECTION=s] "
                                         b"to this account"),
])
def test_catenate_bad_urls(srv, url, why):
    c = session(srv)
    appended(c, b"Subject: one\r\n\r\nbody one\r\n")
    assert raw(c, b"A", b'APPEND INBOX CATENATE (URL "%s")' % url) == b"A NO [BADURL %s] %s\r\n" % (url, why)


def test_catenate_grammar_errors_are_bad(srv):
    c = session(srv)
    for parts in (b"()", b"(TEXT)", b'(TEXT "x")', b"(URL)", b"(FOO {1+}\r\nx)"):
        assert raw(c, b"A", b"APPEND INBOX CATENATE " + parts).startswith(b"A BAD syntax error: CATENATE")


def test_catenate_over_the_message_size_limit_is_toobig(inproc_server_factory):
    srv = inproc_server_factory(listeners=["imap"], extra="[limits]\nmessage_size = 1000\n").start()
    c = session(srv)
    appended(c, b"Subject: big\r\n\r\n" + b"x" * 600 + b"\r\n")
    assert raw(c, b"A", b'APPEND INBOX CATENATE (URL "/INBOX/;UID=1" URL "/INBOX/;UID=1")') == (
        b"A NO [TOOBIG] the message would be larger than 1000 octets\r\n")
    assert raw(c, b"s", b"STATUS INBOX (MESSAGES)") == b'* STATUS "INBOX" (MESSAGES 1)\r\ns OK STATUS completed\r\n'


# -- through a real twistd ---------------------------------------------------------------------------


def test_binary_and_catenate_through_twistd(server_factory):
    srv = server_factory(listeners=["imap"]).start()
    c = session(srv)
    c.send(b"a APPEND INBOX ~{%d+}\r\n" % len(PARTS) + PARTS + b"\r\n")
    assert c.until(b"a")[-1].startswith(b"a OK [APPENDUID ")
    assert b" BINARY CATENATE" in c.cmd(b"c", b"CAPABILITY")[0]
    c.send(b'b APPEND Drafts CATENATE (TEXT {14+}\r\nSubject: x\r\n\r\n URL "/INBOX/;UID=1/;SECTION=2")\r\n')
    assert c.until(b"b")[-1].startswith(b"b OK [APPENDUID ")
    c.cmd(b"s", b"SELECT Drafts")
    assert raw(c, b"f", b"FETCH 1 (BINARY[] BINARY.SIZE[1] BINARY[1])") == (
        b"* 1 FETCH (BINARY[] {22}\r\nSubject: x\r\n\r\nAAECA/8= BINARY.SIZE[1] 8 BINARY[1] {8}\r\nAAECA/8= FLAGS (\\Seen \\Recent))\r\n"
        b"f OK FETCH completed\r\n")


# -- the reader: literal8 framing and where spools are kept -------------------------------------------


def test_literal8_framing_and_the_memory_bound_of_a_commands_spools():
    from mailstack.imap.reader import COMMAND_SPOOLS_IN_MEMORY, MESSAGE, CommandAssembler, Complete, Framing

    framing = Framing()
    a = CommandAssembler(framing, lambda command: MESSAGE, 10 * COMMAND_SPOOLS_IN_MEMORY)
    part = b"x" * (200 * 1024)
    framing.feed(b"a APPEND INBOX CATENATE (" + b"".join(b"TEXT ~{%d+}\r\n" % len(part) + part + b" " for _ in range(10))
                 + b"TEXT ~{3+}\r\na\x00b) foo~{1+}\r\nz\r\n")
    done = a.step()
    assert isinstance(done, Complete)
    spools = done.command.literals[:11]
    assert all(s.literal8 for s in spools) and [s.nul for s in spools] == [False] * 10 + [True]
    # RFC 3516 4.4 "~" starts a literal8 only as a token: "foo~" is an atom before a literal
    assert done.command.texts[-2].endswith(b") foo~") and not done.command.literals[-1].literal8
    in_memory = [not s.file._rolled for s in spools]  # noqa: SLF001 (the spool's own state)
    assert in_memory == [True] * 6 + [False] * 5, in_memory  # 1 MiB held at most, the rest on disk
    assert spools[3].read() == part and spools[10].read() == b"a\x00b"
    done.command.close()


def test_catenate_of_large_parts_streams_through_a_file(server_factory):
    # The message is assembled in a temporary file as the parts are read: a 7 MB result costs
    # the server neither 7 MB of memory nor more than a little CPU; 10 MB is TOOBIG at once.
    from support.proc import cpu_seconds, rss_mb

    srv = server_factory(listeners=["imap"], extra="[limits]\nmessage_size = 8388608\n").start()
    pid = srv.proc.pid
    c = session(srv)
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 2048  # 2 MB
    appended(c, big)
    text = b"z" * (1024 * 1024)
    url = b'URL "/INBOX/;UID=1"'
    cpu0, rss0 = cpu_seconds(pid), rss_mb(pid)
    c.send(b"A APPEND Archive CATENATE (%s %s TEXT {%d+}\r\n%s %s)\r\n" % (url, url, len(text), text, url))
    assert c.until(b"A")[-1].startswith(b"A OK [APPENDUID ")
    cpu, grown = cpu_seconds(pid) - cpu0, rss_mb(pid) - rss0
    print(f"CATENATE of {3 * len(big) + len(text)} octets: server CPU {cpu:.2f} s, RSS +{grown:.1f} MB")
    assert cpu < 1.0 and grown < 4
    assert raw(c, b"s", b"STATUS Archive (MESSAGES SIZE)") == (
        b'* STATUS "Archive" (MESSAGES 1 SIZE %d)\r\ns OK STATUS completed\r\n' % (3 * len(big) + len(text)))
    c.send(b"B APPEND Archive CATENATE (%s)\r\n" % b" ".join([url] * 5))
    assert c.until(b"B")[-1] == b"B NO [TOOBIG] the message would be larger than 8388608 octets"


def test_binary_of_a_large_message_is_streamed_and_a_stored_nul_is_a_literal8(server_factory):
    # BINARY[] alone is the stored message: streamed from its file like BODY[] (a scan first
    # decides literal or literal8), so 16 MB cost neither 16 MB of memory nor much CPU.
    from support.proc import cpu_seconds, rss_mb
    from mailstack.store import MaildirStore

    srv = server_factory(listeners=["imap"]).start()
    pid = srv.proc.pid
    big = b"Subject: big\r\n\r\n" + (b"\xc3\xa9" * 499 + b"\r\n") * 16384  # 16 MB of 8-bit text
    inbox = MaildirStore(str(srv.store_root)).mailbox("bob@example.test").folder("INBOX")
    inbox.append(big)
    inbox.append(b"Subject: old\r\n\r\na\x00b\r\n")  # from an older store: SMTP and APPEND refuse NUL now
    large_nul = b"Subject: old\r\n\r\n" + b"x" * 300000 + b"\x00\r\n"
    inbox.append(large_nul)
    c = selected(srv, b"Subject: small\r\n\r\nx\r\n")
    cpu0, rss0 = cpu_seconds(pid), rss_mb(pid)
    c.send(b"f FETCH 1 (BINARY.SIZE[] BINARY.PEEK[])\r\n")
    assert c.line() == b"* 1 FETCH (BINARY.SIZE[] %d BINARY[] {%d}" % (len(big), len(big))
    assert c.recv_exactly(len(big)) == big
    assert c.until(b"f") == [b")", b"f OK FETCH completed"]
    cpu, grown = cpu_seconds(pid) - cpu0, rss_mb(pid) - rss0
    print(f"BINARY[] of {len(big)} octets: server CPU {cpu:.2f} s, RSS +{grown:.1f} MB")
    assert cpu < 1.0 and grown < 8
    assert raw(c, b"g", b"FETCH 2 (BINARY.PEEK[] BINARY.PEEK[1] BINARY.PEEK[]<16.3>)") == (
        b"* 2 FETCH (BINARY[] ~{21}\r\nSubject: old\r\n\r\na\x00b\r\n BINARY[1] ~{5}\r\na\x00b\r\n"
        b" BINARY[]<16> ~{3}\r\na\x00b)\r\ng OK FETCH completed\r\n")
    c.send(b"h FETCH 3 (BINARY.PEEK[])\r\n")  # streamed: the scan finds the NUL at the end
    assert c.line() == b"* 3 FETCH (BINARY[] ~{%d}" % len(large_nul)
    assert c.recv_exactly(len(large_nul)) == large_nul and c.until(b"h") == [b")", b"h OK FETCH completed"]
