"""A file of lines that several processes append to and each reads to its end: how the
processes of ``[server] workers`` share counts that must be one count (the outbound limits,
mailstack.antispam.outlimits; the login failures, mailstack.throttle), and how those counts
survive a restart.

A line is appended with one ``write`` on an ``O_APPEND`` descriptor under a shared ``flock``
of ``PATH.lock``, so lines never interleave.  Each reader remembers how far it has read (the
file's identity and an offset) and takes in only what came after; a line still being written
(no newline yet) waits for the next read.  The file is rewritten, with what still counts,
under the exclusive lock (temporary file, rename), and a reader that finds another file (a new
inode, or a shorter one) starts again from its beginning.  Nothing is fsynced: a crash may
forget the last lines, which a limit can afford.
"""

from __future__ import annotations

import fcntl
import os
from typing import Callable


class SharedJournal:
    def __init__(self, path: str):
        self.path = path
        self.position: tuple = (None, 0)  # ((st_dev, st_ino), offset) read so far

    def locked(self, how: int) -> "_Flock":
        """``with journal.locked(fcntl.LOCK_EX): ...`` (or LOCK_SH)."""
        return _Flock(self.path + ".lock", how)

    def append(self, line: str) -> None:
        """One line (without its newline), whole; OSError if it cannot be written."""
        data = (line + "\n").encode("utf-8", "replace")
        with self.locked(fcntl.LOCK_SH):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def new_lines(self) -> tuple[bool, list[str]]:
        """(``restarted``, the lines appended since the last call).  ``restarted``: the file was
        replaced since, and the lines are all of the new one: the caller starts from nothing."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False, []
        identity, offset = self.position
        restarted = identity != (st.st_dev, st.st_ino) or st.st_size < offset
        if restarted:
            identity, offset = (st.st_dev, st.st_ino), 0
        lines: list[str] = []
        if st.st_size > offset:
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    data = f.read(st.st_size - offset)
            except OSError:
                return False, []
            end = data.rfind(b"\n")
            if end >= 0:
                lines = data[:end].decode("utf-8", "replace").split("\n")
                offset += end + 1
        self.position = (identity, offset)
        return restarted, lines

    def rewrite(self, keep: Callable[[list[str]], list[str]]) -> list[str]:
        """Under the exclusive lock: the whole file's lines through ``keep``, written back in
        their place; returns what was kept (the state the caller starts again from)."""
        with self.locked(fcntl.LOCK_EX):
            self.position = (None, 0)
            _, lines = self.new_lines()
            kept = keep(lines)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8", opener=lambda name, flags: os.open(name, flags, 0o600)) as f:
                f.writelines(line + "\n" for line in kept)
            os.replace(tmp, self.path)
            st = os.stat(self.path)
            self.position = ((st.st_dev, st.st_ino), st.st_size)
        return kept


class _Flock:
    def __init__(self, path: str, how: int):
        self.path, self.how = path, how

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, self.how)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock
