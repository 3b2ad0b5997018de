"""IMAP4rev2 (RFC 9051) and UTF8=ACCEPT (RFC 6855): what changes after ENABLE, exact replies.

Fast: the service runs in this process.  The IMAP4rev1 conformance tests run in IMAP4rev2
mode too (their ``srv`` fixture); this file holds what only the mode switch itself decides,
and the checks of :func:`support.rev2.rev2_form`, which those tests lean on.
"""

from __future__ import annotations

import imaplib
import re

import pytest

from support import rev2
from support.clients import ImapClient
from support.servers import PASSWORDS

BOB = "bob@example.test"


@pytest.fixture
def srv(inproc_server_factory):
    return inproc_server_factory(listeners=["imap"], extra="[auth]\nfailure_delay = 0.0\n").start()


def session(srv, enable: bytes | None = b"IMAP4rev2") -> ImapClient:
    c = ImapClient(srv.port("imap"))
    c.login()
    if enable is not None:
        assert c.cmd(b"e", b"ENABLE " + enable) == [b"* ENABLED " + enable, b"e OK ENABLE completed"]
    return c


def append(c: ImapClient, message: bytes, folder: bytes = b"INBOX") -> None:
    c.send(b"A APPEND " + folder + b" {%d+}\r\n" % len(message) + message + b"\r\n")
    assert c.until(b"A")[-1].startswith(b"A OK"), message


def test_both_revisions_are_advertised_and_rev2_is_enabled_by_name(srv):
    # RFC 9051 6.3.1: a server offering both lists both; ENABLE IMAP4rev2 (any case) switches.
    c = session(srv, enable=None)
    caps = c.cmd(b"c", b"CAPABILITY")[0].split()
    assert caps[2:4] == [b"IMAP4rev1", b"IMAP4rev2"] and b"UTF8=ACCEPT" in caps
    assert c.cmd(b"e", b"ENABLE imap4rev2 X-NONE CONDSTORE") == [
        b"* ENABLED IMAP4rev2 CONDSTORE", b"e OK ENABLE completed"]  # RFC 5161 3.1: the unknown is left out


def test_select_in_rev2_has_no_recent_nor_unseen_and_answers_list(srv):
    # RFC 9051 6.3.2: FLAGS, EXISTS, LIST (name and attributes), OK UIDVALIDITY, UIDNEXT,
    # PERMANENTFLAGS; no RECENT (removed, 7.4) and no UNSEEN code.
    c = session(srv)
    append(c, b"Subject: 1\r\n\r\nx\r\n")
    append(c, b"Subject: 2\r\n\r\nx\r\n")
    lines = c.cmd(b"s", b"SELECT INBOX")
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", b" ".join(lines)).group(1)
    modseq = re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(lines)).group(1)
    assert lines == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] flags permitted",
        b"* 2 EXISTS", b"* OK [UIDVALIDITY " + uidvalidity + b"] UIDs valid",
        b"* OK [UIDNEXT 3] predicted next UID", b"* OK [HIGHESTMODSEQ " + modseq + b"] highest",
        b'* LIST (\\HasNoChildren) "/" "INBOX"', b"s OK [READ-WRITE] SELECT completed"]
    assert c.cmd(b"f", b"FETCH 1:2 FLAGS") == [b"* 1 FETCH (FLAGS ())", b"* 2 FETCH (FLAGS ())", b"f OK FETCH completed"]
    other = session(srv, enable=None)
    append(other, b"Subject: 3\r\n\r\nx\r\n")
    assert c.cmd(b"n", b"NOOP") == [b"* 3 EXISTS", b"n OK NOOP completed"]


def test_search_answers_esearch_in_rev2(srv):
    # RFC 9051 6.4.4: the answer is ESEARCH (RFC 4731), ALL assumed; no match: the tag only.
    c = session(srv)
    for n in range(3):
        append(c, b"Subject: %d\r\n\r\nx\r\n" % n)
    c.cmd(b"s", b"SELECT INBOX")
    c.cmd(b"f", b"STORE 2 +FLAGS.SILENT (\\Seen)")
    assert c.cmd(b"a", b"SEARCH UNSEEN") == [b'* ESEARCH (TAG "a") ALL 1,3', b"a OK SEARCH completed"]
    assert c.cmd(b"b", b"UID SEARCH DELETED") == [b'* ESEARCH (TAG "b") UID', b"b OK SEARCH completed"]
    assert c.cmd(b"c", b"SEARCH RETURN (COUNT) ALL") == [b'* ESEARCH (TAG "c") COUNT 3', b"c OK SEARCH completed"]
    assert c.cmd(b"d", b"SORT (ARRIVAL) UTF-8 ALL") == [b"* SORT 1 2 3", b"d OK SORT completed"]  # SORT unchanged


def test_status_deleted(srv):
    # RFC 9051 6.3.11: DELETED is the number of messages with \Deleted.
    c = session(srv)
    for n in range(3):
        append(c, b"Subject: %d\r\n\r\nx\r\n" % n)
    c.cmd(b"s", b"SELECT INBOX")
    c.cmd(b"f", b"STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    assert c.cmd(b"t", b"STATUS INBOX (DELETED MESSAGES)") == [
        b'* STATUS "INBOX" (DELETED 2 MESSAGES 3)', b"t OK STATUS completed"]


@pytest.mark.parametrize("enable", [b"IMAP4rev2", b"UTF8=ACCEPT"])
def test_utf8_mailbox_names_once_enabled(srv, enable):
    # RFC 6855 3 (and RFC 9051 5.1): names in UTF-8 both ways, never modified UTF-7; an "&" is
    # an ampersand.  A session that did not enable it still sees modified UTF-7 (RFC 3501 5.1.3).
    utf8, plain = session(srv, enable), session(srv, enable=None)
    assert plain.cmd(b"c", b"CREATE Entw&APw-rfe") == [b"c OK CREATE completed"]
    assert utf8.cmd(b"c", "CREATE \"Fächer\"".encode()) == [b"c OK CREATE completed"]
    assert utf8.cmd(b"c", b'CREATE "R&D"') == [b"c OK CREATE completed"]
    assert utf8.cmd(b"l", b'LIST "" (E* F* R*)') == [
        b'* LIST (\\HasNoChildren) "/" "Entw\xc3\xbcrfe"', b'* LIST (\\HasNoChildren) "/" "F\xc3\xa4cher"',
        b'* LIST (\\HasNoChildren) "/" "R&D"', b"l OK LIST completed"]
    assert plain.cmd(b"l", b'LIST "" (E* F* R*)') == [
        b'* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"', b'* LIST (\\HasNoChildren) "/" "F&AOQ-cher"',
        b'* LIST (\\HasNoChildren) "/" "R&-D"', b"l OK LIST completed"]
    assert utf8.cmd(b"t", "STATUS \"Entwürfe\" (MESSAGES)".encode()) == [
        b'* STATUS "Entw\xc3\xbcrfe" (MESSAGES 0)', b"t OK STATUS completed"]
    decomposed = "STATUS \"Entwu\u0308rfe\" (MESSAGES)".encode()  # NFD: the same name after NFC
    assert utf8.cmd(b"u", decomposed)[-1] == b"u OK STATUS completed"
    assert utf8.cmd(b"v", b'STATUS "\xff" (MESSAGES)') == [b"v NO [CANNOT] mailbox names must be UTF-8 (RFC 6855 3)"]


def test_utf8_accept_alone_keeps_rev1_answers(srv):
    c = session(srv, b"UTF8=ACCEPT")
    append(c, b"Subject: 1\r\n\r\nx\r\n")
    assert b"* 1 RECENT" in c.cmd(b"s", b"SELECT INBOX")
    assert c.cmd(b"a", b"SEARCH ALL") == [b"* SEARCH 1", b"a OK SEARCH completed"]


def test_imaplib_in_utf8_mode(srv):
    # A real client: imaplib switches to UTF-8 after ENABLE UTF8=ACCEPT (its _mode_utf8).
    m = imaplib.IMAP4("127.0.0.1", srv.port("imap"))
    m.login(BOB, PASSWORDS[BOB])
    assert m.enable("UTF8=ACCEPT")[0] == "OK"
    assert m.create('"Ärger"')[0] == "OK"
    typ, data = m.list()
    assert typ == "OK" and '(\\HasNoChildren) "/" "Ärger"'.encode() in data
    assert m.select('"Ärger"')[0] == "OK"
    m.logout()


@pytest.mark.parametrize("rev1, command, expected", [
    ([b"* 2 EXISTS", b"* 1 RECENT", b"t OK NOOP completed"], b"NOOP", [b"* 2 EXISTS", b"t OK NOOP completed"]),
    ([b"* 1 FETCH (FLAGS (\\Seen \\Recent))", b"t OK"], b"FETCH 1 FLAGS", [b"* 1 FETCH (FLAGS (\\Seen))", b"t OK"]),
    ([b"* SEARCH 1 2 3 7", b"t OK"], b"UID SEARCH ALL", [b'* ESEARCH (TAG "t") UID ALL 1:3,7', b"t OK"]),
    ([b"* SEARCH", b"t OK"], b"search deleted", [b'* ESEARCH (TAG "t")', b"t OK"]),
    ([b"* SEARCH 4 (MODSEQ 9)", b"t OK"], b"SEARCH MODSEQ 3", [b'* ESEARCH (TAG "t") ALL 4 MODSEQ 9', b"t OK"]),
    ([b"* SEARCH 1", b"t OK"], b"SEARCH RETURN () ALL", [b"* SEARCH 1", b"t OK"]),  # not a plain SEARCH
    ([b"* OK [UNSEEN 1] x", b"* OK [HIGHESTMODSEQ 1] h", b"t OK"], b'EXAMINE "Box"',
     [b"* OK [HIGHESTMODSEQ 1] h", b'* LIST (\\HasNoChildren) "/" "Box"', b"t OK"]),
])
def test_rev2_form(rev1, command, expected):
    assert rev2.rev2_form(rev1, b"t", command) == expected
    assert rev2.Replies(expected, b"t", command) == rev1
    assert rev2.Replies(rev1, b"t", command) != rev1 or rev1 == expected


def test_append_utf8_data_extension(srv):
    # RFC 6855 4: append-data =/ "UTF8" SP "(" literal8 ")"; what Thunderbird sends once it
    # enabled UTF8=ACCEPT (its copy to Sent).
    c = session(srv, b"UTF8=ACCEPT")
    m = "Subject: Grüße\r\nFrom: a@b.test\r\n\r\nHallo Welt\r\n".encode()
    c.send(b'A APPEND "Sent" (\\Seen) UTF8 (~{%d+}\r\n' % len(m) + m + b")\r\n")
    assert re.fullmatch(rb"A OK \[APPENDUID \d+ 1\] APPEND completed", c.until(b"A")[-1])
    c.send(b'B APPEND "Sent" UTF8 (~{%d}\r\n' % len(m))
    assert c.line().startswith(b"+ ")
    c.send(m + b")\r\n")
    assert c.until(b"B")[-1].startswith(b"B OK [APPENDUID ")
    c.cmd(b"s", b"SELECT Sent")
    assert b"\r\n".join(c.cmd(b"f", b"FETCH 1 BODY.PEEK[]")) == (
        b"* 1 FETCH (BODY[] {%d}\r\n" % len(m) + m + b")\r\nf OK FETCH completed")
    for bad in (b'x APPEND "Sent" UTF8 ()\r\n', b'x APPEND "Sent" UTF8 ("text")\r\n'):
        c.send(bad)
        assert c.until(b"x")[-1].startswith(b"x BAD "), bad
