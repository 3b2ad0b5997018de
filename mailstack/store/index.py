"""A folder's state as this process last knew it, kept on disk so that the first open after a
restart does not re-read the UID log line by line and list ``new/`` and ``cur/`` again.

``mailstack-index`` holds what the UID log said (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and each
UID's base name, MODSEQ and internal date), the directory listing (each message's file name),
each message's CRLF size, and what it was all checked against: the UID log's device, inode,
size and mtime, the mtimes of ``new/``, ``cur/`` and the keywords file, and when the listing
was taken.  It is used only when all of these still hold *and* the listing was taken at least
2 s after the directories last changed (the rule ``MaildirFolder._scan`` uses to reuse a
listing); otherwise it is ignored and the folder is read as usual.  It is a cache: written
without fsync, by rename, never trusted over the files, and rebuilt whenever it is stale.

Layout (version 2): a magic line, one line of JSON (the stamps and counts), then columns in
UID order, so that a restart reads 100,000 messages with one read and a few C-level splits
rather than a loop in Python per message: five arrays of signed 64-bit integers (UID, MODSEQ,
internal date, CRLF size or -1, and which of the header's distinct ``:2,`` flag-letter strings
the file has, null for a name without) and two NUL-separated strings (base names, file names
relative to the folder).  NUL cannot occur in a file name, so the names cannot run together.
"""

from __future__ import annotations

import codecs
import itertools
import json
import operator
import os
from array import array
from typing import NamedTuple

from mailstack.fsutil import atomic_write
from mailstack.store.uidlist import UidEntry, UidState

INDEX_FILE = "mailstack-index"
MAGIC = b"mailstack-index 2\n"
VERSION = 2
STABLE_NS = 2_000_000_000  # a listing taken this long after a change is complete (see settled)
FINE_STABLE_NS = 100_000_000  # the same where the file system keeps sub-second times


def settled(listed_at: int, *mtimes: int) -> bool:
    """True when a listing started at ``listed_at`` (time.time_ns()) cannot have missed a change
    of directories last changed at ``mtimes``: a change in the same timestamp tick as an earlier
    one leaves the mtime as it was, so the listing must start well after the tick.  A file
    system with whole-second times (ext4 with small inodes, some network ones) needs
    :data:`STABLE_NS`; where an mtime shows nanoseconds the tick is the kernel's coarse clock
    (a few milliseconds), and :data:`FINE_STABLE_NS` is ample.  A nanosecond time that happens
    to fall on a whole second only makes the wait the long one."""
    fine = any(m % 1_000_000_000 for m in mtimes)
    return listed_at - max(mtimes) > (FINE_STABLE_NS if fine else STABLE_NS)
NO_SUFFIX = "\x01"  # the suffix column's value for a name without ":2,"
_INTS = ("uids", "modseqs", "dates", "sizes", "suffix_of")
_TEXTS = ("bases", "rels")


def _stat_key(path: str) -> list | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def write(folder_path: str, document: dict) -> None:
    """Save ``document`` (from :func:`document`) by rename."""
    n = len(document["uids"])
    head = {k: v for k, v in document.items() if k not in _INTS + _TEXTS + ("flag_letters",)}
    head["n"] = n
    texts = ["\0".join(document[k]).encode("utf-8", "surrogateescape") for k in _TEXTS]
    head["lengths"] = [len(t) for t in texts]
    parts = [MAGIC, json.dumps(head, separators=(",", ":")).encode("ascii"), b"\n"]  # ensure_ascii
    parts += [array("q", document[k]).tobytes() for k in _INTS] + texts
    atomic_write(os.path.join(folder_path, INDEX_FILE), b"".join(parts), fsync=False)  # a cache: see above


def read(folder_path: str) -> dict | None:
    """The saved document, if it is whole and of this version: the stamps, plus its columns
    (``uids``, ``modseqs``, ``dates``, ``sizes``, ``suffix_of`` as arrays, ``bases``, ``rels`` and
    ``flag_letters``, each file's ``:2,`` letters or :data:`NO_SUFFIX`, as lists of str, all of
    length ``n``)."""
    try:
        with open(os.path.join(folder_path, INDEX_FILE), "rb") as f:
            data = f.read()
        if not data.startswith(MAGIC):
            return None
        end = data.index(b"\n", len(MAGIC))
        document = json.loads(data[len(MAGIC):end])
        if not isinstance(document, dict) or document.get("v") != VERSION:
            return None
        n, lengths = document["n"], document["lengths"]
        if type(n) is not int or n < 0 or len(lengths) != len(_TEXTS) or not all(type(x) is int for x in lengths):
            return None
        pos = end + 1
        for key in _INTS:
            column = array("q")
            if column.itemsize != 8:  # pragma: no cover - every platform we run on has 8-byte long long
                return None
            column.frombytes(data[pos:pos + 8 * n])
            document[key], pos = column, pos + 8 * n
        view = memoryview(data)  # decoded in place: no copy of the megabytes of names
        for key, length in zip(_TEXTS, lengths):
            blob = codecs.utf_8_decode(view[pos:pos + length], "surrogateescape", True)[0]
            document[key], pos = (blob.split("\0") if n else []), pos + length
        if pos != len(data) or any(len(document[k]) != n for k in _INTS + _TEXTS):
            return None
        # Every file name under new/ or cur/, counted in the joined text (blob: the names).
        in_new = blob.count("\0new/") + blob.startswith("new/")
        if n and in_new + blob.count("\0cur/") + blob.startswith("cur/") != n:
            return None
        document["in_new"] = in_new
        table = [NO_SUFFIX if x is None else x for x in document["suffixes"]]
        if not all(type(x) is str for x in table) or (n and not 0 <= min(document["suffix_of"]) <= max(
                document["suffix_of"]) < len(table)):
            return None
        document["flag_letters"] = list(map(table.__getitem__, document["suffix_of"]))
    except (FileNotFoundError, ValueError, OSError, KeyError, TypeError):
        return None
    return document


def still_valid(folder_path: str, document: dict, uidlist_path: str, keywords_path: str) -> bool:
    """True when nothing the document was taken from has changed since."""
    try:
        new_mtime, cur_mtime = document["new"], document["cur"]
        if not settled(document["listed_at"], new_mtime, cur_mtime):
            return False
        return (mtime_ns(os.path.join(folder_path, "new")) == new_mtime
                and mtime_ns(os.path.join(folder_path, "cur")) == cur_mtime
                and _stat_key(uidlist_path) == document["uidlist"]
                and mtime_ns(keywords_path) == document["keywords"])
    except (KeyError, TypeError):
        return False


def uidlist_key(uidlist_path: str) -> list | None:
    return _stat_key(uidlist_path)


class RestoredState(UidState):
    """A :class:`UidState` whose ``entries`` (a :class:`UidEntry` per UID) and ``by_base``
    (base name -> UID) are made at first use: a SELECT right after a restart needs neither
    (at 100,000 messages they cost 0.02 s and more each)."""

    def __init__(self, columns: tuple, **fields):
        super().__init__(**fields)
        self._columns = columns  # (uids, bases, modseqs, dates), all lists
        self._base_columns = columns[1], columns[0]  # (bases, uids), for by_base

    @property
    def by_base(self) -> dict[str, int]:
        if self.__dict__.get("_base_columns") is not None:
            bases, uids = self._base_columns
            self.__dict__["_by_base"], self._base_columns = dict(zip(bases, uids)), None
        return self.__dict__["_by_base"]

    @by_base.setter
    def by_base(self, value: dict[str, int]) -> None:
        self.__dict__["_by_base"], self.__dict__["_base_columns"] = value, None

    @property
    def entries(self) -> dict[int, UidEntry]:
        if self._columns is not None:
            uids, bases, modseqs, dates = self._columns
            self.__dict__["_entries"] = dict(zip(uids, map(UidEntry, uids, bases, modseqs, dates)))
            self._columns = None
        return self.__dict__["_entries"]

    @entries.setter
    def entries(self, value: dict[int, UidEntry]) -> None:
        self.__dict__["_entries"], self._columns = value, None


class Restored(NamedTuple):
    """A folder's state as a valid saved index gives it."""

    state: UidState
    uidlist_inode: tuple[int, int]
    uidlist_size: int
    files: dict[str, str]  # base -> "new/name" | "cur/name"
    mtimes: tuple[int, int]  # of new/ and cur/
    listed_at: int
    columns: dict  # the document's columns, for the first snapshot (MaildirFolder._build_snapshot)
    in_new: int = 0  # files of the listing in new/


def restore(folder_path: str, uidlist_path: str, keywords_path: str) -> Restored | None:
    """The saved state, when the index is whole, of this version and still valid."""
    doc = read(folder_path)
    if doc is None or not still_valid(folder_path, doc, uidlist_path, keywords_path):
        return None
    try:
        # One pass each, in C: no Python loop per message (see the module docstring).
        doc["uids"] = doc["uids"].tolist()  # one int object per UID, shared by what is made below
        uids, bases, rels = doc["uids"], doc["bases"], doc["rels"]
        state = RestoredState((uids, bases, doc["modseqs"], doc["dates"]),
                              uidvalidity=int(doc["uidvalidity"]), uidnext=int(doc["uidnext"]),
                              highestmodseq=int(doc["highestmodseq"]), records=int(doc["records"]),
                              header_uidnext=int(doc["header_uidnext"]), header_modseq=int(doc["header_modseq"]))
        state.expunged = {int(u): int(m) for u, m in doc["expunged"]}
        files = dict(zip(bases, rels))
        dev, ino, size, _mtime = doc["uidlist"]
        mtimes = (int(doc["new"]), int(doc["cur"]))
        listed_at = int(doc["listed_at"])
    except (KeyError, TypeError, ValueError):
        return None
    n = len(uids)
    # Distinct base names (the listing's size: by_base has the same keys), UIDs ascending.
    if (state.uidvalidity < 1 or len(files) != n
            or (n and (uids[0] < 1 or not all(map(operator.lt, uids, itertools.islice(uids, 1, None)))))):
        return None
    columns = {k: doc[k] for k in _INTS + _TEXTS + ("flag_letters",)}
    return Restored(state, (dev, ino), size, files, mtimes, listed_at, columns, doc["in_new"])


def document(state: UidState, messages: tuple, uidlist: list, mtimes: tuple[int, int], listed_at: int,
             keywords_mtime: int | None) -> dict:
    """What :func:`write` saves for a folder whose UID log (``uidlist``: its
    :func:`uidlist_key`) was read to its end and whose snapshot is ``messages`` (one for every
    UID, ascending: the caller checks)."""
    rels = [m.filename for m in messages]
    table: dict[str | None, int] = {}
    suffix_of = []
    for rel in rels:
        i = rel.find(":2,")
        suffix_of.append(table.setdefault(None if i < 0 else rel[i + 3:], len(table)))
    return {
        "v": VERSION, "uidlist": uidlist, "new": mtimes[0], "cur": mtimes[1],
        "listed_at": listed_at, "keywords": keywords_mtime,
        "uidvalidity": state.uidvalidity, "uidnext": state.uidnext, "highestmodseq": state.highestmodseq,
        "header_uidnext": state.header_uidnext, "header_modseq": state.header_modseq, "records": state.records,
        "expunged": list(state.expunged.items()),
        "uids": [m.uid for m in messages], "modseqs": [m.modseq for m in messages],
        "dates": [m.internaldate for m in messages], "sizes": [m.size for m in messages],
        "bases": [m.base for m in messages], "rels": rels, "suffixes": list(table), "suffix_of": suffix_of,
    }
