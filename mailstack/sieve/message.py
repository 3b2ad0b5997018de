"""The message as the tests see it: header fields parsed once per run, lazily, without
building :mod:`email` objects (that cost is kept for the ``body`` test).

Values are unfolded, trimmed and RFC 2047-decoded (RFC 5228 2.7.2: tests compare decoded
text).  editheader (RFC 5293) changes the field list in place, so later tests see the
change, and :meth:`Message.header_bytes` gives the new header section.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import re
from email.header import Header

_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_FIELD_BREAK = re.compile(rb"\r?\n(?![ \t])")
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)[ \t\r\n]+(?==\?)")
_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LF = re.compile(rb"\r?\n")


def decode_2047(text: str) -> str:
    """Encoded words (RFC 2047 6.2): white space between adjacent ones is dropped."""
    if "=?" not in text:
        return text
    return _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub("", text))


def _decode_word(m: re.Match) -> str:
    charset = m.group(1).split("*", 1)[0]
    data = m.group(3)
    try:
        if m.group(2) in "bB":
            raw = base64.b64decode(data + "=" * (-len(data) % 4))
        else:
            raw = _QP_HEX.sub(lambda h: bytes([int(h.group(1), 16)]), data.replace("_", " ").encode("ascii"))
        return raw.decode(charset, "replace")
    except (LookupError, binascii.Error, UnicodeEncodeError, ValueError):
        return m.group()


def header_bounds(raw: bytes) -> tuple[int, int]:
    """(end of the header section, start of the body): the header keeps the line end of its
    last field, not the empty line after it.  Only offsets, so a large body is not copied."""
    if raw.startswith(b"\n"):
        return 0, 1
    if raw.startswith(b"\r\n"):
        return 0, 2
    m = _END_OF_HEADER.search(raw)
    if m is None:
        return len(raw), len(raw)
    return m.start() + (2 if raw[m.start():m.start() + 2] == b"\r\n" else 1), m.end()


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(header section, body)."""
    head_end, body_start = header_bounds(raw)
    return raw[:head_end], raw[body_start:]


class Field:
    __slots__ = ("name", "lower", "raw", "_value")

    def __init__(self, name: str, raw: bytes):
        self.name = name
        self.lower = name.lower()
        self.raw = raw  # the whole field, "Name: value" with its folding, no final line end
        self._value: str | None = None

    @property
    def value(self) -> str:
        if self._value is None:
            self._value = decode_2047(self.unfolded)
        return self._value

    @property
    def unfolded(self) -> str:
        """The value unfolded and trimmed, encoded words left as they are (for address parsing:
        a decoded display name may hold commas or brackets)."""
        return _UNFOLD.sub("", self.raw.partition(b":")[2].decode("utf-8", "replace")).strip(" \t\r\n")


class Message:
    """One run's view of the message (not shared between runs: editheader changes it)."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.size = len(raw)
        self._fields: list[Field] | None = None
        self._by_name: dict[str, list[Field]] = {}
        self._addresses: dict[str, list[str]] = {}
        self.edited = False

    @property
    def fields(self) -> list[Field]:
        if self._fields is None:
            head = self.raw[:header_bounds(self.raw)[0]]
            fields = []
            for chunk in _FIELD_BREAK.split(head.rstrip(b"\r\n")) if head else ():
                name, colon, _ = chunk.partition(b":")
                name = name.rstrip(b" \t")
                if colon and name and b" " not in name:
                    fields.append(Field(name.decode("ascii", "replace"), chunk))
            self._fields = fields
        return self._fields

    def named(self, name: str) -> list[Field]:
        key = name.lower()
        found = self._by_name.get(key)
        if found is None:
            found = self._by_name[key] = [f for f in self.fields if f.lower == key]
        return found

    def values(self, name: str) -> list[str]:
        return [f.value for f in self.named(name)]

    def addresses(self, name: str, fields: list[Field] | None = None) -> list[str]:
        """The addr-specs of an address header (RFC 5228 5.1), groups and names dropped."""
        key = name.lower()
        if fields is None and key in self._addresses:
            return self._addresses[key]
        values = [f.unfolded for f in (self.named(name) if fields is None else fields)]
        found = [addr for _, addr in email.utils.getaddresses(values) if addr]
        if fields is None:
            self._addresses[key] = found
        return found

    def _changed(self) -> None:
        self._by_name.clear()
        self._addresses.clear()
        self.edited = True

    def add(self, name: str, value: str, last: bool) -> None:
        """RFC 5293 4: a new field, first unless :last; non-ASCII values RFC 2047-encoded."""
        if not value.isascii():
            value = Header(value, "utf-8", header_name=name).encode()
        # every line break becomes a fold: a script cannot start a field of its own (or the body)
        lines = [line.strip(" \t") for line in _LINE_BREAK.split(value)]
        value = "\r\n ".join(line for line in lines if line)
        text = _fold(f"{name}: {value}")
        if any(len(line) > MAX_LINE for line in text.split("\r\n")):
            raise ValueError(f"a word longer than {MAX_LINE} characters cannot be folded (RFC 5322 2.1.1)")
        field = Field(name, text.encode("utf-8"))
        fields = self.fields
        if last:
            fields.append(field)
        else:
            fields.insert(0, field)
        self._changed()

    def delete(self, doomed: list[Field]) -> None:
        if doomed:
            ids = {id(f) for f in doomed}
            self._fields = [f for f in self.fields if id(f) not in ids]
            self._changed()

    def header_bytes(self) -> bytes:
        """The fields, each ending in CRLF (folds too, for an LF-only message), no empty line."""
        return b"".join(_LF.sub(b"\r\n", f.raw) + b"\r\n" for f in self.fields)


MAX_LINE = 998  # RFC 5322 2.1.1
_FOLD_AT = 78


def _fold(text: str) -> str:
    """RFC 5293 4: a field too long for a line is folded at its white space (RFC 5322 2.2.3)."""
    out = []
    for line in text.split("\r\n"):
        while len(line) > _FOLD_AT:
            cut = line.rfind(" ", 1, _FOLD_AT + 1)
            if cut <= 0:
                cut = line.find(" ", _FOLD_AT + 1)
            if cut <= 0:
                break
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return "\r\n".join(out)


def address_part(address: str, part: str) -> str | None:
    """RFC 5228 2.7.4 and RFC 5233 4 (separator "+"); None: the part does not exist."""
    if part == ":all":
        return address
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if part == ":localpart":
        return local
    if part == ":domain":
        return domain
    user, plus, detail = local.partition("+")
    if part == ":user":
        return user
    return detail if plus else None
