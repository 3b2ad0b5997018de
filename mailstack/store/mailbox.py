"""One user's Maildir: the folder tree (Maildir++ directories) and the subscriptions file."""

from __future__ import annotations

import os
import secrets
import shutil
from typing import TYPE_CHECKING

from mailstack.errors import FolderExists, FolderNotFound, InvalidFolderName, StoreError
from mailstack.fsutil import fsync_dir
from mailstack.store import names
from mailstack.store.dotlock import DotLock
from mailstack.store.files import make_maildir
from mailstack.store.quota import folder_totals, refund
from mailstack.store.snapshot import FolderInfo

if TYPE_CHECKING:
    from mailstack.store.folder import MaildirFolder
    from mailstack.store.maildir import MaildirStore

#: Folders made with every account, with their RFC 6154 special-use attribute.
SPECIAL_FOLDERS = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}
SUBSCRIPTIONS_FILE = "subscriptions"


class Mailbox:
    """One user's Maildir: the folder tree and subscriptions."""

    def __init__(self, store: "MaildirStore", address: str, path: str):
        self.store, self.address, self.path = store, address, path

    def initialise(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        make_maildir(self.path, self.store.fsync, folder=False)
        inbox = self.store._folder(self, "INBOX", self.path)
        with inbox.locked():
            inbox._ensure_uidlist()
        self.subscribe("INBOX")  # a stored subscription, as Dovecot lists it (RFC 3501 6.3.9)
        for name in SPECIAL_FOLDERS:
            if not os.path.isdir(self._path_of(name)):
                try:
                    self.create_folder(name)
                except FolderExists:
                    pass  # another process initialising the same mailbox made it first
            self.subscribe(name)

    def exclusive(self, name: str):
        """A lock on this mailbox that one holder at a time has, across sessions and processes
        (``flock`` of ``mailstack-NAME.lock`` in the user's directory; the kernel drops it if
        the process dies): an object with ``release()``, or None while another holds it."""
        import fcntl

        if not name.isalnum():
            raise ValueError(f"lock name {name!r}")
        fd = os.open(os.path.join(self.path, f"mailstack-{name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return _HeldLock(fd)

    def _path_of(self, name: str) -> str:
        return os.path.join(self.path, names.to_dirname(name))

    def folder(self, name: str) -> "MaildirFolder":
        name = names.normalise(name)
        path = self._path_of(name)
        if not os.path.isdir(os.path.join(path, "cur")):
            raise FolderNotFound(f"no folder {name!r}")
        return self.store._folder(self, name, path)

    def folder_exists(self, name: str) -> bool:
        try:
            return os.path.isdir(os.path.join(self._path_of(name), "cur"))
        except InvalidFolderName:
            return False

    def list_folders(self) -> list[FolderInfo]:
        """INBOX and every folder, plus parents that exist only through their children."""
        found: dict[str, bool] = {"INBOX": True}
        with os.scandir(self.path) as it:
            for entry in it:
                if not entry.name.startswith(".") or entry.name in (".", "..") or not entry.is_dir():
                    continue
                try:
                    name = names.from_dirname(entry.name)
                except InvalidFolderName:
                    continue
                if os.path.isdir(os.path.join(entry.path, "cur")):
                    found[name] = True
        for name in list(found):
            parts = name.split(names.SEPARATOR)
            for i in range(1, len(parts)):
                found.setdefault(names.SEPARATOR.join(parts[:i]), False)
        return [
            FolderInfo(name, SPECIAL_FOLDERS.get(name), selectable)
            for name, selectable in sorted(found.items(), key=lambda kv: (kv[0] != "INBOX", kv[0]))
        ]

    def create_folder(self, name: str) -> "MaildirFolder":
        """Create a folder and any missing parents (RFC 3501 6.3.3)."""
        name = names.normalise(name)
        if name == "INBOX" or self.folder_exists(name):
            raise FolderExists(f"folder {name!r} exists")
        parts = name.split(names.SEPARATOR)
        for i in range(1, len(parts) + 1):
            sub = names.SEPARATOR.join(parts[:i])
            path = self._path_of(sub)
            if os.path.lexists(path) and not os.path.isdir(path):  # .dovecot.sieve: the active Sieve script
                raise InvalidFolderName(f"{sub!r} is the name of a file that is not a folder")
            if not os.path.isdir(os.path.join(path, "cur")):
                make_maildir(path, self.store.fsync, folder=True)
                folder = self.store._folder(self, sub, path)
                with folder.locked():
                    folder._ensure_uidlist()
        return self.folder(name)

    def delete_folder(self, name: str) -> None:
        """Delete a folder and its mail; its children and its subscription stay (RFC 3501
        6.3.4, 6.3.6)."""
        name = names.normalise(name)
        if name == "INBOX":
            raise StoreError("INBOX cannot be deleted")
        path = self._path_of(name)
        if not os.path.isdir(os.path.join(path, "cur")):
            raise FolderNotFound(f"no folder {name!r}")
        # Move it out of the folder namespace atomically, then remove at leisure.
        graveyard = os.path.join(self.path, "tmp", f"deleted-{secrets.token_hex(8)}")
        os.rename(path, graveyard)
        self.store._forget(path)
        if self.store.quota is not None:
            refund(self.store, self, *folder_totals(graveyard))  # its mail no longer counts
        if self.store.fsync:
            fsync_dir(self.path)
        shutil.rmtree(graveyard, ignore_errors=True)
        # The subscription stays: RFC 3501 6.3.6 forbids removing it unilaterally.

    def rename_folder(self, old: str, new: str) -> None:
        """Rename a folder with all its children; renaming INBOX moves its mail (RFC 3501 6.3.5)."""
        old, new = names.normalise(old), names.normalise(new)
        if new == "INBOX" or self.folder_exists(new):
            raise FolderExists(f"folder {new!r} exists")
        if old == "INBOX":
            source = self.folder("INBOX")
            dest = self.create_folder(new)
            uids = [m.uid for m in source.snapshot().messages]
            source.move(uids, dest)
            return
        if not self.folder_exists(old) and not any(f.name.startswith(old + "/") for f in self.list_folders()):
            raise FolderNotFound(f"no folder {old!r}")
        if new.startswith(old + names.SEPARATOR):
            raise StoreError("a folder cannot be moved into itself")
        old_dir, new_dir = names.to_dirname(old), names.to_dirname(new)
        moves = []
        for entry in os.listdir(self.path):
            if (entry == old_dir or entry.startswith(old_dir + ".")) and os.path.isdir(os.path.join(self.path, entry)):
                moves.append((entry, new_dir + entry[len(old_dir):]))
        for src, dst in moves:
            if os.path.exists(os.path.join(self.path, dst)):
                raise FolderExists(f"folder {names.from_dirname(dst)!r} exists")
        for src, dst in moves:
            os.rename(os.path.join(self.path, src), os.path.join(self.path, dst))
            self.store._forget(os.path.join(self.path, src))
        if self.store.fsync:
            fsync_dir(self.path)
        subs = self.subscriptions()
        for sub in subs:
            if sub == old or sub.startswith(old + names.SEPARATOR):
                self.unsubscribe(sub)
                self.subscribe(new + sub[len(old):])

    # -- subscriptions: Dovecot's file, with Dovecot's dot-lock ------------------------------

    def subscriptions(self) -> list[str]:
        try:
            with open(os.path.join(self.path, SUBSCRIPTIONS_FILE), "rb") as f:
                return read_subscriptions(f.read())
        except FileNotFoundError:
            return []

    def _change_subscriptions(self, change) -> None:
        """Read, change and replace the file under Dovecot's ``subscriptions.lock`` dot-lock
        (the new file is written into the lock and renamed over: no lock file stays behind)."""
        lock = DotLock(os.path.join(self.path, SUBSCRIPTIONS_FILE), stale_after=SUBSCRIPTIONS_STALE_AFTER,
                       timeout=SUBSCRIPTIONS_LOCK_TIMEOUT).acquire()
        try:
            subs = self.subscriptions()
            new = change(subs)
            if new == subs:
                lock.release()
                return
            lock.replace(write_subscriptions(new), fsync=self.store.fsync)
        except BaseException:
            lock.release()
            raise
        if self.store.fsync:
            fsync_dir(self.path)

    def subscribe(self, name: str) -> None:
        name = names.normalise(name)
        self._change_subscriptions(lambda subs: subs if name in subs else subs + [name])

    def unsubscribe(self, name: str) -> None:
        name = names.normalise(name)
        self._change_subscriptions(lambda subs: [s for s in subs if s != name])


#: Dovecot's subscriptions file, version 2: this header, then one name a line, its hierarchy
#: levels separated by TAB, each level in modified UTF-7 (as Maildir++ directory names) with
#: TAB, CR, LF and \x01 escaped as \x01 + a letter.  Version 1 (no header) is one name a line.
V2_HEADER = b"V\t2\n\n"
SUBSCRIPTIONS_STALE_AFTER = 30.0  # Dovecot's, for this lock
SUBSCRIPTIONS_LOCK_TIMEOUT = 10.0  # then a temporary failure (Dovecot waits 120 s; a pool thread must not)
_TAB_ESCAPES = {"\x01": "1", "\t": "t", "\r": "r", "\n": "n"}
_TAB_UNESCAPES = {v: k for k, v in _TAB_ESCAPES.items()}


def _tab_escape(text: str) -> str:
    return "".join("\x01" + _TAB_ESCAPES[c] if c in _TAB_ESCAPES else c for c in text)


def _tab_unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\x01" and i + 1 < len(text):
            out.append(_TAB_UNESCAPES.get(text[i + 1], text[i + 1]))
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _level(text: str) -> str:
    """One hierarchy level as stored: modified UTF-7 decoded, when it is that."""
    if "&" not in text:
        return text
    try:
        decoded = names.decode_mutf7(text)
    except (InvalidFolderName, ValueError, UnicodeError):
        return text
    return decoded if names.encode_mutf7(decoded) == text else text


def read_subscriptions(data: bytes) -> list[str]:
    """Folder names from a subscriptions file: Dovecot's version 2, Dovecot's version 1
    (Maildir++ names, ``.`` between levels), or what mailstack wrote before (``/``, UTF-8)."""
    text = data.decode("utf-8", "replace")
    out: list[str] = []
    if data.startswith(V2_HEADER):
        lines = [[_level(_tab_unescape(p)) for p in line.split("\t")] for line in text[len(V2_HEADER):].split("\n")]
    else:
        lines = [line.split(".") if "." in line and names.SEPARATOR not in line else [line]
                 for line in text.split("\n")]
        lines = [[_level(p) for p in parts] if len(parts) > 1 or "&" in parts[0] else parts for parts in lines]
    for parts in lines:
        if not any(parts):
            continue
        name = names.SEPARATOR.join(parts)
        if name not in out:
            out.append("INBOX" if names.is_inbox(name) else name)
    return out


def write_subscriptions(subs: list[str]) -> bytes:
    lines = ["\t".join(_tab_escape(names.encode_mutf7(p)) for p in name.split(names.SEPARATOR)) for name in subs]
    return V2_HEADER + "".join(line + "\n" for line in lines).encode("utf-8")


class _HeldLock:
    """What :meth:`Mailbox.exclusive` hands out: the open, locked file."""

    def __init__(self, fd: int):
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
