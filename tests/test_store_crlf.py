"""Messages read in their CRLF form (issue 18, item 2): the converting reader against a
reference conversion, range reads, sizes from names and the cache, and the store's use of it."""

from __future__ import annotations

import io
import os
import random
import re
import sqlite3

import pytest

from mailstack.store import MaildirStore
from mailstack.store import crlf
from mailstack.store.cache import CACHE_FILE, HEADER

ADDR = "alice@example.test"


def reference(data: bytes) -> bytes:
    """RFC 5322 2.1 line ends: each LF without a CR before it becomes CRLF; CR alone stays."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def mixes(seed: int, n: int = 60) -> list[bytes]:
    rnd = random.Random(seed)
    pieces = [b"\n", b"\r\n", b"\r", b"\r\r\n", b"\n\n", b"x", b"abc def", b".", b"\0", b"\xff"]
    out = [b"", b"\n", b"\r", b"\r\n", b"\n\r", b"\r\r", b"a\nb", b"a\r\nb\r"]
    for _ in range(n):
        out.append(b"".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 400))))
    return out


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few bytes, so that CR LF pairs and conversions fall across their edges."""
    monkeypatch.setattr(crlf, "_CHUNK", 7)


def write(tmp_path, data: bytes, name: str = "m") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("seed", range(4))
def test_reader_matches_the_reference_conversion(tmp_path, small_chunks, seed):
    for i, data in enumerate(mixes(seed)):
        want = reference(data)
        path = write(tmp_path, data, f"m{i}")
        assert crlf.crlf_size_of_file(path) == len(want)
        counter = crlf.CrlfCounter()
        rnd = random.Random(i)
        pos = 0
        while pos < len(data):
            step = rnd.randint(1, 9)
            counter.feed(data[pos : pos + step])
            pos += step
        assert (counter.size, counter.crlf_size) == (len(data), len(want))
        with crlf.open_served(path, None) as f:
            assert f.size == len(want) and f.raw_size == len(data)
            assert f.read() == want
            assert f.read() == b""
        with crlf.open_served(path, len(want)) as f:  # piece by piece, short only at the end
            got, step = b"", rnd.randint(1, 20)
            while chunk := f.read(step):
                assert len(chunk) == step or len(got) + len(chunk) == len(want)
                got += chunk
            assert got == want


@pytest.mark.parametrize("seed", range(3))
def test_range_reads(tmp_path, small_chunks, seed):
    rnd = random.Random(seed)
    data = mixes(seed + 10, 5)[-1] * 3
    want = reference(data)
    path = write(tmp_path, data)
    with crlf.open_served(path, len(want)) as f:
        for _ in range(60):  # forward and backward seeks on one reader
            offset, length = rnd.randint(0, len(want) + 5), rnd.randint(0, 50)
            assert f.seek(offset) == min(offset, len(want))
            assert f.tell() == min(offset, len(want))
            assert f.read(length) == want[offset : offset + length]
        assert f.seek(-3, io.SEEK_END) == len(want) - 3 and f.read() == want[-3:]
        f.seek(2)
        assert f.seek(4, io.SEEK_CUR) == 6 and f.read(5) == want[6:11]


def test_a_crlf_file_is_the_plain_file(tmp_path):
    data = b"Subject: x\r\n\r\nbody\r\nlone\rCR\r\n"
    path = write(tmp_path, data)
    with crlf.open_served(path, len(data)) as f:
        assert type(f) is crlf.MessageFile  # no conversion layer in the common case
        assert (f.size, f.raw_size, f.read()) == (len(data), len(data), data)
    lf = write(tmp_path, b"a\nb\n", "lf")
    with crlf.open_served(lf, None) as f:
        assert isinstance(f, crlf.CrlfReader) and f.name == lf


def test_a_big_file_streams(tmp_path):
    line = b"x" * 998 + b"\n"
    data = line * 2200  # 2.2 MB, LF-only
    path = write(tmp_path, data)
    want = data.replace(b"\n", b"\r\n")
    with crlf.open_served(path, len(want)) as f:
        assert f.read(10) == want[:10]
        assert len(f._pending) < 2 * crlf._CHUNK  # a chunk converted ahead, not the file
        f.seek(len(want) - 1000)
        assert f.read() == want[-1000:]


def test_sizes_from_names():
    assert crlf.size_from_name("1700000000.M1P2.host,S=10,W=11") == 11  # Dovecot's: ,W= is the CRLF size
    assert crlf.size_from_name("1700000000.M1P2.host,S=10") is None  # another writer's ,S= may be LF
    assert crlf.size_from_name("1700000000.P3Q1M5.host") is None
    assert crlf.size_from_name("1700000000.M5P7Q3R0123abcd.h,S=42") == 42  # ours, before ,W=
    assert crlf.size_from_name("1700000000.M5P7Q3R0123abcd.h,S=42,W=45") == 45
    assert crlf.size_from_name("1700000000.M1P2.host,S=10,W=x") is None


# -- the store -----------------------------------------------------------------------------------

LF_MESSAGE = b"From: a@example.test\nSubject: lf\n\nline one\nline two\n"


@pytest.fixture
def inbox(tmp_path):
    return MaildirStore(str(tmp_path / "mail"), fsync=False).mailbox(ADDR).folder("INBOX")


def drop(folder, name: str, data: bytes, sub: str = "cur") -> None:
    with open(os.path.join(folder.path, sub, name), "wb") as f:
        f.write(data)


def fresh(folder):
    return MaildirStore(folder.store.root, fsync=False).mailbox(ADDR).folder("INBOX")


def test_a_dovecot_file_is_served_as_crlf(inbox):
    want = reference(LF_MESSAGE)
    drop(inbox, f"1700000000.M1P2.host,S={len(LF_MESSAGE)},W={len(want)}:2,S", LF_MESSAGE)
    inbox.append(b"Subject: ours\r\n\r\nbody\r\n")
    snap = inbox.snapshot()
    (lf,) = [m for m in snap.messages if m.base.startswith("1700000000.")]
    (ours,) = [m for m in snap.messages if m is not lf]
    assert lf.size == len(want) and lf.flags == {"\\Seen"}
    assert inbox.read_message(lf.uid) == want
    with inbox.open_message(lf.uid) as f:
        assert f.size == len(want) and f.read() == want
    with inbox.open_message(ours.uid) as f:
        assert type(f) is crlf.MessageFile
    assert inbox.headers([lf.uid]) == {lf.uid: b"From: a@example.test\r\nSubject: lf\r\n\r\n"}


def test_an_unsized_file_is_read_once_and_its_size_cached(inbox, monkeypatch):
    bodies = [LF_MESSAGE + b"x" * i + b"\n" for i in range(5)]
    for i, body in enumerate(bodies):
        drop(inbox, f"170000000{i}.M{i}P9.procmail", body, "new")  # procmail: no S=, no W=
    reads = []
    real = crlf.crlf_size_of_file
    monkeypatch.setattr(crlf, "crlf_size_of_file", lambda path: reads.append(path) or real(path))
    assert [m.size for m in inbox.snapshot().messages] == [len(reference(b)) for b in bodies]
    assert len(reads) == 5
    for folder in (inbox, fresh(inbox), fresh(inbox)):  # new processes: the cache has the sizes
        snap = folder.snapshot()
        assert [m.size for m in snap.messages] == [len(reference(b)) for b in bodies]
        for m, body in zip(snap.messages, bodies):
            with folder.open_message(m.uid) as f:
                assert f.size == m.size and f.read() == reference(body)
    assert len(reads) == 5


def test_other_writers_s_is_not_taken_for_the_crlf_size(inbox):
    drop(inbox, f"1700000000.M1P2.maildrop,S={len(LF_MESSAGE)}", LF_MESSAGE, "new")
    (m,) = inbox.snapshot().messages
    assert m.size == len(reference(LF_MESSAGE))
    assert inbox.read_message(m.uid) == reference(LF_MESSAGE)


def test_a_copy_of_an_lf_file_is_a_link_naming_both_sizes(inbox):
    want = reference(LF_MESSAGE)
    drop(inbox, f"1700000000.M1P2.host,S={len(LF_MESSAGE)},W={len(want)}", LF_MESSAGE)
    (m,) = inbox.snapshot().messages
    other = inbox.mailbox.create_folder("Other")
    ((_, new_uid),) = inbox.copy([m.uid], other)
    copied = other.snapshot().by_uid()[new_uid]
    assert copied.base.endswith(f",S={len(LF_MESSAGE)},W={len(want)}")
    assert copied.size == len(want) and other.read_message(new_uid) == want
    assert os.stat(os.path.join(other.path, copied.filename)).st_ino == os.stat(
        os.path.join(inbox.path, m.filename)).st_ino


def test_a_cache_from_before_crlf_reading_is_emptied(inbox):
    drop(inbox, f"1700000000.M1P2.host,S={len(LF_MESSAGE)},W={len(reference(LF_MESSAGE))}", LF_MESSAGE)
    (m,) = inbox.snapshot().messages
    inbox.headers([m.uid])  # makes the cache
    inbox.cache.close()
    path = os.path.join(inbox.path, CACHE_FILE)
    db = sqlite3.connect(path)
    db.executescript("PRAGMA user_version = 0")
    db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", (m.base, HEADER, b"Subject: lf\n\n"))
    db.commit()
    db.close()
    folder = fresh(inbox)
    assert folder.headers([m.uid]) == {m.uid: b"From: a@example.test\r\nSubject: lf\r\n\r\n"}


def test_read_messages_serves_each_in_its_crlf_form_and_skips_the_gone(inbox):
    """The batch read (POP3 read-ahead, FETCH of bodies) gives what read_message gives."""
    want = reference(LF_MESSAGE)
    drop(inbox, f"1700000000.M1P2.host,S={len(LF_MESSAGE)},W={len(want)}:2,S", LF_MESSAGE)
    drop(inbox, "1700000001.M2P9.procmail", LF_MESSAGE + b"tail\n", "new")  # no sizes in the name
    drop(inbox, "1700000002.M3P9.procmail", b"Subject: bare cr\r\n\r\na\rb\r\n", "new")
    inbox.append(b"Subject: ours\r\n\r\nbody\r\n")
    inbox.append(b"Subject: expunged\r\n\r\nbody\r\n")
    uids = sorted(m.uid for m in inbox.snapshot().messages)
    uid = {m.base[:10]: m.uid for m in inbox.snapshot().messages if m.base.startswith("170000000")}
    (gone,) = [u for u in uids if inbox.read_message(u).startswith(b"Subject: expunged")]
    inbox.expunge([gone])
    reader = fresh(inbox)
    reader.snapshot()
    inbox.set_flags([uid["1700000001"]], ["\\Flagged"], "add")  # renamed after the reader's listing
    got = reader.read_messages(uids + [max(uids) + 100])
    assert got == {u: inbox.read_message(u) for u in uids if u != gone}
    assert got[uid["1700000000"]] == want and got[uid["1700000001"]] == reference(LF_MESSAGE + b"tail\n")
    assert got[uid["1700000002"]] == b"Subject: bare cr\r\n\r\na\rb\r\n"
