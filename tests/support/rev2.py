"""Running the IMAP4rev1 conformance tests in IMAP4rev2 mode as well (RFC 9051).

A test states the IMAP4rev1 answer (RFC 3501).  In IMAP4rev2 mode (after ``ENABLE IMAP4rev2``,
RFC 9051 6.3.1) the client returns :class:`Replies`, whose ``==`` compares with that answer
turned into the IMAP4rev2 one by :func:`rev2_form`, which holds the differences in one place:

* no ``\\Recent`` flag and no ``RECENT`` response (RFC 9051 2.3.2, 7.4 dropped both);
* no ``OK [UNSEEN n]`` after SELECT (RFC 9051 has no UNSEEN response code);
* SELECT and EXAMINE also answer ``LIST`` with the mailbox's name and attributes (RFC 9051
  6.3.2); the tests select mailboxes without children, so ``(\\HasNoChildren)``;
* SEARCH answers ESEARCH, ``ALL`` assumed (RFC 9051 6.4.4, RFC 4731 3.1), and nothing but the
  tag when nothing matched.
"""

from __future__ import annotations

import re

ENABLE = (b"E2", b"ENABLE IMAP4rev2")
ENABLED = [b"* ENABLED IMAP4rev2", b"E2 OK ENABLE completed"]

_RECENT_LINE = re.compile(rb"\A\* \d+ RECENT\Z")
_UNSEEN_LINE = re.compile(rb"\A\* OK \[UNSEEN \d+\]")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_PLAIN_SEARCH = re.compile(rb"\A(UID )?SEARCH (?!RETURN )", re.IGNORECASE)
_SEARCH_LINE = re.compile(rb"\A\* SEARCH((?: \d+)*)(?: \(MODSEQ (\d+)\))?\Z")
_SELECT = re.compile(rb'\A(?:SELECT|EXAMINE) ("?)([^" ]+)\1', re.IGNORECASE)


def compact(numbers: list[int]) -> bytes:
    out, i = [], 0
    numbers = sorted(numbers)
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(b"%d" % numbers[i] if i == j else b"%d:%d" % (numbers[i], numbers[j]))
        i = j + 1
    return b",".join(out)


def _without_recent(match: re.Match) -> bytes:
    flags = [f for f in match.group(1).split(b" ") if f and f != b"\\Recent"]
    return b"FLAGS (" + b" ".join(flags) + b")"


def rev2_form(lines: list[bytes], tag: bytes, command: bytes) -> list[bytes]:
    """The IMAP4rev2 answer to ``command`` whose IMAP4rev1 answer is ``lines``."""
    out = []
    search = _PLAIN_SEARCH.match(command)
    select = _SELECT.match(command)
    for line in lines:
        if _RECENT_LINE.match(line) or _UNSEEN_LINE.match(line):
            continue
        line = _FLAGS.sub(_without_recent, line)  # a FETCH's FLAGS, also after a literal
        found = _SEARCH_LINE.match(line) if search else None
        if found:
            numbers = [int(n) for n in found.group(1).split()]
            line = b'* ESEARCH (TAG "' + tag + b'")' + (b" UID" if search.group(1) else b"")
            if numbers:
                line += b" ALL " + compact(numbers) + (b" MODSEQ " + found.group(2) if found.group(2) else b"")
        out.append(line)
        if select and line.startswith(b"* OK [HIGHESTMODSEQ "):
            out.append(b'* LIST (\\HasNoChildren) "/" "' + select.group(2) + b'"')
    return out


class Replies(list):
    """A command's lines in IMAP4rev2 mode, equal to the IMAP4rev1 answer a test states."""

    __hash__ = None

    def __init__(self, lines: list[bytes], tag: bytes, command: bytes):
        super().__init__(lines)
        self.tag, self.command = tag, command

    def __eq__(self, other):
        if isinstance(other, list) and not isinstance(other, Replies):
            return list(self) == rev2_form(other, self.tag, self.command)
        return list.__eq__(self, other)

    def __ne__(self, other):
        return not self == other
