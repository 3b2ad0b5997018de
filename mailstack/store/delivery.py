"""Adding mail to a folder: delivery, APPEND, COPY and MOVE.

A message is written under ``tmp/``, fsynced, and linked into ``new/`` (or ``cur/`` when it
carries flags); the directory is fsynced before the caller hears "done" (Maildir's rule,
and what lets SMTP say 250 and IMAP say OK truthfully).  A copy is a hard link under a new
name, since mail files never change once written.
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING, BinaryIO, Iterable

from mailstack.errors import KeywordLimit, MessageGone
from mailstack.fsutil import fsync_dir
from mailstack.store.files import arrival_key, base_of, new_base, syncfs, unlink_quietly, write_new_file
from mailstack.store.quota import charge, file_size, refund
from mailstack.store.snapshot import MessageInfo

if TYPE_CHECKING:
    from mailstack.store.folder import MaildirFolder


def deliver_batch(store, items: list[tuple]) -> list[Exception | None]:
    """Deliver many (address, source[, folder[, flags[, grace]]]) messages with one flush for
    the lot (group commit).  Each is counted against its user's quota (quota.py) before it is
    linked in, and refused with OverQuota past a limit unless ``grace`` (the caller decided
    already).

    Every file is written to tmp/ first, then one ``syncfs`` puts all of them on disk at
    once (measured: per-file fsyncs cost one journal commit each here; falls back to them
    where syncfs is missing), then each is linked into new/ (into cur/ with its flags when it
    has some: Sieve's imap4flags, RFC 5232) and every directory fsynced once.  Each item gets
    the same guarantee as ``MaildirStore.deliver``; returns, per item, None or the exception
    that stopped it.
    """
    results: list[Exception | None] = [None] * len(items)
    staged = []
    for i, item in enumerate(items):
        address, source = item[0], item[1]
        tmp_path, charged = None, None
        try:
            folder = store.mailbox(address).folder(item[2] if len(item) > 2 else "INBOX")
            base = new_base(store.hostname)
            tmp_path = os.path.join(folder.path, "tmp", base)
            size, crlf_size = write_new_file(source, tmp_path, fsync=False)
            charge(store, folder.mailbox, size, 1, grace=len(item) > 4 and bool(item[4]))
            charged = size
            rel = f"new/{base},S={size},W={crlf_size}"
            flags = [f for f in (item[3] if len(item) > 3 and item[3] else ()) if f != "\\Recent"]
            if flags:  # Sieve imap4flags (RFC 5232): into cur/ with the letters, as APPEND does
                with folder.locked():
                    rel = f"cur/{base},S={size},W={crlf_size}:2,{_letters(folder, flags)}"
            staged.append((i, folder, tmp_path, rel, size))
        except Exception as e:
            results[i] = e
            if charged is not None:
                refund(store, folder.mailbox, charged, 1)
            if tmp_path:
                unlink_quietly(tmp_path)
    if store.fsync and len(staged) > 1 and syncfs(store.root):
        pass  # one flush of the file system carried every file of the batch
    elif store.fsync:
        for i, folder, tmp_path, _rel, _size in staged:
            try:
                fd = os.open(tmp_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                results[i] = e
    dirs: dict[str, list[int]] = {}
    for i, folder, tmp_path, rel, size in staged:
        try:
            if results[i] is None:
                os.link(tmp_path, os.path.join(folder.path, rel))
                dirs.setdefault(os.path.join(folder.path, rel.split("/")[0]), []).append(i)
        except OSError as e:
            results[i] = e
        finally:
            if results[i] is not None:
                refund(store, folder.mailbox, size, 1)
            unlink_quietly(tmp_path)
    for path, indexes in dirs.items():
        try:
            if store.fsync:
                store.dir_syncer.sync(path)
        except OSError as e:
            for i in indexes:
                results[i] = e
        store.on_change(os.path.dirname(path))
    return results


def _letters(folder, flags: list[str]) -> str:
    """The ``:2,`` letters of a delivery's flags; a keyword the folder has no letter left for
    (26 at most) is left off rather than the message: a filter's flag is worth less than the mail."""
    letters = set()
    for flag in flags:
        try:
            letters.update(folder.keywords.letters([flag]))
        except KeywordLimit:
            continue
    return "".join(sorted(letters))


class FolderDelivery:
    """The part of :class:`~mailstack.store.folder.MaildirFolder` that adds message files."""

    def append(self, source, flags: Iterable[str] = (), internaldate: int | None = None,
               assign_uid: bool = True) -> int | None:
        """Store a message durably (RFC 3501 APPEND, or local delivery); return its UID.

        The file is written under tmp/, fsynced, given its internal date as mtime, linked into
        cur/ (new/ for a delivery, ``assign_uid=False``) and the directory fsynced before this returns:
        a caller that says "OK" or "250" afterwards never lies.  With ``assign_uid=False``
        (SMTP delivery, which needs no UID) the UID is given by the next snapshot instead,
        which keeps the folder lock and the UID log out of the delivery path; returns None.
        """
        flags = [f for f in flags if f != "\\Recent"]
        base = new_base(self.store.hostname)
        tmp_path = os.path.join(self.path, "tmp", base)
        counted, linked = None, False
        try:
            size, crlf_size = write_new_file(source, tmp_path, self.store.fsync)
            charge(self.store, self.mailbox, size, 1)  # OverQuota: nothing linked in (RFC 9208 4.3)
            counted = size
            when = int(time.time()) if internaldate is None else int(internaldate)
            os.utime(tmp_path, (when, when))
            base += f",S={size},W={crlf_size}"
            if flags or assign_uid:  # APPEND: into cur/, \Recent kept by mailstack.store.recent
                letters = ""
                if flags:
                    with self.locked():
                        letters = self.keywords.letters(flags)
                rel = f"cur/{base}:2,{letters}"
            else:  # a delivery: new/, numbered by the next snapshot
                rel = f"new/{base}"
            os.link(tmp_path, os.path.join(self.path, rel))
            linked = True
            if self.store.fsync:
                self.store.dir_syncer.sync(os.path.join(self.path, rel.split("/")[0]))
            uid = None
            if assign_uid:
                with self.locked():
                    uid = self._record_new(base, when)
                    self.recent_marks.add([uid])  # in cur/ at once: unclaimed all the same
        finally:
            unlink_quietly(tmp_path)
            if counted is not None and not linked:
                refund(self.store, self.mailbox, counted, 1)
        self.store.on_change(self.path)
        return uid

    def _record_new(self, base: str, when: int) -> int:
        """Caller holds the lock.  Give a file just linked in its UID (once).

        Mail delivered earlier without a UID (SMTP, ``assign_uid=False``) and still waiting
        in new/ is numbered first, so that UIDs ascend with arrival (RFC 3501 2.3.1.1) even
        when an APPEND or COPY comes before any session looked at the folder.  Only new/ is
        listed: it is where such mail waits, and it stays small, since APPENDs go to cur/
        (an upload of 10,000 messages must not list 10,000 names for each, issue 16)."""
        ul = self.uidlist
        with ul.mutex:
            self._ensure_uidlist()
            existing = ul.state.by_base.get(base)
            if existing is not None:
                return existing
            records: list[str] = []
            ours = arrival_key(base, when)
            waiting = []
            for name in os.listdir(os.path.join(self.path, "new")):
                other = base_of(name)
                if name.startswith(".") or other == base or other in ul.state.by_base:
                    continue
                date = self._internaldate_of(other, "new/" + name)
                key = arrival_key(other, date)
                if key < ours:
                    waiting.append((key, other, date))
            fresh = [(other, date) for _key, other, date in sorted(waiting)] + [(base, when)]
            uid = self._number(fresh, records)[base]
            ul.append(records)
            return uid

    def copy(self, uids: Iterable[int], dest: "MaildirFolder", counted: bool = True) -> list[tuple[int, int]]:
        """Copy messages with their flags and internal dates; return [(source uid, new uid)].

        The copy is a hard link under a new name (mail files never change once written), or a
        byte copy where the folders are on different file systems.  The whole set is counted
        against the destination user's quota first: over it, nothing is copied (RFC 9208 4.3,
        OverQuota).  ``counted=False``: a move within one user, which changes no usage.
        """
        snap = self.snapshot().by_uid()
        wanted = [(uid, snap[uid]) for uid in uids if uid in snap]
        total = sum(file_size(self.path, info.base, info.filename) for _, info in wanted) if counted else 0
        if counted and wanted:
            charge(self.store, dest.mailbox, total, len(wanted))
        pairs, left = [], total
        try:
            for uid, info in wanted:
                try:
                    src = self.open_message(uid)
                except MessageGone:
                    continue
                with src:
                    new_uid = dest._add_copy(src, info)
                pairs.append((uid, new_uid))
                left -= file_size(self.path, info.base, info.filename) if counted else 0
        finally:
            if counted and len(pairs) < len(wanted):
                refund(self.store, dest.mailbox, max(left, 0), len(wanted) - len(pairs))
        if pairs:
            self.store.on_change(dest.path)
        return pairs

    def _add_copy(self, src: BinaryIO, info: MessageInfo) -> int:
        # A link keeps the bytes (maybe LF-only, read in the CRLF form): the name says both sizes.
        base = new_base(self.store.hostname) + f",S={src.raw_size},W={info.size}"
        tmp_path = os.path.join(self.path, "tmp", base)
        try:
            try:
                os.link(src.name, tmp_path)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                size, crlf_size = write_new_file(src, tmp_path, self.store.fsync)  # the CRLF form
                base = base.rsplit(",S=", 1)[0] + f",S={size},W={crlf_size}"
                os.rename(tmp_path, os.path.join(self.path, "tmp", base))
                tmp_path = os.path.join(self.path, "tmp", base)
            with self.locked():
                letters = self.keywords.letters(info.flags) if info.flags else ""
                rel = f"cur/{base}:2,{letters}"
                os.link(tmp_path, os.path.join(self.path, rel))
                if self.store.fsync:
                    fsync_dir(os.path.join(self.path, "cur"))
                uid = self._record_new(base, info.internaldate)
                self.recent_marks.add([uid])  # RFC 3501 6.4.7: the copy is \\Recent
                return uid
        finally:
            unlink_quietly(tmp_path)

    def move(self, uids: Iterable[int], dest: "MaildirFolder") -> list[tuple[int, int]]:
        """Copy then expunge (RFC 6851 3.1 allows exactly this); return [(old uid, new uid)].
        Between folders of one user the usage does not change: neither step is counted."""
        same_user = dest.mailbox.path == self.mailbox.path
        pairs = self.copy(uids, dest, counted=not same_user)
        self.expunge([old for old, _ in pairs], counted=not same_user)
        return pairs
