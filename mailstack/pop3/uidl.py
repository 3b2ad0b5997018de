"""POP3 unique-ids (RFC 1939 section 7) from ``[pop3] uidl_format``, written in the syntax of
Dovecot 2.3's ``pop3_uidl_format``, so a value taken from dovecot.conf gives the same UIDLs.

Variables: ``%u`` UID, ``%v`` UIDVALIDITY, ``%f`` the Maildir file's base name (without ``:2,``
and the flags), ``%g`` the GUID, which for Maildir is the base name too (what Dovecot uses when
``dovecot-uidlist`` stores no ``G`` extension; a stored GUID is not read), ``%%`` a percent
sign; long names ``%{uid}``, ``%{uidvalidity}``, ``%{filename}``, ``%{guid}`` (Dovecot 2.4's
names; 2.3 refuses them here).  ``%m`` (the MD5 of an mbox message's headers) is refused: a
Maildir has no such value, and Dovecot's POP3 fails every UIDL command with it on Maildir.

Between ``%`` and the variable, as Dovecot's variable expansion has them: modifiers, applied
left to right (``X`` the leading decimal digits as lowercase hex, ``U``/``L`` upper/lower
case, ``M`` MD5 in hex, ``R`` reversed, ``T`` trailing blanks trimmed, ``E`` quotes and
backslashes escaped, ``D`` dots as ``,dc=``), after an optional ``[offset.]width``: a width
keeps that many characters, ``0<width>`` pads with zeros instead, and a negative offset or
width (only with the dot) counts from the end.  The hashes ``H``/``N`` are refused (32 bits:
two messages can share one).

A UIDL that comes out as something RFC 1939 does not allow (empty, over 70 characters, or a
character outside 0x21-0x7E, e.g. a file name with odd bytes) is replaced, for that message,
by the MD5 in hex of "<uidvalidity>.<uid>": still stable and unique.  What the format itself
can be checked for, it is, at start-up (:func:`check`).  A UIDL another server stored for a
message (Dovecot's ``P`` extension, ``FolderAPI.pop3_uidls``) is sent instead of the format's,
so its clients download nothing again; it passes the same check.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

DEFAULT = "%08Xu%08Xv"  # Dovecot's default; "%v.%u" was its old one, and what mailstack sent before
MAX_LENGTH = 70  # RFC 1939 section 7: 1 to 70 characters in the range 0x21 to 0x7E

NAMES = {"u": "uid", "v": "uidvalidity", "f": "filename", "g": "guid", "m": "md5"}
MODIFIERS = "XULMRTED"
REFUSED_MODIFIERS = {"H": "a 32-bit hash", "N": "a 32-bit hash"}
_SPEC = re.compile(r"(?:(-?\d+|)\.)?(-?\d+)?")


class UidlFormatError(ValueError):
    """The format cannot be used; the message says why (for the configuration error)."""


def _valid(uidl: str) -> bool:
    return 1 <= len(uidl) <= MAX_LENGTH and all("\x21" <= c <= "\x7e" for c in uidl)


def _hex(value: str) -> str:
    digits = re.match(r"\d*", value).group()
    return "%x" % int(digits) if digits else "0"


_APPLY = {
    "X": _hex,
    "U": str.upper,
    "L": str.lower,
    "M": lambda s: hashlib.md5(s.encode("utf-8", "surrogateescape")).hexdigest(),
    "R": lambda s: s[::-1],
    "T": str.rstrip,
    "E": lambda s: s.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'"),
    "D": lambda s: s.replace(".", ",dc="),
}


@dataclass(frozen=True)
class Variable:
    name: str  # a long name of NAMES
    modifiers: str
    offset: int | None
    width: int | None
    zero: bool  # pad to the width with "0" instead of cutting

    def expand(self, values: dict[str, str]) -> str:
        s = values[self.name]
        for m in self.modifiers:
            s = _APPLY[m](s)
        if self.offset is not None:
            s = s[self.offset:] if self.offset >= 0 else s[max(len(s) + self.offset, 0):]
        if self.width is not None:
            if self.width < 0:
                s = s[: max(len(s) + self.width, 0)]
            elif self.zero:
                s = s.rjust(self.width, "0")
            else:
                s = s[: self.width]
        return s

    def bounds(self) -> tuple[int, int | None]:
        """The shortest and longest expansion (None: no limit), for the start-up check."""
        lo, hi = (1, 10) if self.name in ("uid", "uidvalidity") else (1, None)  # UIDs are 32-bit
        for m in self.modifiers:
            if m == "X":
                lo, hi = 1, 8 if self.name in ("uid", "uidvalidity") else 16
            elif m == "M":
                lo, hi = 32, 32
            elif m == "T":
                lo = 0
            elif m in "ED":
                hi = None if hi is None else hi * 4
        if self.offset is not None:
            if self.offset >= 0:
                lo, hi = max(lo - self.offset, 0), None if hi is None else max(hi - self.offset, 0)
            else:
                lo, hi = min(lo, -self.offset), -self.offset if hi is None else min(hi, -self.offset)
        if self.width is not None:
            if self.width < 0:
                lo, hi = max(lo + self.width, 0), None if hi is None else max(hi + self.width, 0)
            elif self.zero:
                lo, hi = max(lo, self.width), None if hi is None else max(hi, self.width)
            else:
                lo, hi = min(lo, self.width), self.width if hi is None else min(hi, self.width)
        return lo, hi


def _parse_variable(text: str, i: int) -> tuple[Variable, int]:
    """The variable whose ``%`` is at ``i - 1``; (it, index after it)."""
    spec = _SPEC.match(text, i)
    offset_text, width_text = spec.group(1), spec.group(2)
    if offset_text is None and width_text is not None and width_text.startswith("-"):
        raise UidlFormatError(f"%{width_text}: a negative width needs an offset before it (%0.{width_text}...)")
    offset = None if offset_text is None else int(offset_text or "0")
    zero = width_text is not None and width_text.lstrip("-").startswith("0") and len(width_text.lstrip("-")) > 1
    if zero and width_text.startswith("-"):
        raise UidlFormatError(f"%{text[i:spec.end()]}: zero padding takes a positive width")
    width = None if width_text is None else int(width_text)
    j, modifiers = spec.end(), ""
    while j < len(text) and text[j].isupper():
        if text[j] in REFUSED_MODIFIERS:
            raise UidlFormatError(f"modifier %{text[j]} ({REFUSED_MODIFIERS[text[j]]}: two messages can get the same "
                                  "UIDL) is not supported")
        if text[j] not in MODIFIERS:
            raise UidlFormatError(f"unknown variable or modifier %{text[j]} (variables: %u %v %f %g; modifiers: "
                                  f"{' '.join('%' + m for m in MODIFIERS)})")
        modifiers += text[j]
        j += 1
    if j >= len(text):
        raise UidlFormatError(f"%{text[i:]} at the end has no variable")
    if text[j] == "{":
        end = text.find("}", j)
        if end < 0:
            raise UidlFormatError(f"%{text[i:]}: no closing }}")
        name, j = text[j + 1 : end], end + 1
        if name not in NAMES.values():
            raise UidlFormatError(f"unknown variable %{{{name}}} (known: %{{uid}} %{{uidvalidity}} %{{filename}} "
                                  "%{guid})")
    elif text[j] in NAMES:
        name, j = NAMES[text[j]], j + 1
    else:
        raise UidlFormatError(f"unknown variable %{text[j]} (variables: %u %v %f %g, or %% for a percent sign)")
    if name == "md5":
        raise UidlFormatError("%m is the MD5 of an mbox message's headers, which a Maildir store does not have "
                              "(Dovecot's POP3 fails UIDL with it on Maildir); use %g, %f or %Mf")
    return Variable(name, modifiers, offset, width, zero), j


def parse(text: str) -> list[str | Variable]:
    """The format as literal strings and variables; raises UidlFormatError."""
    parts: list[str | Variable] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "%":
            if not "\x21" <= c <= "\x7e":
                raise UidlFormatError(f"{c!r} cannot be in a UIDL: 1-70 characters 0x21-0x7E (RFC 1939 section 7)")
            parts.append(c)
            i += 1
        elif text[i + 1 : i + 2] == "%":
            parts.append("%")
            i += 2
        elif i + 1 == len(text):
            raise UidlFormatError("ends with a lone % (write %% for a percent sign)")
        else:
            variable, i = _parse_variable(text, i + 1)
            parts.append(variable)
    return parts


def check(text: str) -> list[str | Variable]:
    """:func:`parse`, and refuse a format whose UIDLs cannot be valid and unique (RFC 1939 7)."""
    if not text:
        raise UidlFormatError(f"must not be empty (Dovecot's default is {DEFAULT!r})")
    parts = parse(text)
    names = {p.name for p in parts if isinstance(p, Variable)}
    if not names & {"uid", "filename", "guid"}:
        raise UidlFormatError("needs %u, %f or %g: without one every message gets the same UIDL, "
                              "which must be unique (RFC 1939 section 7)")
    lo = hi = 0
    for p in parts:
        plo, phi = (len(p), len(p)) if isinstance(p, str) else p.bounds()
        lo, hi = lo + plo, None if hi is None or phi is None else hi + phi
    if lo > MAX_LENGTH:
        raise UidlFormatError(f"expands to at least {lo} characters; a UIDL has at most {MAX_LENGTH} (RFC 1939 section 7)")
    if hi is not None and hi > MAX_LENGTH and not names & {"filename", "guid"}:  # names: checked per message
        raise UidlFormatError(f"can expand to {hi} characters; a UIDL has at most {MAX_LENGTH} (RFC 1939 section 7)")
    if hi == 0:
        raise UidlFormatError("always expands to nothing")
    return parts


class UidlFormat:
    """A checked format; :meth:`uidl` makes one message's UIDL."""

    def __init__(self, text: str = DEFAULT):
        self.text = text
        self.parts = check(text)

    def expand(self, uid: int, uidvalidity: int, base: str) -> str:
        values = {"uid": str(uid), "uidvalidity": str(uidvalidity), "filename": base, "guid": base}
        return "".join(p if isinstance(p, str) else p.expand(values) for p in self.parts)

    def uidl(self, uid: int, uidvalidity: int, base: str, stored: str | None = None) -> tuple[str, bool]:
        """(UIDL, whether it is the substitute for an invalid one).  ``stored``: a UIDL another
        server gave the message (Dovecot's ``P`` extension), used instead of the format."""
        value = stored if stored is not None else self.expand(uid, uidvalidity, base)
        if _valid(value):
            return value, False
        return hashlib.md5(f"{uidvalidity}.{uid}".encode()).hexdigest(), True
