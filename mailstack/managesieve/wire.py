"""ManageSieve's wire syntax (RFC 5804 section 4): reading a command's tokens, writing replies.

A command is an atom followed by arguments separated by one space: quoted strings
(``"..."`` with ``\\"`` and ``\\\\`` escapes, at most 1024 octets, RFC 5804 4), literals
(``{n+}`` CRLF n octets; the synchronising form ``{n}`` is read the same way: ManageSieve has
no continuation request) and numbers (32 bits).  A literal ends a line; the command goes on
in the next line, which is empty or starts with a space.  :func:`parse_fragment` reads one
such line; the session collects the literal's octets in between.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_QUOTED = 1024  # RFC 5804 4: quoted strings are at most 1024 octets
MAX_NUMBER = 4294967295  # RFC 5804 4: number = a 32-bit unsigned number
_LITERAL = re.compile(rb"\{(\d{1,20})(\+?)\}$")
_ATOM = re.compile(rb"[A-Za-z][A-Za-z0-9-]*")


class SyntaxProblem(Exception):
    """A command that does not parse; ``str()`` is safe to send."""


class Atom(bytes):
    """A bare word: the command name (case-insensitive)."""


class Number(int):
    pass


@dataclass
class Fragment:
    """One line of a command: its tokens, and the size of the literal that ends it (None: the
    command is complete)."""

    tokens: list
    literal: int | None = None


def parse_fragment(line: bytes, first: bool) -> Fragment:
    """Tokens of one line.  ``first``: the command's first line (it starts with the command
    name); a later line (after a literal) is empty or begins with a space."""
    tokens: list = []
    i, n = 0, len(line)
    if not first:
        if not line:
            return Fragment(tokens)
        if line[:1] != b" ":
            raise SyntaxProblem("expected a space after the literal")
        i = 1
    while i < n:
        c = line[i : i + 1]
        if c == b'"':
            value, i = _quoted(line, i)
            tokens.append(value)
        elif c == b"{":
            m = _LITERAL.match(line, i)
            if m is None:
                raise SyntaxProblem("bad literal: use {n+} at the end of a line")
            return Fragment(tokens, int(m.group(1)))
        elif c.isdigit():
            end = i
            while end < n and line[end : end + 1].isdigit():
                end += 1
            if end - i > 10 or int(line[i:end]) > MAX_NUMBER:
                raise SyntaxProblem("number out of range (32 bits)")
            tokens.append(Number(int(line[i:end])))
            i = end
        else:
            m = _ATOM.match(line, i)
            if m is None:
                raise SyntaxProblem("unexpected character in the command")
            tokens.append(Atom(m.group(0)))
            i = m.end()
        if i < n:
            if line[i : i + 1] != b" ":
                raise SyntaxProblem("arguments must be separated by one space")
            i += 1
            if i == n:
                raise SyntaxProblem("a space at the end of the command")
    return Fragment(tokens)


def _quoted(line: bytes, start: int) -> tuple[bytes, int]:
    out = bytearray()
    i = start + 1
    while i < len(line):
        c = line[i]
        if c == 0x22:
            if len(out) > MAX_QUOTED:
                raise SyntaxProblem(f"quoted string longer than {MAX_QUOTED} octets (use a literal)")
            return bytes(out), i + 1
        if c == 0x5C:
            nxt = line[i + 1 : i + 2]
            if nxt not in (b'"', b"\\"):
                raise SyntaxProblem("in a quoted string a backslash may only escape a double quote or a backslash")
            out += nxt
            i += 2
            continue
        if c in (0, 0x0D, 0x0A):
            raise SyntaxProblem("NUL, CR or LF in a quoted string")
        out.append(c)
        i += 1
    raise SyntaxProblem("unterminated quoted string")


# -- replies --------------------------------------------------------------------------------


def string(value: bytes | str, escape: bool = False) -> bytes:
    """A string as the server sends it (RFC 5804 4): quoted when it can be, else a literal
    ``{n}`` CRLF value, as the RFC's LISTSCRIPTS example sends a name with a quote in it.
    ``escape``: a double quote or backslash is escaped in a quoted string instead (for the
    text of a response, which clients show)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    quoted = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') if escape else value
    specials = (b"\r", b"\n", b"\0") if escape else (b"\r", b"\n", b"\0", b'"', b"\\")
    if len(quoted) <= MAX_QUOTED and not any(b in value for b in specials):
        return b'"' + quoted + b'"'
    return b"{%d}\r\n" % len(value) + value


def response(kind: bytes, text: str | None = None, code: bytes | None = None) -> bytes:
    """``OK`` / ``NO`` / ``BYE`` [SP "(" code ")"] [SP string] CRLF (RFC 5804 4, response-oknobye)."""
    parts = [kind]
    if code:
        parts.append(b"(" + code + b")")
    if text:
        parts.append(string(text, escape=True))
    return b" ".join(parts) + b"\r\n"
