"""Sieve tokens (RFC 5228 section 8.1): identifiers, tags, numbers, strings, specials.

Comments and white space are dropped here; every token carries its 1-based line and column
so the parser's and checker's errors point at the script text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SieveSyntaxError

#: Hostile-input bounds: a script is small text written by a person.
MAX_SCRIPT_BYTES = 1 << 20
MAX_STRING_BYTES = 256 * 1024

SPECIALS = frozenset("[](),;{}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+([KkMmGg])?")
_MULTIPLIER = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
#: RFC 5228 8.1: after "text:" only white space or a hash comment before the line break.
_TEXT_HEAD = re.compile(r"text:[ \t]*(#[^\n]*)?\n")
_SPACE = re.compile(r"[ \t\n]+")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "ident", "tag", "number", "string", or the special character itself
    value: object
    line: int
    column: int


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text`` (CRLF or LF line ends), or :class:`SieveSyntaxError`."""
    if len(text) > MAX_SCRIPT_BYTES:
        raise SieveSyntaxError(f"script larger than {MAX_SCRIPT_BYTES} bytes", 1, 1)
    text = text.replace("\r\n", "\n")
    tokens: list[Token] = []
    line, line_start = 1, 0
    pos, end = 0, len(text)
    while pos < end:
        ch = text[pos]
        if ch in " \t\n":
            m = _SPACE.match(text, pos)
            newlines = m.group().count("\n")
            if newlines:
                line += newlines
                line_start = text.rfind("\n", pos, m.end()) + 1
            pos = m.end()
            continue
        column = pos - line_start + 1
        start = pos
        if ch == "#":
            nl = text.find("\n", pos)
            pos = end if nl < 0 else nl
            continue
        if text.startswith("/*", pos):
            close = text.find("*/", pos + 2)
            if close < 0:
                raise SieveSyntaxError("unterminated /* comment", line, column)
            pos = close + 2
        elif ch in SPECIALS:
            tokens.append(Token(ch, ch, line, column))
            pos += 1
        elif ch == '"':
            value, pos = _quoted(text, pos, line, column)
            tokens.append(Token("string", value, line, column))
        elif ch == ":":
            m = _IDENT.match(text, pos + 1)
            if not m:
                raise SieveSyntaxError("':' must start a tag such as :is", line, column)
            tokens.append(Token("tag", ":" + m.group().lower(), line, column))
            pos = m.end()
        elif ch.isdigit():
            m = _NUMBER.match(text, pos)
            if m.end() < end and (text[m.end()].isalnum() or text[m.end()] == "_"):
                raise SieveSyntaxError(f"bad number {text[pos:m.end() + 1]!r}", line, column)
            digits = m.group().rstrip("KkMmGg")
            tokens.append(Token("number", int(digits) * _MULTIPLIER[m.group()[len(digits):].lower()], line, column))
            pos = m.end()
        elif _TEXT_HEAD.match(text, pos):
            value, pos = _multiline(text, _TEXT_HEAD.match(text, pos).end(), line, column)
            tokens.append(Token("string", value, line, column))
        elif _IDENT.match(text, pos):
            m = _IDENT.match(text, pos)
            tokens.append(Token("ident", m.group().lower(), line, column))
            pos = m.end()
        else:
            raise SieveSyntaxError(f"unexpected character {ch!r}", line, column)
        spanned = text.count("\n", start, pos)  # strings and /* */ comments may span lines
        if spanned:
            line += spanned
            line_start = text.rfind("\n", start, pos) + 1
    return tokens


def _quoted(text: str, start: int, line: int, column: int) -> tuple[str, int]:
    """RFC 5228 2.4.2: ``\\"`` and ``\\\\`` are escapes, any other backslash is dropped."""
    out = []
    pos = start + 1
    while True:
        close = text.find('"', pos)
        if close < 0:
            raise SieveSyntaxError("unterminated quoted string", line, column)
        back = text.find("\\", pos, close)
        if back < 0:
            out.append(text[pos:close])
            pos = close + 1
            break
        out.append(text[pos:back])
        if back + 1 < len(text):
            out.append(text[back + 1])
        pos = back + 2
        if pos - start > MAX_STRING_BYTES:
            break
    if pos - start > MAX_STRING_BYTES:
        raise SieveSyntaxError(f"string longer than {MAX_STRING_BYTES} bytes", line, column)
    return "".join(out).replace("\n", "\r\n"), pos


def _multiline(text: str, pos: int, line: int, column: int) -> tuple[str, int]:
    """RFC 5228 2.4.2: lines up to a lone ".", a leading "." of a line doubled (dot-stuffing)."""
    out = []
    begin = pos
    while True:
        nl = text.find("\n", pos)
        if nl < 0:
            raise SieveSyntaxError('unterminated text: string (no line with a lone ".")', line, column)
        row = text[pos:nl]
        pos = nl + 1
        if row == ".":
            break
        out.append(row[1:] if row.startswith("..") else row)
        out.append("\r\n")
        if pos - begin > MAX_STRING_BYTES:
            raise SieveSyntaxError(f"string longer than {MAX_STRING_BYTES} bytes", line, column)
    return "".join(out), pos
