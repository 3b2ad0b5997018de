"""The Maildir store: the one place mail lives, shared by SMTP, IMAP and POP3.

Layout (Maildir++ as Dovecot and Courier use it)::

    <root>/<domain>/<localpart>/            the user's INBOX (cur/ new/ tmp/)
    <root>/<domain>/<localpart>/.Sent/      a folder; nested folders are .Work.Projects
    .../mailstack-uidlist                   UID state of that folder (see uidlist.py)
    .../dovecot-keywords                    keyword <-> filename letter map, Dovecot's format
    <root>/<domain>/<localpart>/subscriptions

Mail files are named ``<time>.M<usec>P<pid>Q<n>R<rand>.<host>,S=<size>[:2,<flags>]`` so a
listing needs neither stat nor read, and flags live in the ``:2,`` suffix with Dovecot's
letters (D draft, F flagged, R answered, S seen, T deleted; a-z keywords), so the files can be
rsynced between mailstack and Dovecot.

Every method here blocks on disk I/O (and fsync); Twisted callers run them in a thread pool.
The classes are thread-safe.  They know nothing of any protocol: change notification is a
plain callback (``MaildirStore.on_change``) that :mod:`mailstack.store.watch` wires to the
reactor.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple

from mailstack.errors import (
    FolderExists,
    FolderNotFound,
    InvalidFolderName,
    KeywordLimit,
    MessageGone,
    StoreError,
    UnknownUser,
)
from mailstack.store import names
from mailstack.store import index as folder_index
from mailstack.store.cache import HEADER, MessageCache, header_section
from mailstack.store.uidlist import FolderLock, UidEntry, UidList, UidState, fsync_dir, next_uidvalidity

SYSTEM_FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_SYSTEM_FLAGS = {v: k for k, v in SYSTEM_FLAG_LETTERS.items()}
KEYWORDS_FILE = "dovecot-keywords"
SUBSCRIPTIONS_FILE = "subscriptions"

#: Folders made with every account, with their RFC 6154 special-use attribute.
SPECIAL_FOLDERS = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}

_LOCALPART_RE = re.compile(r"^[^\x00-\x20\x7f/\\:@]+$")
_DOMAIN_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)*$")
_counter = itertools.count(1)
_PROCESS_TOKEN = secrets.token_hex(4)  # with pid and counter, unique even across pid reuse
_CHUNK = 64 * 1024


class MessageInfo(NamedTuple):
    """One message as a folder snapshot sees it.

    A named tuple, not a dataclass: a snapshot of 100,000 messages makes 100,000 of these,
    and a frozen dataclass's ``__init__`` costs several times a tuple's (measured).
    """

    uid: int
    base: str
    filename: str  # relative to the folder: "new/..." or "cur/..."
    flags: frozenset
    size: int
    internaldate: int
    modseq: int

    @property
    def recent(self) -> bool:
        """Still in new/: no session has claimed it yet (IMAP \\Recent)."""
        return self.filename.startswith("new/")


class FolderSnapshot:
    """A folder at one moment: immutable, shared by every session that asks while nothing
    changes, so what is derived from it (the UID index) is computed once."""

    __slots__ = ("name", "uidvalidity", "uidnext", "highestmodseq", "messages", "_by_uid")

    def __init__(self, name: str, uidvalidity: int, uidnext: int, highestmodseq: int, messages: tuple):
        self.name, self.uidvalidity, self.uidnext = name, uidvalidity, uidnext
        self.highestmodseq, self.messages = highestmodseq, messages  # of MessageInfo, ascending UID
        self._by_uid: dict[int, MessageInfo] | None = None

    def by_uid(self) -> dict[int, MessageInfo]:
        """uid -> MessageInfo (do not change it: it is shared)."""
        if self._by_uid is None:
            self._by_uid = {m.uid: m for m in self.messages}
        return self._by_uid


@dataclass(slots=True, frozen=True)
class FolderInfo:
    name: str
    special_use: str | None
    selectable: bool = True  # False for a parent that exists only through its children


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


def _hostname() -> str:
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def split_address(address: str) -> tuple[str, str]:
    """``Local@Domain`` -> (localpart, domain) lowercased, refusing names unsafe as paths."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        raise UnknownUser(f"not an address: {address!r}")
    local, domain = local.lower(), domain.lower()
    if not _LOCALPART_RE.match(local) or local.startswith(".") or len(local) > 64:
        raise UnknownUser(f"local part not usable as a mailbox name: {address!r}")
    if not _DOMAIN_RE.match(domain) or len(domain) > 253:
        raise UnknownUser(f"bad domain: {address!r}")
    return local, domain


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


class MaildirStore:
    """All users' Maildirs under one root."""

    def __init__(self, root: str, fsync: bool = True, hostname: str | None = None):
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.hostname = hostname or _hostname()
        self._folders: dict[str, MaildirFolder] = {}
        self._folders_lock = threading.Lock()
        #: Called with a folder path after this process changed that folder.
        self.on_change: Callable[[str], None] = lambda path: None
        self.dir_syncer = DirSyncer()

    def user_path(self, address: str) -> str:
        local, domain = split_address(address)
        return os.path.join(self.root, domain, local)

    def mailbox(self, address: str, create: bool = True) -> "Mailbox":
        """The user's Maildir; made, with its special folders, on first use when ``create``."""
        path = self.user_path(address)
        mailbox = Mailbox(self, address.lower(), path)
        if not os.path.isdir(os.path.join(path, "cur")):
            if not create:
                raise UnknownUser(f"no mailbox for {address}")
            mailbox.initialise()
        return mailbox

    def exists(self, address: str) -> bool:
        return os.path.isdir(os.path.join(self.user_path(address), "cur"))

    def users(self) -> Iterator[str]:
        """Addresses that have a Maildir."""
        if not os.path.isdir(self.root):
            return
        for domain in sorted(os.listdir(self.root)):
            ddir = os.path.join(self.root, domain)
            if not os.path.isdir(ddir):
                continue
            for local in sorted(os.listdir(ddir)):
                if os.path.isdir(os.path.join(ddir, local, "cur")):
                    yield f"{local}@{domain}"

    def deliver(self, address: str, source, folder: str = "INBOX", flags: Iterable[str] = ()) -> None:
        """Store a message durably in a user's folder (its UID is given when the folder is next read)."""
        self.mailbox(address).folder(folder).append(source, flags=flags, assign_uid=False)

    def deliver_batch(self, items: list[tuple]) -> list[Exception | None]:
        """Deliver many (address, source[, folder]) messages with one flush for the lot (group commit).

        Every file is written to tmp/ first, then one ``syncfs`` puts all of them on disk at
        once (measured: per-file fsyncs cost one journal commit each here; falls back to them
        where syncfs is missing), then each is linked into new/ and every new/ directory
        fsynced once.  Each item gets the same
        guarantee as :meth:`deliver`; returns, per item, None or the exception that stopped it.
        """
        results: list[Exception | None] = [None] * len(items)
        staged = []
        for i, item in enumerate(items):
            address, source = item[0], item[1]
            tmp_path = None
            try:
                folder = self.mailbox(address).folder(item[2] if len(item) > 2 else "INBOX")
                base = folder._new_base()
                tmp_path = os.path.join(folder.path, "tmp", base)
                size = folder._write_tmp(source, tmp_path, fsync=False)
                staged.append((i, folder, tmp_path, f"{base},S={size}"))
            except Exception as e:
                results[i] = e
                if tmp_path:
                    _unlink_quietly(tmp_path)
        if self.fsync and len(staged) > 1 and _syncfs(self.root):
            pass  # one flush of the file system carried every file of the batch
        elif self.fsync:
            for i, folder, tmp_path, base in staged:
                try:
                    fd = os.open(tmp_path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError as e:
                    results[i] = e
        dirs: dict[str, list[int]] = {}
        for i, folder, tmp_path, base in staged:
            try:
                if results[i] is None:
                    os.link(tmp_path, os.path.join(folder.path, "new", base))
                    dirs.setdefault(folder.path, []).append(i)
            except OSError as e:
                results[i] = e
            finally:
                _unlink_quietly(tmp_path)
        for path, indexes in dirs.items():
            try:
                if self.fsync:
                    self.dir_syncer.sync(os.path.join(path, "new"))
            except OSError as e:
                for i in indexes:
                    results[i] = e
            self.on_change(path)
        return results

    def save_indexes(self) -> int:
        """*Blocking.*  Save the index of every folder this process has open (index.py);
        return how many were written.  Called periodically and at shutdown."""
        with self._folders_lock:
            folders = list(self._folders.values())
        written = 0
        for folder in folders:
            try:
                written += folder.save_index()
            except (OSError, StoreError):
                pass  # only a cache: the folder is read the long way next time
        return written

    def _folder(self, mailbox: "Mailbox", name: str, path: str) -> "MaildirFolder":
        with self._folders_lock:
            folder = self._folders.get(path)
            if folder is None:
                folder = self._folders[path] = MaildirFolder(self, mailbox, name, path)
            return folder

    def _forget(self, path_prefix: str) -> None:
        with self._folders_lock:
            for path in [p for p in self._folders if p == path_prefix or p.startswith(path_prefix + ".")]:
                del self._folders[path]


def _make_maildir(path: str, fsync: bool, folder: bool) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    if folder:
        open(os.path.join(path, "maildirfolder"), "a").close()
    if fsync:
        for sub in ("tmp", "new", "cur"):
            fsync_dir(os.path.join(path, sub))
        fsync_dir(path)
        fsync_dir(os.path.dirname(path))


class Mailbox:
    """One user's Maildir: the folder tree and subscriptions."""

    def __init__(self, store: MaildirStore, address: str, path: str):
        self.store, self.address, self.path = store, address, path

    def initialise(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        _make_maildir(self.path, self.store.fsync, folder=False)
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
                _make_maildir(path, self.store.fsync, folder=True)
                folder = self.store._folder(self, sub, path)
                with folder.locked():
                    folder._ensure_uidlist()
        return self.folder(name)

    def delete_folder(self, name: str) -> None:
        """Delete a folder and its mail; its children stay (RFC 3501 6.3.4)."""
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
        self.unsubscribe(name)

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
        path = os.path.join(self.path, SUBSCRIPTIONS_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(s + "\n" for s in subs))
        os.rename(tmp, path)

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


class MaildirFolder:
    """One Maildir folder: its messages, flags and UID state."""

    def __init__(self, store: MaildirStore, mailbox: Mailbox, name: str, path: str):
        self.store, self.mailbox, self.name, self.path = store, mailbox, name, path
        self.uidlist = UidList(path, fsync=store.fsync)
        self._files: dict[str, str] = {}  # base -> "new/name" | "cur/name"
        self._scan_mtimes: tuple[int, int] | None = None
        self._listed_at = 0  # time.time_ns() when the listing in _files was started
        self._keywords: list[str] | None = None
        self._keywords_mtime: int | None = None
        self._lock_depth = 0
        self._files_gen = 0
        self._snapshot: tuple[tuple, FolderSnapshot] | None = None
        self._verified: tuple | None = None  # (listing, UID log) state last found in agreement
        self.cache = MessageCache(path)
        self._index_tried = False  # mailstack-index looked at (once, at the first sync)
        self._index_saved: tuple | None = None  # the state last written to it

    @contextlib.contextmanager
    def locked(self):
        """Hold this folder's lock: the in-process mutex first, then the cross-process flock.

        Re-entrant within a thread; always taken in this order, so no two threads deadlock.
        """
        with self.uidlist.mutex:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            with FolderLock(self.path):
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0

    # -- scanning --------------------------------------------------------------------------

    def _scan(self) -> dict[str, str]:
        """base -> relative filename for every message file.

        new/ is listed before cur/: a file renamed from new/ to cur/ between the two listings
        is then seen in cur/, never missed.  A listing is reused while neither directory
        changed, unless a change could hide inside the file system's timestamp granularity.
        """
        listed_at = time.time_ns()
        try:
            st_new = os.stat(os.path.join(self.path, "new")).st_mtime_ns
            st_cur = os.stat(os.path.join(self.path, "cur")).st_mtime_ns
        except FileNotFoundError:
            raise FolderNotFound(f"folder {self.name!r} vanished") from None
        # Reuse is safe only for a listing *taken* well after the last change: a change in
        # the same timestamp tick as an earlier one leaves the mtime as it was (2 s covers
        # the coarsest file systems; ext4 with small inodes has 1 s).
        if self._scan_mtimes == (st_new, st_cur) and self._listed_at - max(st_new, st_cur) > 2_000_000_000:
            return self._files
        files: dict[str, str] = {}
        for sub in ("new", "cur"):
            prefix = sub + "/"
            for name in os.listdir(os.path.join(self.path, sub)):  # listdir: a third faster than scandir here
                if not name.startswith("."):
                    files[base_of(name)] = prefix + name
        if files != self._files:
            # A listing equal to the last one keeps its generation, so a re-listing forced by
            # the timestamp window does not invalidate the snapshot built on it.
            self._files_gen += 1
            self._files = files
        self._scan_mtimes, self._listed_at = (st_new, st_cur), listed_at
        return self._files

    def _invalidate_listing(self) -> None:
        """The listing is stale (this process moved files): rescan next time."""
        self._scan_mtimes = None
        self._files_gen += 1

    def _ensure_uidlist(self) -> None:
        """Caller holds the lock.  Make the UID state if it is missing or unreadable."""
        missing = self.uidlist.refresh()
        if missing or self.uidlist.state.uidvalidity < 1:
            self.uidlist.create(next_uidvalidity(self.mailbox.path, self.store.fsync))

    def _internaldate_of(self, base: str, rel: str) -> int:
        head = base.split(".", 1)[0]
        if head.isdigit():
            return int(head)
        try:
            return int(os.stat(os.path.join(self.path, rel)).st_mtime)
        except FileNotFoundError:
            return int(time.time())

    # -- the saved index (index.py) ------------------------------------------------------------

    def _restore_index(self) -> None:
        """Caller holds the UID mutex.  Take the UID state and the listing from
        ``mailstack-index`` when it still describes the folder exactly."""
        self._index_tried = True
        ul = self.uidlist
        doc = folder_index.read(self.path)
        if doc is None or not folder_index.still_valid(self.path, doc, ul.path, os.path.join(self.path, KEYWORDS_FILE)):
            return
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
            return
        if state.uidvalidity < 1 or len(by_base) != len(entries):
            return
        ul.state, ul._inode, ul._offset, ul._size = state, (dev, ino), size, size
        self._files, self._scan_mtimes, self._listed_at = files, mtimes, listed_at
        self._files_gen += 1

    def save_index(self) -> bool:
        """*Blocking.*  Write ``mailstack-index`` for the folder as it is now, when the
        listing is one that may be reused and the UID log is read to its end; False if not
        (or if nothing changed since the last write)."""
        ul = self.uidlist
        with ul.mutex:
            files = self._sync()
            state = ul.state
            if self._scan_mtimes is None or self._listed_at - max(self._scan_mtimes) <= folder_index.STABLE_NS:
                return False
            key = folder_index.uidlist_key(ul.path)
            if key is None or (key[0], key[1]) != ul._inode or key[2] != ul._offset or state.problems:
                return False
            keywords_mtime = folder_index.mtime_ns(os.path.join(self.path, KEYWORDS_FILE))
            saved = (self._files_gen, tuple(key), keywords_mtime)
            if saved == self._index_saved:
                return False
            document = {
                "v": folder_index.VERSION, "uidlist": key, "new": self._scan_mtimes[0], "cur": self._scan_mtimes[1],
                "listed_at": self._listed_at, "keywords": keywords_mtime,
                "uidvalidity": state.uidvalidity, "uidnext": state.uidnext, "highestmodseq": state.highestmodseq,
                "header_uidnext": state.header_uidnext, "header_modseq": state.header_modseq, "records": state.records,
                "expunged": list(state.expunged.items()),
                "entries": [[e.uid, e.modseq, e.internaldate, e.base] for e in state.entries.values()],
                "files": list(files.values()),
            }
        folder_index.write(self.path, document)
        self._index_saved = saved
        return True

    def _sync(self) -> dict[str, str]:
        """Make sure every file has a UID and every UID a file; return the listing."""
        ul = self.uidlist
        with ul.mutex:
            if not self._index_tried:
                self._restore_index()
            ul.refresh()
            files = self._scan()
            state = ul.state
            verified = (self._files_gen, ul._inode, ul._offset)
            if verified == self._verified:
                return files
            if state.uidvalidity >= 1 and len(state.by_base) == len(files) and all(b in state.by_base for b in files):
                self._verified = verified
                return files
            with self.locked():
                self._ensure_uidlist()
                self._invalidate_listing()
                files = self._scan()
                state = ul.state
                records: list[str] = []
                fresh = [(b, self._internaldate_of(b, files[b])) for b in files if b not in state.by_base]
                fresh.sort(key=lambda bd: _arrival_key(*bd))
                for base, when in fresh:
                    ul.add(base, when, records)
                gone = [e.uid for e in state.entries.values() if e.base not in files]
                if gone:
                    self._invalidate_listing()
                    again = self._scan()
                    for uid in gone:
                        if state.entries[uid].base not in again:
                            ul.remove(uid, records)
                    files = again
                ul.append(records)
                return files

    def snapshot(self) -> FolderSnapshot:
        """The folder's messages as (uid, flags, size, internal date, modseq); reads no mail file."""
        return self._build_snapshot(self._sync())

    def select(self, take_recent: bool) -> tuple[FolderSnapshot, list[int]]:
        """A snapshot, first claiming what is in new/ when ``take_recent`` (see
        :meth:`take_recent`): one directory listing where the two calls would make two."""
        if not take_recent:
            return self.snapshot(), []
        files, taken = self._take_recent()
        return self._build_snapshot(files), taken

    def _build_snapshot(self, files: dict[str, str]) -> FolderSnapshot:
        ul = self.uidlist
        with ul.mutex:
            state = ul.state
            keywords = self._load_keywords()
            # Nothing changed since the last snapshot (same listing, same UID log, same
            # keywords): hand out the same immutable snapshot again.
            key = (self._files_gen, ul._inode, ul._offset, state.uidvalidity, self._keywords_mtime)
            if self._snapshot is not None and self._snapshot[0] == key:
                return self._snapshot[1]
            # Rebuilding after a change reuses each unchanged message's MessageInfo, and
            # flags are decoded once per distinct ":2," suffix: both dominate at 100,000.
            previous = {} if self._snapshot is None or self._snapshot[0][4] != key[4] else self._snapshot[1].by_uid()
            decoded: dict[str | None, frozenset] = {}
            messages = []
            append, files_get, make = messages.append, files.get, MessageInfo.__new__
            entries = state.entries
            for uid in sorted(entries):  # the loop a cold open of a big folder spends its time in
                entry = entries[uid]
                base = entry.base
                rel = files_get(base)
                if rel is None:
                    continue
                if previous:
                    old = previous.get(uid)
                    if old is not None and old.filename == rel and old.modseq == entry.modseq:
                        append(old)
                        continue
                size = size_of(base)
                if size is None:
                    try:
                        size = os.stat(os.path.join(self.path, rel)).st_size
                    except FileNotFoundError:
                        continue
                i = rel.find(":2,")
                suffix = rel[i + 3 :] if i >= 0 else None
                flags = decoded.get(suffix)
                if flags is None:
                    flags = decoded[suffix] = self._flags_of(rel, keywords)
                append(make(MessageInfo, uid, base, rel, flags, size, entry.internaldate, entry.modseq))
            snapshot = FolderSnapshot(self.name, state.uidvalidity, state.uidnext, state.highestmodseq, tuple(messages))
            self._snapshot = (key, snapshot)
            return snapshot

    # -- flags and keywords ----------------------------------------------------------------

    def _load_keywords(self) -> list[str]:
        path = os.path.join(self.path, KEYWORDS_FILE)
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            self._keywords, self._keywords_mtime = [], None
            return []
        if self._keywords is not None and mtime == self._keywords_mtime:
            return self._keywords
        keywords: list[str] = [""] * 26
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                idx, _, word = line.rstrip("\n").partition(" ")
                if idx.isdigit() and int(idx) < 26 and word:
                    keywords[int(idx)] = word
        while keywords and not keywords[-1]:
            keywords.pop()
        self._keywords, self._keywords_mtime = keywords, mtime
        return keywords

    def _keyword_letter(self, word: str, keywords: list[str]) -> str:
        """Caller holds the lock.  Give ``word`` a letter, recording it in dovecot-keywords."""
        for i, known in enumerate(keywords):
            if known.lower() == word.lower():
                return chr(ord("a") + i)
        if len(keywords) >= 26:
            raise KeywordLimit("this folder already has 26 keywords")
        keywords.append(word)
        path = os.path.join(self.path, KEYWORDS_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(f"{i} {w}\n" for i, w in enumerate(keywords) if w))
            if self.store.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, path)
        self._keywords, self._keywords_mtime = keywords, os.stat(path).st_mtime_ns
        return chr(ord("a") + len(keywords) - 1)

    def _flags_of(self, rel: str, keywords: list[str]) -> frozenset:
        i = rel.find(":2,")
        if i < 0:
            return frozenset()
        flags = set()
        for letter in rel[i + 3 :]:
            if letter in LETTER_SYSTEM_FLAGS:
                flags.add(LETTER_SYSTEM_FLAGS[letter])
            elif "a" <= letter <= "z":
                idx = ord(letter) - ord("a")
                if idx < len(keywords) and keywords[idx]:
                    flags.add(keywords[idx])
        return frozenset(flags)

    def _letters(self, flags: Iterable[str], keep_unknown: str = "") -> str:
        """Caller holds the lock.  The ``:2,`` letters for ``flags`` (sorted, as Maildir wants)."""
        keywords = self._load_keywords()
        keywords = list(keywords)
        letters = set(c for c in keep_unknown if c.isupper() and c not in LETTER_SYSTEM_FLAGS)
        for flag in flags:
            if flag in SYSTEM_FLAG_LETTERS:
                letters.add(SYSTEM_FLAG_LETTERS[flag])
            elif flag.startswith("\\"):
                continue  # \Recent and unknown system flags are not stored
            else:
                letters.add(self._keyword_letter(flag, keywords))
        return "".join(sorted(letters))

    # -- adding mail -----------------------------------------------------------------------

    def _new_base(self) -> str:
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}R{_PROCESS_TOKEN}.{self.store.hostname}"

    def _write_tmp(self, source, tmp_path: str, fsync: bool = True) -> int:
        size = 0
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                for chunk in _chunks(source):
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                if fsync and self.store.fsync:
                    os.fsync(fd)
        finally:
            os.close(fd)
        return size

    def append(self, source, flags: Iterable[str] = (), internaldate: int | None = None,
               assign_uid: bool = True) -> int | None:
        """Store a message durably (RFC 3501 APPEND, or local delivery); return its UID.

        The file is written under tmp/, fsynced, given its internal date as mtime, linked into
        new/ (or cur/ when it carries flags) and the directory fsynced before this returns:
        a caller that says "OK" or "250" afterwards never lies.  With ``assign_uid=False``
        (SMTP delivery, which needs no UID) the UID is given by the next snapshot instead,
        which keeps the folder lock and the UID log out of the delivery path; returns None.
        """
        flags = [f for f in flags if f != "\\Recent"]
        base = self._new_base()
        tmp_path = os.path.join(self.path, "tmp", base)
        try:
            size = self._write_tmp(source, tmp_path)
            when = int(time.time()) if internaldate is None else int(internaldate)
            os.utime(tmp_path, (when, when))
            base += f",S={size}"
            if flags:
                with self.locked():
                    rel = f"cur/{base}:2,{self._letters(flags)}"
            else:
                rel = f"new/{base}"
            os.link(tmp_path, os.path.join(self.path, rel))
            if self.store.fsync:
                self.store.dir_syncer.sync(os.path.join(self.path, rel.split("/")[0]))
            uid = None
            if assign_uid:
                with self.locked():
                    uid = self._record_new(base, when)
        finally:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass
        self.store.on_change(self.path)
        return uid

    def _record_new(self, base: str, when: int) -> int:
        """Caller holds the lock.  Give a file just linked in its UID (once).

        Mail delivered earlier without a UID (SMTP, ``assign_uid=False``) and still waiting
        in new/ is numbered first, so that UIDs ascend with arrival (RFC 3501 2.3.1.1) even
        when an APPEND or COPY comes before any session looked at the folder.  Only new/ is
        listed: it is where such mail waits, and it is small."""
        ul = self.uidlist
        with ul.mutex:
            self._ensure_uidlist()
            existing = ul.state.by_base.get(base)
            if existing is not None:
                return existing
            records: list[str] = []
            ours = _arrival_key(base, when)
            waiting = []
            for name in os.listdir(os.path.join(self.path, "new")):
                other = base_of(name)
                if name.startswith(".") or other == base or other in ul.state.by_base:
                    continue
                date = self._internaldate_of(other, "new/" + name)
                key = _arrival_key(other, date)
                if key < ours:
                    waiting.append((key, other, date))
            for _key, other, date in sorted(waiting):
                ul.add(other, date, records)
            uid = ul.add(base, when, records)
            ul.append(records)
            return uid

    # -- reading mail ----------------------------------------------------------------------

    def open_message(self, uid: int) -> BinaryIO:
        """Open a message's file for reading (stream it; do not read it whole)."""
        ul = self.uidlist
        with ul.mutex:
            ul.refresh()
            entry = ul.state.entries.get(uid)
            if entry is None:
                raise MessageGone(f"UID {uid} is not in {self.name}")
            for attempt in range(2):
                rel = self._files.get(entry.base)
                if rel is not None:
                    try:
                        return open(os.path.join(self.path, rel), "rb")
                    except FileNotFoundError:
                        pass
                self._invalidate_listing()
                self._scan()
        raise MessageGone(f"UID {uid} was expunged from {self.name}")

    def read_message(self, uid: int) -> bytes:
        with self.open_message(uid) as f:
            return f.read()

    def expunged_since(self, modseq: int, uids: Iterable[int] | None = None) -> list[int]:
        """UIDs expunged after ``modseq`` (RFC 7162 QRESYNC), among ``uids`` if given.

        The UID log remembers each expunge's MODSEQ until it is next compacted; for a
        ``modseq`` older than that, every UID below UIDNEXT that no longer exists is
        reported, as RFC 7162 3.2.5.1 allows (some may never have been seen by the client)."""
        self._sync()
        ul = self.uidlist
        with ul.mutex:
            state = ul.state
            if modseq >= state.header_modseq:
                found = [u for u, m in state.expunged.items() if m > modseq]
                if uids is not None:
                    wanted = set(uids)
                    found = [u for u in found if u in wanted]
                return sorted(found)
            candidates = range(1, state.uidnext) if uids is None else uids
            return sorted(u for u in set(candidates) if 0 < u < state.uidnext and u not in state.entries)

    def _bases(self, uids: Iterable[int]) -> dict[int, str]:
        ul = self.uidlist
        with ul.mutex:
            ul.refresh()
            entries = ul.state.entries
            return {uid: entries[uid].base for uid in uids if uid in entries}

    def headers(self, uids: Iterable[int]) -> dict[int, bytes]:
        """uid -> the message's header section (blank line included), from the cache, or
        read from the file (only the header) and cached.  Expunged UIDs are left out."""
        bases = self._bases(uids)
        cached = self.cache.get_many(bases.values(), HEADER)
        out, fresh = {}, {}
        for uid, base in bases.items():
            value = cached.get(base)
            if value is None:
                try:
                    with self.open_message(uid) as f:
                        value = fresh[base] = header_section(f)
                except MessageGone:
                    continue
            out[uid] = value
        self.cache.put_many(HEADER, fresh)
        return out

    def derived(self, uids: Iterable[int], kind: str) -> dict[int, bytes]:
        """uid -> a value that protocol code derived from the message and kept with
        :meth:`keep_derived` (opaque here), for the UIDs that have one."""
        bases = self._bases(uids)
        cached = self.cache.get_many(bases.values(), kind)
        return {uid: cached[base] for uid, base in bases.items() if base in cached}

    def keep_derived(self, kind: str, values: dict[int, bytes]) -> None:
        """Keep values derived from messages' (immutable) content, under ``kind``."""
        if values:
            bases = self._bases(values)
            self.cache.put_many(kind, {bases[uid]: v for uid, v in values.items() if uid in bases})

    # -- changing mail ---------------------------------------------------------------------

    def set_flags(
        self, uids: Iterable[int], flags: Iterable[str], mode: str = "replace", unchangedsince: int | None = None
    ) -> tuple[dict[int, tuple[frozenset, int]], list[int]]:
        """Change flags (mode ``replace``, ``add`` or ``remove``).

        Returns ({uid: (new flags, modseq)} for messages whose flags changed, [uids refused
        because their MODSEQ is above ``unchangedsince``] (RFC 7162 3.1.3)).  A message moves
        from new/ to cur/ when its flags are set.  Expunged UIDs are skipped silently.
        """
        if mode not in ("replace", "add", "remove"):
            raise ValueError(mode)
        wanted = frozenset(f for f in flags if f != "\\Recent")
        changed: dict[int, tuple[frozenset, int]] = {}
        refused: list[int] = []
        with self.locked():
            files = self._sync()
            state = self.uidlist.state
            keywords = self._load_keywords()
            records: list[str] = []
            dirs_touched = set()
            for uid in uids:
                entry = state.entries.get(uid)
                rel = files.get(entry.base) if entry else None
                if rel is None:
                    continue
                if unchangedsince is not None and entry.modseq > unchangedsince:
                    refused.append(uid)
                    continue
                old = self._flags_of(rel, keywords)
                new = wanted if mode == "replace" else (old | wanted if mode == "add" else old - wanted)
                old_suffix = rel.split(":2,", 1)[1] if ":2," in rel else ""
                letters = self._letters(new, keep_unknown=old_suffix)
                keywords = self._load_keywords()
                target = f"cur/{entry.base}:2,{letters}"
                if target == rel:
                    continue
                try:
                    os.rename(os.path.join(self.path, rel), os.path.join(self.path, target))
                except FileNotFoundError:
                    continue
                dirs_touched.update({rel[:3], "cur"})
                files[entry.base] = target
                if new != old:
                    changed[uid] = (new, self.uidlist.touch(uid, records))
            if self.store.fsync:
                for d in dirs_touched:
                    fsync_dir(os.path.join(self.path, d))
            self.uidlist.append(records)
            self._invalidate_listing()
        if changed or dirs_touched:
            self.store.on_change(self.path)
        return changed, refused

    def take_recent(self) -> list[int]:
        """Move every message in new/ to cur/ and return their UIDs.

        The session that does this is the one that reports them as \\Recent (RFC 3501 2.3.2).
        """
        return self._take_recent()[1]

    def _take_recent(self) -> tuple[dict[str, str], list[int]]:
        taken: list[int] = []
        files = self._sync()
        if not any(rel.startswith("new/") for rel in files.values()):
            return files, taken  # the usual case: no lock, no rename, and the snapshot stays valid
        with self.locked():
            files = self._sync()
            state = self.uidlist.state
            for base, rel in list(files.items()):
                if not rel.startswith("new/"):
                    continue
                target = f"cur/{base}:2,"
                try:
                    os.rename(os.path.join(self.path, rel), os.path.join(self.path, target))
                except FileNotFoundError:
                    continue
                files[base] = target
                uid = state.by_base.get(base)
                if uid is not None:
                    taken.append(uid)
            if taken and self.store.fsync:
                fsync_dir(os.path.join(self.path, "new"))
                fsync_dir(os.path.join(self.path, "cur"))
            if taken:
                self._invalidate_listing()  # files is still right: only our renames changed it
        return files, sorted(taken)

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """Remove messages for good; return the UIDs that were removed."""
        removed, gone_bases = [], []
        with self.locked():
            files = self._sync()
            state = self.uidlist.state
            records: list[str] = []
            for uid in sorted(set(uids)):
                entry = state.entries.get(uid)
                rel = files.get(entry.base) if entry else None
                if rel is None:
                    continue
                try:
                    os.unlink(os.path.join(self.path, rel))
                except FileNotFoundError:
                    pass
                files.pop(entry.base, None)
                gone_bases.append(entry.base)
                self.uidlist.remove(uid, records)
                removed.append(uid)
            if removed and self.store.fsync:
                fsync_dir(os.path.join(self.path, "cur"))
                fsync_dir(os.path.join(self.path, "new"))
            self.uidlist.append(records)
            self._invalidate_listing()
        self.cache.forget(gone_bases)
        if removed:
            self.store.on_change(self.path)
        return removed

    def copy(self, uids: Iterable[int], dest: "MaildirFolder") -> list[tuple[int, int]]:
        """Copy messages with their flags and internal dates; return [(source uid, new uid)].

        The copy is a hard link under a new name (mail files never change once written), or a
        byte copy where the folders are on different file systems.
        """
        snap = self.snapshot().by_uid()
        pairs = []
        for uid in uids:
            info = snap.get(uid)
            if info is None:
                continue
            try:
                src = self.open_message(uid)
            except MessageGone:
                continue
            with src:
                new_uid = dest._add_copy(src, info)
            pairs.append((uid, new_uid))
        if pairs:
            self.store.on_change(dest.path)
        return pairs

    def _add_copy(self, src: BinaryIO, info: MessageInfo) -> int:
        base = self._new_base() + f",S={info.size}"
        tmp_path = os.path.join(self.path, "tmp", base)
        try:
            try:
                os.link(src.name, tmp_path)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                size = self._write_tmp(src, tmp_path)
                base = base.rsplit(",S=", 1)[0] + f",S={size}"
                os.rename(tmp_path, os.path.join(self.path, "tmp", base))
                tmp_path = os.path.join(self.path, "tmp", base)
            with self.locked():
                letters = self._letters(info.flags) if info.flags else ""
                rel = f"cur/{base}:2,{letters}"
                os.link(tmp_path, os.path.join(self.path, rel))
                if self.store.fsync:
                    fsync_dir(os.path.join(self.path, "cur"))
                return self._record_new(base, info.internaldate)
        finally:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass

    def move(self, uids: Iterable[int], dest: "MaildirFolder") -> list[tuple[int, int]]:
        """Copy then expunge (RFC 6851 3.1 allows exactly this); return [(old uid, new uid)]."""
        pairs = self.copy(uids, dest)
        self.expunge([old for old, _ in pairs])
        return pairs


_ARRIVAL_RE = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)")


def _arrival_key(base: str, internaldate: int) -> tuple:
    """Sort key putting new files in arrival order (RFC 3501 2.3.1.1: UIDs ascend with it).

    Names of the form ``<sec>.M<usec>P<pid>Q<n>`` compare by their numbers: as text,
    ``M98765`` would sort after ``M123456``.  Other names sort by internal date.
    """
    m = _ARRIVAL_RE.match(base)
    if m:
        return (int(m.group(1)), int(m.group(2)), int(m.group(4)), base)
    return (internaldate, 0, 0, base)


_libc = None


def _syncfs(path: str) -> bool:
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


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _chunks(source) -> Iterator[bytes]:
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
