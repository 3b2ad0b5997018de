"""The store's message cache (mailstack/store/cache.py) on real directories: header sections,
derived values, expunge, corruption, and the checker."""

from __future__ import annotations

import os
import sqlite3

import pytest

from mailstack.store import MaildirStore
from mailstack.store.cache import CACHE_FILE, HEADER, header_section
from mailstack.store.check import check_folder
from support.messages import message as build_message

ADDR = "alice@example.test"


def message(i: int, header_extra: bytes = b"") -> bytes:
    return build_message(i, extra=header_extra, body=f"Body {i}\r\n\r\nmore\r\n".encode(), sender="a@example.test", to=None,
                         date=None, message_id=None)


@pytest.fixture
def inbox(tmp_path):
    store = MaildirStore(str(tmp_path / "mail"), fsync=False)
    folder = store.mailbox(ADDR).folder("INBOX")
    for i in range(5):
        folder.append(message(i))
    return folder


def uids(folder) -> list[int]:
    return [m.uid for m in folder.snapshot().messages]


def rows(folder) -> list[tuple]:
    db = sqlite3.connect(os.path.join(folder.path, CACHE_FILE))
    try:
        return db.execute("SELECT base, kind, value FROM entries ORDER BY base, kind").fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("raw, header", [
    (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n", b"A: 1\r\nB: 2\r\n\r\n"),
    (b"A: 1\nB: 2\n\nbody\n", b"A: 1\nB: 2\n\n"),
    (b"\r\nbody only\r\n", b"\r\n"),
    (b"\nbody only\n", b"\n"),
    (b"A: no blank line\r\n", b"A: no blank line\r\n"),
    (b"", b""),
    (b"A: " + b"x" * 40000 + b"\r\n\r\nbody", b"A: " + b"x" * 40000 + b"\r\n\r\n"),
])
def test_header_section_matches_the_imap_split(raw, header, tmp_path):
    from mailstack.imap.message import Entity

    path = tmp_path / "m"
    path.write_bytes(raw)
    with open(path, "rb") as f:
        assert header_section(f, chunk=1000) == header
    assert Entity(raw).header == header  # the same boundary IMAP's FETCH uses


def test_headers_are_cached_and_then_read_from_the_cache(inbox):
    all_uids = uids(inbox)
    first = inbox.headers(all_uids)
    assert first == {u: header_section(inbox.open_message(u)) for u in all_uids}
    assert sorted(k for _, k, _ in rows(inbox)) == [HEADER] * 5

    def refuse(uid):
        raise AssertionError("a cached header must not open the mail file")

    inbox.open_message = refuse
    assert inbox.headers(all_uids) == first
    # A fresh store object (another process, or after a restart) finds them on disk too.
    again = MaildirStore(inbox.store.root, fsync=False).mailbox(ADDR).folder("INBOX")
    again.open_message = refuse
    assert again.headers(all_uids) == first


def test_derived_values_and_expunge(inbox):
    all_uids = uids(inbox)
    assert inbox.derived(all_uids, "x.test") == {}
    inbox.keep_derived("x.test", {u: b"value %d" % u for u in all_uids})
    assert inbox.derived(all_uids, "x.test") == {u: b"value %d" % u for u in all_uids}
    inbox.headers(all_uids)
    inbox.expunge(all_uids[:2])
    assert inbox.derived(all_uids, "x.test") == {u: b"value %d" % u for u in all_uids[2:]}
    live = {m.base for m in inbox.snapshot().messages}
    assert {base for base, _, _ in rows(inbox)} == live
    assert check_folder(inbox).problems == []


def test_corrupt_cache_is_set_aside_and_rebuilt(inbox):
    all_uids = uids(inbox)
    expected = inbox.headers(all_uids)
    inbox.cache.close()
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(os.path.join(inbox.path, CACHE_FILE + suffix))
        except FileNotFoundError:
            pass
    with open(os.path.join(inbox.path, CACHE_FILE), "wb") as f:
        f.write(b"this is not a database" * 100)
    import mailstack.store.cache as cache_mod

    cache_mod._memory = cache_mod._HeaderMemory()  # another process: nothing in its memory yet
    fresh = MaildirStore(inbox.store.root, fsync=False).mailbox(ADDR).folder("INBOX")
    assert fresh.headers(all_uids) == expected
    assert len(rows(fresh)) == 5


def test_checker_reports_stale_and_wrong_entries_and_repairs(inbox):
    all_uids = uids(inbox)
    inbox.headers(all_uids)
    assert check_folder(inbox).problems == []
    # Another process expunged a message (its entries stay), and one cached header is wrong.
    gone = inbox.snapshot().messages[0]
    os.unlink(os.path.join(inbox.path, gone.filename))
    db = sqlite3.connect(os.path.join(inbox.path, CACHE_FILE))
    db.execute("UPDATE entries SET value = ? WHERE base = ?", (b"Subject: forged\r\n\r\n", inbox.snapshot().messages[1].base))
    db.commit()
    db.close()
    report = check_folder(inbox)
    # Entries of a message expunged elsewhere are housekeeping (issue 18: Dovecot expunges), not a problem.
    assert report.stale_cache == 1
    assert not any("no longer" in p for p in report.problems), report.problems
    assert any("cached header of" in p and "differs from the file" in p for p in report.problems), report.problems
    repaired = check_folder(inbox, repair=True)
    assert repaired.repaired
    again = check_folder(inbox)
    assert again.problems == [] and again.stale_cache == 0
    left = uids(inbox)
    assert inbox.headers(left)[left[0]] == header_section(inbox.open_message(left[0]))


def test_headers_are_read_from_sqlite_once_then_from_memory(inbox, monkeypatch):
    import mailstack.store.cache as cache_mod

    all_uids = uids(inbox)
    expected = inbox.headers(all_uids)
    cache_mod._memory = cache_mod._HeaderMemory()
    queries = []
    real = cache_mod.MessageCache._get_many
    monkeypatch.setattr(cache_mod.MessageCache, "_get_many", lambda self, bases, kind: queries.append(len(bases))
                        or real(self, bases, kind))
    assert inbox.headers(all_uids) == expected and queries == [5]
    assert inbox.headers(all_uids) == expected and queries == [5]  # from memory
    inbox.cache.forget([inbox.snapshot().messages[0].base])
    assert len(inbox.headers(all_uids)) == 5 and queries == [5, 1]  # forgotten: asked again
    monkeypatch.setattr(cache_mod, "HEADER_MEMORY", 10)  # a bound below one header: nothing stays
    cache_mod._memory = cache_mod._HeaderMemory()
    inbox.headers(all_uids)
    assert cache_mod._memory.held <= 10


def test_the_blank_line_is_found_where_the_regular_expression_finds_it():
    import itertools
    import re

    from mailstack.mail.headers import header_end as _blank_line_end

    pattern = re.compile(rb"\r?\n\r?\n")  # RFC 5322 2.1's empty line, a bare LF counting too
    for n in range(1, 8):
        for parts in itertools.product((b"a", b"\r", b"\n"), repeat=n):
            data = b"".join(parts)
            m = pattern.search(data)
            assert _blank_line_end(data) == (m.end() if m else 0), data
