"""One user's Maildir: the folder tree (Maildir++ directories) and the subscriptions file."""

from __future__ import annotations

import os
import secrets
import shutil
from typing import TYPE_CHECKING

from mailstack.errors import FolderExists, FolderNotFound, InvalidFolderName, StoreError
from mailstack.fsutil import atomic_write, fsync_dir
from mailstack.store import names
from mailstack.store.files import make_maildir
from mailstack.store.snapshot import FolderInfo
from mailstack.store.uidlist import FolderLock

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
        for name in SPECIAL_FOLDERS:
            if not os.path.isdir(self._path_of(name)):
                try:
                    self.create_folder(name)
                except FolderExists:
                    pass  # another process initialising the same mailbox made it first
            self.subscribe(name)

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
            if entry == old_dir or entry.startswith(old_dir + "."):
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

    # -- subscriptions: one folder name per line, UTF-8 -------------------------------------

    def subscriptions(self) -> list[str]:
        try:
            with open(os.path.join(self.path, SUBSCRIPTIONS_FILE), encoding="utf-8") as f:
                return [line.rstrip("\n") for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def _write_subscriptions(self, subs: list[str]) -> None:
        data = "".join(s + "\n" for s in subs).encode("utf-8")
        atomic_write(os.path.join(self.path, SUBSCRIPTIONS_FILE), data, fsync=self.store.fsync)

    def subscribe(self, name: str) -> None:
        name = names.normalise(name)
        with FolderLock(self.path, SUBSCRIPTIONS_FILE + ".lock"):
            subs = self.subscriptions()
            if name not in subs:
                self._write_subscriptions(subs + [name])

    def unsubscribe(self, name: str) -> None:
        name = names.normalise(name)
        with FolderLock(self.path, SUBSCRIPTIONS_FILE + ".lock"):
            subs = self.subscriptions()
            if name in subs:
                self._write_subscriptions([s for s in subs if s != name])
