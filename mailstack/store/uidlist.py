"""Persistent UID state of one Maildir folder.

The mail files are the truth; this sidecar (``mailstack-uidlist``) only remembers what cannot
be read off them: UIDVALIDITY, UIDNEXT, which UID each message base name was given, its
internal date and its MODSEQ (RFC 7162).  It is an append-only log so that delivering one
message into a folder of 100,000 costs one short append, not a rewrite:

    mailstack-uidlist 1 V<uidvalidity> N<uidnext> M<highestmodseq>    (header, at last rewrite)
    +<uid> <modseq> <internaldate> <base>                              (message added)
    =<uid> <modseq>                                                    (flags changed)
    -<uid> <modseq>                                                    (expunged)
    N<uidnext>                                                         (UIDNEXT raised)

Every change happens under an exclusive ``flock`` on ``mailstack-uidlist.lock`` so several
processes never hand out one UID twice.  A torn last line (crash mid-append) is ignored when
read and cut off before the next append.  When the log holds far more dead records than live
ones it is rewritten to a temporary file and renamed over, which readers notice by the inode.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from dataclasses import dataclass, field

from mailstack.fsutil import atomic_write

UIDLIST = "mailstack-uidlist"
LOCKFILE = "mailstack-uidlist.lock"
MAGIC = "mailstack-uidlist"
VERSION = "1"


@dataclass(slots=True)
class UidEntry:
    uid: int
    base: str
    modseq: int
    internaldate: int


@dataclass
class UidState:
    """What the log says, folded."""

    uidvalidity: int = 0
    uidnext: int = 1
    highestmodseq: int = 1
    entries: dict[int, UidEntry] = field(default_factory=dict)
    by_base: dict[str, int] = field(default_factory=dict)
    records: int = 0
    #: Problems met while reading (duplicate UIDs, unparsable lines); the checker reports them.
    problems: list[str] = field(default_factory=list)
    #: UIDNEXT and HIGHESTMODSEQ as the header states them (0: no header read).
    header_uidnext: int = 0
    header_modseq: int = 0
    #: uid -> MODSEQ of its expunge, for the expunges logged since the last rewrite; older
    #: ones (at or below ``header_modseq``) are forgotten (RFC 7162 3.2.5.1 allows that).
    expunged: dict[int, int] = field(default_factory=dict)


UIDVALIDITY_FILE = "mailstack-uidvalidity"
TAIL = 64  # bytes before the read offset compared at each refresh (see UidList._same_file)


def next_uidvalidity(mailbox_path: str, fsync: bool = True) -> int:
    """A UIDVALIDITY never handed out before in this user's Maildir (like dovecot-uidvalidity).

    The current time alone repeats when a folder is re-created, or its UID state lost, within
    the second its previous value was chosen; RFC 3501 2.3.1.1 forbids that reuse.
    """
    path = os.path.join(mailbox_path, UIDVALIDITY_FILE)
    with FolderLock(mailbox_path, UIDVALIDITY_FILE + ".lock"):
        try:
            with open(path, encoding="ascii") as f:
                last = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            last = 0
        value = max(int(time.time()), last + 1)
        atomic_write(path, f"{value}\n".encode("ascii"), fsync=fsync)
    return value


class FolderLock:
    """Exclusive lock on a folder's UID state, across processes and threads.

    ``flock`` locks belong to an open file description, so opening the lock file afresh for
    each acquisition also excludes other threads of this process.
    """

    def __init__(self, folder_path: str, name: str = LOCKFILE):
        self.path = os.path.join(folder_path, name)
        self.fd: int | None = None

    def __enter__(self) -> "FolderLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        assert self.fd is not None
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def parse_line(line: str, state: UidState) -> None:
    """Fold one record into ``state``; raise ValueError if it is malformed."""
    kind = line[:1]
    if kind == "+":
        uid_s, modseq_s, date_s, base = line[1:].split(" ", 3)
        uid, modseq, date = int(uid_s), int(modseq_s), int(date_s)
        if uid < 1 or not base or "/" in base:
            raise ValueError("bad add record")
        if uid in state.entries and state.entries[uid].base != base:
            state.problems.append(f"UID {uid} given to both {state.entries[uid].base} and {base}")
            return
        if state.header_uidnext and uid >= state.header_uidnext and modseq <= state.header_modseq:
            # Written at the last rewrite (modseq not above the header's), yet not below its UIDNEXT.
            state.problems.append(f"UIDNEXT {state.header_uidnext} in the header is not above UID {uid}")
        old = state.by_base.get(base)
        if old is not None and old != uid:
            state.problems.append(f"{base} has two UIDs, {old} and {uid}")
            return
        state.entries[uid] = UidEntry(uid, base, modseq, date)
        state.by_base[base] = uid
        state.uidnext = max(state.uidnext, uid + 1)
        state.highestmodseq = max(state.highestmodseq, modseq)
    elif kind in "=-" and kind:
        uid_s, modseq_s = line[1:].split(" ")
        uid, modseq = int(uid_s), int(modseq_s)
        state.highestmodseq = max(state.highestmodseq, modseq)
        entry = state.entries.get(uid)
        if entry is None:
            return
        if kind == "=":
            entry.modseq = max(entry.modseq, modseq)
        else:
            del state.entries[uid]
            state.by_base.pop(entry.base, None)
            state.expunged[uid] = modseq
    elif kind == "N":
        state.uidnext = max(state.uidnext, int(line[1:]))
    else:
        raise ValueError("unknown record")


def parse_header(line: str) -> tuple[int, int, int]:
    parts = line.split(" ")
    if len(parts) != 5 or parts[0] != MAGIC or parts[1] != VERSION:
        raise ValueError("bad header")
    fields = {p[:1]: int(p[1:]) for p in parts[2:]}
    if set(fields) != {"V", "N", "M"} or fields["V"] < 1:
        raise ValueError("bad header")
    return fields["V"], fields["N"], fields["M"]


class UidList:
    """In-memory mirror of a folder's ``mailstack-uidlist``, refreshed incrementally.

    Callers hold the folder's :class:`FolderLock` for anything that writes.  Reading only the
    bytes appended since the last refresh keeps a warm re-open of a 100,000-message folder
    cheap.
    """

    def __init__(self, folder_path: str, fsync: bool = True):
        self.folder_path = folder_path
        self.path = os.path.join(folder_path, UIDLIST)
        self.fsync = fsync
        self.state = UidState()
        self._inode: tuple[int, int] | None = None
        self._offset = 0  # bytes of complete lines consumed
        self._head = b""  # the first line, and the bytes before _offset, as read
        self._tail = b""
        self._size = 0  # file size seen at last refresh
        self.mutex = threading.RLock()  # guards the in-memory mirror within this process

    # -- reading ---------------------------------------------------------------------------

    @property
    def position(self) -> tuple:
        """(file identity, bytes read): changes whenever the mirror may have.  Callers key
        what they derive from the state (listing checks, snapshots, the saved index) on it."""
        return self._inode, self._offset

    def adopt(self, state: UidState, inode: tuple[int, int], size: int) -> None:
        """Take ``state`` as the mirror of the file ``inode`` read up to ``size`` (the saved
        folder index restores it so, without reading the log)."""
        self.state, self._inode, self._offset, self._size = state, inode, size, size
        self._head = self._tail = b""  # not read: the inode and size are all that is known

    def forget(self) -> None:
        """Read the file afresh next time (a failed write may have left the mirror ahead of it)."""
        self._inode, self._offset, self._size = None, 0, 0

    def refresh(self) -> bool:
        """Bring the mirror up to date with the file. Return True if the file did not exist."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            self.state = UidState()
            self._inode, self._offset, self._size = None, 0, 0
            return True
        with f:
            st = os.fstat(f.fileno())
            inode = (st.st_dev, st.st_ino)
            if inode != self._inode or st.st_size < self._offset or not self._same_file(f):
                self.state = UidState()
                self._inode, self._offset = inode, 0
                data = f.read()
                self._offset = self._consume(data, header=True)
                self._head = data[: data.find(b"\n") + 1]
                self._tail = data[max(0, self._offset - TAIL):self._offset]
            elif st.st_size > self._offset:
                f.seek(self._offset)
                data = f.read()
                used = self._consume(data, header=False)
                self._offset += used
                self._tail = (self._tail + data[:used])[-TAIL:]
            self._size = st.st_size
        return False

    def _same_file(self, f) -> bool:
        """A rewrite renames a new file in, which may get the old one's inode number back
        (ext4 reuses them at once): the first line and the bytes before where reading stopped
        must also be as they were."""
        if self._inode is None:
            return False
        head = f.read(len(self._head))
        f.seek(max(0, self._offset - len(self._tail)))
        tail = f.read(len(self._tail))
        f.seek(0)
        return head == self._head and tail == self._tail

    def _consume(self, data: bytes, header: bool) -> int:
        """Parse complete lines of ``data``; return how many bytes they took."""
        end = data.rfind(b"\n") + 1
        lines = data[:end].decode("utf-8", "surrogateescape").split("\n")[:-1]
        state = self.state
        if header and lines:
            line = lines.pop(0)
            try:
                state.uidvalidity, state.uidnext, state.highestmodseq = parse_header(line)
                state.header_uidnext, state.header_modseq = state.uidnext, state.highestmodseq
            except ValueError:
                state.problems.append(f"unreadable header {line[:80]!r}")
        entries, by_base = state.entries, state.by_base
        for line in lines:
            # Fast path for the common record, a new UID with no conflict (a cold open of a
            # 100,000-message folder is mostly this loop); anything else goes to parse_line.
            if line[:1] == "+":
                parts = line[1:].split(" ", 3)
                if (len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit() and parts[2].isdigit()
                        and parts[3] and "/" not in parts[3] and parts[3] not in by_base):
                    uid, modseq = int(parts[0]), int(parts[1])
                    if uid >= 1 and uid not in entries and (not state.header_uidnext or uid < state.header_uidnext
                                                            or modseq > state.header_modseq):
                        base = parts[3]
                        entries[uid] = UidEntry(uid, base, modseq, int(parts[2]))
                        by_base[base] = uid
                        if uid >= state.uidnext:
                            state.uidnext = uid + 1
                        if modseq > state.highestmodseq:
                            state.highestmodseq = modseq
                        state.records += 1
                        continue
            try:
                parse_line(line, state)
                state.records += 1
            except (ValueError, IndexError):
                state.problems.append(f"unreadable record {line[:80]!r}")
        return end

    # -- writing (caller holds the FolderLock) -----------------------------------------------

    def create(self, uidvalidity: int | None = None) -> None:
        """Start a fresh log (new folder, or state lost)."""
        self.state = UidState(uidvalidity=uidvalidity or int(time.time()))
        self.rewrite()

    def take_over(self, uidvalidity: int, uidnext: int, entries: list[tuple[int, str, int]]) -> None:
        """Start the log from another server's UIDs (``(uid, base, internaldate)``, as read
        from ``dovecot-uidlist``): same UIDVALIDITY, same UIDs, UIDNEXT past every one.

        The MODSEQs the other server gave are not known here, and RFC 7162 3.1.2.1 forbids
        HIGHESTMODSEQ to go down within one UIDVALIDITY: every message starts at the current
        time in microseconds, above any counter a server reaches (and above what an earlier
        take-over gave), so a client resynchronising from its cached HIGHESTMODSEQ is sent every
        message's flags once rather than none."""
        start = int(time.time() * 1_000_000)
        state = UidState(uidvalidity=uidvalidity, uidnext=uidnext, highestmodseq=start)
        for uid, base, internaldate in entries:
            state.entries[uid] = UidEntry(uid, base, start, internaldate)
            state.by_base[base] = uid
            state.uidnext = max(state.uidnext, uid + 1)
        self.state = state
        self.rewrite()

    def rewrite(self) -> None:
        """Write the folded state as a new log and rename it over the old one."""
        s = self.state
        lines = [f"{MAGIC} {VERSION} V{s.uidvalidity} N{s.uidnext} M{s.highestmodseq}\n"]
        lines += [f"+{e.uid} {e.modseq} {e.internaldate} {e.base}\n" for e in sorted(s.entries.values(), key=lambda e: e.uid)]
        data = "".join(lines).encode("utf-8", "surrogateescape")
        atomic_write(self.path, data, fsync=self.fsync)
        st = os.stat(self.path)
        self._inode, self._offset, self._size = (st.st_dev, st.st_ino), len(data), len(data)
        self._head, self._tail = data[: data.find(b"\n") + 1], data[-TAIL:]
        s.records = len(s.entries)
        # What a reader of the new file knows: the expunges before it are forgotten.
        s.header_uidnext, s.header_modseq, s.expunged = s.uidnext, s.highestmodseq, {}

    def append(self, records: list[str]) -> None:
        """Append records (already folded into ``state`` by the caller) durably."""
        if not records:
            return
        data = "".join(r + "\n" for r in records).encode("utf-8", "surrogateescape")
        with open(self.path, "r+b") as f:
            # Cut a torn line left by a crash before appending behind it.
            f.truncate(self._offset)
            f.seek(self._offset)
            f.write(data)
            f.flush()
            if self.fsync:
                os.fdatasync(f.fileno())
        self._offset += len(data)
        self._size = self._offset
        self._tail = (self._tail + data)[-TAIL:]
        self.state.records += len(records)
        if self.state.records > 2 * len(self.state.entries) + 1000:
            self.rewrite()

    def next_modseq(self) -> int:
        self.state.highestmodseq += 1
        return self.state.highestmodseq

    def add(self, base: str, internaldate: int, records: list[str], uid: int | None = None) -> int:
        """Give ``base`` the next UID, or ``uid`` (not below UIDNEXT: numbered by Dovecot, see
        numbering.py); the record is queued in ``records`` for :meth:`append`."""
        s = self.state
        if uid is None or uid < s.uidnext:
            uid = s.uidnext
        s.uidnext = uid + 1
        modseq = self.next_modseq()
        s.entries[uid] = UidEntry(uid, base, modseq, internaldate)
        s.by_base[base] = uid
        records.append(f"+{uid} {modseq} {internaldate} {base}")
        return uid

    def touch(self, uid: int, records: list[str]) -> int:
        modseq = self.next_modseq()
        entry = self.state.entries.get(uid)
        if entry is not None:
            entry.modseq = modseq
        records.append(f"={uid} {modseq}")
        return modseq

    def remove(self, uid: int, records: list[str]) -> None:
        entry = self.state.entries.pop(uid, None)
        if entry is not None:
            self.state.by_base.pop(entry.base, None)
        modseq = self.next_modseq()
        self.state.expunged[uid] = modseq
        records.append(f"-{uid} {modseq}")
