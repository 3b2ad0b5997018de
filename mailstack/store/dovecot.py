"""Dovecot's ``dovecot-uidlist``: the UIDs mailstack and Dovecot hand out together (issue 18, item 1).

A Maildir that Dovecot served carries its UIDs in ``dovecot-uidlist``; taking them over keeps
UIDVALIDITY and every UID, so clients keep their caches when the store moves to mailstack.  And
mailstack keeps the file current with every UID it gives, under Dovecot's own dot-lock
(``dovecot-uidlist.lock``), so that the store can go back to Dovecot at any moment, or be served
by both at once: whichever server numbers a new file first, the other takes that UID.  The
format (Dovecot's documentation, "Maildir Mailbox Format"):

    3 V<uidvalidity> N<uidnext> G<guid> ...        version 3 header (fields in any order)
    <uid> [<ext> ...] :<file name>                 version 3 record
    1 <uidvalidity> <uidnext>                      version 1 header
    <uid> <flags> <file name>                      version 1 record

UIDs ascend through the file; the next UID is past both ``N`` and the last record.  Extension
fields are a letter and a value (``W`` the CRLF size, ``S`` the size, ``G`` the GUID, ``P`` a
POP3 UIDL kept from a migration); the message is named by its file name up to ``:2,``.
Records for files that are gone stay until the file is next rewritten; Dovecot allows that.
``mailstack-uidlist`` stays the store's own log (MODSEQs, internal dates); this file only says
which UID each file has.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from mailstack.store.dotlock import DotLock

UIDLIST = "dovecot-uidlist"


@dataclass
class DovecotUids:
    uidvalidity: int
    uidnext: int
    uids: dict[str, int] = field(default_factory=dict)  # base name -> UID
    #: uid -> POP3 UIDL, where Dovecot stored one (the ``P`` extension).
    pop3_uidls: dict[int, str] = field(default_factory=dict)
    #: uid -> POP3 order, where Dovecot stored one (``O``: the order a migration kept).
    pop3_order: dict[int, int] = field(default_factory=dict)
    #: uid -> CRLF size (``W``), for files whose names do not carry ``,W=``.
    vsizes: dict[int, int] = field(default_factory=dict)
    #: uid -> the record's extension fields as written, kept when mailstack rewrites the file
    #: (Dovecot's G message GUIDs from dsync, S sizes, ...: what this module does not read).
    exts: dict[int, str] = field(default_factory=dict)
    version: str = "3"
    guid: str = ""
    records: int = 0
    last_uid: int = 0
    #: (uid, base) of the records read since the caller last looked (see numbering.py).
    fresh: list[tuple[int, str]] = field(default_factory=list)


def parse_header(line: str) -> DovecotUids | None:
    header = line.split()
    if not header:
        return None
    if header[0] == "3":
        found = DovecotUids(0, 1)
        for item in header[1:]:
            if item[:1] == "V" and item[1:].isdigit():
                found.uidvalidity = int(item[1:])
            elif item[:1] == "N" and item[1:].isdigit():
                found.uidnext = max(1, int(item[1:]))
            elif item[:1] == "G":
                found.guid = item[1:]
    elif header[0] == "1" and len(header) >= 3 and header[1].isdigit() and header[2].isdigit():
        found = DovecotUids(int(header[1]), max(1, int(header[2])), version="1")
    else:
        return None
    return found if found.uidvalidity >= 1 else None


def parse_records(lines: list[str], found: DovecotUids) -> None:
    """Fold record lines into ``found``; lines that do not parse, or that do not ascend (which
    Dovecot itself refuses), are skipped."""
    for line in lines:
        uid_text, _, rest = line.partition(" ")
        if not uid_text.isdigit() or not rest:
            continue
        uid = int(uid_text)
        if found.version == "3":
            if rest.startswith(":"):
                exts, name = "", rest[1:]
            else:
                exts, _, name = rest.partition(" :")
        else:
            exts, name = "", rest.partition(" ")[2]
        name = name.split(":2,", 1)[0]
        if not name or "/" in name or uid < 1 or uid <= found.last_uid or name in found.uids:
            continue
        found.uids[name] = uid
        found.last_uid = uid
        found.records += 1
        found.uidnext = max(found.uidnext, uid + 1)
        found.fresh.append((uid, name))
        if exts:
            found.exts[uid] = exts
        for ext in exts.split():
            kind, value = ext[:1], ext[1:]
            if kind == "P" and value:
                found.pop3_uidls[uid] = value
            elif kind == "O" and value.isdigit():
                found.pop3_order[uid] = int(value)
            elif kind == "W" and value.isdigit():
                found.vsizes[uid] = int(value)


def read_uidlist(folder_path: str) -> DovecotUids | None:
    """The folder's ``dovecot-uidlist``, or None if it has none (or one that cannot be read)."""
    mirror = DovecotUidList(folder_path, fsync=False)
    return mirror.refresh()


def record_line(uid: int, name: str, exts: str = "") -> str:
    return f"{uid} {exts} :{name}\n" if exts else f"{uid} :{name}\n"


class DovecotUidList:
    """The folder's ``dovecot-uidlist`` as last read, refreshed by reading only what was
    appended since (Dovecot and mailstack append; a rewrite renames a new file in).

    A rewritten file can get the old one's inode number back (ext4 reuses them at once), so the
    inode alone does not say the file is the one read: the header line and the bytes just
    before where reading stopped must also be as they were, else the file is read afresh.
    """

    TAIL = 64  # bytes before the read offset compared at each refresh

    def __init__(self, folder_path: str, fsync: bool = True):
        self.path = os.path.join(folder_path, UIDLIST)
        self.fsync = fsync
        self.state: DovecotUids | None = None
        self._inode: tuple[int, int] | None = None
        self._offset = 0
        self._header = b""
        self._tail = b""
        self.generation = 0  # grows at every full read: what numbering.py keys its check on

    @property
    def inode(self) -> tuple[int, int] | None:
        return self._inode

    def forget(self) -> None:
        """Read the file afresh next time (after a failed write, the mirror may be ahead of it)."""
        self.state, self._inode, self._offset = None, None, 0

    def lock(self) -> DotLock:
        """Dovecot's lock on the file (and, through it, on ``dovecot-keywords``)."""
        return DotLock(self.path)

    def refresh(self) -> DovecotUids | None:
        try:
            f = open(self.path, "rb")
        except (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError):
            self.state, self._inode, self._offset = None, None, 0
            return None
        with f:
            st = os.fstat(f.fileno())
            inode = (st.st_dev, st.st_ino)
            if inode != self._inode or st.st_size < self._offset or self.state is None or not self._same_file(f):
                data = f.read()
                end = data.rfind(b"\n") + 1
                lines = data[:end].decode("utf-8", "surrogateescape").split("\n")[:-1]
                self.state = parse_header(lines[0]) if lines else None
                self._inode, self._offset = inode, end
                self._header = data[: data.find(b"\n") + 1]
                self._tail = data[max(0, end - self.TAIL):end]
                self.generation += 1
                if self.state is not None:
                    parse_records(lines[1:], self.state)
            elif st.st_size > self._offset:
                f.seek(self._offset)
                data = f.read()
                end = data.rfind(b"\n") + 1
                parse_records(data[:end].decode("utf-8", "surrogateescape").split("\n")[:-1], self.state)
                self._offset += end
                self._tail = (self._tail + data[:end])[-self.TAIL:]
        return self.state

    def _same_file(self, f) -> bool:
        head = f.read(len(self._header))
        f.seek(max(0, self._offset - len(self._tail)))
        tail = f.read(len(self._tail))
        f.seek(0)
        return head == self._header and tail == self._tail

    def rewrite(self, lock: DotLock, uidvalidity: int, uidnext: int, names: dict[int, str],
                exts: dict[int, str] | None = None) -> None:
        """Write the whole file through the held ``lock``: uid -> file name, every UID below
        ``uidnext``, with the extension fields ``exts`` gives (kept from Dovecot's records).
        The mailbox GUID is kept, or made once."""
        guid = (self.state.guid if self.state is not None and self.state.uidvalidity == uidvalidity else "") \
            or secrets.token_hex(16)
        exts = exts or {}
        lines = [f"3 V{uidvalidity} N{uidnext} G{guid}\n"]
        lines += [record_line(uid, names[uid], exts.get(uid, "")) for uid in sorted(names)]
        lock.replace("".join(lines).encode("utf-8", "surrogateescape"), fsync=self.fsync)
        self.forget()
        self.refresh()

    def append(self, records: list[tuple[int, str]]) -> None:
        """Append ``(uid, file name)`` records, each above every UID in the file (caller holds
        the lock and has refreshed), in one write, durably."""
        if not records or self.state is None:
            return
        data = "".join(record_line(uid, name) for uid, name in records).encode("utf-8", "surrogateescape")
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end != self._offset:  # a torn last line (crash mid-append): cut it first
                os.ftruncate(fd, self._offset)
                os.lseek(fd, self._offset, os.SEEK_SET)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        self._offset += len(data)
        self._tail = (self._tail + data)[-self.TAIL:]
        for uid, name in records:
            self.state.uids[name] = uid
            self.state.last_uid = uid
            self.state.uidnext = max(self.state.uidnext, uid + 1)
        self.state.records += len(records)
