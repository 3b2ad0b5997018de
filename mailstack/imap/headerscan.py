"""SEARCH HEADER (and FROM, SUBJECT, ...) over a whole folder without a Python step per message.

A folder's header sections are joined, lower-cased, once (:class:`HeaderCorpus`) and kept
while the folder's messages stay the same (a UID's header never changes, so the list of UIDs
is the key).  A query whose every match must contain some plain needle (see
:func:`mailstack.imap.search.required_header_text`) then finds the few messages holding it
with ``bytes.find`` over the joined text; the others are ruled out without being looked at.
Headers that are not plain ASCII, or hold RFC 2047 encoded words, may decode to text the
bytes do not show: those messages are always candidates, and the full match decides.

Corpora are kept per process, the least recently used dropped past :data:`MAX_BYTES`.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import re
import threading
from collections import OrderedDict

MAX_BYTES = 32 * 1024 * 1024  # header text held for searches, per process (twice: as is, lower-cased)
_EIGHT_BIT = re.compile(rb"[\x80-\xff]+")

_lock = threading.Lock()
_corpora: OrderedDict = OrderedDict()  # folder path -> HeaderCorpus
_held = [0]


class HeaderCorpus:
    uidvalidity = 0

    def __init__(self, uids: list[int], heads: dict[int, bytes]):
        self.uids, self.heads = list(uids), heads
        present = [u for u in self.uids if u in heads] if len(heads) < len(self.uids) else self.uids
        self.present = present
        parts = list(map(heads.__getitem__, present))
        # Where each header starts in the text: the lengths summed, a separator after each.
        self.starts = [0, *itertools.accumulate(map(operator.add, map(len, parts), itertools.repeat(1)))][:-1]
        self.text = b"\n".join(parts).lower()
        self.size = 2 * len(self.text)
        self.unplain = self._holding(b"=?")  # encoded words (RFC 2047)
        if not self.text.isascii():  # one pass in C; then the 8-bit ones, which may be anything
            self.unplain |= {present[self._at(m.start())] for m in _EIGHT_BIT.finditer(self.text)}
        self.missing = set(self.uids) - set(present)  # no header at hand: the match reads the file

    def _at(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) - 1

    def _holding(self, needle: bytes) -> set[int]:
        """The UIDs whose lower-cased header contains ``needle`` (lower case) within itself."""
        found: set[int] = set()
        text, starts, present = self.text, self.starts, self.present
        i = text.find(needle)
        while i >= 0:
            k = self._at(i)
            end = starts[k + 1] - 1 if k + 1 < len(starts) else len(text)
            if i + len(needle) <= end:
                found.add(present[k])
                i = text.find(needle, end)  # the next message's header on
            else:
                i = text.find(needle, i + 1)  # across the boundary: not in this one
        return found

    def may_match(self, needles: list[bytes]) -> set[int]:
        """The UIDs that may match a query every match of which contains all ``needles``
        (none empty: the empty needle is in every header)."""
        result: set[int] | None = None
        for needle in needles:
            if not needle:
                raise ValueError("an empty needle rules nothing out")
            holding = self._holding(needle)
            result = holding if result is None else result & holding
        return (result or set()) | self.unplain | self.missing


def corpus(folder, uidvalidity: int, uids: list[int]) -> HeaderCorpus:
    """*Blocking.*  The corpus of ``uids`` (in the folder's order), kept or made now.  A UID
    names one message for good only under one UIDVALIDITY (RFC 3501 2.3.1.1): both are the key."""
    key = folder.path
    with _lock:
        kept = _corpora.get(key)
        if kept is not None and kept.uidvalidity == uidvalidity and kept.uids == uids:
            _corpora.move_to_end(key)
            return kept
    made = HeaderCorpus(uids, folder.headers(uids))
    made.uidvalidity = uidvalidity
    with _lock:
        old = _corpora.pop(key, None)
        if old is not None:
            _held[0] -= old.size
        if made.size <= MAX_BYTES:
            _corpora[key] = made
            _held[0] += made.size
            while _held[0] > MAX_BYTES and _corpora:
                _held[0] -= _corpora.popitem(last=False)[1].size
    return made
