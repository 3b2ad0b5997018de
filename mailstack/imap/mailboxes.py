"""Commands of the authenticated state on mailboxes (RFC 3501 6.3): SELECT, EXAMINE, CREATE,
DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (RFC 5258, 5819, 6154, 3348), LSUB, STATUS,
APPEND (RFC 4315 APPENDUID), NAMESPACE (RFC 2342) and ENABLE (RFC 5161).

Each command is ``async def name(session, tag, *arguments)`` returning the text of its tagged
OK or raising :class:`~mailstack.imap.errors.ImapError`; the session's methods and
attributes it uses are ``store_call``, ``untagged``, ``mailbox``, ``sel``, ``opened``,
``deselect``, ``condstore``, ``qresync`` and ``lost``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from mailstack.errors import FolderNotFound, InvalidFolderName
from mailstack.imap import catenate, filing
from mailstack.imap import message as msgmod
from mailstack.imap.errors import NO_REPLY, Bad, No, shown, quota_failed
from mailstack.imap.parser import Atom, String, quote
from mailstack.imap.view import SYSTEM_FLAGS, Selected, uid_list, uid_set
from mailstack.store import decode_mutf7, encode_mutf7, normalise

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "HIGHESTMODSEQ", "SIZE")
_SYSTEM_BY_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}


def mailbox_name(raw: bytes, for_create: bool = False, utf8: bool = False) -> str:
    """A mailbox name from the wire (modified UTF-7, RFC 3501 5.1.3) -> the store's name.
    ``utf8``: the session enabled UTF8=ACCEPT or IMAP4rev2, names are UTF-8 as they are
    (RFC 6855 3, RFC 9051 5.1), in Unicode normal form C."""
    try:
        if utf8:
            return _utf8_name(raw, for_create)
        name = decode_mutf7(raw.decode("ascii"))
        if for_create:
            name = name.rstrip("/")
        return normalise(name)
    except UnicodeDecodeError:
        raise No("mailbox names must be modified UTF-7 (RFC 3501 5.1.3)", "CANNOT") from None
    except InvalidFolderName as e:
        raise No(f"invalid mailbox name: {e}", "CANNOT") from None


def _utf8_name(raw: bytes, for_create: bool) -> str:
    try:
        name = unicodedata.normalize("NFC", raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise No("mailbox names must be UTF-8 (RFC 6855 3)", "CANNOT") from None
    return normalise(name.rstrip("/") if for_create else name)


def wire_name(name: str, utf8: bool = False) -> bytes:
    """A mailbox name on the wire: modified UTF-7 (RFC 3501 5.1.3), quoted; or UTF-8 once
    the client enabled it (RFC 6855 3: then never modified UTF-7)."""
    if utf8 and name.isprintable():  # RFC 6855 3: a quoted string may hold UTF-8
        return quote(name.encode("utf-8"))
    return msgmod.nstring(name.encode("utf-8") if utf8 else encode_mutf7(name).encode("ascii"))


def destination(mailbox, name: str):
    """*Blocking.*  The folder APPEND, COPY or MOVE writes to; NO [TRYCREATE] when it does
    not exist (RFC 3501 6.3.11, 6.4.7)."""
    try:
        return mailbox.folder(name)
    except FolderNotFound:
        raise No("no such mailbox", "TRYCREATE") from None


def check_flags(flags) -> list[str]:
    """Flags a client may set: the system flags (any case) and keywords (RFC 3501 2.3.2)."""
    out = []
    for raw in flags:
        flag = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if flag.startswith("\\"):
            canonical = _SYSTEM_BY_LOWER.get(flag.lower())
            if canonical is None:
                raise Bad(f"{flag} is not a flag that can be set")
            out.append(canonical)
        else:
            if not flag or any(c in '(){ %*"\\]' or ord(c) < 0x21 or ord(c) > 0x7e for c in flag):
                raise Bad(f"invalid keyword {shown(flag)}")
            out.append(flag)
    return out


# -- SELECT and EXAMINE --------------------------------------------------------------------------


async def select(s, tag, raw_name, params, readonly=False):
    """RFC 3501 6.3.1/6.3.2.  SELECT claims the messages in new/ as this session's \\Recent
    (RFC 3501 2.3.2); EXAMINE only reports them."""
    resync = select_params(s, params)
    if s.sel is not None:  # RFC 7162 3.2.11 (and IMAP4rev2): say the old one is closed
        s.untagged(b"OK [CLOSED] previous mailbox closed")
    s.deselect()
    name = mailbox_name(raw_name, utf8=s.utf8)
    mailbox = s.mailbox

    rev2 = s.rev2

    def work():
        folder = mailbox.folder(name)
        snap, recent = folder.select(take_recent=not readonly)
        vanished = []
        if resync is not None and resync[0] == snap.uidvalidity:
            vanished = folder.expunged_since(resync[1], resync[2])
        folders = {f.name: f for f in mailbox.list_folders()} if rev2 else {}
        return folder, snap, recent, vanished, folders

    folder, snap, recent, vanished, folders = await s.store_call(work)
    sel = Selected.opened(folder, readonly, snap, recent)
    sel.rev2 = rev2
    for line in sel.select_responses(snap):
        s.untagged(line)
    if rev2:  # RFC 9051 6.3.2: a LIST response with the name and its attributes
        attrs = " ".join(_attributes(ListRequest(False), name, folders.get(name), folders)).encode()
        s.untagged(b"LIST (" + attrs + b') "/" ' + wire_name(name, s.utf8))
    if resync is not None and resync[0] == snap.uidvalidity:
        for line in sel.missed_responses(snap, resync[1], resync[2], vanished):
            s.untagged(line)
    if s.lost:
        return NO_REPLY
    s.opened(sel)
    return (b"[READ-ONLY] EXAMINE" if readonly else b"[READ-WRITE] SELECT") + b" completed"


async def examine(s, tag, raw_name, params):
    return await select(s, tag, raw_name, params, readonly=True)


def select_params(s, params: list | None):
    """SELECT/EXAMINE parameters (RFC 7162 3.1.8 CONDSTORE, 3.2.5 QRESYNC): None, or
    (uidvalidity, modseq, known UIDs or None) to resynchronise.  Sets CONDSTORE."""
    if params is None:
        return None
    if not params:
        raise Bad("SELECT parameters are (CONDSTORE) or (QRESYNC (uidvalidity modseq [known-uids]))")
    resync, words = None, list(params)
    while words:
        word = words.pop(0)
        if isinstance(word, Atom) and word.upper() == b"CONDSTORE":
            s.condstore = True
        elif isinstance(word, Atom) and word.upper() == b"QRESYNC":
            if not s.qresync:
                raise Bad("QRESYNC must be enabled first (ENABLE QRESYNC)")
            args = words.pop(0) if words and isinstance(words[0], list) else []
            if not (2 <= len(args) <= 4) or not all(isinstance(a, Atom) and a.isdigit() for a in args[:2]):
                raise Bad("QRESYNC needs (uidvalidity modseq [known-uids [sequence match data]])")
            known = None
            if len(args) >= 3:
                if not isinstance(args[2], Atom):
                    raise Bad("QRESYNC known-uids must be a UID set")
                known = uid_list(args[2])
            # args[3], the sequence match data, only saves a server work (3.2.5.2): unused.
            resync = (int(args[0]), int(args[1]), known)
        else:
            raise Bad("unknown SELECT parameter")
    return resync


# -- mailbox management --------------------------------------------------------------------------


async def create(s, tag, raw_name):
    """RFC 3501 6.3.3: missing parents are made too; a trailing "/" is dropped."""
    name = mailbox_name(raw_name, for_create=True, utf8=s.utf8)
    if name == "INBOX":
        raise No("INBOX always exists", "ALREADYEXISTS")
    await s.store_call(s.mailbox.create_folder, name)
    return b"CREATE completed"


async def delete(s, tag, raw_name):
    """RFC 3501 6.3.4: the folder and its mail go; its children stay."""
    name = mailbox_name(raw_name, utf8=s.utf8)
    if name == "INBOX":
        raise No("INBOX cannot be deleted", "CANNOT")
    if s.sel is not None and s.sel.folder.name == name:
        s.deselect()
    await s.store_call(s.mailbox.delete_folder, name)
    return b"DELETE completed"


async def rename(s, tag, raw_old, raw_new):
    """RFC 3501 6.3.5: children move along; renaming INBOX moves its mail to the new folder."""
    old, new = mailbox_name(raw_old, utf8=s.utf8), mailbox_name(raw_new, for_create=True, utf8=s.utf8)
    if new == "INBOX":
        raise No("cannot rename to INBOX", "ALREADYEXISTS")
    await s.store_call(s.mailbox.rename_folder, old, new)
    return b"RENAME completed"


async def subscribe(s, tag, raw_name):
    """RFC 3501 6.3.6: a name that does not exist is refused (as Dovecot does); one deleted
    after subscribing stays subscribed, and LSUB shows it ``\\Noselect``."""
    name, mailbox = mailbox_name(raw_name, utf8=s.utf8), s.mailbox

    def work():
        if not mailbox.folder_exists(name):
            raise FolderNotFound(name)
        mailbox.subscribe(name)

    await s.store_call(work)
    return b"SUBSCRIBE completed"


async def unsubscribe(s, tag, raw_name):
    await s.store_call(s.mailbox.unsubscribe, mailbox_name(raw_name, utf8=s.utf8))
    return b"UNSUBSCRIBE completed"


# -- LIST and LSUB -------------------------------------------------------------------------------


def pattern_regex(pattern: str) -> re.Pattern:
    """LIST wildcards (RFC 3501 6.3.8): ``*`` matches anything, ``%`` anything but ``/``."""
    out = []
    for ch in pattern:
        out.append(".*" if ch == "*" else ("[^/]*" if ch == "%" else re.escape(ch)))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def name_matches(rx: re.Pattern, name: str) -> bool:
    """INBOX is case-insensitive (RFC 3501 5.1): "inbox" and "Inbox/%" find it."""
    if rx.match(name):
        return True
    if name == "INBOX" or name.startswith("INBOX/"):
        return any(rx.match(variant + name[5:]) for variant in ("inbox", "Inbox"))
    return False


@dataclass
class ListRequest:
    """LIST's arguments (RFC 5258 3): selection options, reference, patterns, return options."""

    lsub: bool
    reference: str = ""
    patterns: list[str] = field(default_factory=list)
    selection: set = field(default_factory=set)
    returns: set = field(default_factory=set)
    status: list[str] | None = None  # RFC 5819 RETURN (STATUS (...))

    @property
    def subscribed_only(self) -> bool:
        return self.lsub or b"SUBSCRIBED" in self.selection

    @property
    def show_subscribed(self) -> bool:
        return not self.lsub and (b"SUBSCRIBED" in self.selection or b"SUBSCRIBED" in self.returns)


def _strings(item) -> bool:
    return isinstance(item, (Atom, String))


def list_request(tokens: list, lsub: bool, utf8: bool = False) -> ListRequest:
    tokens = list(tokens)
    req = ListRequest(lsub)
    if tokens and isinstance(tokens[0], list) and not lsub:
        req.selection = _selection_options(tokens.pop(0))
    if len(tokens) < 2 or not _strings(tokens[0]):
        raise Bad("LIST needs a reference name and a mailbox pattern")
    ref, patterns = tokens[0], tokens[1]
    patterns = patterns if isinstance(patterns, list) else [patterns]
    if len(tokens) > 2:
        if lsub or len(tokens) != 4 or not isinstance(tokens[2], Atom) or tokens[2].upper() != b"RETURN" \
                or not isinstance(tokens[3], list):
            raise Bad("unexpected LIST arguments")
        _return_options(req, tokens[3])
    if not patterns or not all(_strings(p) for p in patterns):
        raise Bad("LIST needs a reference name and a mailbox pattern")
    req.reference = _pattern_text(ref, utf8)
    req.patterns = [_pattern_text(p, utf8) for p in patterns]
    return req


#: RFC 5258 3.1 (and RFC 6154 for SPECIAL-USE): the selection options we know.
SELECTION_OPTIONS = {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"}
#: RFC 5258 3.2, RFC 6154 5, RFC 5819: the return options (STATUS takes a list).
RETURN_OPTIONS = {b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE", b"STATUS"}


def _selection_options(options: list) -> set:
    """RFC 5258 3: an unknown option is BAD; RECURSIVEMATCH needs another option beside REMOTE."""
    selection = set()
    for opt in options:
        if not isinstance(opt, Atom) or opt.upper() not in SELECTION_OPTIONS:
            raise Bad(f"unknown LIST selection option {shown(bytes(opt)) if isinstance(opt, bytes) else '(list)'}")
        selection.add(opt.upper())
    if b"RECURSIVEMATCH" in selection and not selection - {b"RECURSIVEMATCH", b"REMOTE"}:
        raise Bad("RECURSIVEMATCH needs another selection option (RFC 5258 3)")
    return selection


def _pattern_text(raw: bytes, utf8: bool = False) -> str:
    """A reference or pattern as a folder-name pattern: modified UTF-7 decoded (RFC 3501
    5.1.3); one that is not valid modified UTF-7 is taken as it is, and so matches nothing
    we hold (every ATOM-CHAR may appear in a pattern, RFC 3501 9 ``list-char``)."""
    text = raw.decode("utf-8", "replace")
    if utf8:  # RFC 6855 3
        return unicodedata.normalize("NFC", text)
    try:
        return decode_mutf7(text) if text.isascii() else text
    except InvalidFolderName:
        return text


def _return_options(req: ListRequest, options: list) -> None:
    i = 0
    while i < len(options):
        opt = options[i]
        if isinstance(opt, Atom) and opt.upper() == b"STATUS" and i + 1 < len(options):
            items = options[i + 1]
            if not isinstance(items, list) or not all(isinstance(x, Atom) for x in items):
                raise Bad("RETURN (STATUS (...)) needs a list of status items")
            req.status = [x.upper().decode("ascii", "replace") for x in items]
            if any(item not in STATUS_ITEMS for item in req.status):
                raise Bad("unknown STATUS item")
            i += 2
            continue
        if not isinstance(opt, Atom) or opt.upper() not in RETURN_OPTIONS - {b"STATUS"}:
            raise Bad("unknown LIST return option")
        req.returns.add(opt.upper())
        i += 1


async def list_mailboxes(s, tag, tokens, lsub=False):
    """RFC 3501 6.3.8 LIST (with RFC 5258 selection and return options, RFC 6154 special-use,
    RFC 3348 children and RFC 5819 STATUS) and 6.3.9 LSUB."""
    req = list_request(tokens, lsub, s.utf8)
    word = b"LSUB" if lsub else b"LIST"
    if req.patterns == [""] and not req.selection:  # RFC 3501 6.3.8: the hierarchy delimiter
        s.untagged(word + b' (\\Noselect) "/" ""')
        return word + b" completed"
    mailbox = s.mailbox
    folders, subs = await s.store_call(lambda: (mailbox.list_folders(), set(mailbox.subscriptions())))
    existing = {f.name: f for f in folders}
    for name, attrs in matching(req, existing, subs):
        extra = b""
        if b"RECURSIVEMATCH" in req.selection and any(sub.startswith(name + "/") for sub in subs):
            extra = b' ("CHILDINFO" ("SUBSCRIBED"))'  # RFC 5258 3.5
        s.untagged(word + b" (" + " ".join(attrs).encode() + b') "/" ' + wire_name(name, s.utf8) + extra)
        if req.status and name in existing and existing[name].selectable:
            try:
                await status_line(s, name, req.status)
            except No:
                pass
    return word + b" completed"


async def lsub(s, tag, tokens):
    return await list_mailboxes(s, tag, tokens, lsub=True)


def matching(req: ListRequest, existing: dict, subs: set) -> list[tuple[str, list[str]]]:
    """The (name, attributes) LIST or LSUB answers with, in order."""
    regexes = [pattern_regex(req.reference + p) for p in req.patterns if p]
    recursive = b"RECURSIVEMATCH" in req.selection
    if req.subscribed_only:
        # RFC 5258 3: with RECURSIVEMATCH a parent is listed too when a descendant is selected
        parents = {"/".join(n.split("/")[:k]) for n in subs for k in range(1, n.count("/") + 1)} if recursive else set()
        candidates = sorted(subs | parents, key=lambda n: (n != "INBOX", n))
    else:
        candidates = list(existing)
    found, seen = [], set()
    for name in candidates:
        if not any(name_matches(rx, name) for rx in regexes):
            parent = _lsub_parent(req, name, regexes, subs, seen)
            if parent is not None:  # a subscribed child of a matching parent: the parent, \Noselect
                seen.add(parent)
                found.append((parent, ["\\Noselect"]))
            continue
        if name in seen:
            continue
        seen.add(name)
        info = existing.get(name)
        if b"SPECIAL-USE" in req.selection and not (info and info.special_use):
            continue
        attrs = _attributes(req, name, info, existing)
        if req.show_subscribed and name in subs:
            attrs.append("\\Subscribed")
        found.append((name, attrs))
    return found


def _lsub_parent(req: ListRequest, name: str, regexes, subs: set, seen: set) -> str | None:
    if not (req.lsub and any("%" in p for p in req.patterns)):
        return None
    parts = name.split("/")
    for k in range(len(parts) - 1, 0, -1):
        parent = "/".join(parts[:k])
        if parent not in subs and parent not in seen and any(name_matches(rx, parent) for rx in regexes):
            return parent
    return None


def _attributes(req: ListRequest, name: str, info, existing: dict) -> list[str]:
    if info is None:
        return ["\\NonExistent" if not req.lsub else "\\Noselect"]
    attrs = [] if info.selectable else ["\\Noselect"]
    children = any(other.startswith(name + "/") for other in existing)
    attrs.append("\\HasChildren" if children else "\\HasNoChildren")
    if info.special_use:
        attrs.append(info.special_use)
    return attrs


# -- STATUS, APPEND, NAMESPACE, ENABLE -----------------------------------------------------------


async def status_line(s, name: str, items: list[str]) -> None:
    mailbox = s.mailbox
    snap = await s.store_call(lambda: mailbox.folder(name).snapshot())
    values = {
        "MESSAGES": len(snap.messages),
        "RECENT": sum(1 for m in snap.messages if snap.is_recent(m)),
        "UIDNEXT": snap.uidnext,
        "UIDVALIDITY": snap.uidvalidity,
        "UNSEEN": sum(1 for m in snap.messages if "\\Seen" not in m.flags),
        "DELETED": sum(1 for m in snap.messages if "\\Deleted" in m.flags),  # RFC 9051 6.3.11
        "HIGHESTMODSEQ": max(1, snap.highestmodseq),
        "SIZE": sum(m.size for m in snap.messages),  # RFC 8438: the RFC822.SIZEs added up
    }
    if s.sel is not None and s.sel.folder.name == name:
        values["RECENT"] = s.sel.recent_count()
    body = " ".join(f"{k} {values[k]}" for k in items).encode()
    s.untagged(b"STATUS " + wire_name(name, s.utf8) + b" (" + body + b")")


async def status(s, tag, raw_name, items):
    """RFC 3501 6.3.10."""
    name = mailbox_name(raw_name, utf8=s.utf8)
    wanted = [item.upper().decode("ascii", "replace") for item in items]
    if any(item not in STATUS_ITEMS for item in wanted):
        raise Bad("unknown STATUS item")
    if not wanted:
        raise Bad("STATUS needs at least one item")
    await status_line(s, name, wanted)
    return b"STATUS completed"


async def append(s, tag, raw_name, messages):
    """RFC 3501 6.3.11, with MULTIAPPEND (RFC 3502: all the messages or none) and APPENDUID
    (RFC 4315 3: one UID, or a UID set for several).  Each message is stored byte for byte;
    a CATENATE one (RFC 4469) is assembled first, a literal8 one is checked for NUL
    (:mod:`mailstack.imap.catenate`, :mod:`mailstack.imap.binary`)."""
    try:
        name = mailbox_name(raw_name, utf8=s.utf8)
        items = [(message, *_append_options(flags, date)) for flags, date, message in messages]
        mailbox, limit = s.mailbox, s.context.config.max_message_size
        report = filing.wanted(s)

        def work():
            folder = destination(mailbox, name)
            uids = []
            try:
                for message, stored_flags, when in items:
                    source = catenate.message_source(mailbox, message, limit)
                    try:
                        uids.append(folder.append(source, stored_flags, when))
                    finally:
                        if source is not message:
                            source.close()
            except BaseException:
                folder.expunge(uids)  # RFC 3502 6: a failed MULTIAPPEND appends nothing
                raise
            return folder.uidvalidity(), uids, folder, filing.special_uses(mailbox) if report else {}

        try:
            uidvalidity, uids, folder, uses = await s.store_call(work)
        except No as e:
            raise quota_failed(e, b"APPEND") from None
        if report:
            filing.report(s, uses, None, folder, [u for u in uids if u is not None])
    finally:
        for _flags, _date, message in messages:
            message.close()
    return b"[APPENDUID %d %s] APPEND completed" % (uidvalidity, uid_set(uids))


def _append_options(flags, date) -> tuple:
    """One message's flag list and date-time, checked before anything is stored."""
    if not all(isinstance(f, Atom) for f in flags):
        raise Bad("flags must be atoms")
    when = None
    if date is not None:
        try:
            when = msgmod.parse_date_time(date)
        except ValueError:
            raise Bad("invalid date-time (use \"dd-Mon-yyyy hh:mm:ss +zzzz\")") from None
    return check_flags(flags), when


async def namespace(s, tag):
    """RFC 2342: one personal namespace, "/" as the separator."""
    s.untagged(b'NAMESPACE (("" "/")) NIL NIL')
    return b"NAMESPACE completed"


async def enable(s, tag, words):
    """RFC 5161: CONDSTORE (RFC 7162 3.1), QRESYNC (RFC 7162 3.2.3), UTF8=ACCEPT (RFC 6855 3:
    mailbox names in UTF-8) and IMAP4rev2 (RFC 9051 6.3.1: the session answers as IMAP4rev2
    does from then on, UTF-8 names included) can be enabled; what is unknown is left out."""
    if not words:
        raise Bad("ENABLE needs at least one capability")
    if not all(isinstance(w, Atom) for w in words):
        raise Bad("ENABLE takes capability names")
    enabled = []
    for word in (bytes(w.upper()) for w in words):
        if word in enabled:
            continue
        if word == b"CONDSTORE":
            s.condstore = True
        elif word == b"QRESYNC":
            s.condstore = s.qresync = True  # RFC 7162 3.2.3: QRESYNC implies CONDSTORE
        elif word == b"UTF8=ACCEPT":
            s.utf8 = True
        elif word == b"IMAP4REV2":
            s.rev2 = s.utf8 = True
            word = b"IMAP4rev2"
            if s.sel is not None:
                s.sel.rev2 = True
        else:
            continue
        enabled.append(word)
    s.untagged(b"ENABLED" + b"".join(b" " + w for w in enabled))
    return b"ENABLE completed"
