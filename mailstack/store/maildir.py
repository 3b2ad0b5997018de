"""The Maildir store: the one place mail lives, shared by SMTP, IMAP and POP3.

Layout (Maildir++ as Dovecot and Courier use it)::

    <root>/<domain>/<localpart>/            the user's INBOX (cur/ new/ tmp/)
    <root>/<domain>/<localpart>/.Sent/      a folder; nested folders are .Work.Projects
    .../mailstack-uidlist                   UID state of that folder (see uidlist.py)
    .../dovecot-keywords                    keyword <-> filename letter map, Dovecot's format
    <root>/<domain>/<localpart>/subscriptions

Mail files are named ``<time>.M<usec>P<pid>Q<n>R<rand>.<host>,S=<size>,W=<CRLF size>[:2,<flags>]``
so a listing needs neither stat nor read (files read in their CRLF form: crlf.py), and flags live in the ``:2,`` suffix with Dovecot's
letters (D draft, F flagged, R answered, S seen, T deleted; a-z keywords), so the files can be
rsynced between mailstack and Dovecot.

Every method of the store blocks on disk I/O (and fsync); Twisted callers run them in a
thread pool.  The classes are thread-safe.  They know nothing of any protocol: change
notification is a plain callback (``MaildirStore.on_change``) that
:mod:`mailstack.store.watch` wires to the reactor.

Where each part lives: this module, the store of every user's Maildir; mailbox.py, one
user's folder tree and subscriptions; folder.py, a folder's listing, UID state, snapshots
and reading; delivery.py, adding mail; flags.py, flags, keywords and expunging; files.py,
message file names and durability; snapshot.py, the values handed to protocol code.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Callable, Iterable, Iterator

from mailstack.errors import OverQuota, StoreError, UnknownUser
from mailstack.store import files
from mailstack.store import quota as quota_mod
from mailstack.store.delivery import deliver_batch
from mailstack.store.folder import MaildirFolder
from mailstack.store.mailbox import Mailbox

_LOCALPART_RE = re.compile(r"^[^\x00-\x20\x7f/\\:@]+$")
_DOMAIN_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)*$")


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


class MaildirStore:
    """All users' Maildirs under one root."""

    def __init__(self, root: str, fsync: bool = True, hostname: str | None = None):
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.hostname = hostname or files.hostname()
        self._folders: dict[str, MaildirFolder] = {}
        self._folders_lock = threading.Lock()
        #: Called with a folder path after this process changed that folder.
        self.on_change: Callable[[str], None] = lambda path: None
        self.dir_syncer = files.DirSyncer()
        #: What quotas are enforced (quota.py; the service sets it from [quota]); None: none.
        self.quota: quota_mod.QuotaPolicy | None = None

    def user_path(self, address: str) -> str:
        local, domain = split_address(address)
        return os.path.join(self.root, domain, local)

    def mailbox(self, address: str, create: bool = True) -> Mailbox:
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

    def clear_tmp(self, max_age: float = files.TMP_MAX_AGE) -> int:
        """*Blocking.*  Clear what killed writers left in every folder's ``tmp/`` (see
        :func:`mailstack.store.files.clear_stale_tmp`); return how many entries went.  Run at
        start-up: a live writer's own file has one link and a fresh ctime, so it stays."""
        cutoff = time.time() - max_age
        removed = 0
        for address in self.users():
            path = self.user_path(address)
            # Only directories: .dovecot.sieve and other per-user files live here too (interface.py)
            folders = [path] + [os.path.join(path, n) for n in os.listdir(path)
                                if n.startswith(".") and os.path.isdir(os.path.join(path, n))]
            for folder in folders:
                removed += files.clear_stale_tmp(os.path.join(folder, "tmp"), cutoff)
        return removed

    def deliver(self, address: str, source, folder: str = "INBOX", flags: Iterable[str] = ()) -> None:
        """Store a message durably in a user's folder (its UID is given when the folder is next read)."""
        self.mailbox(address).folder(folder).append(source, flags=flags, assign_uid=False)

    def deliver_batch(self, items: list[tuple]) -> list[Exception | None]:
        """Deliver many (address, source[, folder[, flags]]) messages with one flush for the lot (group
        commit, see :func:`mailstack.store.delivery.deliver_batch`); returns, per item, None
        or the exception that stopped it."""
        return deliver_batch(self, items)

    def quota_usage(self, address: str) -> "quota_mod.QuotaUsage | None":
        """The user's usage (bytes as stored, messages) and limits; None without limits.
        Cheap: reads what ``maildirsize`` gained since the last look (quota.py)."""
        limits = self.quota.limits(address.lower()) if self.quota is not None else quota_mod.Limits()
        if limits.unlimited:
            return None
        if not self.exists(address):  # no mail yet: nothing made at RCPT time
            return quota_mod.QuotaUsage(0, 0, limits)
        return quota_mod.usage_of(self, self.mailbox(address, create=False))

    def check_quota(self, address: str, size: int = 0) -> None:
        """Raise OverQuota if the user is full already, or would be with a message of
        ``size`` bytes (SMTP RCPT, with the SIZE of MAIL FROM: RFC 1870)."""
        usage = self.quota_usage(address) if not self.exists(address) else None  # no mail yet
        if usage is not None and usage.exceeds(max(size, 1), 1):
            raise OverQuota("Mailbox is full: over the storage or message limit", self.quota.permanent,
                            f"{address}: {usage}")
        if self.quota is not None and self.exists(address):  # a refusal rechecks an old file (quota.py)
            quota_mod.check(self, self.mailbox(address, create=False), max(size, 1))

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

    def _folder(self, mailbox: Mailbox, name: str, path: str) -> MaildirFolder:
        with self._folders_lock:
            folder = self._folders.get(path)
            if folder is None:
                folder = self._folders[path] = MaildirFolder(self, mailbox, name, path)
            return folder

    def _forget(self, path_prefix: str) -> None:
        with self._folders_lock:
            for path in [p for p in self._folders if p == path_prefix or p.startswith(path_prefix + ".")]:
                del self._folders[path]
