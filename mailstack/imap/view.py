"""The selected mailbox as one session's client knows it (RFC 3501 2.3.1.2, 7.4.1).

Pure code, no I/O: the session hands in store snapshots and writes the lines returned.
The client's message sequence numbers are the positions in :attr:`Selected.uids`; a message
another session expunged stays numbered here until this client may be told (EXPUNGE is not
allowed during FETCH, STORE or SEARCH), and then the responses go out highest number first
so each is right when the client applies it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from mailstack.imap import search as searchmod
from mailstack.imap.errors import Bad

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
MAX_UID_SET = 10_000_000  # UIDs a QRESYNC known-uids or VANISHED range may expand to


class SavedResult(list):
    """The sequence set ``$``: the last SEARCH ... RETURN (SAVE) result (RFC 5182 2.1)."""


SAVED = SavedResult()


_FORMATTED: dict = {}  # (flags, recent) -> the list's bytes; a folder's messages share a few sets


def format_flags(flags, recent: bool) -> bytes:
    """A FLAGS list (RFC 3501 7.4.2), formatted once per distinct set of flags: a FETCH of
    FLAGS for a whole folder asks for the same few thousands of times."""
    try:
        key = (flags, recent)
        known = _FORMATTED.get(key)
    except TypeError:  # a mutable set: not kept
        return _format_flags(flags, recent)
    if known is None:
        known = _format_flags(flags, recent)
        if len(_FORMATTED) < 4096:
            _FORMATTED[key] = known
    return known


def _format_flags(flags, recent: bool) -> bytes:
    out = sorted(flags)
    if recent:
        out.append("\\Recent")
    return b"(" + " ".join(out).encode("utf-8", "replace") + b")"


def uid_set(uids) -> bytes:
    """UIDs -> compact ascending sequence set ("1:3,7")."""
    out, start, prev = [], None, None
    for u in sorted(uids):
        if start is None:
            start = prev = u
        elif u == prev + 1:
            prev = u
        else:
            out.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = u
    if start is not None:
        out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out).encode()


def uid_list(text: bytes, top: int | None = None) -> list[int]:
    """A UID set as a sorted list (``*`` is ``top``), at most :data:`MAX_UID_SET` UIDs."""
    try:
        ranges = searchmod.parse_seqset(text)
    except searchmod.SearchSyntaxError as e:
        raise Bad(str(e)) from None
    out: set[int] = set()
    for lo, hi in ranges:
        lo = top if lo is None else lo
        hi = top if hi is None else hi
        if lo is None or hi is None:
            raise Bad("* is not allowed here")
        lo, hi = min(lo, hi), max(lo, hi)
        if hi - lo + len(out) > MAX_UID_SET:
            raise Bad("UID set too large")
        out.update(range(lo, hi + 1))
    return sorted(out)


def keywords_of(snap) -> frozenset:
    # Each distinct flag set once, not every message's (a 100,000-message SELECT spent its time here).
    return frozenset(f for flags in snap.distinct_flag_sets() for f in flags if not f.startswith("\\"))


_ABSENT = object()


class ReportedFlags:
    """uid -> the flag set last reported to the client, for :class:`Selected`.

    It starts as the snapshot's own shared columns (UIDs ascending, flag sets), read by
    bisection, and keeps only what changed since apart: a SELECT of 100,000 messages builds
    no dictionary (it took 5-20 ms of the reactor), and the idle sessions of one folder share
    one list of flag sets.  The dict methods the IMAP code uses, nothing more."""

    __slots__ = ("_uids", "_flags", "_changed")

    def __init__(self, uids=(), flags=()):
        self._uids, self._flags, self._changed = uids, flags, {}

    def get(self, uid: int, default=None):
        value = self._changed.get(uid, _ABSENT)
        if value is _ABSENT:
            i = bisect.bisect_left(self._uids, uid)
            if i < len(self._uids) and self._uids[i] == uid:
                return self._flags[i]
            return default
        return default if value is None else value

    def __contains__(self, uid: int) -> bool:
        return self.get(uid, _ABSENT) is not _ABSENT

    def __setitem__(self, uid: int, flags: frozenset) -> None:
        self._changed[uid] = flags

    def pop(self, uid: int, default=None):
        value = self.get(uid, _ABSENT)
        self._changed[uid] = None  # gone (expunged)
        return default if value is _ABSENT else value

    def copy(self) -> "ReportedFlags":
        other = ReportedFlags(self._uids, self._flags)
        other._changed = dict(self._changed)
        return other


def first_unseen(snap) -> int | None:
    """The sequence number of the first message without \\Seen (RFC 3501 7.1 UNSEEN): the
    first place of each unseen distinct flag set, found by ``list.index`` in C."""
    flags = snap.uids_and_flags()[1]
    places = [flags.index(s) for s in snap.distinct_flag_sets() if "\\Seen" not in s]
    return min(places) + 1 if places else None


@dataclass
class Selected:
    """The selected mailbox: what this session has told its client."""

    folder: object
    readonly: bool
    uidvalidity: int = 0
    uids: list = field(default_factory=list)  # ascending: index + 1 is the sequence number
    flags: ReportedFlags = field(default_factory=ReportedFlags)  # uid -> frozenset, as last reported
    recent: set = field(default_factory=set)  # UIDs this session reports as \Recent
    keywords: frozenset = frozenset()
    subscription: object = None
    synced: object = None  # the store snapshot this view was last brought in step with
    saved: frozenset = frozenset()  # RFC 5182: ``$``, as UIDs (so expunges drop out by themselves)
    contexts: dict = field(default_factory=dict)  # RFC 5267 4.3: tag -> results.Context
    rev2: bool = False  # IMAP4rev2 enabled (RFC 9051): no \Recent, no RECENT, no UNSEEN code

    @classmethod
    def opened(cls, folder, readonly: bool, snap, taken_recent) -> "Selected":
        """The view right after SELECT (``taken_recent``: the UIDs it claimed as \\Recent)
        or EXAMINE (which reports what is still in new/ without claiming it)."""
        sel = cls(folder, readonly, snap.uidvalidity)
        uids, flags = snap.uids_and_flags()  # without making each message (see FolderSnapshot)
        sel.uids, sel.flags = list(uids), ReportedFlags(uids, flags)  # the view's own UID list changes
        sel.recent = {m.uid for m in snap.messages if snap.is_recent(m)} if readonly else set(taken_recent)
        sel.keywords = keywords_of(snap)
        sel.synced = snap
        return sel

    def flag_bytes(self, uid: int) -> bytes:
        return format_flags(self.flags.get(uid, ()), uid in self.recent and not self.rev2)

    def flag_names(self) -> bytes:
        return " ".join(list(SYSTEM_FLAGS) + sorted(self.keywords)).encode("utf-8", "replace")

    def recent_count(self) -> int:
        return sum(map(self.recent.__contains__, self.uids)) if self.recent else 0

    def last_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def select_responses(self, snap) -> list[bytes]:
        """The untagged responses of SELECT/EXAMINE (RFC 3501 6.3.1, RFC 7162 3.1.2.1)."""
        flags = self.flag_names()
        # RFC 3501 7.1: no flag can be changed in a mailbox opened with EXAMINE.
        permanent = b"()" if self.readonly else b"(" + flags + b" \\*)"
        lines = [b"FLAGS (" + flags + b")", b"OK [PERMANENTFLAGS " + permanent + b"] flags permitted",
                 b"%d EXISTS" % len(self.uids)] + ([] if self.rev2 else [b"%d RECENT" % self.recent_count()])
        unseen = first_unseen(snap)
        if unseen is not None and not self.rev2:  # RFC 9051 has no UNSEEN response code
            lines.append(b"OK [UNSEEN %d] first unseen message" % unseen)
        lines.append(b"OK [UIDVALIDITY %d] UIDs valid" % snap.uidvalidity)
        lines.append(b"OK [UIDNEXT %d] predicted next UID" % snap.uidnext)
        # RFC 7162 3.1.2.1: modification sequences are positive; an untouched folder says 1.
        lines.append(b"OK [HIGHESTMODSEQ %d] highest" % max(1, snap.highestmodseq))
        return lines

    def missed_responses(self, snap, since: int, known, vanished) -> list[bytes]:
        """RFC 7162 3.2.5: what a QRESYNC client missed since its MODSEQ, expunges first."""
        lines = []
        if vanished:
            lines.append(b"VANISHED (EARLIER) " + uid_set(vanished))
        known_set = None if known is None else set(known)
        for seq, m in enumerate(snap.messages, 1):
            if m.modseq > since and (known_set is None or m.uid in known_set):
                lines.append(b"%d FETCH (UID %d FLAGS %s MODSEQ (%d))" % (seq, m.uid, self.flag_bytes(m.uid), m.modseq))
        return lines

    def resolve(self, ranges, uid: bool) -> list[tuple[int, int]]:
        """A parsed sequence set -> [(sequence number, UID)] of the messages the client knows.
        UID ranges select what exists (RFC 3501 6.4.8); sequence numbers past the end are BAD.
        ``$`` (RFC 5182 2.1) is the saved result: empty if nothing was saved."""
        if isinstance(ranges, SavedResult):
            return [(i, u) for i, u in enumerate(self.uids, 1) if u in self.saved]
        chosen: set[int] = set()
        if uid:
            last = self.last_uid()
            for lo, hi in ranges:
                lo = last if lo is None else lo
                hi = last if hi is None else hi
                if lo > hi:
                    lo, hi = hi, lo
                chosen.update(range(bisect.bisect_left(self.uids, lo), bisect.bisect_right(self.uids, hi)))
        else:
            n = len(self.uids)
            if n == 0:
                if all(lo is None or hi is None for lo, hi in ranges):
                    return []
                raise Bad("invalid message sequence number: the mailbox is empty")
            for lo, hi in ranges:
                lo = n if lo is None else lo
                hi = n if hi is None else hi
                if lo > hi:
                    lo, hi = hi, lo
                if hi > n:
                    raise Bad(f"invalid message sequence number (the mailbox has {n} messages)")
                chosen.update(range(lo - 1, hi))
        return [(i + 1, self.uids[i]) for i in sorted(chosen)]

    def stored(self, changed: dict, wanted: list[str]) -> list[bytes]:
        """After STORE: take the new flags; FLAGS/PERMANENTFLAGS lines if keywords are new."""
        for u, (new_flags, _modseq) in changed.items():
            self.flags[u] = new_flags
        new_keywords = {f for f in wanted if not f.startswith("\\")} - self.keywords
        if not new_keywords:
            return []
        self.keywords = self.keywords | new_keywords
        names = self.flag_names()
        return [b"FLAGS (" + names + b")", b"OK [PERMANENTFLAGS (" + names + b" \\*)] flags permitted"]

    def resync(self, snap, taken, last: int, expunge: bool, qresync: bool, condstore: bool) -> list[bytes]:
        """Bring the view in step with ``snap`` and return what to tell the client (RFC 3501
        7.3.1 EXISTS, 7.3.2 RECENT, 7.4.1 EXPUNGE, 7.4.2 FETCH FLAGS; RFC 7162 3.2.10 VANISHED).
        ``taken``: UIDs this session just claimed as \\Recent; ``last``: the highest UID the
        client knew when the snapshot was asked for.  Without ``expunge`` the messages gone
        keep their numbers."""
        present = snap.by_uid()
        lines = self._expunged(present, qresync) if expunge else []
        self.recent.update(taken)
        keywords = keywords_of(snap) | self.keywords
        if keywords != self.keywords:
            self.keywords = keywords
            flags = self.flag_names()
            lines.append(b"FLAGS (" + flags + b")")
            if not self.readonly:
                lines.append(b"OK [PERMANENTFLAGS (" + flags + b" \\*)] flags permitted")
        for seq, uid in enumerate(self.uids, 1):
            m = present.get(uid)
            if m is not None and m.flags != self.flags.get(uid):
                self.flags[uid] = m.flags
                modseq = b" MODSEQ (%d)" % m.modseq if condstore else b""
                lines.append(b"%d FETCH (UID %d FLAGS %s%s)" % (seq, uid, self.flag_bytes(uid), modseq))
        new = [m for m in snap.messages if m.uid > last]
        if new:
            for m in new:
                self.uids.append(m.uid)
                self.flags[m.uid] = m.flags
                if self.readonly and snap.is_recent(m):
                    self.recent.add(m.uid)
            lines.append(b"%d EXISTS" % len(self.uids))
            if not self.rev2:  # RFC 9051 7.4: IMAP4rev2 has no RECENT response
                lines.append(b"%d RECENT" % self.recent_count())
        if expunge:  # the view now matches this snapshot exactly
            self.synced = snap
        return lines

    def _expunged(self, present: dict, qresync: bool) -> list[bytes]:
        lines, gone = [], []
        for i in range(len(self.uids) - 1, -1, -1):
            uid = self.uids[i]
            if uid not in present:
                lines.append(b"%d EXPUNGE" % (i + 1))
                gone.append(uid)
                del self.uids[i]
                self.flags.pop(uid, None)
                self.recent.discard(uid)
        if gone and qresync:  # RFC 7162 3.2.10: VANISHED replaces EXPUNGE
            return [b"VANISHED " + uid_set(gone)]
        return lines
