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

from mailstack.fsutil import atomic_write

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
