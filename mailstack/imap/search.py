"""SEARCH (RFC 3501 section 6.4.4): the query is compiled first, then run in a worker thread.

Twisted's own SEARCH is not used: KEYWORD never matches there, SENTBEFORE searches the To
header, BODY and TEXT look at undecoded bytes, and every message is read on the reactor thread.
Here a message file is read only when a key needs it; header keys use the header sections
the store caches (:meth:`MaildirFolder.headers`), and most messages are ruled out by a byte
search before any header is decoded.
"""

from __future__ import annotations

import functools
import re
import time

from mailstack.imap import message as msgmod
from mailstack.imap.errors import shown

SEQSET_RE = re.compile(rb"^(\d+|\*)(:(\d+|\*))?(,(\d+|\*)(:(\d+|\*))?)*$")

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}


class SearchSyntaxError(ValueError):
    pass


def parse_seqset(text: bytes) -> list[tuple[int | None, int | None]]:
    """RFC 3501 sequence-set -> [(low, high)], None for "*"; SearchSyntaxError if malformed."""
    if not SEQSET_RE.match(text):
        raise SearchSyntaxError(f"invalid sequence set {shown(text)}")
    out = []
    for item in text.split(b","):
        lo, _, hi = item.partition(b":")
        a = None if lo == b"*" else int(lo)
        b = a if not hi else (None if hi == b"*" else int(hi))
        if a == 0 or b == 0:
            raise SearchSyntaxError("0 is not a valid message number")
        out.append((a, b))
    return out


#: Deepest nesting of NOT, OR and parentheses a query may have: far beyond any client's, and
#: keeps compiling and evaluating (both recursive) well inside Python's recursion limit.
MAX_DEPTH = 100


def compile_query(tokens: list, charset: str = "utf-8", depth: int = 0, saved: frozenset = frozenset()):
    """Parsed tokens (bytes and nested lists) -> a tree of tuples; SearchSyntaxError if bad.
    ``saved``: the UIDs the search key ``$`` stands for (RFC 5182 2.1)."""
    tokens = list(tokens)
    nodes = []
    while tokens:
        nodes.append(_one(tokens, charset, depth, saved))
    if not nodes:
        raise SearchSyntaxError("empty search")
    return ("and", nodes)


def _text(tokens: list, charset: str) -> str:
    if not tokens or isinstance(tokens[0], list):
        raise SearchSyntaxError("a string argument is missing")
    try:
        return tokens.pop(0).decode(charset)
    except UnicodeDecodeError:
        raise SearchSyntaxError(f"argument is not valid {charset}") from None


def _one(tokens: list, charset: str, depth: int, saved: frozenset = frozenset()):
    if depth >= MAX_DEPTH:
        raise SearchSyntaxError(f"search keys nested deeper than {MAX_DEPTH} levels")
    t = tokens.pop(0)
    if isinstance(t, list):
        return compile_query(t, charset, depth + 1, saved) if t else ("all",)
    key = t.upper().decode("ascii", "replace")
    if key == "$":
        return ("among", saved)
    if key == "ALL":
        return ("all",)
    if key in _FLAG_KEYS:
        flag, want = _FLAG_KEYS[key]
        return ("flag", flag, want)
    if key in ("KEYWORD", "UNKEYWORD"):
        return ("flag", _text(tokens, charset), key == "KEYWORD")
    if key == "RECENT":
        return ("recent",)
    if key == "NEW":
        return ("and", [("recent",), ("flag", "\\Seen", False)])
    if key == "OLD":
        return ("not", ("recent",))
    if key in _HEADER_KEYS:
        return ("header", _HEADER_KEYS[key], _text(tokens, charset).casefold())
    if key == "HEADER":
        name = _text(tokens, charset)
        return ("header", name.lower(), _text(tokens, charset).casefold())
    if key in ("BODY", "TEXT"):
        return (key.lower(), _text(tokens, charset).casefold())
    if key in ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE", "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
        try:
            when = msgmod.parse_search_date(tokens.pop(0))
        except (ValueError, IndexError, AttributeError):
            raise SearchSyntaxError(f"{key} needs a date such as 1-Feb-2024") from None
        if key.startswith("SAVED"):  # RFC 8514 4: the day the message was saved here
            return ("saved", key[5:], when)
        sent = key.startswith("SENT")
        return ("date", key[4:] if sent else key, when, sent)
    if key == "SAVEDATESUPPORTED":  # RFC 8514 4: every message of this mailbox has a save date
        return ("all",)
    if key in ("OLDER", "YOUNGER"):  # RFC 5032: an interval in seconds back from now
        arg = tokens.pop(0) if tokens else b""
        if not isinstance(arg, bytes) or not arg.isdigit() or int(arg) == 0:
            raise SearchSyntaxError(f"{key} needs a number of seconds above 0")
        return ("within", key, time.time() - int(arg))
    if key in ("LARGER", "SMALLER"):
        arg = tokens.pop(0) if tokens else b""
        if not isinstance(arg, bytes) or not arg.isdigit():
            raise SearchSyntaxError(f"{key} needs a number")
        return ("size", key, int(arg))
    if key == "NOT":
        if not tokens:
            raise SearchSyntaxError("NOT needs a search key")
        return ("not", _one(tokens, charset, depth + 1, saved))
    if key == "OR":
        if len(tokens) < 2:
            raise SearchSyntaxError("OR needs two search keys")
        return ("or", _one(tokens, charset, depth + 1, saved), _one(tokens, charset, depth + 1, saved))
    if key == "MODSEQ":  # RFC 7162 3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-value
        if len(tokens) >= 3 and isinstance(tokens[0], bytes) and not tokens[0].isdigit():
            del tokens[:2]  # per-flag entries: the message's MODSEQ covers every flag here
        arg = tokens.pop(0) if tokens else b""
        if not isinstance(arg, bytes) or not arg.isdigit():
            raise SearchSyntaxError("MODSEQ needs a number")
        return ("modseq", int(arg))
    if key == "UID":
        if not tokens or not isinstance(tokens[0], bytes):
            raise SearchSyntaxError("UID needs a set")
        if tokens[0] == b"$":  # RFC 5182 2.1: $ is a sequence set, after UID too
            tokens.pop(0)
            return ("among", saved)
        return ("uid", parse_seqset(tokens.pop(0)))
    if SEQSET_RE.match(t):
        return ("seq", parse_seqset(t))
    raise SearchSyntaxError(f"unknown search key {key[:40]}")


class Candidate:
    """One message being searched; its file is read at most once, and only when needed.
    ``header`` is the header section when the caller had it (from the store's cache)."""

    def __init__(self, folder, seq: int, uid: int, info, flags: frozenset, recent: bool, header: bytes | None = None):
        self.folder, self.seq, self.uid, self.info, self.flags, self.recent = folder, seq, uid, info, flags, recent
        self._raw = None
        self._header = header
        self._head = None

    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self.folder.read_message(self.uid)
        return self._raw

    def header(self) -> bytes:
        if self._header is None:
            self._header = self.head().header
        return self._header

    def head(self) -> msgmod.Entity:
        if self._head is None:
            if self._header is not None:
                source = self._header
            elif self._raw is not None:
                source = self._raw
            else:
                source = self.folder.headers([self.uid])[self.uid]
            self._head = msgmod.Entity(source)
        return self._head


def needs_header(node) -> bool:
    """True when the query reads header fields (so the caller fetches headers in bulk)."""
    kind = node[0]
    if kind == "and":
        return any(needs_header(n) for n in node[1])
    if kind == "not":
        return needs_header(node[1])
    if kind == "or":
        return needs_header(node[1]) or needs_header(node[2])
    return kind == "header" or (kind == "date" and node[3])


def required_header_text(node) -> list[str]:
    """Needles every matching message's header must contain: those of the header keys that
    the query ANDs together (not under NOT or OR).  :func:`prefiltered` rules out the messages
    lacking one before building anything for them."""
    kind = node[0]
    if kind == "and":
        return [n for child in node[1] for n in required_header_text(child)]
    if kind == "header":
        return [node[2]]
    return []


def prefiltered(folder, uidvalidity: int, uids: list[int], tree) -> tuple[dict[int, bytes], set[int] | None]:
    """*Blocking.*  For a query over ``uids``: their header sections when it reads headers
    (uid -> bytes), and the UIDs that may match (None: any may), from the folder's
    :class:`~mailstack.imap.headerscan.HeaderCorpus` when the query has plain needles."""
    if not needs_header(tree):
        return {}, None
    from mailstack.imap import headerscan

    found = headerscan.corpus(folder, uidvalidity, uids)
    plains = [p for p in map(_plain_needle, required_header_text(tree)) if p]  # "" rules nothing out
    return found.heads, (found.may_match([p.lower() for p in plains]) if plains else None)


@functools.lru_cache(maxsize=256)
def _plain_needle(needle: str) -> bytes | None:
    """The needle as bytes when a byte search can rule a header out (see _cannot_contain)."""
    if needle.isascii() and not any(c.isspace() for c in needle):
        return needle.encode("ascii")
    return None


def _cannot_contain(header: bytes, needle: str) -> bool:
    """A cheap proof that a header holds no field value containing ``needle``: an ASCII
    header with no encoded words (RFC 2047) decodes to itself, so an ASCII needle without
    white space (unfolding may join lines) that is not in its bytes is in no field."""
    plain = _plain_needle(needle)
    return plain is not None and header.isascii() and b"=?" not in header and plain not in header.lower()


def _plain_field_contains(header: bytes, name: bytes, needle: bytes) -> bool:
    """HEADER ``name`` ``needle`` (RFC 3501 6.4.4) for an ASCII header without encoded words,
    without building the message entity: each such field value decodes to itself, and a needle
    with no white space cannot span a fold (unfolding removes only a line break before white
    space), so it is in the decoded value exactly when it is in the raw one.  The same fields
    as :func:`mailstack.imap.message.parse_fields` sees; ``name`` lower case."""
    for line in msgmod.raw_field_lines(header.lower()):
        field, sep, value = line.partition(b":")
        if sep and needle in value and field.strip() == name:
            return True
    return False


def _in_ranges(value: int, ranges, last: int) -> bool:
    for lo, hi in ranges:
        lo = last if lo is None else lo
        hi = last if hi is None else hi
        if lo > hi:
            lo, hi = hi, lo
        if lo <= value <= hi:
            return True
    return False


def matches(node, c: Candidate, last_seq: int, last_uid: int) -> bool:
    kind = node[0]
    if kind == "and":
        return all(matches(n, c, last_seq, last_uid) for n in node[1])
    if kind == "all":
        return True
    if kind == "not":
        return not matches(node[1], c, last_seq, last_uid)
    if kind == "or":
        return matches(node[1], c, last_seq, last_uid) or matches(node[2], c, last_seq, last_uid)
    if kind == "flag":
        flag = node[1].lower()
        return any(f.lower() == flag for f in c.flags) == node[2]
    if kind == "recent":
        return c.recent
    if kind == "seq":
        return _in_ranges(c.seq, node[1], last_seq)
    if kind == "uid":
        return _in_ranges(c.uid, node[1], last_uid)
    if kind == "among":
        return c.uid in node[1]
    if kind == "modseq":
        return c.info.modseq >= node[1]
    if kind == "size":
        return c.info.size > node[2] if node[1] == "LARGER" else c.info.size < node[2]
    if kind == "within":  # OLDER: before the cutoff; YOUNGER: at or after it (RFC 5032 2)
        return c.info.internaldate < node[2] if node[1] == "OLDER" else c.info.internaldate >= node[2]
    if kind == "date":
        _, op, when, sent = node
        if sent:
            day = msgmod.sent_date(c.head())
            if day is None:
                return False
        else:
            from datetime import datetime, timezone

            day = datetime.fromtimestamp(c.info.internaldate, timezone.utc).date()
        return day < when if op == "BEFORE" else (day == when if op == "ON" else day >= when)
    if kind == "saved":
        from datetime import datetime, timezone

        saved = c.info.saved
        if saved is None:
            return False
        day = datetime.fromtimestamp(saved, timezone.utc).date()
        return day < node[2] if node[1] == "BEFORE" else (day == node[2] if node[1] == "ON" else day >= node[2])
    if kind == "header":
        header = c.header()
        plain = _plain_needle(node[2])
        if plain is not None and node[1].isascii() and header.isascii() and b"=?" not in header:
            return _plain_field_contains(header, node[1].encode("ascii"), plain)
        if _cannot_contain(header, node[2]):
            return False
        entity = c.head()
        if not any(n.lower() == node[1] for n, _ in entity.fields):
            return False
        return node[2] in msgmod.decoded_header(entity, node[1]).casefold()
    if kind == "body":
        return node[1] in msgmod.body_text(c.raw()).casefold()
    if kind == "text":
        raw = c.raw()
        header = msgmod.Entity(raw).header.decode("utf-8", "replace").casefold()
        return node[1] in header or node[1] in msgmod.body_text(raw).casefold()
    raise SearchSyntaxError(f"unknown node {kind}")


def uses_modseq(node) -> bool:
    if node[0] == "modseq":
        return True
    if node[0] == "and":
        return any(uses_modseq(n) for n in node[1])
    if node[0] == "not":
        return uses_modseq(node[1])
    if node[0] == "or":
        return uses_modseq(node[1]) or uses_modseq(node[2])
    return False


def run(query, candidates: list[Candidate], last_seq: int, last_uid: int) -> list[Candidate]:
    """*Blocking* (reads message files).  The candidates matching ``query``."""
    out = []
    for c in candidates:
        try:
            if matches(query, c, last_seq, last_uid):
                out.append(c)
        except Exception as e:  # a message expunged meanwhile, or unparseable: no match
            if isinstance(e, SearchSyntaxError):
                raise
    return out
