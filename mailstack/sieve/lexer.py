"""Sieve tokens (RFC 5228 section 8.1): identifiers, tags, numbers, strings, specials.

Comments and white space are dropped here; every token carries its 1-based line and column
so the parser's and checker's errors point at the script text.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import SieveSyntaxError

#: Hostile-input bounds: a script is small text written by a person.
MAX_SCRIPT_BYTES = 1 << 20
MAX_STRING_BYTES = 256 * 1024

_MULTIPLIER = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class Token(NamedTuple):
    kind: str  # "ident", "tag", "number", "string", or the special character itself
    value: object
    line: int
    column: int


#: One pass over the common tokens; strings, "text:" and /* */ are handled by hand.
_MASTER = re.compile(r"""
    (?P<space>[ \t\n]+)
  | (?P<hash>\#[^\n]*)
  | (?P<special>[\[\](),;{}])
  | (?P<quote>")
  | (?P<bracket>/\*)
  | (?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+[KkMmGg]?)
  | (?P<text>text:[ \t]*(?:\#[^\n]*)?\n)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)
_WORD_CHAR = re.compile(r"[A-Za-z0-9_]")


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text`` (CRLF or LF line ends), or :class:`SieveSyntaxError`."""
    if len(text) > MAX_SCRIPT_BYTES:
        raise SieveSyntaxError(f"script larger than {MAX_SCRIPT_BYTES} bytes", 1, 1)
    text = text.replace("\r\n", "\n")
    tokens: list[Token] = []
    append = tokens.append
    line, line_start = 1, 0
    pos, end = 0, len(text)
    match = _MASTER.match
    while pos < end:
        m = match(text, pos)
        column = pos - line_start + 1
        if m is None:
            if text[pos] == ":":
                raise SieveSyntaxError("':' must start a tag such as :is", line, column)
            raise SieveSyntaxError(f"unexpected character {text[pos]!r}", line, column)
        kind = m.lastgroup
        start, pos = pos, m.end()
        if kind == "space" or kind == "hash":
            pass
        elif kind == "special":
            append(Token(m.group(), m.group(), line, column))
        elif kind == "ident":
            append(Token("ident", m.group().lower(), line, column))
        elif kind == "tag":
            append(Token("tag", m.group().lower(), line, column))
        elif kind == "quote":
            value, pos = _quoted(text, start, line, column)
            append(Token("string", value, line, column))
        elif kind == "number":
            if pos < end and _WORD_CHAR.match(text, pos):
                raise SieveSyntaxError(f"bad number {text[start:pos + 1]!r}", line, column)
            digits = m.group().rstrip("KkMmGg")
            append(Token("number", int(digits) * _MULTIPLIER[m.group()[len(digits):].lower()], line, column))
        elif kind == "text":
            value, pos = _multiline(text, pos, line, column)
            append(Token("string", value, line, column))
        else:  # bracket comment
            close = text.find("*/", pos)
            if close < 0:
                raise SieveSyntaxError("unterminated /* comment", line, column)
            pos = close + 2
        if kind != "special" and kind != "ident" and kind != "tag":
            spanned = text.count("\n", start, pos)
            if spanned:
                line += spanned
                line_start = text.rfind("\n", start, pos) + 1
    return tokens


_QUOTED_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)  # linear: no rescanning per escape
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _quoted(text: str, start: int, line: int, column: int) -> tuple[str, int]:
    """RFC 5228 2.4.2: ``\\"`` and ``\\\\`` are escapes, any other backslash is dropped."""
    m = _QUOTED_BODY.match(text, start + 1)
    end = m.end()
    if end - start > MAX_STRING_BYTES:
        raise SieveSyntaxError(f"string longer than {MAX_STRING_BYTES} bytes", line, column)
    if end >= len(text) or text[end] != '"':
        raise SieveSyntaxError("unterminated quoted string", line, column)
    body = m.group()
    if "\\" in body:
        body = _ESCAPE.sub(r"\1", body)
    return body.replace("\n", "\r\n"), end + 1


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
