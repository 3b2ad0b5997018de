"""Replacing a file atomically, and making that durable: the one helper every writer uses.

The rule, stated once: a file that must survive a crash is written to a temporary file in
the *same directory* (so the rename cannot cross file systems), the temporary file is
fsynced, renamed over the target, and then the *directory* is fsynced, because the rename
lives in the directory and is not on disk until the directory is.  Readers see the old
file or the new one, never a half-written one.  ``fsync=False`` keeps the atomic rename
but skips both fsyncs: for caches that are rebuilt when lost (the folder index) and for
stores configured with ``[store] fsync = false``.
"""

from __future__ import annotations

import os
import secrets

__all__ = ["atomic_write", "fsync_dir", "pid_alive"]


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (names made, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o600, fsync: bool = True,
                 owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data`` atomically; the file gets exactly ``mode``.

    ``owner`` (uid, gid): the new file's owner and group, set before the rename, so root
    rewriting a file the service must read (``mailstack user add``) does not hand it to root.
    The temporary file (``<name>.<random>.tmp`` beside the target, made exclusively) is
    removed if anything fails before the rename.
    """
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            if owner is not None and (os.fstat(fd).st_uid, os.fstat(fd).st_gid) != owner:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # the umask narrowed what os.open gave (and fchown may clear set-id bits)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        fsync_dir(directory)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host: what decides that a lock or a claimed file
    left by it is stale (the outbound queue's claims, Dovecot's dot-locks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as somebody else
    return True
