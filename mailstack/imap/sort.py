"""SORT (RFC 5256 3) with SORT=DISPLAY (RFC 5957): the sort keys of a message and their order.

The keys (base subject, first From/To/Cc mailbox, display names, sent date, and THREAD's
Message-ID/References/In-Reply-To) come from the header alone and never change for a message
file.  They fall in three groups (:data:`GROUPS`), each computed only when a criterion needs it,
from the headers the store caches (no message file is read again), and kept twice: in memory
(``_MEMO``), and as one table per folder and group in the store's cache of derived values
(``derived_table``: one row to read after a restart and one to write, where a row per
message cost about as much as computing the keys).  A table entry carries the file's size and
is ignored when it does not match; the table is only a cache, made again from the headers
when missing or unreadable.
"""

from __future__ import annotations

import contextlib
import datetime
import email.header
import email.utils
import gc
import json
import operator
import re
import threading

from mailstack.imap import message as msgmod

#: RFC 5256 3 sort-key (and RFC 5957 DISPLAYFROM, DISPLAYTO); REVERSE is a modifier.
CRITERIA = {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
KIND = "imap.sortkeys.3"  # + "." + group: the layout of GROUPS; a new name when it changes

_TRAILER = re.compile(r"(?:\s*\(fwd\))+\s*$|\s+$", re.I)
_BLOB = r"\[[^\[\]]*\]\s*"
_LEADER = re.compile(rf"^(?:\s*(?:{_BLOB})*(?:re|fwd?)\s*(?:{_BLOB})?:\s*|\s*{_BLOB}(?=.))", re.I)
_FWD_WRAP = re.compile(r"^\[fwd:\s*(.*)\]$", re.I | re.S)
#: Whether any of the steps below could change a (blank-collapsed, stripped) subject: every
#: leader starts with "[" or is "re"/"fw"/"fwd" before ":" or a blob; the trailer is "(fwd)".
_MAY_STRIP = re.compile(r"\[|(?:re|fwd?)\s*[\[:]|.*\(fwd\)$", re.I | re.S)


def _decoded(raw: bytes | None) -> str:
    if raw is None:
        return ""
    text = raw.decode("utf-8", "replace")
    if "=?" not in text:
        return text  # no encoded word (RFC 2047): nothing to decode
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:  # a malformed encoded word: the text as it is
        return text


def base_subject(subject: str) -> str:
    """RFC 5256 2.1: the subject without "Re:", "Fwd:", "[list]" leaders, "(fwd)" trailers
    and a "[fwd: ...]" wrapper, blanks collapsed, for i;ascii-casemap comparison."""
    text = " ".join(subject.split())  # blanks collapsed (str.isspace, as re's \\s)
    if not _MAY_STRIP.match(text):
        return text.upper()  # no leader, trailer or wrapper: most subjects
    while True:
        while True:  # (2) trailers
            stripped = _TRAILER.sub("", text)
            if stripped == text:
                break
            text = stripped
        while True:  # (3)-(5) leaders, repeated; a blob only when something follows it
            stripped = _LEADER.sub("", text, count=1)
            if stripped == text:
                break
            text = stripped
        m = _FWD_WRAP.match(text)  # (6) [fwd: ...]
        if not m:
            return text.upper()
        text = m.group(1).strip()


_MSGID = re.compile(r"<[^<>\s]+>")
_REPLY = re.compile(r"^\s*(?:\[[^\[\]]*\]\s*)*(?:re|fwd?)\b", re.I)


def _ids(raw: bytes | None) -> list[str]:
    return _MSGID.findall(raw.decode("latin-1")) if raw else []


#: The first mailbox of a list in its common forms (``a@b``, ``Name <a@b>``, ``"Name" <a@b>``),
#: ended by a comma or the end: no group (its display name would end in ":") and no comment.
_SIMPLE_MAILBOX = re.compile(r'\s*(?:(?:"([^"\\]*)"|([^"<>,;:@()\\]*?))\s*<([^<>\s@,;:"()\\]+@[^<>\s,;:"()\\]+)>'
                             r'|([^\s<>"(),;:@\\]+@[^\s<>"(),;:\\]+))\s*(?:,|$)')


def _first_address(raw: bytes | None) -> tuple[str, str]:
    """(display name, addr-spec) of the first mailbox of an address list; groups skipped.
    The common forms by one regular expression; anything else through the full address-list
    parser."""
    if raw is None:
        return "", ""
    text = raw.decode("latin-1")
    m = _SIMPLE_MAILBOX.match(text)
    if m:
        if m.group(4):
            return "", m.group(4)
        name = m.group(1) if m.group(1) is not None else m.group(2)
        return (_decoded(name.encode("latin-1")) if name else ""), m.group(3)
    for item in msgmod.address_items(text):
        if item[0] == "mailbox":
            return _decoded(item[1].encode("latin-1", "replace")), item[2]
    return "", ""


#: Each field the keys come from, with its continuation lines, found by a search of the header
#: after a newline (the first of each, as Entity.get answers).  A header with a bare CR goes
#: through the general parser, which also ends lines there.
_FIELD = {n: re.compile(rb"\n" + n.encode() + rb"[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.I)
          for n in ("date", "subject", "from", "to", "cc", "message-id", "references", "in-reply-to")}
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_BARE_CR = re.compile(rb"\r(?!\n)")
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DATE = re.compile(r"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+(\d\d):(\d\d)(?::(\d\d))?"
                   r"\s+([+-])(\d\d)(\d\d)\s*$")


def _values(header: bytes, names: tuple[str, ...]) -> list[bytes | None]:
    """The values of the header's first fields of these (lower-case) names (None: absent)."""
    if _BARE_CR.search(header):
        fields: dict[str, bytes] = {}
        for name, value in msgmod.parse_fields(header):
            fields.setdefault(name.lower(), value)
        return [fields.get(name) for name in names]
    text = b"\n" + (header.lstrip(b" \t") if header[:1] in (b" ", b"\t") else header)
    out: list[bytes | None] = []
    for name in names:
        m = _FIELD[name].search(text)
        if m is None:
            out.append(None)
            continue
        value = m.group(1)
        out.append((_FOLD.sub(b"", value) if b"\n" in value else value).strip())
    return out


def _days(year: int, month: int, day: int) -> int | None:
    """Days from 1970-01-01 to a valid proleptic Gregorian date; None for an invalid one."""
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not (1 <= year <= 9999 and 1 <= day <= _MONTH_DAYS[month] + (month == 2 and leap)):
        return None
    y = year - (month <= 2)  # days_from_civil (H. Hinnant)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


#: (day, month, year, zone) as written -> the Unix time of that day's 00:00 there, or None for
#: no valid day: the messages of a folder share few days and zones.  Bounded.
_DAY_START: dict[tuple, int | None] = {}


def _day_start(day: str, mon: str, year: str, sign: str, zh: str, zm: str) -> int | None:
    month, y = _MONTHS.get(mon.lower()), int(year)
    y += 0 if y >= 100 else 1900 if y > 68 else 2000  # as email.utils reads "0070"
    days = _days(y, month, int(day)) if month else None
    offset = int(zh) * 3600 + int(zm) * 60
    start = None
    if days is not None and offset < 86400 and (sign == "+" or offset):
        start = days * 86400 - (offset if sign == "+" else -offset)
    if len(_DAY_START) >= 50_000:
        _DAY_START.clear()
    _DAY_START[(day, mon, year, sign, zh, zm)] = start
    return start


def sent_date(text: str) -> int | None:
    """The RFC 5322 3.3 date as a Unix time, None when unparseable.  The usual form
    (``Mon, 2 Jan 2006 15:04:05 +0100``) directly; anything else (and -0000, which the email
    package reads as local time) as the email package reads it."""
    m = _DATE.match(text)
    if m:
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        start = _DAY_START.get((day, mon, year, sign, zh, zm), False)
        if start is False:
            start = _day_start(day, mon, year, sign, zh, zm)
        h, mi, sec = int(hh), int(mm), int(ss or 0)
        if start is not None and h < 24 and mi < 60 and sec < 60:
            return start + h * 3600 + mi * 60 + sec
    try:
        return int(email.utils.parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _basic(date: bytes | None, raw_subject: bytes | None, internaldate: int) -> list:
    sent = internaldate
    if date:
        parsed = sent_date(date.decode("latin-1"))
        if parsed is not None:
            sent = parsed  # RFC 5256 3: unparseable: the internal date
    subject = " ".join(_decoded(raw_subject).split())
    upper = subject.upper()
    if not _MAY_STRIP.match(subject):
        return [sent, upper, False]  # base_subject's own shortcut
    base = base_subject(subject)
    # (for THREAD, RFC 5256 3) whether the subject was a reply
    return [sent, base, base != upper and bool(_REPLY.match(subject))]


def _thread(msgid: bytes | None, references: bytes | None, in_reply_to: bytes | None, internaldate: int) -> list:
    """THREAD's identity and ancestry (RFC 5256 3)."""
    return [_ids(msgid)[:1], _ids(references), _ids(in_reply_to)[:1]]


def _addresses(*fields_and_date) -> list:
    """From, To, Cc: each first addr-mailbox (RFC 5256 3), and the From and To display names
    (RFC 5957 2); the internal date, last, is not used."""
    out, display = [], []
    for field, raw in zip(("from", "to", "cc"), fields_and_date):
        name, addr = _first_address(raw)
        out.append(addr.rpartition("@")[0].upper() if "@" in addr else addr.upper())  # addr-mailbox
        if field != "cc":
            display.append((name or addr).casefold())  # RFC 5957 2
    return out + display


#: The keys in three groups, each computed (and cached) only when a criterion needs it:
#: group -> (its key names, the function making their values from the header's fields (and the
#: internal date), the names of those fields).
GROUPS = {"basic": (("date", "subject", "reply"), _basic, ("date", "subject")),
          "thread": (("id", "refs", "irt"), _thread, ("message-id", "references", "in-reply-to")),
          "address": (("from", "to", "cc", "displayfrom", "displayto"), _addresses, ("from", "to", "cc"))}
_GROUP_OF = {"DATE": "basic", "SUBJECT": "basic", "FROM": "address", "TO": "address", "CC": "address",
             "DISPLAYFROM": "address", "DISPLAYTO": "address"}


def groups_for(criteria: list[tuple[str, bool]]) -> tuple[str, ...]:
    """The key groups SORT ``criteria`` read (none for ARRIVAL and SIZE).  "basic" (date and
    subject, the cheapest and what webmails sort by) always comes along, so that a sort by
    address followed by one by date or subject reads no header again."""
    wanted = [_GROUP_OF[c] for c, _reverse in criteria if c in _GROUP_OF]
    return tuple(dict.fromkeys(["basic", *wanted])) if wanted else ()


def keys_of(header: bytes, internaldate: int) -> dict:
    """Every sort key of one message (from its header)."""
    keys: dict = {}
    for names, make, fields in GROUPS.values():
        keys.update(zip(names, make(*_values(header, fields), internaldate)))
    return keys


#: Keys by (folder path, file base): a message's file never changes, so neither do its keys;
#: a webmail re-sorting a folder then touches neither SQLite nor JSON.  Bounded.
_MEMO: dict[tuple[str, str], dict] = {}
MEMO_LIMIT = 200_000


def load_keys(folder, messages: dict, groups: tuple[str, ...] = tuple(GROUPS)) -> dict[int, dict]:
    """*Blocking.*  uid -> sort keys (at least those of ``groups``) for ``messages``
    (uid -> MessageInfo): from memory, else from the folder's table of them in the store's
    cache, else from the (cached) header, and kept in both."""
    path = folder.path
    if len(_MEMO) + len(messages) > MEMO_LIMIT:
        _MEMO.clear()
    out = {}
    for uid, m in messages.items():
        keys = _MEMO.get((path, m.base))
        if keys is None:
            keys = _MEMO[(path, m.base)] = {}
        out[uid] = keys
    for group in groups:
        names = GROUPS[group][0]
        missing = [uid for uid, keys in out.items() if names[0] not in keys]
        if missing:
            _fill(folder, group, messages, out, missing)
    return out


@contextlib.contextmanager
def no_gc():
    """No cyclic garbage collection while a command builds tens of thousands of objects that
    live on (keys, thread nodes): each collection would walk the whole heap again, for nothing
    to free.  Left enabled by whichever thread found it enabled."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _fill(folder, group: str, messages: dict, out: dict[int, dict], missing: list[int]) -> None:
    """Give the ``missing`` messages ``group``'s keys: from the folder's table, else from their
    headers; the table is written again (by :func:`keep_tables`) when they were more than a
    twentieth of it (fewer are only kept in memory: at most that share is computed again after
    a restart)."""
    names, make, fields = GROUPS[group]
    kind = f"{KIND}.{group}"
    table = _table(folder, kind)
    unknown = []
    for uid in missing:
        m = messages[uid]
        entry = table.get(m.base)
        if entry is not None and entry[0] == m.size and len(entry) == len(names) + 1:
            out[uid].update(zip(names, entry[1:]))
        else:
            unknown.append(uid)  # never seen, or its file is not the one the entry was made from
    if not unknown:
        return
    heads = folder.headers(unknown)
    for uid in unknown:
        header = heads.get(uid)
        if header is None:  # expunged meanwhile: left out, as SEARCH leaves it out
            del out[uid]
            continue
        m = messages[uid]
        values = make(*_values(header, fields), m.internaldate)
        out[uid].update(zip(names, values))
        table[m.base] = [m.size, *values]
    if len(unknown) * 20 >= len(table):
        with _UNWRITTEN_LOCK:
            _UNWRITTEN[(folder.path, kind)] = (folder, table)


#: Tables load_keys changed, for keep_tables: (folder path, kind) -> (folder, table).
_UNWRITTEN: dict[tuple[str, str], tuple] = {}
_UNWRITTEN_LOCK = threading.Lock()


def _table(folder, kind: str) -> dict:
    """The folder's table of ``kind``: the one not yet written, else the store's."""
    with _UNWRITTEN_LOCK:
        pending = _UNWRITTEN.get((folder.path, kind))
    return pending[1] if pending is not None else _read_table(folder.derived_table(kind))


def keep_tables() -> None:
    """*Blocking.*  Write the tables :func:`load_keys` changed, without the entries of expunged
    messages.  Called after the answer went out: the client does not wait for it."""
    while True:
        with _UNWRITTEN_LOCK:
            if not _UNWRITTEN:
                return
            (_path, kind), (folder, table) = _UNWRITTEN.popitem()
        live = {m.base for m in folder.snapshot().messages}
        table = {base: entry for base, entry in list(table.items()) if base in live}
        folder.keep_derived_table(kind, json.dumps(table, separators=(",", ":"), check_circular=False,
                                                   ensure_ascii=False).encode())


def _read_table(raw: bytes | None) -> dict:
    """A kept table, or an empty one when there is none or it is unreadable (only a cache)."""
    try:
        table = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return table if isinstance(table, dict) else {}


def order(candidates: list, criteria: list[tuple[str, bool]], keys: dict[int, dict]) -> list:
    """The candidates (search.Candidate) sorted by ``criteria`` [(criterion, reverse)]; ties by
    sequence number (RFC 5256 3)."""
    ranked = sorted(candidates, key=operator.attrgetter("seq"))
    for criterion, reverse in reversed(criteria):  # stable sorts, the last criterion first
        ranked.sort(key=_key(criterion, keys), reverse=reverse)
    return ranked


def _key(criterion: str, keys: dict[int, dict]):
    """The sort key function of one criterion (a message without keys: internal date, "")."""
    if criterion == "ARRIVAL":
        return lambda c: c.info.internaldate
    if criterion == "SIZE":
        return lambda c: c.info.size
    get, none = keys.get, {}
    if criterion == "DATE":
        return lambda c: get(c.uid, none).get("date", c.info.internaldate)
    name = criterion.lower()
    return lambda c: get(c.uid, none).get(name, "")
