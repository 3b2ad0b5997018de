"""Comparators (RFC 4790 as used by RFC 5228 2.7.3) and match types (2.7.1, RFC 5231, regex draft).

``:matches`` and ``:regex`` run on the ``regex`` module with its ``timeout=`` so a hostile
pattern or value ends in a run-time error instead of pinning a delivery thread; each call
gets what is left of the run's regex budget.
"""

from __future__ import annotations

import functools
import re

try:  # the regex module: same syntax as re plus a per-call timeout
    import regex as _engine

    HAVE_TIMEOUT = True
except ImportError:  # pragma: no cover - the dependency is declared; this keeps a broken install filtering
    _engine = re
    HAVE_TIMEOUT = False

#: Without a timeout (no regex module), values given to :matches/:regex are cut to this size.
NO_TIMEOUT_INPUT = 4096

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = re.compile(r"[0-9]+")
INFINITY = float("inf")
_CLASS_ESCAPE = re.compile(r"\\[A-Za-z0-9]")


class RegexError(Exception):
    pass


class MatchTimeout(Exception):
    pass


def fold(text: str) -> str:
    """i;ascii-casemap: only A-Z fold, so lengths and offsets stay those of the original."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def fold_upper(text: str) -> str:
    """i;ascii-casemap for ordering (RFC 4790 9.2 maps a-z to A-Z: "_" sorts after "A")."""
    return text.upper() if text.isascii() else text.translate(_ASCII_UPPER)


def numeric(text: str) -> float:
    """i;ascii-numeric (RFC 4790 9.1): the leading digits, or positive infinity if none."""
    m = _DIGITS.match(text)
    return int(m.group()) if m else INFINITY


def not_ere(pattern: str) -> str | None:
    """Why ``pattern`` is not a POSIX ERE (regex draft 3: backreferences, word boundaries and
    other non-POSIX syntax SHOULD be syntax errors), or None.  Python would accept them."""
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        nxt = pattern[i + 1] if i + 1 < n else ""
        if c == "\\":
            if nxt.isalnum():
                return f"\\{nxt} is not POSIX ERE syntax"
            i += 2
        elif c == "[":
            start, i = i, _bracket_end(pattern, i)
            if i < 0:
                return None  # unterminated: the compiler reports it
            if _CLASS_ESCAPE.search(pattern, start, i):
                return "a backslash class inside [ ] is not POSIX ERE syntax"
        elif c == "(" and nxt == "?":
            return "(? groups are not POSIX ERE syntax"
        elif c in "*+?}" and nxt in ("?", "+"):
            return f"{c}{nxt} is not POSIX ERE syntax"
        else:
            i += 1
    return None


def _bracket_end(pattern: str, start: int) -> int:
    """The index after the bracket expression opening at ``start`` ([:class:] etc. inside), or -1."""
    i = start + 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):
        i += 1
    while i < len(pattern):
        if pattern[i] == "[" and pattern[i + 1:i + 2] in (":", "=", "."):
            close = pattern.find(pattern[i + 1] + "]", i + 2)
            if close < 0:
                return -1
            i = close + 2
        elif pattern[i] == "]":
            return i + 1
        else:
            i += 1
    return -1


@functools.lru_cache(maxsize=512)
def compile_regex(pattern: str, nocase: bool):
    reason = not_ere(pattern)
    if reason:
        raise RegexError(reason)
    # regex draft 3: "." is any character but a line end, "^" and "$" match at lines too;
    # the regex module's WORD flag makes CRLF (the message's line end) one line boundary
    flags = _engine.MULTILINE | getattr(_engine, "WORD", 0) | (_engine.IGNORECASE if nocase else 0)
    try:
        return _engine.compile(pattern, flags)
    except (_engine.error, re.error, ValueError, OverflowError) as e:
        raise RegexError(str(e)) from None


@functools.lru_cache(maxsize=512)
def compile_wildcard(pattern: str):
    """``*`` any run (as short as possible, RFC 5229 3.2's "[*] *" example), ``?`` one
    character, ``\\`` quotes the next one; anchored at both ends."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "*":
            out.append("(.*?)")
        elif ch == "?":
            out.append("(.)")
        else:
            out.append(re.escape(ch))
        i += 1
    return _engine.compile("".join(out), _engine.DOTALL)


def _octets(text: str) -> str:
    """The UTF-8 octets of ``text``, one character each (latin-1), for octet-wise matching."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def _text(octets: str) -> str:
    return octets.encode("latin-1").decode("utf-8", "replace")


def quote_wildcard(text: str) -> str:
    return re.sub(r"([*?\\])", r"\\\1", text)


def quote_regex(text: str) -> str:
    return re.sub(r"([\\.^$*+?(){}\[\]|])", r"\\\1", text)


def compare(comparator: str, a: str, b: str) -> int:
    if comparator == "i;ascii-numeric":
        x, y = numeric(a), numeric(b)
    elif comparator == "i;ascii-casemap":
        x, y = fold_upper(a), fold_upper(b)
    else:
        x, y = a, b
    return (x > y) - (x < y)


_RELATION = {
    "gt": lambda c: c > 0, "ge": lambda c: c >= 0, "lt": lambda c: c < 0,
    "le": lambda c: c <= 0, "eq": lambda c: c == 0, "ne": lambda c: c != 0,
}


class Matcher:
    """One test's match type and comparator applied to (values, keys).  ``timeout`` is a
    callable giving the seconds a regex call may take; ``groups`` holds the match variables
    of the last successful :matches/:regex (RFC 5229 3.2)."""

    __slots__ = ("kind", "relation", "comparator", "timeout", "tick", "groups")

    def __init__(self, cmd, timeout, tick=None, default_comparator: str = "i;ascii-casemap"):
        self.kind = cmd.tag("match", ":is")
        self.relation = cmd.targ("match")
        self.comparator = cmd.targ("comparator", default_comparator)
        self.timeout = timeout
        self.tick = tick
        self.groups: list[str] | None = None

    def count(self, n: int, keys) -> bool:
        """RFC 5231 4.2 :count: the number of values against each key."""
        rel = _RELATION[self.relation]
        return any(rel(compare(self.comparator, str(n), key)) for key in keys)

    def test(self, values, keys) -> bool:
        kind = self.kind
        for n, value in enumerate(values):
            if self.tick is not None and n % 64 == 63:  # many fields or parts: watch the deadline
                self.tick()
            for key in keys:
                if self.one(kind, value, key):
                    return True
        return False

    def one(self, kind: str, value: str, key: str) -> bool:
        comparator = self.comparator
        if kind == ":is":
            if comparator == "i;ascii-casemap":
                return fold(value) == fold(key)
            if comparator == "i;octet":
                return value == key
            return numeric(value) == numeric(key)
        if kind == ":contains":
            if comparator == "i;ascii-casemap":
                return fold(key) in fold(value)
            return key in value
        if kind == ":value":
            return _RELATION[self.relation](compare(comparator, value, key))
        if kind == ":matches":
            return self.wildcard(value, key)
        if kind == ":regex":
            return self.regex(value, key)
        return False

    def wildcard(self, value: str, key: str) -> bool:
        nocase = self.comparator == "i;ascii-casemap"
        if not any(c in key for c in "*?\\"):
            if (fold(value) == fold(key)) if nocase else value == key:
                self.groups = [value]
                return True
            return False
        octets = not (value.isascii() and key.isascii())
        if octets:  # RFC 5228 2.7.1: under these comparators "?" is exactly one octet
            value, key = _octets(value), _octets(key)
        pattern = compile_wildcard(fold(key) if nocase else key)
        m = self._run(pattern.fullmatch, fold(value) if nocase else value)
        if m is None:
            return False
        groups = [value] + [value[m.start(i):m.end(i)] for i in range(1, pattern.groups + 1)]
        self.groups = [_text(g) for g in groups] if octets else groups
        return True

    def regex(self, value: str, key: str) -> bool:
        try:
            pattern = compile_regex(key, self.comparator == "i;ascii-casemap")
        except RegexError as e:
            raise MatchTimeout(f"invalid regex {key!r}: {e}") from None
        m = self._run(pattern.search, value)
        if m is None:
            return False
        self.groups = [m.group(0)] + [g or "" for g in m.groups()]
        return True

    def _run(self, method, value: str):
        if not HAVE_TIMEOUT:
            return method(value[:NO_TIMEOUT_INPUT])
        try:
            return method(value, timeout=self.timeout())
        except TimeoutError:
            raise MatchTimeout("regular expression took too long") from None
