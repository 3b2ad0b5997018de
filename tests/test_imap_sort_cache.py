"""SORT and THREAD keys (issue 15 section 3): computed once per message and kept as one table
per folder and key group in the store's cache, through a real IMAP socket (in-process server).

What a restart loses is the in-memory memo (``sort._MEMO``); the tests clear it to stand for
one, and forbid reading headers where the keys must come from the table.
"""

from __future__ import annotations

import email.utils
import json
import random

import pytest

from mailstack.imap import message as msgmod
from mailstack.imap import sort as sortmod
from mailstack.store import MaildirFolder, MaildirStore
from support.clients import ImapClient

BOB = "bob@example.test"


@pytest.fixture
def srv(inproc_server_factory):
    return inproc_server_factory(listeners=["imap"], extra="[auth]\nfailure_delay = 0.0\n").start()


@pytest.fixture(autouse=True)
def empty_memo():
    sortmod._MEMO.clear()
    yield
    sortmod._MEMO.clear()


def session(srv, messages=(), dates=()) -> ImapClient:
    c = ImapClient(srv.port("imap"))
    c.login()
    for i, m in enumerate(messages):
        date = b' "%s"' % dates[i].encode() if dates else b""
        c.send(b"A APPEND INBOX" + date + b" {%d+}\r\n" % len(m) + m + b"\r\n")
        assert c.until(b"A")[-1].startswith(b"A OK")
    c.cmd(b"s", b"SELECT INBOX")
    return c


def msg(subject: str, date: str, msgid: str) -> bytes:
    return f"From: a@x.test\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: {msgid}\r\n\r\nbody\r\n".encode()


MESSAGES = [msg("cherry", "Wed, 3 Jan 2024 10:00:00 +0000", "<1@x>"),
            msg("Re: apple", "Mon, 1 Jan 2024 10:00:00 +0000", "<2@x>"),
            msg("banana", "Tue, 2 Jan 2024 10:00:00 +0000", "<3@x>")]


def inbox(srv) -> MaildirFolder:
    return MaildirStore(str(srv.store_root), fsync=False).mailbox(BOB).folder("INBOX")


def no_reading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the headers were read again")

    monkeypatch.setattr(MaildirFolder, "headers", refuse)


def test_the_keys_are_one_table_per_folder_and_survive_a_restart(srv, monkeypatch):
    c = session(srv, MESSAGES)
    assert c.cmd(b"a", b"SORT (DATE) UTF-8 ALL")[0] == b"* SORT 2 3 1"
    table = json.loads(inbox(srv).derived_table(sortmod.KIND + ".basic"))
    assert len(table) == 3 and all(len(entry) == 4 for entry in table.values())  # size, date, subject, reply
    assert inbox(srv).derived_table(sortmod.KIND + ".address") is None  # not needed yet: not made
    c.close()
    srv.stop()
    sortmod._MEMO.clear()
    no_reading(monkeypatch)
    srv.start()
    c = session(srv)
    assert c.cmd(b"b", b"SORT (SUBJECT) UTF-8 ALL") == [b"* SORT 2 3 1", b"b OK SORT completed"]
    assert c.cmd(b"c", b"THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == b"* THREAD (2)(3)(1)"


def test_a_kept_entry_not_made_from_this_file_is_ignored(srv):
    c = session(srv, MESSAGES)
    assert c.cmd(b"a", b"SORT (DATE) UTF-8 ALL")[0] == b"* SORT 2 3 1"
    folder = inbox(srv)
    kind = sortmod.KIND + ".basic"
    table = json.loads(folder.derived_table(kind))
    # another size than the file's: the entry was made from another file of that name
    folder.keep_derived_table(kind, json.dumps({b: [e[0] + 1, -e[1], "Z", False] for b, e in table.items()}).encode())
    sortmod._MEMO.clear()
    assert c.cmd(b"b", b"SORT (DATE) UTF-8 ALL")[0] == b"* SORT 2 3 1"
    assert json.loads(folder.derived_table(kind)) == table  # made again, right
    folder.keep_derived_table(kind, b"\x00 not JSON")  # unreadable: only a cache
    sortmod._MEMO.clear()
    assert c.cmd(b"c", b"SORT (REVERSE DATE) UTF-8 ALL")[0] == b"* SORT 1 3 2"
    assert json.loads(folder.derived_table(kind)) == table


def test_entries_of_expunged_messages_leave_the_table(srv):
    c = session(srv, MESSAGES)
    assert c.cmd(b"a", b"SORT (DATE) UTF-8 ALL")[0] == b"* SORT 2 3 1"
    c.cmd(b"b", b"STORE 1 +FLAGS (\\Deleted)")
    c.cmd(b"c", b"EXPUNGE")
    append = msg("date", "Thu, 4 Jan 2024 10:00:00 +0000", "<4@x>")
    c.send(b"A APPEND INBOX {%d+}\r\n" % len(append) + append + b"\r\n")
    assert c.until(b"A")[-1].startswith(b"A OK")
    c.cmd(b"n", b"NOOP")
    assert c.cmd(b"d", b"SORT (DATE) UTF-8 ALL")[0] == b"* SORT 1 2 3"
    assert len(json.loads(inbox(srv).derived_table(sortmod.KIND + ".basic"))) == 3


def test_messages_without_date_subject_or_ids(srv):
    bare = [b"X-Note: one\r\n\r\nbody\r\n", b"\r\nno header at all\r\n", b"From: z@x.test\r\n\r\nbody\r\n"]
    c = session(srv, bare, ["03-Jan-2024 10:00:00 +0000", "01-Jan-2024 10:00:00 +0000", "02-Jan-2024 10:00:00 +0000"])
    assert c.cmd(b"a", b"SORT (DATE) UTF-8 ALL")[0] == b"* SORT 2 3 1"  # RFC 5256 3: the internal date
    assert c.cmd(b"b", b"SORT (SUBJECT) UTF-8 ALL")[0] == b"* SORT 1 2 3"  # all empty: by sequence
    assert c.cmd(b"c", b"SORT (FROM REVERSE DATE) UTF-8 ALL")[0] == b"* SORT 1 2 3"  # "", "" (1 newer), Z
    assert c.cmd(b"d", b"THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == b"* THREAD (2 (3)(1))"  # one thread, all children of the first
    assert c.cmd(b"e", b"THREAD REFERENCES UTF-8 ALL")[0] == b"* THREAD (2)(3)(1)"


def test_the_date_reader_agrees_with_the_email_package():
    rnd = random.Random(15)
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec feb Xyz".split()
    for _ in range(5000):
        year = rnd.choice([1, 69, 70, 99, 100, 1900, 1970, 2000, 2001, 2004, 2100, 9999, rnd.randint(1, 9999)])
        seconds = rnd.choice(["", ":00", ":59", ":60", f":{rnd.randint(0, 59):02d}"])
        zone = rnd.choice(["+0000", "-0000", "+0100", "-0800", "+0530", "+1400", "+9959"])
        text = (f"{rnd.choice(['Mon, ', '', 'Tue,'])}{rnd.randint(0, 32)} {rnd.choice(months)} {year:04d} "
                f"{rnd.randint(0, 25):02d}:{rnd.randint(0, 61):02d}{seconds} {zone}{rnd.choice(['', ' '])}")
        try:
            expected = int(email.utils.parsedate_to_datetime(text).timestamp())
        except (TypeError, ValueError, IndexError, OverflowError):
            expected = None
        assert sortmod.sent_date(text) == expected, text


@pytest.mark.parametrize("header", [
    b"Date: Mon, 2 Jan 2006 15:04:05 +0100\r\nSubject: a\r\n  folded\r\nsubject: second\r\n\r\n",
    b" Date: Mon, 2 Jan 2006 15:04:05 +0100\r\nX-Date: no\r\nDate-Foo: no\r\nSUBJECT : spaced\r\n\r\n",
    b"X-Long: a\r\n Date: not a field\r\nDate:\tTue, 3 Jan 2006 15:04:05 +0100\r\n\r\n",
    b"Subject: lf only\nDate: Mon, 2 Jan 2006 15:04:05 +0100\n\n",
    b"\r\n",
])
def test_the_field_search_agrees_with_the_header_parser(header):
    expected: dict = {}
    for name, value in msgmod.parse_fields(header):
        expected.setdefault(name.lower(), value)
    for _names, _make, pattern in sortmod.GROUPS.values():
        found = sortmod._fields(header, pattern)
        assert found == {k: v for k, v in expected.items() if pattern.search(b"\n" + k.encode() + b":")}
