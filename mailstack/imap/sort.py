"""SORT (RFC 5256 3) with SORT=DISPLAY (RFC 5957): the sort keys of a message and their order.

The keys (base subject, first From/To/Cc mailbox, display names, sent date) come from the
header alone and never change for a message, so they are computed once and kept in the
store's cache of derived values (``imap.sortkeys``); a webmail sorting the same folder again
reads no message.
"""

from __future__ import annotations

import email.header
import email.utils
import json
import re

from mailstack.imap import message as msgmod

#: RFC 5256 3 sort-key (and RFC 5957 DISPLAYFROM, DISPLAYTO); REVERSE is a modifier.
CRITERIA = {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
KIND = "imap.sortkeys.2"  # the layout of keys_of(); a new name when it changes

_WS = re.compile(r"\s+")
_TRAILER = re.compile(r"(?:\s*\(fwd\))+\s*$|\s+$", re.I)
_BLOB = r"\[[^\[\]]*\]\s*"
_LEADER = re.compile(rf"^(?:\s*(?:{_BLOB})*(?:re|fwd?)\s*(?:{_BLOB})?:\s*|\s*{_BLOB}(?=.))", re.I)
_FWD_WRAP = re.compile(r"^\[fwd:\s*(.*)\]$", re.I | re.S)


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
    text = _WS.sub(" ", subject).strip()
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


_SIMPLE_MAILBOX = re.compile(r'^\s*(?:"([^"\\]*)"|([^"<>,;:@()\\]*?))\s*<([^<>\s@]+@[^<>\s]+)>\s*$|^\s*([^\s<>"(),;:@]+@[^\s<>"(),;:]+)\s*$')


def _first_address(raw: bytes | None) -> tuple[str, str]:
    """(display name, addr-spec) of the first mailbox of an address list; groups skipped.
    The common forms (``a@b``, ``Name <a@b>``, ``"Name" <a@b>``) by one regular expression;
    anything else through the full address-list parser."""
    if raw is None:
        return "", ""
    text = raw.decode("latin-1")
    if ":" not in text and '"' not in text and "(" not in text:  # no group, quote or comment:
        text_first = text.split(",", 1)[0]  # the first comma ends the first mailbox
    else:
        text_first = text if "," not in text and ":" not in text else None
    if text_first is not None:
        m = _SIMPLE_MAILBOX.match(text_first)
        if m:
            if m.group(4):
                return "", m.group(4)
            return _decoded((m.group(1) or m.group(2) or "").encode("latin-1")), m.group(3)
    for item in msgmod.address_items(text):
        if item[0] == "mailbox":
            return _decoded(item[1].encode("latin-1", "replace")), item[2]
    return "", ""


def keys_of(header: bytes, internaldate: int) -> dict:
    """The sort keys of one message (from its header)."""
    fields: dict[str, bytes] = {}
    for name, value in msgmod.parse_fields(header):
        fields.setdefault(name.lower(), value)  # the first of each field, as Entity.get answers
    sent = internaldate
    date = fields.get("date")
    if date:
        try:
            sent = int(email.utils.parsedate_to_datetime(date.decode("latin-1")).timestamp())
        except (TypeError, ValueError, IndexError, OverflowError):
            pass  # RFC 5256 3: unparseable: the internal date
    subject = _decoded(fields.get("subject"))
    base = base_subject(subject)
    keys = {"subject": base, "date": sent,
            # for THREAD (RFC 5256 3): identity, ancestry, and whether the subject was a reply
            "id": _ids(fields.get("message-id"))[:1], "refs": _ids(fields.get("references")),
            "irt": _ids(fields.get("in-reply-to"))[:1],
            "reply": base != _WS.sub(" ", subject).strip().upper() and bool(_REPLY.match(subject))}
    for field in ("from", "to", "cc"):
        name, addr = _first_address(fields.get(field))
        keys[field] = addr.rpartition("@")[0].upper() if "@" in addr else addr.upper()  # addr-mailbox
        if field != "cc":
            keys["display" + field] = (name or addr).casefold()  # RFC 5957 2
    return keys


#: Parsed keys by (folder path, file base): a message's file never changes, so neither do its
#: keys; a webmail re-sorting a folder then touches neither SQLite nor JSON.  Bounded.
_MEMO: dict[tuple[str, str], dict] = {}
MEMO_LIMIT = 200_000


def load_keys(folder, messages: dict) -> dict[int, dict]:
    """*Blocking.*  uid -> sort keys for ``messages`` (uid -> MessageInfo): from memory, else
    from the store's cache of derived values, else from the header (and kept in both)."""
    path = folder.path
    out, unknown = {}, []
    for uid, m in messages.items():
        keys = _MEMO.get((path, m.base))
        if keys is None:
            unknown.append(uid)
        else:
            out[uid] = keys
    if not unknown:
        return out
    found = {uid: json.loads(value) for uid, value in folder.derived(unknown, KIND).items()}
    missing = [uid for uid in unknown if uid not in found]
    if missing:
        heads = folder.headers(missing)
        fresh = {uid: keys_of(heads[uid], messages[uid].internaldate) for uid in missing if uid in heads}
        folder.keep_derived(KIND, {uid: json.dumps(k).encode() for uid, k in fresh.items()})
        found.update(fresh)
    if len(_MEMO) + len(found) > MEMO_LIMIT:
        _MEMO.clear()
    for uid, keys in found.items():
        _MEMO[(path, messages[uid].base)] = keys
    out.update(found)
    return out


def order(candidates: list, criteria: list[tuple[str, bool]], keys: dict[int, dict]) -> list:
    """The candidates (search.Candidate) sorted by ``criteria`` [(criterion, reverse)]; ties by
    sequence number (RFC 5256 3)."""
    ranked = sorted(candidates, key=lambda c: c.seq)
    for criterion, reverse in reversed(criteria):  # stable sorts, the last criterion first
        ranked.sort(key=lambda c, k=criterion: _value(c, k, keys), reverse=reverse)
    return ranked


def _value(c, criterion: str, keys: dict[int, dict]):
    if criterion == "ARRIVAL":
        return c.info.internaldate
    if criterion == "SIZE":
        return c.info.size
    k = keys.get(c.uid) or {}
    if criterion == "DATE":
        return k.get("date", c.info.internaldate)
    return k.get(criterion.lower(), "")
