"""Message files on disk: their names, writing one under ``tmp/``, and making links durable.

A mail file is named ``<time>.M<usec>P<pid>Q<n>R<rand>.<host>,S=<size>,W=<CRLF size>[:2,<flags>]``
(older ones lack ``,W=``): the part before ``:2,`` (the *base*) never changes, so it
identifies the message in the UID log, and the sizes spare a listing any stat or read
(``,W=`` as Dovecot writes it: RFC822.SIZE, see :mod:`mailstack.store.crlf`).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import socket
import threading
import time
from typing import Iterator

from mailstack.fsutil import fsync_dir
from mailstack.store.crlf import CrlfCounter

_counter = itertools.count(1)
_PROCESS_TOKEN = secrets.token_hex(4)  # with pid and counter, unique even across pid reuse
_CHUNK = 64 * 1024
_ARRIVAL_RE = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)")


def base_of(filename: str) -> str:
    i = filename.find(":2,")
    return filename if i < 0 else filename[:i]


def size_of(base: str) -> int | None:
    """The size from a ``,S=<size>`` field of the name (Maildir++), or None."""
    i = base.find(",S=")
    if i < 0:
        return None
    digits = base[i + 3 :].split(",", 1)[0]
    return int(digits) if digits.isdigit() else None


def hostname() -> str:
    """This host's name as Maildir wants it in file names (``/`` and ``:`` escaped)."""
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def new_base(host: str) -> str:
    """A base name no other delivery, in this or any process, has used."""
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}R{_PROCESS_TOKEN}.{host}"


#: The unique part of a Maildir name, after ``<secs>.``: Maildir's ``M<usec>P<pid>`` (Dovecot's
#: older names), ``P<pid>Q<n>M<usec>`` (Dovecot's newer ones), ours ``M<usec>P<pid>Q<n>R<rand>``,
#: or qmail's ``<n>_<m>``.  Fields are letter + digits in any order.
_UNIQUE_FIELD = re.compile(r"([A-Z])(\d+)")
_COUNTERS = re.compile(r"^(\d+)_(\d+)$")


def arrival_key(base: str, internaldate: int) -> tuple:
    """Sort key putting new files in arrival order (RFC 3501 2.3.1.1: UIDs ascend with it).

    The numbers of the name compare as numbers, seconds first, then microseconds, then the
    delivery counter: as text, ``M98765`` would sort after ``M123456``.  Names of every
    writer in the wild are read (ours, Dovecot's two forms, qmail's ``<n>_<m>``); any other
    name sorts by its internal date.
    """
    m = _ARRIVAL_RE.match(base)
    if m:  # ours, the common case, without the general parse
        return (int(m.group(1)), int(m.group(2)), int(m.group(4)), 0, base)
    secs, _, rest = base.partition(".")
    if secs.isdigit():
        unique = rest.split(".", 1)[0]
        counters = _COUNTERS.match(unique)
        if counters:
            return (int(secs), 0, int(counters.group(1)), int(counters.group(2)), base)
        fields = dict(_UNIQUE_FIELD.findall(unique))
        if fields:
            return (int(secs), int(fields.get("M", 0)), int(fields.get("Q", 0)), int(fields.get("P", 0)), base)
    return (internaldate, 0, 0, 0, base)


def chunks(source) -> Iterator[bytes]:
    """The bytes of ``source``: bytes, a readable file, or an iterable of byte chunks."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield bytes(source)
    elif hasattr(source, "read"):
        while True:
            chunk = source.read(_CHUNK)
            if not chunk:
                return
            yield chunk
    else:
        for chunk in source:
            yield bytes(chunk)


def write_new_file(source, path: str, fsync: bool) -> tuple[int, int]:
    """Write ``source`` to the new file ``path`` (0600, never one that exists); return its
    size and its CRLF size (the two of a ``,S=<size>,W=<CRLF size>`` name, see :mod:`crlf`).

    Not :func:`mailstack.fsutil.atomic_write`: a message is streamed, not held whole, and it
    is published by a link from ``tmp/``, not a rename over a file.
    """
    counter = CrlfCounter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            for chunk in chunks(source):
                f.write(chunk)
                counter.feed(chunk)
            f.flush()
            if fsync:
                os.fsync(fd)
    finally:
        os.close(fd)
    return counter.size, counter.crlf_size


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#: Files in tmp/ untouched this long are abandoned (the Maildir convention; Dovecot uses 36 h).
TMP_MAX_AGE = 36 * 3600


def clear_stale_tmp(tmp_dir: str, cutoff: float) -> int:
    """Remove what a killed writer left in a Maildir ``tmp/``; return how many entries.

    * a file with more than one link: its message was already linked into new/ or cur/ and
      only the final unlink of the tmp/ name was missed (SIGKILL between the two): removing
      the name loses nothing, at any age;
    * a file whose inode last changed before ``cutoff``: abandoned half-way.  ctime, not mtime,
      because APPEND sets the mtime to the internal date, which may be years old, before it
      links the file; nobody can set ctime back;
    * a ``deleted-*`` directory: a folder DELETE moved there and was killed while removing it.
    """
    removed = 0
    try:
        names = os.listdir(tmp_dir)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: .dovecot.sieve, a file among the folders
        return 0
    for name in names:
        path = os.path.join(tmp_dir, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if os.path.isdir(path) and name.startswith("deleted-"):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        elif not os.path.isdir(path) and (st.st_nlink > 1 or st.st_ctime < cutoff):
            unlink_quietly(path)
            removed += 1
    return removed


def make_maildir(path: str, fsync: bool, folder: bool) -> None:
    """``cur/ new/ tmp/`` under ``path`` (and the Maildir++ ``maildirfolder`` marker).  Every
    directory is made 0700 whatever the umask: mail is private (an admin command run with
    root's 022 would otherwise leave the user's directory world-readable)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    if folder:
        open(os.path.join(path, "maildirfolder"), "a").close()
    if fsync:
        for sub in ("tmp", "new", "cur"):
            fsync_dir(os.path.join(path, sub))
        fsync_dir(path)
        fsync_dir(os.path.dirname(path))


_libc = None


def syncfs(path: str) -> bool:
    """syncfs(2) on the file system holding ``path``: every dirty file and directory of it is
    on disk when this returns True (Linux 5.8+ reports write-back errors here too).  False
    where the call is unavailable or fails, so that the caller falls back to fsync per file."""
    global _libc
    try:
        if _libc is None:
            import ctypes
            import ctypes.util

            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _libc.syncfs(fd) == 0
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False


class DirSyncer:
    """Group commit of directory fsyncs.

    Many threads delivering into one directory each need its entry durable before they
    answer.  One ``fsync`` of the directory covers every link made before it started, so a
    thread whose link is older than a running fsync waits for the *next* one, and every
    thread that arrives while that one runs shares it: N concurrent deliveries cost about
    two directory fsyncs instead of N.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._state: dict[str, list[int]] = {}  # path -> [requests, started, completed, running]

    def sync(self, path: str) -> None:
        with self._cond:
            st = self._state.setdefault(path, [0, 0, 0, 0])
            st[0] += 1
            ticket = st[0]  # our link happened before this ticket was taken
            while True:
                if st[2] >= ticket:  # an fsync that started after our ticket has finished
                    return
                if not st[3]:
                    break
                self._cond.wait()
            st[3], st[1] = 1, st[0]
        ok = False
        try:
            fsync_dir(path)
            ok = True
        finally:
            with self._cond:
                st[3] = 0
                if ok:  # after a failure nobody is covered: the next waiter tries (and fails) itself
                    st[2] = st[1]
                    if st[2] == st[0]:
                        del self._state[path]
                self._cond.notify_all()
