"""Dovecot's dot-locks, so that mailstack and a Dovecot on the same Maildir exclude each other.

Dovecot guards ``dovecot-uidlist`` (and, through it, ``dovecot-keywords``) and ``subscriptions``
with a *dot-lock*: the file ``<name>.lock``.  It is made atomically, also over NFS: write
``<pid>:<host>`` to a temporary file beside it, then hard-link that to ``<name>.lock`` (the
link fails if the lock exists).  A lock is stale, and may be removed, when its holder is a
process on this host that no longer runs, or when nothing has changed it for
``stale_after`` seconds.  Replacing the guarded file is done *through* the lock: the new
contents are written into the lock file, which is then renamed over the file, and the rename
is also the release.  Dovecot expects every writer to follow this, so mailstack does.

Waiting is a short sleep loop, for at most ``timeout`` seconds (10 by default, then
:class:`LockTimeout`, which the protocols answer as a temporary failure): Dovecot holds these
locks for milliseconds, and a thread of the server's pool must not wait out a two-minute
stale timeout.  A lock that names this process but that this process does not hold was left
by an earlier process that had the same pid (pid 1 in a container): it is stale.
"""

from __future__ import annotations

import os
import secrets
import socket
import time

from mailstack.errors import StoreError
from mailstack.fsutil import fsync_dir, pid_alive

#: Dovecot's stale timeout for the uidlist and keywords locks (two minutes).
STALE_AFTER = 120.0
WAIT = 10.0
#: (lock path, inode) of the dot-locks this process holds now.
_held: set[tuple[str, int]] = set()


class LockTimeout(StoreError):
    """Somebody else holds the lock, and it does not look stale."""


class DotLock:
    def __init__(self, path: str, stale_after: float = STALE_AFTER, timeout: float | None = None):
        self.path = path  # the guarded file
        self.lock_path = path + ".lock"
        self.stale_after = stale_after
        self.timeout = WAIT if timeout is None else timeout
        self._ino: tuple[int, int] | None = None  # (inode, ctime) of our lock file

    def acquire(self) -> "DotLock":
        directory = os.path.dirname(self.lock_path) or "."
        me = f"{os.getpid()}:{socket.gethostname()}".encode()
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            tmp = os.path.join(directory, f".temp.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, me)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.lock_path)
                linked = True
            except FileExistsError:
                linked = False
            finally:
                os.unlink(tmp)
            if linked:
                # Who the lock is: inode and change time (an inode number alone is soon reused).
                st = os.stat(self.lock_path)
                self._ino = (st.st_ino, st.st_ctime_ns)
                _held.add((self.lock_path, st.st_ino))
                return self
            if self._remove_if_stale():
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"{self.lock_path} is held (and not stale)")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _remove_if_stale(self) -> bool:
        try:
            st = os.lstat(self.lock_path)
            with open(self.lock_path, "rb") as f:
                holder = f.read(256).decode("ascii", "replace")
        except FileNotFoundError:
            return True  # gone meanwhile: try again at once
        pid, _, host = holder.partition(":")
        ours = host == socket.gethostname() and pid.isdigit()
        dead = ours and (not pid_alive(int(pid))
                         or (int(pid) == os.getpid() and (self.lock_path, st.st_ino) not in _held))
        if not (dead or time.time() - st.st_mtime > self.stale_after):
            return False
        try:  # only the lock judged stale: another waiter may have broken it and taken a new one
            now = os.lstat(self.lock_path)
            if (now.st_ino, now.st_dev, now.st_mtime_ns, now.st_size) == (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size):
                os.unlink(self.lock_path)
        except FileNotFoundError:
            pass
        return True

    def release(self) -> None:
        """Remove the lock, if it is still ours."""
        try:
            st = os.stat(self.lock_path)
            if self._ino is not None and (st.st_ino, st.st_ctime_ns) == self._ino:
                os.unlink(self.lock_path)
        except FileNotFoundError:
            pass
        self._forget()

    def _forget(self) -> None:
        if self._ino is not None:
            _held.discard((self.lock_path, self._ino[0]))
        self._ino = None

    def replace(self, data: bytes, mode: int = 0o600, fsync: bool = True, mtime: int | None = None) -> None:
        """Write ``data`` into the lock file and rename it over the guarded file: the new file
        and the release in one step (Dovecot's ``file_dotlock_replace``).  ``mtime``: the new
        file's modification time (Dovecot notices some files' changes by it alone)."""
        fd = os.open(self.lock_path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if (st.st_ino, st.st_ctime_ns) != self._ino:  # broken as stale and taken by another: not ours
                raise LockTimeout(f"{self.lock_path} was taken over while held")
            os.ftruncate(fd, 0)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(self.lock_path, self.path)
        if fsync:  # the rename itself durable: a power loss must not bring the old file back
            fsync_dir(os.path.dirname(self.path) or ".")
        self._forget()

    def __enter__(self) -> "DotLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
