"""What SEARCH and SORT do with their matches beyond listing them.

* ``RETURN (...)`` options (RFC 4731 3.1 ESEARCH, RFC 5267 3 ESORT and 4.4 PARTIAL): one
  ``ESEARCH`` response instead of ``SEARCH``/``SORT``;
* ``SAVE`` (RFC 5182 SEARCHRES): the matches kept as the selected view's ``$``;
* ``UPDATE`` (RFC 5267 4.3 CONTEXT=SEARCH, CONTEXT=SORT): the matches kept as a live context,
  and the changes reported as unsolicited ``ESEARCH ... ADDTO/REMOVEFROM`` responses when the
  mailbox changes; ``CANCELUPDATE`` ends one.

The matches are kept as UIDs, so they stay right while sequence numbers move; they are
turned into sequence numbers (the view's, at the time) only when written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailstack.imap import search as searchmod
from mailstack.imap import sort as sortmod
from mailstack.imap.view import uid_set

#: Update contexts one selected mailbox keeps (RFC 5267 4.3.1: at least one; more get NOUPDATE).
MAX_CONTEXTS = 8

#: ``RETURN`` options that produce data (RFC 4731 3.1, RFC 5267 4.4); SAVE, CONTEXT and
#: UPDATE only change what the server keeps.
RESULT_OPTIONS = frozenset({b"MIN", b"MAX", b"ALL", b"COUNT"})


@dataclass(frozen=True)
class Returns:
    """A command's ``RETURN (...)``: the options and the PARTIAL range (first, last) if any.
    The range counts from 1, or from the end when negative (RFC 9394 3.1: -1 is the last)."""

    options: frozenset
    partial: tuple[int, int] | None = None

    @property
    def answered(self) -> bool:
        """RFC 5182 2.4: SAVE alone gets no ESEARCH response."""
        return bool(self.options - {b"SAVE"}) or self.partial is not None


#: What SEARCH answers in IMAP4rev2 without RETURN (RFC 9051 6.4.4: ALL is assumed).
ALL = Returns(frozenset({b"ALL"}))


def ordered_set(numbers: list[int]) -> bytes:
    """Numbers in the order given, runs going up by one joined as ``a:b`` (RFC 5267 3.2:
    an ESORT ALL keeps the sort order, ``23,1:3``)."""
    out, i = [], 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(b"%d" % numbers[i] if i == j else b"%d:%d" % (numbers[i], numbers[j]))
        i = j + 1
    return b",".join(out)


def window(numbers: list, partial: tuple[int, int]) -> list:
    """The results at positions first..last (RFC 5267 4.4), or counted back from the end."""
    first, last = partial
    if first < 0:
        start, stop = max(0, len(numbers) + last), len(numbers) + first + 1
        return numbers[start:max(0, stop)]
    return numbers[first - 1:last]


def esearch(tag: bytes, uid: bool, numbers: list[int], returns: Returns, modseq: int | None,
            ordered: bool = False) -> bytes:
    """RFC 4731 3.1: ``ESEARCH (TAG "t") [UID] [MIN n] [MAX n] [ALL set] [PARTIAL (r set)]
    [COUNT n] [MODSEQ n]``.  With no match: no MIN, MAX or ALL (RFC 4731 3.1), PARTIAL says
    NIL (RFC 5267 4.4).  ``ordered``: a SORT's matches, MIN and MAX the first and last in
    sort order (RFC 5267 3.1)."""
    options = returns.options
    form = ordered_set if ordered else uid_set
    out = [b'ESEARCH (TAG "' + tag + b'")'] + ([b"UID"] if uid else [])
    if numbers:
        if b"MIN" in options:
            out.append(b"MIN %d" % (numbers[0] if ordered else min(numbers)))
        if b"MAX" in options:
            out.append(b"MAX %d" % (numbers[-1] if ordered else max(numbers)))
        if b"ALL" in options:
            out.append(b"ALL " + form(numbers))
    if returns.partial is not None:
        first, last = returns.partial
        part = window(numbers if ordered else sorted(numbers), returns.partial)
        out.append(b"PARTIAL (%d:%d %s)" % (first, last, form(part) if part else b"NIL"))
    if b"COUNT" in options:
        out.append(b"COUNT %d" % len(numbers))
    if modseq is not None and numbers:
        out.append(b"MODSEQ %d" % modseq)
    return b" ".join(out)


def saved_result(uids: list[int], returns: Returns, ordered: bool = False) -> frozenset:
    """RFC 5182 2.4: what SAVE keeps as ``$``: every match, or with MIN and/or MAX alone only
    those (and with PARTIAL alone only the window)."""
    options = returns.options & RESULT_OPTIONS
    if not uids or options & {b"ALL", b"COUNT"} or (not options and returns.partial is None):
        return frozenset(uids)
    keep = set()
    ranked = uids if ordered else sorted(uids)
    if b"MIN" in options:
        keep.add(ranked[0])
    if b"MAX" in options:
        keep.add(ranked[-1])
    if returns.partial is not None:
        keep.update(window(ranked, returns.partial))
    return frozenset(keep)


# -- update contexts (RFC 5267 4.3) --------------------------------------------------------------


@dataclass
class Context:
    """A SEARCH or SORT with UPDATE: its query, and its matches (UIDs, in result order) as
    the client was last told."""

    tag: bytes
    uid: bool
    tree: tuple
    criteria: list | None  # a SORT's criteria; None for SEARCH (mailbox order)
    order: list = field(default_factory=list)

    def header(self) -> bytes:
        return b'ESEARCH (TAG "' + self.tag + b'")' + (b" UID" if self.uid else b"")


def recompute(contexts: list[Context], folder, snap, recent: set) -> dict[bytes, list[int]]:
    """*Blocking.*  Each context's matches in the store's state ``snap``."""
    messages = snap.messages
    uids = [m.uid for m in messages]
    heads = folder.headers(uids) if any(searchmod.needs_header(c.tree) for c in contexts) else {}
    candidates = [searchmod.Candidate(folder, seq, m.uid, m, m.flags, m.uid in recent, heads.get(m.uid))
                  for seq, m in enumerate(messages, 1)]
    out = {}
    for ctx in contexts:
        found = searchmod.run(ctx.tree, candidates, len(uids), uids[-1] if uids else 0)
        if ctx.criteria is not None:
            groups = sortmod.groups_for(ctx.criteria)
            keys = sortmod.load_keys(folder, {c.uid: c.info for c in found}, groups) if groups else {}
            found = sortmod.order(found, ctx.criteria, keys)
        out[ctx.tag] = [c.uid for c in found]
    return out


def removals(contexts: list[Context], fresh: dict, view_uids: list[int]) -> list[bytes]:
    """REMOVEFROM responses, written *before* the EXPUNGEs they may precede (RFC 5267 4.3.4):
    sequence numbers are those of the view as the client still knows it."""
    seq = {u: i for i, u in enumerate(view_uids, 1)}
    lines = []
    for ctx in contexts:
        now = set(fresh.get(ctx.tag, ()))
        gone = [u for u in ctx.order if u not in now and (ctx.uid or u in seq)]
        if not gone:
            continue
        number = (lambda u: u) if ctx.uid else seq.__getitem__
        if ctx.criteria is None:  # RFC 5267 4.3.4: position 0, wherever they are
            pairs = [b"0 " + uid_set(number(u) for u in gone)]
        else:  # last first, so each position is right when the client applies it
            position = {u: i for i, u in enumerate(ctx.order, 1)}
            pairs = [b"%d %d" % (position[u], number(u)) for u in sorted(gone, key=position.get, reverse=True)]
        gone_set = set(gone)
        ctx.order = [u for u in ctx.order if u not in gone_set]
        lines.append(ctx.header() + b" REMOVEFROM (" + b" ".join(pairs) + b")")
    return lines


def additions(contexts: list[Context], fresh: dict, view_uids: list[int]) -> list[bytes]:
    """ADDTO responses, written *after* the EXISTS that numbers new messages (RFC 5267 4.3.3)."""
    seq = {u: i for i, u in enumerate(view_uids, 1)}
    lines = []
    for ctx in contexts:
        known = set(ctx.order)
        final = [u for u in fresh.get(ctx.tag, ctx.order) if u in known or ctx.uid or u in seq]
        added = [(i, u) for i, u in enumerate(final, 1) if u not in known]
        ctx.order = final
        if not added:
            continue
        number = (lambda u: u) if ctx.uid else seq.__getitem__
        if ctx.criteria is None:
            pairs = [b"0 " + uid_set(number(u) for _, u in added)]
        else:  # ascending final positions: each lands where it belongs
            pairs = [b"%d %d" % (i, number(u)) for i, u in added]
        lines.append(ctx.header() + b" ADDTO (" + b" ".join(pairs) + b")")
    return lines
