"""IMAP command arguments (RFC 3501 section 9, the formal syntax), parsed from a whole command.

A command (its lines and literals, see :mod:`mailstack.imap.reader`) is first split into
tokens: :class:`Atom` (NIL, numbers, sequence sets, flags, FETCH attributes), :class:`String`
(quoted or literal: a string, never NIL), parenthesised lists as Python lists, and APPEND's
message as the reader's :class:`~mailstack.imap.reader.Spool`.  Each command's grammar then
takes its arguments from an :class:`Arguments` cursor; a syntax error is :class:`ParseError`
(the session answers BAD).

The tokenizer is the forgiving one IMAP servers are tested against: an atom is any run of
characters but space, parentheses, quote, ``{`` and controls (so every ATOM-CHAR and the list
wildcards parse, RFC 3501 9 ``list-char``), and an atom may hold a bracketed part with spaces
(``BODY[HEADER.FIELDS (To From)]<0.512>`` is one FETCH attribute).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailstack.imap import search as searchmod
from mailstack.imap import sort as sortmod
from mailstack.imap import thread as threadmod
from mailstack.imap.errors import shown
from mailstack.imap.reader import RawCommand, Spool
from mailstack.imap.results import Returns
from mailstack.imap.view import SAVED

MAX_DEPTH = 64  # nesting of parenthesised lists


class ParseError(ValueError):
    """A syntax error in a command (tagged BAD ``syntax error: ...``)."""


class Atom(bytes):
    """An atom as the client sent it (compare ``.upper()`` for keywords)."""


class String(bytes):
    """A quoted string or a literal."""


_DELIMITERS = b' ()"\t'


def tokens(command: RawCommand, start: int = 0) -> list:
    """The command's tokens from offset ``start`` of its first text, lists nested."""
    if command.misplaced_literal8:
        raise ParseError("literal8 (~{n}) is only for APPEND message data (RFC 3516 4.4)")
    stack: list[list] = [[]]
    for n, text in enumerate(command.texts):
        _scan(text[start:] if n == 0 else text, stack)
        if n < len(command.literals):
            lit = command.literals[n]
            stack[-1].append(lit if isinstance(lit, Spool) else String(lit))
    if len(stack) != 1:
        raise ParseError("unbalanced parentheses")
    return stack[0]


def _scan(text: bytes, stack: list[list]) -> None:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in b" \t":
            i += 1
        elif c == 0x28:  # (
            if len(stack) > MAX_DEPTH:
                raise ParseError("lists nested too deeply")
            stack.append([])
            i += 1
        elif c == 0x29:  # )
            if len(stack) == 1:
                raise ParseError("unbalanced parentheses")
            inner = stack.pop()
            stack[-1].append(inner)
            i += 1
        elif c == 0x22:  # "
            value, i = _quoted(text, i + 1)
            stack[-1].append(String(value))
        else:
            j = i
            while j < n and text[j] not in _DELIMITERS:
                if text[j] == 0x5B:  # [ ... ] may hold spaces and parentheses (FETCH sections)
                    close = text.find(b"]", j)
                    if close > 0:
                        j = close
                j += 1
            word = text[i:j]
            if any(b < 0x20 or b == 0x7F for b in word):
                raise ParseError("control characters are not allowed in an atom")
            if b"{" in word:  # RFC 3501 9: atom-specials; "{-100}x" is neither literal nor atom
                raise ParseError("'{' is not allowed in an atom (a literal is {n} at the end of a line)")
            stack[-1].append(Atom(word))
            i = j


def _quoted(text: bytes, i: int) -> tuple[bytes, int]:
    """RFC 3501 4.3: ``\\`` escapes ``"`` and ``\\``; returns (value, index after the quote)."""
    out = bytearray()
    n = len(text)
    while i < n:
        c = text[i]
        if c == 0x5C and i + 1 < n:
            out.append(text[i + 1])
            i += 2
        elif c == 0x22:
            return bytes(out), i + 1
        else:
            out.append(c)
            i += 1
    raise ParseError("unmatched quote")


def quote(data: bytes) -> bytes:
    """A quoted string (RFC 3501 4.3) for ``data`` (which must not hold CR or LF)."""
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# -- the argument cursor ------------------------------------------------------------------------


class Arguments:
    """A command's tokens, taken one argument at a time."""

    def __init__(self, items: list):
        self.items, self.i = items, 0

    def more(self) -> bool:
        return self.i < len(self.items)

    def peek(self):
        return self.items[self.i] if self.more() else None

    def next(self, what: str):
        if not self.more():
            raise ParseError(f"missing {what}")
        item = self.items[self.i]
        self.i += 1
        return item

    def end(self) -> None:
        if self.more():
            raise ParseError("too many arguments")

    def rest(self) -> list:
        out, self.i = self.items[self.i :], len(self.items)
        return out

    def atom(self, what: str = "argument") -> Atom:
        item = self.next(what)
        if not isinstance(item, Atom):
            raise ParseError(f"{what} must be an atom")
        return item

    def astring(self, what: str = "argument") -> bytes:
        """astring (RFC 3501 9): an atom (``]`` allowed), a quoted string or a literal."""
        item = self.next(what)
        if isinstance(item, String):
            return bytes(item)
        if not isinstance(item, Atom) or any(c in b'{\\' or c > 0x7E for c in item):
            raise ParseError(f"invalid {what}")
        return bytes(item)

    def list(self, what: str) -> list:
        item = self.next(what)
        if not isinstance(item, list):
            raise ParseError(f"{what} must be a parenthesised list")
        return item

    def optional_list(self) -> list | None:
        return self.next("list") if isinstance(self.peek(), list) else None

    def seqset(self) -> list:
        """A sequence set (RFC 3501 9) -> [(low, high)], None for ``*``; ``$`` is the saved
        search result (RFC 5182 2.1), :data:`~mailstack.imap.view.SAVED`."""
        item = self.atom("sequence set")
        if item == b"$":
            return SAVED
        try:
            return searchmod.parse_seqset(item)
        except searchmod.SearchSyntaxError as e:
            raise ParseError(str(e)) from None


def atoms(items: list, what: str) -> list[bytes]:
    if not all(isinstance(x, Atom) for x in items):
        raise ParseError(f"{what} must be atoms")
    return [bytes(x) for x in items]


# -- one grammar per command: Arguments -> the handler's positional arguments --------------------


def no_arguments(a: Arguments) -> tuple:
    a.end()
    return ()


def one_mailbox(a: Arguments) -> tuple:
    name = a.astring("mailbox name")
    a.end()
    return (name,)


def two_mailboxes(a: Arguments) -> tuple:
    old, new = a.astring("mailbox name"), a.astring("new mailbox name")
    a.end()
    return old, new


def all_tokens(a: Arguments) -> tuple:
    return (a.rest(),)


def login(a: Arguments) -> tuple:
    user, password = a.astring("user name"), a.astring("password")
    a.end()
    return user, password


def authenticate(a: Arguments) -> tuple:
    """``AUTHENTICATE mechanism [initial-response]`` (RFC 4959)."""
    mechanism = a.atom("mechanism")
    initial = bytes(a.atom("initial response")) if a.more() else None
    a.end()
    return bytes(mechanism), initial


def select(a: Arguments) -> tuple:
    """``SELECT mailbox [(parameters)]`` (RFC 4466 2.1; RFC 7162 CONDSTORE, QRESYNC)."""
    name = a.astring("mailbox name")
    params = a.list("SELECT parameters") if a.more() else None
    a.end()
    return name, params


def status(a: Arguments) -> tuple:
    name = a.astring("mailbox name")
    items = atoms(a.list("status items"), "status items")
    a.end()
    return name, items


def append(a: Arguments) -> tuple:
    """``APPEND mailbox 1*([flag-list] [date-time] (literal / UTF8 (literal8) / CATENATE (parts)))``
    (RFC 3501 6.3.11; more than one message is MULTIAPPEND, RFC 3502 6; UTF8, RFC 6855 4;
    CATENATE, RFC 4469 5):
    (name, [(flags, date, message), ...]), each message a Spool or a catenate.Catenate."""
    name = a.astring("mailbox name")
    messages = []
    while True:
        flags = a.optional_list()
        date = bytes(a.next("date-time")) if isinstance(a.peek(), String) else None
        message = a.next("message literal")
        if isinstance(message, Atom) and message.upper() == b"UTF8":  # RFC 6855 4: UTF8 (literal8)
            inner = a.list("UTF8 message")
            if len(inner) != 1 or not isinstance(inner[0], Spool):
                raise ParseError("UTF8 takes one message literal in parentheses (RFC 6855 4)")
            message = inner[0]
        elif isinstance(message, Atom) and message.upper() == b"CATENATE":
            from mailstack.imap.catenate import catenate_parts  # it needs this module

            message = catenate_parts(a.list("CATENATE parts"))
        elif not isinstance(message, Spool):
            raise ParseError("the message must be a literal")
        messages.append((flags or [], date, message))
        if not a.more():
            return name, messages


def mechanism(a: Arguments) -> tuple:
    word = a.atom("mechanism")
    a.end()
    return (bytes(word),)


def sequence_set(a: Arguments) -> tuple:
    ranges = a.seqset()
    a.end()
    return (ranges,)


def copy(a: Arguments) -> tuple:
    ranges, name = a.seqset(), a.astring("mailbox name")
    a.end()
    return ranges, name


def store(a: Arguments) -> tuple:
    """``STORE set [(UNCHANGEDSINCE n)] mode flags`` (RFC 3501 6.4.6, RFC 7162 3.1.3)."""
    ranges = a.seqset()
    unchangedsince = None
    modifiers = a.optional_list()
    if modifiers is not None:
        if len(modifiers) != 2 or not isinstance(modifiers[0], Atom) or modifiers[0].upper() != b"UNCHANGEDSINCE" \
                or not isinstance(modifiers[1], Atom) or not modifiers[1].isdigit():
            raise ParseError("the only STORE modifier is (UNCHANGEDSINCE n)")
        unchangedsince = int(modifiers[1])
    mode = bytes(a.atom("STORE mode"))
    flags = a.rest()
    if len(flags) == 1 and isinstance(flags[0], list):
        flags = flags[0]
    return ranges, unchangedsince, mode, atoms(flags, "flags")


#: RFC 4731 3.1, RFC 5182 2, RFC 5267 4: the ``RETURN (...)`` options of SEARCH and SORT.
RETURN_OPTIONS = (b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE", b"CONTEXT", b"UPDATE")
_PARTIAL_RE = re.compile(rb"\A(-?)([1-9][0-9]{0,9}):(-?)([1-9][0-9]{0,9})\Z")


def return_options(a: Arguments) -> Returns | None:
    """``RETURN (options)`` if it comes next (RFC 4731 3.1; PARTIAL: RFC 5267 4.4, negative
    ranges RFC 9394 3.1); ``RETURN ()`` means ALL."""
    first = a.peek()
    if not (isinstance(first, Atom) and first.upper() == b"RETURN"):
        return None
    a.next("RETURN")
    listed = a.next("a list of RETURN options")
    if not isinstance(listed, list):
        raise ParseError("RETURN takes a parenthesised list of options")
    options, partial, i = set(), None, 0
    while i < len(listed):
        word = listed[i].upper() if isinstance(listed[i], Atom) else b""
        if word == b"PARTIAL" and partial is None and i + 1 < len(listed):
            partial = _partial_range(listed[i + 1])
            i += 2
            continue
        if word not in RETURN_OPTIONS:
            raise ParseError("RETURN options are MIN, MAX, ALL, COUNT, SAVE, CONTEXT, UPDATE and PARTIAL")
        options.add(word)
        i += 1
    if partial is not None and b"ALL" in options:  # RFC 5267 4.4: one PARTIAL or one ALL
        raise ParseError("RETURN cannot have both PARTIAL and ALL")
    if not options and partial is None:
        options = {b"ALL"}
    return Returns(frozenset(options), partial)


def _partial_range(item) -> tuple[int, int]:
    m = _PARTIAL_RE.match(item) if isinstance(item, Atom) else None
    if m is None or m.group(1) != m.group(3):
        raise ParseError("PARTIAL needs a range such as 1:500 (or -1:-500 from the end)")
    first, last = sorted((int(m.group(2)), int(m.group(4))))  # RFC 5267 4.4: 500:400 is 400:500
    return (-first, -last) if m.group(1) else (first, last)


def search(a: Arguments) -> tuple:
    """``SEARCH [RETURN (options)] [CHARSET name] keys`` (RFC 3501 6.4.4, RFC 4731 3);
    (charset, keys, the RETURN options or None for the RFC 3501 form)."""
    charset = None
    returns = return_options(a)
    first = a.peek()
    if isinstance(first, Atom) and first.upper() == b"CHARSET":
        a.next("CHARSET")
        charset = a.astring("charset name")
    keys = a.rest()
    if not keys:
        raise ParseError("missing search keys")
    return charset, keys, returns


def sort(a: Arguments) -> tuple:
    """``SORT [RETURN (options)] (criteria) charset keys`` (RFC 5256 3, RFC 5267 3.1 ESORT):
    ([(criterion, reverse)], charset, keys, the RETURN options or None)."""
    returns = return_options(a)
    listed = a.next("sort criteria")
    if not isinstance(listed, list) or not listed:
        raise ParseError("SORT needs a list of sort criteria")
    criteria, reverse = [], False
    for item in listed:
        word = item.upper().decode("ascii", "replace") if isinstance(item, Atom) else ""
        if word == "REVERSE" and not reverse:
            reverse = True
            continue
        if word not in sortmod.CRITERIA:
            raise ParseError(f"unknown sort criterion {shown(bytes(item)) if isinstance(item, bytes) else '(list)'}")
        criteria.append((word, reverse))
        reverse = False
    if reverse:
        raise ParseError("REVERSE must be followed by a sort criterion")
    return (criteria, *_charset_and_keys(a), returns)


def _charset_and_keys(a: Arguments) -> tuple:
    """SORT's and THREAD's ``charset search-key...`` (RFC 5256 3: the charset is required)."""
    charset = a.astring("charset")
    keys = a.rest()
    if not keys:
        raise ParseError("missing search keys")
    return charset, keys


def thread(a: Arguments) -> tuple:
    """``THREAD algorithm charset keys`` (RFC 5256 3)."""
    algorithm = a.next("threading algorithm")
    if not isinstance(algorithm, Atom) or algorithm.upper().decode("ascii", "replace") not in threadmod.ALGORITHMS:
        raise ParseError("the threading algorithms are ORDEREDSUBJECT and REFERENCES")
    return (algorithm.upper().decode("ascii"), *_charset_and_keys(a))


def fetch(a: Arguments) -> tuple:
    ranges = a.seqset()
    spec = fetch_spec(a)
    return ranges, spec


# -- FETCH attributes (RFC 3501 6.4.5, RFC 7162 3.1.4) ----------------------------------------------


@dataclass(frozen=True)
class HeaderSection:
    """``HEADER`` (no fields), ``HEADER.FIELDS (...)`` or ``HEADER.FIELDS.NOT (...)``."""

    fields: tuple[str, ...] = ()  # upper case
    negate: bool = False


@dataclass(eq=False)
class FetchItem:
    """One FETCH attribute.  ``type`` is one of envelope, flags, internaldate, rfc822header,
    rfc822text, rfc822size, rfc822, uid, bodystructure, body, binary, binarysize.  For ``body``
    without a section it is the BODY structure; with one, ``part`` holds the 0-based part path
    and one of ``empty`` (``BODY[]``, ``BODY[1]``), ``header``, ``text``, ``mime`` is set.
    ``binary`` and ``binarysize`` (RFC 3516 4.2) have only ``part`` (and a partial)."""

    type: str
    peek: bool = False
    part: tuple[int, ...] = ()
    empty: bool = False
    header: HeaderSection | None = None
    text: bool = False
    mime: bool = False
    partial_begin: int | None = None
    partial_length: int | None = None

    @property
    def is_section(self) -> bool:
        return bool(self.empty or self.header or self.text or self.mime or self.part)


@dataclass(frozen=True)
class FetchSpec:
    items: list
    modseq: bool = False  # the MODSEQ item (RFC 7162 3.1.4.1)
    changedsince: int | None = None
    vanished: bool = False  # RFC 7162 3.2.6


_SIMPLE = {b"ENVELOPE": "envelope", b"FLAGS": "flags", b"INTERNALDATE": "internaldate",
           b"RFC822.HEADER": "rfc822header", b"RFC822.TEXT": "rfc822text", b"RFC822.SIZE": "rfc822size",
           b"RFC822": "rfc822", b"UID": "uid", b"BODYSTRUCTURE": "bodystructure", b"BODY": "body",
           b"SAVEDATE": "savedate"}
_MACROS = {b"ALL": ("flags", "internaldate", "rfc822size", "envelope"),
           b"FULL": ("flags", "internaldate", "rfc822size", "envelope", "body"),
           b"FAST": ("flags", "internaldate", "rfc822size")}
_BODY_RE = re.compile(rb"^BODY(\.PEEK)?\[([^\]]*)\](?:<(\d{1,19})\.(\d{1,19})>)?$")
_PART_RE = re.compile(rb"^(\d+(?:\.\d+)*)(?:\.|$)")
#: RFC 3516 4.2: ``BINARY[.PEEK][section-part]<partial>``, ``BINARY.SIZE[section-part]``
_BINARY_RE = re.compile(rb"^BINARY(\.PEEK|\.SIZE)?\[((?:[1-9]\d{0,8}(?:\.[1-9]\d{0,8})*)?)\](?:<(\d{1,19})\.(\d{1,19})>)?$")
_FIELDS_RE = re.compile(rb"^HEADER\.FIELDS(\.NOT)? *\(([^()]*)\)$")


def fetch_spec(a: Arguments) -> FetchSpec:
    """FETCH's attributes (a macro, one attribute, or a list) and RFC 7162's
    ``(CHANGEDSINCE n [VANISHED])`` modifier."""
    att = a.next("FETCH attributes")
    changedsince, vanished = None, False
    if a.more():
        modifier = a.list("FETCH modifier")
        a.end()
        if not (2 <= len(modifier) <= 3) or not all(isinstance(x, Atom) for x in modifier) \
                or modifier[0].upper() != b"CHANGEDSINCE" or not modifier[1].isdigit() \
                or (len(modifier) == 3 and modifier[2].upper() != b"VANISHED"):
            raise ParseError("the FETCH modifier is (CHANGEDSINCE n [VANISHED])")
        changedsince, vanished = int(modifier[1]), len(modifier) == 3
    if isinstance(att, Atom) and att.upper() in _MACROS:
        return FetchSpec([FetchItem(t) for t in _MACROS[att.upper()]], False, changedsince, vanished)
    names = att if isinstance(att, list) else [att]
    if not all(isinstance(x, Atom) for x in names):
        raise ParseError("FETCH attributes must be atoms")
    items, modseq = [], False
    for name in names:
        if name.upper() == b"MODSEQ":
            modseq = True
        else:
            items.append(fetch_att(name))
    if not items and not modseq:
        raise ParseError("no FETCH attributes")
    return FetchSpec(items, modseq, changedsince, vanished)


def fetch_att(name: bytes) -> FetchItem:
    """One attribute (RFC 3501 9 ``fetch-att``), any case."""
    upper = name.upper()
    kind = _SIMPLE.get(upper)
    if kind is not None:
        return FetchItem(kind)
    if upper.startswith(b"BINARY"):
        return _binary_att(name, upper)
    m = _BODY_RE.match(upper)
    if m is None:
        raise ParseError(f"unknown FETCH attribute {shown(name)}")
    fields: dict = {"peek": bool(m.group(1))}
    section = m.group(2)
    pm = _PART_RE.match(section)
    if pm is not None:
        fields["part"] = tuple(int(p) - 1 for p in pm.group(1).split(b"."))
        if 0 > min(fields["part"]):
            raise ParseError("part numbers start at 1")
        section = section[pm.end() :]
    if section == b"":
        if pm is not None and m.group(2).endswith(b"."):
            raise ParseError("a section text is missing after the part number")
        fields["empty"] = True
    elif section == b"HEADER":
        fields["header"] = HeaderSection()
    elif section == b"TEXT":
        fields["text"] = True
    elif section == b"MIME" and pm is not None:
        fields["mime"] = True
    else:
        fm = _FIELDS_RE.match(section)
        if fm is None or not fm.group(2).split():
            raise ParseError(f"unknown section {shown(section)}")
        names = tuple(f.strip(b'"').decode("ascii", "replace") for f in fm.group(2).split())
        fields["header"] = HeaderSection(names, bool(fm.group(1)))
    if m.group(3) is not None:
        fields["partial_begin"], fields["partial_length"] = int(m.group(3)), int(m.group(4))
    return FetchItem("body", **fields)


def _binary_att(name: bytes, upper: bytes) -> FetchItem:
    """RFC 3516 4.2 / RFC 9051 6.4.5: a section is part numbers only; no partial with .SIZE."""
    m = _BINARY_RE.match(upper)
    if m is None or (m.group(1) == b".SIZE" and m.group(3) is not None):
        raise ParseError(f"invalid BINARY attribute {shown(name)} (BINARY[1.2]<0.100>, BINARY.SIZE[1])")
    part = tuple(int(p) - 1 for p in m.group(2).split(b".")) if m.group(2) else ()
    item = FetchItem("binarysize" if m.group(1) == b".SIZE" else "binary", peek=m.group(1) == b".PEEK", part=part)
    if m.group(3) is not None:
        item.partial_begin, item.partial_length = int(m.group(3)), int(m.group(4))
    return item
