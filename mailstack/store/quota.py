"""Per-user quotas: bytes and messages, counted in a Maildir++ ``maildirsize`` file.

The file sits in the user's directory, as Courier and Dovecot keep it (Maildir++ quota,
courier-mta.org/imap/README.maildirquota.html), so that either can take the Maildir over: the
first line is the quota definition (``<bytes>S,<messages>C``), each further line a change,
``<bytes> <count>`` (negative for removals), appended with O_APPEND.  Usage is the sum of the
lines, so a delivery costs one read of the small file (parsing only what was appended since
the last one) and one small append, whatever the size of the Maildir.  The file is rebuilt from a walk (every folder's cur/ and new/,
sizes from the ``,S=`` of the names) when it is missing, unreadable, over 5120 bytes (but a
file this process walked less than 15 minutes ago is compacted to its own sum instead: a walk
is O(Maildir), 0.1 s for 50,000 messages), or holds another definition than the limits now
configured; and before a refusal when it is older than 15 minutes (another program may have
removed mail without telling it).  Trash and Junk count
like any folder: an exemption would let a full mailbox keep growing through them.

Bytes are the files' sizes as stored (Maildir++ ``S=``).  The check and the append happen under
an flock of the file (one writer at a time across processes); Dovecot appends without one, which
at worst lets one concurrent message through.  The 90% warning is delivered here, once, with a
marker file until usage falls below the threshold again.
"""

from __future__ import annotations

import email.utils
import fcntl
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

from mailstack.errors import OverQuota
from mailstack.store.files import new_base, size_of, unlink_quietly, write_new_file

MAILDIRSIZE = "maildirsize"
WARNED = "mailstack-quota-warned"  # present: the warning was delivered, usage has not dropped since
RECALC_SIZE = 5120  # Maildir++: rebuild a file grown past this
RECALC_AGE = 15 * 60  # Maildir++: an over-quota answer from a file older than this is checked first


@dataclass(frozen=True)
class Limits:
    """0: no limit."""

    storage: int = 0
    messages: int = 0

    @property
    def unlimited(self) -> bool:
        return not self.storage and not self.messages

    def definition(self) -> str:
        """The Maildir++ quota definition line."""
        return f"{self.storage}S,{self.messages}C"


@dataclass(frozen=True)
class QuotaUsage:
    bytes: int
    messages: int
    limits: Limits

    def exceeds(self, nbytes: int, count: int) -> bool:
        """Would adding this go past a limit?  At the limit already counts as full."""
        lim = self.limits
        if lim.storage and nbytes > 0 and (self.bytes >= lim.storage or self.bytes + nbytes > lim.storage):
            return True
        return bool(lim.messages and count > 0 and self.messages + count > lim.messages)

    def percent(self) -> float:
        """The fuller of the two resources, in percent."""
        lim = self.limits
        shares = [self.bytes / lim.storage if lim.storage else 0, self.messages / lim.messages if lim.messages else 0]
        return 100 * max(shares)


def parse_definition(line: str) -> Limits | None:
    """``1073741824S,1000C`` (either part may be missing) -> Limits; None if unreadable."""
    storage = messages = 0
    for part in line.strip().split(","):
        if not part:
            continue
        number, kind = part[:-1], part[-1:]
        if not number.isdigit() or kind not in ("S", "C"):
            return None
        if kind == "S":
            storage = int(number)
        else:
            messages = int(number)
    return Limits(storage, messages)


def parse_maildirsize(data: bytes) -> tuple[Limits, int, int] | None:
    """(definition, bytes, messages) from a whole file; None when it must be rebuilt (no
    definition, a line that is not two numbers, an unfinished last line, a sum below zero)."""
    if not data.endswith(b"\n"):
        return None
    lines = data.decode("ascii", "replace").split("\n")[:-1]
    if not lines:
        return None
    limits = parse_definition(lines[0])
    total = _sum(lines[1:])
    if limits is None or total is None or min(total) < 0:  # below zero: removals counted twice
        return None
    return limits, total[0], total[1]


def _sum(lines: list[str]) -> tuple[int, int] | None:
    nbytes = count = 0
    for line in lines:
        fields = line.split()
        if len(fields) != 2:
            return None
        try:
            nbytes, count = nbytes + int(fields[0]), count + int(fields[1])
        except ValueError:
            return None
    return nbytes, count


def walk(user_dir: str) -> tuple[int, int]:
    """(bytes, messages) of every message file of the user: INBOX and each ``.Folder``."""
    folders = [user_dir] + [os.path.join(user_dir, n) for n in os.listdir(user_dir)
                            if n.startswith(".") and n not in (".", "..") and os.path.isdir(os.path.join(user_dir, n, "cur"))]
    nbytes = count = 0
    for folder in folders:
        b, c = folder_totals(folder)
        nbytes, count = nbytes + b, count + c
    return nbytes, count


def file_size(folder_path: str, base: str, rel: str) -> int:
    """A message file's stored size: the name's ``,S=``, else its length (0 if gone)."""
    size = size_of(base)
    if size is None:
        try:
            size = os.stat(os.path.join(folder_path, rel)).st_size
        except FileNotFoundError:
            size = 0
    return size


def folder_totals(folder: str) -> tuple[int, int]:
    """(bytes, messages) of one folder's cur/ and new/."""
    nbytes = count = 0
    for sub in ("cur", "new"):
        d = os.path.join(folder, sub)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith("."):
                nbytes += file_size(d, name.split(":2,", 1)[0], name)
                count += 1
    return nbytes, count


class UserCounter:
    """One user's ``maildirsize``; thread-safe.  Keeps the sums up to the offset last read,
    so each use reads only what was appended since."""

    def __init__(self, user_dir: str, fsync: bool = False):
        self.user_dir, self.fsync = user_dir, fsync
        self.path = os.path.join(user_dir, MAILDIRSIZE)
        self._mutex = threading.Lock()
        self._known: tuple | None = None  # (inode, offset, limits, bytes, messages)
        self._prefix = b""  # the file's first ``offset`` bytes: an inode number is reused at once
        self._walked_at = -RECALC_AGE  # time.monotonic() of the last walk

    def usage(self, limits: Limits) -> QuotaUsage:
        return self.change(limits, 0, 0)

    def change(self, limits: Limits, nbytes: int, count: int, check: bool = False,
               permanent: bool = False, removed: bool = False, dry: bool = False) -> QuotaUsage:
        """Add a change (and with ``check`` refuse it with OverQuota if it exceeds); return the
        usage after it.  ``removed``: the files are gone already, so a rebuild made now has
        counted the change (it is then not appended).  ``dry``: only the check (SMTP's)."""
        with self._mutex:
            fd, state = self._open(limits)
            try:
                if state[0] == "rebuilt" and removed:
                    return QuotaUsage(state[1], state[2], limits)
                usage = QuotaUsage(state[1], state[2], limits)
                if check and usage.exceeds(nbytes, count) and state[0] != "rebuilt" and self._old(fd):
                    os.close(fd)
                    fd = -1
                    fd, state = self._open(limits, force=True)
                    usage = QuotaUsage(state[1], state[2], limits)
                if check and usage.exceeds(nbytes, count):
                    raise OverQuota("Mailbox is full: over the storage or message limit", permanent,
                                    f"{self.user_dir}: {usage.bytes} bytes, {usage.messages} messages; limits {limits}")
                if (nbytes or count) and not dry:
                    line = f"{nbytes} {count}\n".encode("ascii")
                    os.write(fd, line)
                    ino, offset = self._known[0], self._known[1]
                    self._known = (ino, offset + len(line), limits, usage.bytes + nbytes, usage.messages + count)
                    self._prefix += line
                return QuotaUsage(usage.bytes + nbytes, usage.messages + count, limits)
            finally:
                if fd >= 0:
                    os.close(fd)

    @staticmethod
    def _old(fd: int) -> bool:
        return time.time() - os.fstat(fd).st_mtime > RECALC_AGE

    def _open(self, limits: Limits, force: bool = False) -> tuple[int, tuple]:
        """The file open for appending and locked, and ("read" | "rebuilt", bytes, messages)."""
        rebuilt = False
        for _attempt in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except FileNotFoundError:
                self._rebuild(limits)
                rebuilt = True
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                same = os.stat(self.path).st_ino == st.st_ino
            except FileNotFoundError:
                same = False
            if not same:  # replaced by a rebuild while we waited for the lock
                os.close(fd)
                continue
            state = None if force else self._read(fd, st)
            if state is None or st.st_size > RECALC_SIZE or state[0] != limits:
                # A file grown past 5 KB is recounted by a walk (Maildir++), but at most every
                # 15 minutes: in between its own sum is written back, so that a big Maildir
                # does not cost a walk every few hundred deliveries.
                recent = time.monotonic() - self._walked_at < RECALC_AGE
                compact = state is not None and state[0] == limits and recent
                totals = self._rebuild(limits, state[1:] if compact else None)
                os.close(fd)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._prefix = os.pread(fd, os.fstat(fd).st_size, 0)
                self._known = (os.fstat(fd).st_ino, len(self._prefix), limits, *totals)
                return fd, ("read" if compact else "rebuilt", *totals)  # compacted: changes still due
            return fd, ("rebuilt" if rebuilt else "read", state[1], state[2])
        raise OSError(f"{self.path}: replaced too often while being read")

    def _read(self, fd: int, st) -> tuple[Limits, int, int] | None:
        known = self._known
        data = os.pread(fd, st.st_size, 0)  # at most ~5 KB (RECALC_SIZE): one read
        # The same inode and the same first bytes: the file this process read, grown since (a
        # rebuild elsewhere may have been given the old inode number: then it reads whole).
        if known is not None and known[0] == st.st_ino and data.startswith(self._prefix) and len(self._prefix) == known[1]:
            tail = data[known[1]:]
            if not tail:
                return known[2], known[3], known[4]
            if not tail.endswith(b"\n"):
                return None
            total = _sum(tail.decode("ascii", "replace").split("\n")[:-1])
            if total is None or known[3] + total[0] < 0 or known[4] + total[1] < 0:
                return None
            self._known = (st.st_ino, len(data), known[2], known[3] + total[0], known[4] + total[1])
            self._prefix = data
            return self._known[2], self._known[3], self._known[4]
        parsed = parse_maildirsize(data)
        if parsed is None:
            return None
        self._known, self._prefix = (st.st_ino, len(data), *parsed), data
        return parsed

    def _rebuild(self, limits: Limits, totals: tuple[int, int] | None = None) -> tuple[int, int]:
        """Walk the Maildir (unless ``totals`` are given) and replace the file (written under
        tmp/, renamed over, as Maildir++ says).  Called with the old file locked, if any."""
        if totals is None:
            totals = walk(self.user_dir)
            self._walked_at = time.monotonic()
        tmp = os.path.join(self.user_dir, "tmp", f"{MAILDIRSIZE}.{os.getpid()}.{secrets.token_hex(4)}")
        with open(tmp, "wb") as f:
            f.write(f"{limits.definition()}\n{totals[0]} {totals[1]}\n".encode("ascii"))
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, self.path)
        self._known = None
        return totals

    def rebuild(self, limits: Limits) -> tuple[int, int]:
        """*Blocking.*  Recount now (``store check --repair``)."""
        with self._mutex:
            return self._rebuild(limits)

    def recorded(self) -> tuple[Limits, int, int] | None:
        """What the file says, without changing it (``store check``); None if missing or invalid."""
        try:
            with open(self.path, "rb") as f:
                return parse_maildirsize(f.read())
        except FileNotFoundError:
            return None


class QuotaPolicy:
    """What the store enforces, set as ``MaildirStore.quota`` (by the service, from ``[quota]``
    and the users file).  ``limits(address)`` -> :class:`Limits`; users without limits have
    no ``maildirsize`` kept (as with Maildir++: no quota, no file)."""

    def __init__(self, limits: Callable[[str], Limits], permanent: bool = False, warning_percent: int = 90,
                 postmaster: str = "", hostname: str = "localhost", fsync: bool = True):
        self.limits, self.permanent, self.warning_percent = limits, permanent, warning_percent
        self.postmaster, self.hostname, self.fsync = postmaster, hostname, fsync
        self._counters: dict[str, UserCounter] = {}
        self._lock = threading.Lock()

    def counter(self, user_dir: str) -> UserCounter:
        with self._lock:
            c = self._counters.get(user_dir)
            if c is None:
                c = self._counters[user_dir] = UserCounter(user_dir, self.fsync)
            return c


def charge(store, mailbox, nbytes: int, count: int, grace: bool = False) -> None:
    """Count an addition to ``mailbox`` (a :class:`~mailstack.store.mailbox.Mailbox`) before
    its file is linked in; raises OverQuota unless ``grace``.  Delivers the warning when
    this addition crosses ``warning_percent``."""
    policy = store.quota
    if policy is None:
        return
    limits = policy.limits(mailbox.address)
    if limits.unlimited:
        return
    usage = policy.counter(mailbox.path).change(limits, nbytes, count, check=not grace, permanent=policy.permanent)
    _warn_if_due(store, policy, mailbox, usage)


def refund(store, mailbox, nbytes: int, count: int) -> None:
    """Count a removal, or give back a charge whose file never got linked in; either way the
    files are out of the Maildir already (a rebuild made now has counted it)."""
    policy = store.quota
    if policy is None or (not nbytes and not count):
        return
    limits = policy.limits(mailbox.address)
    if limits.unlimited:
        return
    usage = policy.counter(mailbox.path).change(limits, -nbytes, -count, removed=True)
    if policy.warning_percent and usage.percent() < policy.warning_percent:
        unlink_quietly(os.path.join(mailbox.path, WARNED))


def check(store, mailbox, nbytes: int) -> None:
    """OverQuota unless one more message of ``nbytes`` fits, with the recount of an old file
    that a refusal gets (a charge's rules, nothing counted)."""
    policy = store.quota
    limits = policy.limits(mailbox.address) if policy is not None else Limits()
    if not limits.unlimited:
        policy.counter(mailbox.path).change(limits, nbytes, 1, check=True, permanent=policy.permanent, dry=True)


def usage_of(store, mailbox) -> QuotaUsage | None:
    """The user's usage and limits; None for a user without limits."""
    policy = store.quota
    if policy is None:
        return None
    limits = policy.limits(mailbox.address)
    if limits.unlimited:
        return None
    return policy.counter(mailbox.path).usage(limits)


def _warn_if_due(store, policy: QuotaPolicy, mailbox, usage: QuotaUsage) -> None:
    if not policy.warning_percent or usage.percent() < policy.warning_percent:
        return
    marker = os.path.join(mailbox.path, WARNED)
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return  # warned already, and usage has not dropped below since
    message = warning_message(policy, mailbox.address, usage)
    charge(store, mailbox, len(message), 1, grace=True)
    inbox = mailbox.folder("INBOX")
    base = new_base(store.hostname)
    tmp = os.path.join(inbox.path, "tmp", base)
    try:
        size, crlf_size = write_new_file(message, tmp, store.fsync)
        os.link(tmp, os.path.join(inbox.path, "new", f"{base},S={size},W={crlf_size}"))
    finally:
        unlink_quietly(tmp)
    store.on_change(inbox.path)


def warning_message(policy: QuotaPolicy, address: str, usage: QuotaUsage) -> bytes:
    """The plain-text warning, from the postmaster (RFC 5322 fields, CRLF lines)."""
    lim = usage.limits
    postmaster = policy.postmaster or "postmaster@" + address.rpartition("@")[2]  # RFC 5321 4.5.1
    lines = [f"From: Mail System <{postmaster}>", f"To: <{address}>",
             f"Subject: Your mailbox is {int(usage.percent())}% full",
             f"Date: {email.utils.format_datetime(email.utils.localtime())}",
             f"Message-ID: <quota.{int(time.time())}.{secrets.token_hex(6)}@{policy.hostname}>",
             "Auto-Submitted: auto-generated", "MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii", "",
             f"Your mailbox {address} is {int(usage.percent())}% full:"]
    if lim.storage:
        lines.append(f"  storage: {usage.bytes} of {lim.storage} bytes")
    if lim.messages:
        lines.append(f"  messages: {usage.messages} of {lim.messages}")
    lines += ["", "When it is full, new mail is refused.  Delete messages you no longer need",
              "(and empty the Trash) to make room.", ""]
    return "\r\n".join(lines).encode("ascii", "replace")
