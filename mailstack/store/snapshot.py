"""What a folder looks like at one moment, as protocol code sees it: immutable values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class MessageInfo(NamedTuple):
    """One message as a folder snapshot sees it.

    A named tuple, not a dataclass: a snapshot of 100,000 messages makes 100,000 of these,
    and a frozen dataclass's ``__init__`` costs several times a tuple's (measured).
    """

    uid: int
    base: str
    filename: str  # relative to the folder: "new/..." or "cur/..."
    flags: frozenset
    size: int  # of the CRLF form (RFC 3501 2.3.4), whatever line ends the file has
    internaldate: int
    modseq: int

    @property
    def saved(self) -> int | None:
        """When the message was stored in this folder (RFC 8514 SAVEDATE): the seconds a
        Maildir name starts with, ours and Dovecot's alike (a copy gets a name of its own)."""
        head = self.base.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    @property
    def recent(self) -> bool:
        """Still in new/, so no session has claimed it yet; stored straight into cur/ (APPEND
        with flags, COPY) it may be unclaimed too: ask :meth:`FolderSnapshot.is_recent`."""
        return self.filename.startswith("new/")


class FolderSnapshot:
    """A folder at one moment: immutable, shared by every session that asks while nothing
    changes, so what is derived from it (the UID index) is computed once.

    ``messages`` may be made at first use (``lazy``: the UIDs and flag sets, a function
    making the messages, and optionally the distinct flag sets): a SELECT right after a
    restart needs only :meth:`uids_and_flags`."""

    __slots__ = ("name", "uidvalidity", "uidnext", "highestmodseq", "_messages", "_lazy", "marked_recent", "_by_uid",
                 "_columns", "_distinct")

    def __init__(self, name: str, uidvalidity: int, uidnext: int, highestmodseq: int, messages: tuple | None,
                 marked_recent: frozenset = frozenset(), lazy: tuple | None = None):
        self.name, self.uidvalidity, self.uidnext = name, uidvalidity, uidnext
        self.highestmodseq = highestmodseq
        self._messages, self._lazy = messages, lazy  # of MessageInfo, ascending UID
        self.marked_recent = marked_recent  # unclaimed UIDs in cur/ (mailstack.store.recent)
        self._by_uid: dict[int, MessageInfo] | None = None
        self._columns: tuple[list[int], list[frozenset]] | None = None if lazy is None else (lazy[0], lazy[1])
        self._distinct: frozenset | None = frozenset(lazy[3]) if lazy is not None and len(lazy) > 3 else None

    @property
    def messages(self) -> tuple:
        """MessageInfo for each message, ascending UID."""
        if self._messages is None:  # two threads may both make it: the same value, one kept
            self._messages = self._lazy[2]()
            self._lazy = None
        return self._messages

    def uids_and_flags(self) -> tuple[list[int], list[frozenset]]:
        """(UIDs, flag sets) in the order of ``messages``, made once and shared by every
        session that SELECTs while the snapshot is current: do not change them (copy first)."""
        if self._columns is None:
            messages = self.messages
            self._columns = ([m.uid for m in messages], [m.flags for m in messages])
        return self._columns

    def distinct_flag_sets(self) -> frozenset:
        """Every flag set some message has: messages share their sets (the store decodes each
        distinct ``:2,`` suffix once), so this is a handful even at 100,000 messages."""
        if self._distinct is None:
            self._distinct = frozenset(self.uids_and_flags()[1])
        return self._distinct

    def is_recent(self, m: MessageInfo) -> bool:
        """No session has claimed ``m`` yet (IMAP \\Recent, RFC 3501 2.3.2)."""
        return m.recent or m.uid in self.marked_recent

    def by_uid(self) -> dict[int, MessageInfo]:
        """uid -> MessageInfo (do not change it: it is shared)."""
        if self._by_uid is None:
            self._by_uid = {m.uid: m for m in self.messages}
        return self._by_uid


@dataclass(slots=True, frozen=True)
class FolderInfo:
    """One entry of a folder listing (IMAP LIST)."""

    name: str
    special_use: str | None
    selectable: bool = True  # False for a parent that exists only through its children

