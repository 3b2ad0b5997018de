"""A folder's state as this process last knew it, kept on disk so that the first open after a
restart does not re-read the UID log line by line and list ``new/`` and ``cur/`` again.

``mailstack-index`` holds, as one JSON document: what the UID log said (UIDVALIDITY, UIDNEXT,
HIGHESTMODSEQ and each UID's base name, MODSEQ and internal date), the directory listing
(each message file's name), and what it was all checked against: the UID log's device, inode,
size and mtime, the mtimes of ``new/``, ``cur/`` and the keywords file, and when the listing
was taken.  It is used only when all of these still hold *and* the listing was taken at least
2 s after the directories last changed (the rule ``MaildirFolder._scan`` uses to reuse a
listing); otherwise it is ignored and the folder is read as usual.  It is a cache: written
without fsync, by rename, never trusted over the files, and rebuilt whenever it is stale.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from mailstack.fsutil import atomic_write
from mailstack.store.files import base_of
from mailstack.store.uidlist import UidEntry, UidState

INDEX_FILE = "mailstack-index"
VERSION = 1
STABLE_NS = 2_000_000_000  # see MaildirFolder._scan


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
    data = json.dumps(document, separators=(",", ":")).encode("ascii")  # ensure_ascii: escapes any surrogate
    atomic_write(os.path.join(folder_path, INDEX_FILE), data, fsync=False)  # a cache: see above


def read(folder_path: str) -> dict | None:
    """The saved document, if it is whole and of this version."""
    try:
        with open(os.path.join(folder_path, INDEX_FILE), encoding="utf-8", errors="surrogateescape") as f:
            document = json.load(f)
    except (FileNotFoundError, ValueError, OSError):
        return None
    if not isinstance(document, dict) or document.get("v") != VERSION:
        return None
    return document


def still_valid(folder_path: str, document: dict, uidlist_path: str, keywords_path: str) -> bool:
    """True when nothing the document was taken from has changed since."""
    try:
        new_mtime, cur_mtime = document["new"], document["cur"]
        if document["listed_at"] - max(new_mtime, cur_mtime) <= STABLE_NS:
            return False
        return (mtime_ns(os.path.join(folder_path, "new")) == new_mtime
                and mtime_ns(os.path.join(folder_path, "cur")) == cur_mtime
                and _stat_key(uidlist_path) == document["uidlist"]
                and mtime_ns(keywords_path) == document["keywords"])
    except (KeyError, TypeError):
        return False


def uidlist_key(uidlist_path: str) -> list | None:
    return _stat_key(uidlist_path)


class Restored(NamedTuple):
    """A folder's state as a valid saved index gives it."""

    state: UidState
    uidlist_inode: tuple[int, int]
    uidlist_size: int
    files: dict[str, str]  # base -> "new/name" | "cur/name"
    mtimes: tuple[int, int]  # of new/ and cur/
    listed_at: int


def restore(folder_path: str, uidlist_path: str, keywords_path: str) -> Restored | None:
    """The saved state, when the index is whole, of this version and still valid."""
    doc = read(folder_path)
    if doc is None or not still_valid(folder_path, doc, uidlist_path, keywords_path):
        return None
    try:
        state = UidState(uidvalidity=int(doc["uidvalidity"]), uidnext=int(doc["uidnext"]),
                         highestmodseq=int(doc["highestmodseq"]), records=int(doc["records"]),
                         header_uidnext=int(doc["header_uidnext"]), header_modseq=int(doc["header_modseq"]))
        entries, by_base = state.entries, state.by_base
        for uid, modseq, date, base in doc["entries"]:
            if type(uid) is not int or type(modseq) is not int or type(date) is not int or type(base) is not str:
                raise ValueError("malformed entry")
            entries[uid] = UidEntry(uid, base, modseq, date)
            by_base[base] = uid
        state.expunged = {int(u): int(m) for u, m in doc["expunged"]}
        files: dict[str, str] = {}
        for rel in doc["files"]:
            if type(rel) is not str or not rel.startswith(("new/", "cur/")):
                raise ValueError("malformed file name")
            files[base_of(rel[4:])] = rel
        dev, ino, size, _mtime = doc["uidlist"]
        mtimes = (int(doc["new"]), int(doc["cur"]))
        listed_at = int(doc["listed_at"])
    except (KeyError, TypeError, ValueError):
        return None
    if state.uidvalidity < 1 or len(by_base) != len(entries):
        return None
    return Restored(state, (dev, ino), size, files, mtimes, listed_at)


def document(state: UidState, files: dict[str, str], uidlist: list, mtimes: tuple[int, int], listed_at: int,
             keywords_mtime: int | None) -> dict:
    """What :func:`write` saves for a folder whose UID log (``uidlist``: its
    :func:`uidlist_key`) was read to its end and whose listing is ``files``."""
    return {
        "v": VERSION, "uidlist": uidlist, "new": mtimes[0], "cur": mtimes[1],
        "listed_at": listed_at, "keywords": keywords_mtime,
        "uidvalidity": state.uidvalidity, "uidnext": state.uidnext, "highestmodseq": state.highestmodseq,
        "header_uidnext": state.header_uidnext, "header_modseq": state.header_modseq, "records": state.records,
        "expunged": list(state.expunged.items()),
        "entries": [[e.uid, e.modseq, e.internaldate, e.base] for e in state.entries.values()],
        "files": list(files.values()),
    }
