"""What is read off a message once and kept: its header section, and opaque values that
protocol code derives from it (IMAP keeps ENVELOPE and BODYSTRUCTURE here).

Mail files never change once written, and a base name is never reused within a folder, so an
entry keyed by (base name, kind) stays right for as long as the message exists: nothing has
to be invalidated when flags change, and an expunged message's entries are simply dead (they
are deleted with it, and `mailstack store check` lists any left behind by another process).

The cache is one SQLite database per folder, ``mailstack-cache.sqlite`` (the standard
library's sqlite3: WAL mode lets several processes read while one writes, and a crash leaves
it consistent).  It holds nothing that cannot be rebuilt from the mail files: when it is
missing, unreadable or corrupt it is set aside and made again, and every failure to read or
write it falls back to reading the mail file.  Nothing here is fsynced; losing the last
entries in a power cut costs one re-read of those messages.

Header sections are also kept in this process's memory (:class:`_HeaderMemory`, the least
recently used dropped past :data:`HEADER_MEMORY` bytes): a client that fetches every header
and then searches or sorts reads them from SQLite once, not at each command.  Being immutable,
they need no invalidation either.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from typing import Iterable

from mailstack.mail.headers import header_end

CACHE_FILE = "mailstack-cache.sqlite"
HEADER = "header"
MAX_VALUE = 256 * 1024  # a header section (or derived value) larger than this is not kept
#: What the entries were derived from; older caches are emptied (1: the CRLF form of every file).
FORMAT = 1
_IN_CHUNK = 500  # bases per SELECT ... IN (...): below SQLite's default variable limit
HEADER_MEMORY = 32 * 1024 * 1024  # octets of header sections kept in memory, per process


class _HeaderMemory:
    """cache file -> {base: header section}, for every folder of the process; whole folders
    are dropped, least recently used first, past :data:`HEADER_MEMORY` octets."""

    def __init__(self):
        self.lock = threading.Lock()
        self.folders: OrderedDict = OrderedDict()  # path -> (dict base -> bytes, [octets])
        self.held = 0

    def get_many(self, path: str, bases: list[str], out: dict[str, bytes]) -> list[str]:
        """Fill ``out`` with what is held; return the bases that are not."""
        with self.lock:
            kept = self.folders.get(path)
            if kept is None:
                return bases
            self.folders.move_to_end(path)
            values = kept[0]
        found = list(map(values.get, bases))
        out.update((b, v) for b, v in zip(bases, found) if v is not None)
        return [b for b, v in zip(bases, found) if v is None]

    def put_many(self, path: str, values: dict[str, bytes]) -> None:
        with self.lock:
            kept = self.folders.get(path)
            if kept is None:
                kept = self.folders[path] = ({}, [0])
            held, size = kept
            for base, value in values.items():
                if len(value) <= MAX_VALUE and base not in held:
                    held[base] = value
                    size[0] += len(value)
                    self.held += len(value)
            while self.held > HEADER_MEMORY and self.folders:
                self.held -= self.folders.popitem(last=False)[1][1][0]

    def forget(self, path: str, bases) -> None:
        with self.lock:
            kept = self.folders.get(path)
            if kept is None:
                return
            for base in bases:
                value = kept[0].pop(base, None)
                if value is not None:
                    kept[1][0] -= len(value)
                    self.held -= len(value)


_memory = _HeaderMemory()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    base TEXT NOT NULL,
    kind TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (base, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tables (
    kind TEXT PRIMARY KEY,
    value BLOB NOT NULL
)
"""


class MessageCache:
    """The cache of one folder.  Thread-safe; every method blocks (call from a worker)."""

    def __init__(self, folder_path: str):
        self.path = os.path.join(folder_path, CACHE_FILE)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False  # set after a failure that re-creating did not mend: run without

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None or self._broken:
            return self._db
        for attempt in range(2):
            try:
                db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                if db.execute("PRAGMA user_version").fetchone()[0] < FORMAT:
                    # Made before messages were read in their CRLF form: what was derived
                    # from an LF-only file (headers, sizes in BODYSTRUCTURE) is wrong.
                    db.executescript(f"DELETE FROM entries; DELETE FROM tables; PRAGMA user_version = {FORMAT}")
                os.chmod(self.path, 0o600)
                self._db = db
                return db
            except sqlite3.DatabaseError:
                if attempt == 0:
                    self._discard()
            except OSError:
                break
        self._broken = True
        return None

    def _discard(self) -> None:
        """Set a corrupt database aside (it is only a cache) so that a new one is made."""
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass
            except OSError:
                self._broken = True

    def get_many(self, bases: Iterable[str], kind: str) -> dict[str, bytes]:
        """base -> value for the bases that have a ``kind`` entry."""
        bases = list(bases)
        out: dict[str, bytes] = {}
        if kind == HEADER:
            bases = _memory.get_many(self.path, bases, out)
            if not bases:
                return out
            found = self._get_many(bases, kind)
            _memory.put_many(self.path, found)
            out.update(found)
            return out
        return self._get_many(bases, kind)

    def _get_many(self, bases: list[str], kind: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        with self._lock:
            db = self._connect()
            if db is None or not bases:
                return out
            try:
                if len(bases) > 4 * _IN_CHUNK:  # most of a folder (SEARCH): one pass over the kind
                    wanted = set(bases)
                    for base, value in db.execute("SELECT base, value FROM entries WHERE kind = ?", (kind,)):
                        if base in wanted:
                            out[base] = value
                    return out
                for i in range(0, len(bases), _IN_CHUNK):
                    chunk = bases[i : i + _IN_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for base, value in db.execute(
                            f"SELECT base, value FROM entries WHERE kind = ? AND base IN ({marks})", (kind, *chunk)):
                        out[base] = value
            except sqlite3.DatabaseError:
                self._discard()
                return {}
        return out

    def put_many(self, kind: str, values: dict[str, bytes]) -> None:
        rows = [(base, kind, value) for base, value in values.items() if len(value) <= MAX_VALUE]
        if kind == HEADER:
            _memory.put_many(self.path, values)
        if rows:
            self._write("INSERT OR REPLACE INTO entries (base, kind, value) VALUES (?, ?, ?)", rows)

    def get_table(self, kind: str) -> bytes | None:
        """The one value kept for the whole folder under ``kind`` (see :meth:`put_table`)."""
        with self._lock:
            db = self._connect()
            if db is None:
                return None
            try:
                row = db.execute("SELECT value FROM tables WHERE kind = ?", (kind,)).fetchone()
            except sqlite3.DatabaseError:
                self._discard()
                return None
        return None if row is None else row[0]

    def put_table(self, kind: str, value: bytes) -> None:
        """Keep one value for the whole folder (values of many messages in one row: one read
        and one write where per-message entries cost one row each).  Not size-limited."""
        self._write("INSERT OR REPLACE INTO tables (kind, value) VALUES (?, ?)", [(kind, value)])

    def forget(self, bases: Iterable[str]) -> None:
        """Drop every entry of these (expunged) messages."""
        rows = [(b,) for b in bases]
        _memory.forget(self.path, [b for b, in rows])
        if rows and os.path.exists(self.path):
            self._write("DELETE FROM entries WHERE base = ?", rows)

    def _write(self, statement: str, rows: list[tuple]) -> None:
        """One transaction; a failure only costs the cache these rows."""
        with self._lock:
            db = self._connect()
            if db is None:
                return
            try:
                db.execute("BEGIN")
                db.executemany(statement, rows)
                db.execute("COMMIT")
            except sqlite3.OperationalError:  # busy beyond the timeout, disk full: keep going without
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            except sqlite3.DatabaseError:
                self._discard()

    def entries(self, kind: str | None = None) -> Iterable[tuple[str, str, bytes]]:
        """Every (base, kind, value), for the checker."""
        if not os.path.exists(self.path):
            return []
        with self._lock:
            db = self._connect()
            if db is None:
                return []
            try:
                if kind is None:
                    return db.execute("SELECT base, kind, value FROM entries").fetchall()
                return db.execute("SELECT base, kind, value FROM entries WHERE kind = ?", (kind,)).fetchall()
            except sqlite3.DatabaseError:
                return []

    def clear(self) -> None:
        """Remove the whole cache (``store check --repair``); it is rebuilt as it is used."""
        with self._lock:
            self._discard()
            self._broken = False

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def header_section(f, chunk: int = 16384, limit: int = 1 << 20) -> bytes:
    """The header section of an open message file, up to and including the blank line that
    ends it (RFC 5322 2.1; a bare LF counts too), without reading the body.  A file with no
    blank line is all header; one that starts with a blank line has an empty header.  Stops
    reading at ``limit``."""
    data = b""
    while True:
        more = f.read(chunk)
        data += more
        if data.startswith(b"\r\n"):
            return data[:2]
        if data.startswith(b"\n"):
            return data[:1]
        end = header_end(data)
        if end:
            return data[:end]
        if not more or len(data) >= limit:
            return data
