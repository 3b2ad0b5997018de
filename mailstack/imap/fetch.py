"""FETCH (RFC 3501 6.4.5, RFC 7162 3.1.4 MODSEQ and CHANGEDSINCE, 3.2.6 VANISHED).

Responses are built from the stored bytes in a worker thread (:func:`build_fetch`), a few
dozen messages at a time; ENVELOPE, BODYSTRUCTURE and HEADER.FIELDS sections come from the
store's cache of derived values when kept there; whole messages above :data:`STREAM_ABOVE`
are streamed from their file in chunks under flow control.
"""

from __future__ import annotations

import hashlib

from twisted.internet import defer, threads

from mailstack.errors import MessageGone
from mailstack.flow import Flow
from mailstack.imap import binary as binarymod
from mailstack.imap import message as msgmod
from mailstack.imap.errors import NO_REPLY, Bad
from mailstack.imap.parser import FetchItem
from mailstack.imap.view import format_flags, uid_set

STREAM_ABOVE = 256 * 1024  # whole messages larger than this are streamed from the file
READ_CHUNK = 64 * 1024
FETCH_BATCH = 64  # messages per worker-thread call ...
#: ... when no item needs more than the header: each message's response is small, and every
#: batch costs a cache query and a cache write (Thunderbird's list of 10,000: 20, not 157).
HEADER_BATCH = 512
#: Batches of messages whose contents are fetched: up to BATCH_MAX messages and about
#: BATCH_OCTETS octets (two batches are held at a time; 64 messages a call cost a fifth of
#: the throughput of an all-bodies FETCH in thread hand-offs).
BATCH_MAX, BATCH_OCTETS = 512, 2 << 20
KEEP_WHOLE = 4096  # response pieces at least this long are written as they are, not joined


async def fetch(s, tag, ranges, spec, uid=False):
    """RFC 3501 6.4.5; UID FETCH (6.4.8) always includes UID."""
    sel = s.sel
    want_modseq, changedsince = spec.modseq, spec.changedsince
    if spec.vanished and not (uid and s.qresync):  # RFC 7162 3.2.6
        raise Bad("VANISHED needs UID FETCH with QRESYNC enabled")
    if want_modseq or changedsince is not None:
        s.condstore = True
        want_modseq = True  # RFC 7162 3.1.4.1: CHANGEDSINCE implies MODSEQ
    targets = sel.resolve(ranges, uid)
    if spec.vanished:
        await _vanished_earlier(s, sel, ranges, changedsince)
    items = list(spec.items)
    if uid and not any(i.type == "uid" for i in items):
        items.insert(0, FetchItem("uid"))
    sets_seen = not sel.readonly and any(
        (i.type == "body" and not i.peek and i.is_section) or (i.type == "binary" and not i.peek)  # RFC 3516 4.2
        or i.type in ("rfc822", "rfc822text") for i in items)
    folder = sel.folder
    known_flags = sel.flags  # read by the worker; nothing else runs meanwhile
    recent = set() if sel.rev2 else sel.recent  # RFC 9051: no \Recent in IMAP4rev2

    def prepare():
        """*Blocking.*  Snapshot, \\Seen where the FETCH sets it, and (for the usual few
        messages) the responses too: one thread call for the whole command."""
        info = folder.snapshot().by_uid()
        changed = {}
        if sets_seen:
            unseen = [u for _, u in targets if u in info and "\\Seen" not in known_flags.get(u, ())]
            if unseen:
                changed, _ = folder.set_flags(unseen, ["\\Seen"], "add")
        modseqs = {u: m for u, (_f, m) in changed.items()}
        live = [(sq, u) for sq, u in targets if u in info
                and (changedsince is None or modseqs.get(u, info[u].modseq) > changedsince)]
        first = None
        if len(live) <= FETCH_BATCH:
            flag_bytes = {u: format_flags(changed[u][0] if u in changed else known_flags.get(u, ()), u in recent)
                          for _, u in live}
            first = build_fetch(folder, live, info, items, flag_bytes, modseqs, want_modseq)
        return info, changed, modseqs, live, first

    info, changed, flagged_now, live, first = await s.store_call(prepare)
    for u, (new_flags, _m) in changed.items():
        sel.flags[u] = new_flags
    if first is not None:
        await write_responses(s, first)
        return NO_REPLY if s.lost else b"FETCH completed"
    return await _fetch_batches(s, sel, live, info, items, flagged_now, want_modseq)


async def _vanished_earlier(s, sel, ranges, changedsince) -> None:
    """RFC 7162 3.2.6: the UIDs in the set expunged since ``changedsince``."""
    folder, top = sel.folder, sel.last_uid()
    spans = []
    for lo, hi in ranges:
        lo, hi = (top if lo is None else lo), (top if hi is None else hi)
        spans.append((min(lo, hi), max(lo, hi)))

    def earlier():
        return [u for u in folder.expunged_since(changedsince) if any(lo <= u <= hi for lo, hi in spans)]

    gone = await s.store_call(earlier)
    if gone:
        s.untagged(b"VANISHED (EARLIER) " + uid_set(gone))


async def _fetch_batches(s, sel, targets, info, items, flagged_now, want_modseq):
    """Many messages: one batch is built (in a thread) while the one before is written, and
    no further until the client has taken that one (the transport pauses the flow when its
    buffer fills), so memory stays at about two batches however many messages are fetched
    and however slow the client, and the socket does not wait for the builder."""
    folder = sel.folder
    flow = s.flow = Flow()
    s.transport.registerProducer(flow, True)
    if _header_only(items) or not _needs_content(items):
        bounds = [(k, k + HEADER_BATCH) for k in range(0, len(targets), HEADER_BATCH)]
    else:  # contents: batches of about BATCH_OCTETS, fewer thread calls for small messages
        bounds, start, octets = [], 0, 0
        for k, (_, u) in enumerate(targets):
            m = info.get(u)
            octets += m.size if m is not None else 0
            if octets >= BATCH_OCTETS or k + 1 - start >= BATCH_MAX:
                bounds.append((start, k + 1))
                start, octets = k + 1, 0
        if start < len(targets):
            bounds.append((start, len(targets)))
    wants_flags = any(i.type == "flags" for i in items)

    def build(n: int) -> defer.Deferred:
        batch = targets[bounds[n][0] : bounds[n][1]]
        # FLAGS where asked for, or where this FETCH set \Seen (RFC 3501 6.4.5): nowhere else
        flag_bytes = {u: sel.flag_bytes(u) for _, u in batch if wants_flags or u in flagged_now}
        return defer.ensureDeferred(s.store_call(build_fetch, folder, batch, info, items, flag_bytes,
                                                 flagged_now, want_modseq))

    ahead = build(0) if bounds else None
    try:
        for n in range(len(bounds)):
            current, ahead = ahead, None
            responses = await current
            if n + 1 < len(bounds):
                ahead = build(n + 1)
            await write_responses(s, responses)
            await flow.ready()
            if s.lost or flow.stopped:
                return NO_REPLY
    finally:
        if ahead is not None:  # the connection went away: close what the next batch opened
            ahead.addCallback(_close_streams)
            ahead.addErrback(lambda f: None)
        s.flow = None
        if not s.lost:
            s.transport.unregisterProducer()
    return b"FETCH completed"


async def write_responses(s, responses) -> None:
    """Runs of bytes in one ``writeSequence`` each; open files streamed between them."""
    pending = [seg for segments in responses for seg in segments]
    pending.reverse()  # popped from the end
    try:
        while pending and not s.lost:
            if isinstance(pending[-1], bytes):
                run = []
                while pending and isinstance(pending[-1], bytes):
                    run.append(pending.pop())
                s.transport.writeSequence(run)
            else:
                await stream(s, *pending.pop())  # closes the file
    finally:
        for seg in pending:  # the connection went away: close what was opened
            if not isinstance(seg, bytes):
                seg[0].close()


async def stream(s, f, offset: int, length: int) -> None:
    """Write ``length`` bytes of an open message file, read in a thread chunk by chunk
    (under the FETCH's flow control when it has one)."""
    owner = s.flow is None
    flow = s.flow if not owner else Flow()
    if owner:
        s.flow = flow
        s.transport.registerProducer(flow, True)
    try:
        if offset:
            await threads.deferToThread(f.seek, offset)
        remaining = length
        while remaining > 0 and not flow.stopped:
            chunk = await threads.deferToThread(f.read, min(READ_CHUNK, remaining))
            if not chunk:  # cannot happen (files never change), but the literal must be whole
                chunk = b" " * remaining
            s.transport.write(chunk)
            remaining -= len(chunk)
            await flow.ready()
    finally:
        f.close()
        if owner:
            s.flow = None
            if not s.lost:
                s.transport.unregisterProducer()


def _close_streams(responses) -> None:
    """Close the message files of FETCH responses that will not be written."""
    for segments in responses:
        for seg in segments:
            if not isinstance(seg, bytes):
                seg[0].close()


# -- FETCH responses (worker thread) -------------------------------------------------------------


def _section_name(item) -> bytes:
    spec = ".".join(str(p + 1) for p in item.part)
    sub = ""
    if item.header:
        h = item.header
        if h.fields:
            sub = ("HEADER.FIELDS.NOT" if h.negate else "HEADER.FIELDS") + " (" + " ".join(
                h.fields).upper() + ")"
        else:
            sub = "HEADER"
    elif item.text:
        sub = "TEXT"
    elif item.mime:
        sub = "MIME"
    return ("BODY[" + ".".join(x for x in (spec, sub) if x) + "]").encode()


def section_bytes(item, entity: msgmod.Entity) -> bytes:
    """BODY[section] of a message (FetchItem ``item``); b"" for a section it does not have."""
    path = tuple(p + 1 for p in item.part)
    try:
        target = entity.locate(path)
    except KeyError:
        return b""
    if item.mime:
        return target.header if path else b""
    if item.header or item.text:
        message = target if not path else target.message
        if message is None:
            return b""
        if item.text:
            return message.body
        if item.header.fields:
            return message.header_fields(list(item.header.fields), bool(item.header.negate))
        return message.header
    if not path:
        return entity.header + entity.body
    return target.body


def _header_only(items) -> bool:
    """True when every item needs only the message's header."""
    for i in items:
        if i.type in ("envelope", "rfc822header"):
            continue
        if i.type == "body" and i.header and not i.part:
            continue
        if i.type in _FROM_SNAPSHOT:
            continue
        return False
    return True


#: FETCH items answered from the folder snapshot alone, without reading the message.
_FROM_SNAPSHOT = ("uid", "flags", "internaldate", "rfc822size", "savedate")


def _needs_content(items) -> bool:
    return any(i.type not in _FROM_SNAPSHOT for i in items)


#: FETCH items whose value is kept in the store's cache (see MaildirFolder.keep_derived): the
#: message never changes, so neither do they.  BODY is BODYSTRUCTURE without extension data.
_DERIVED = {"envelope": "imap.envelope", "bodystructure": "imap.bodystructure", "body": "imap.body"}


def _derived_kind(item) -> str | None:
    if item.type == "body" and item.header and item.header.fields and not item.part:
        # BODY[HEADER.FIELDS (...)]: a client asks for the same fields for every message it
        # lists (Thunderbird's message list), so the section itself is kept, per field list.
        names = sorted({f.lower() for f in item.header.fields})
        key = ("not " if item.header.negate else "") + " ".join(names)
        return "imap.fields." + hashlib.sha256(key.encode()).hexdigest()[:16]
    if item.type == "body" and (item.header or item.text or item.mime or item.part or item.empty):
        return None  # a section, not the structure
    return _DERIVED.get(item.type)


class _Derived:
    """The cached ENVELOPE/BODYSTRUCTURE values of one batch, and the ones computed for it."""

    def __init__(self, folder, uids, items):
        self.kind_of = {id(i): _derived_kind(i) for i in items}
        self.section_name = {id(i): _section_name(i) for i in items if i.type == "body"}
        self.kinds = {k for k in self.kind_of.values() if k}
        self.values = {k: folder.derived(uids, k) for k in self.kinds}
        self.fresh: dict[str, dict[int, bytes]] = {k: {} for k in self.kinds}

    def get(self, kind: str, uid: int, compute) -> bytes:
        value = self.values[kind].get(uid)
        if value is None:
            value = self.fresh[kind][uid] = compute()
        return value

    def complete(self, uid: int) -> bool:
        return all(uid in self.values[k] for k in self.kinds)

    def keep(self, folder) -> None:
        for kind, values in self.fresh.items():
            folder.keep_derived(kind, values)


def build_fetch(folder, batch, info, items, flag_bytes, flagged_now, want_modseq=False) -> list[list]:
    """*Blocking.*  One list of segments (bytes, or (open file, offset, length)) per message.

    Header-only items read header sections through the store's cache; ENVELOPE and
    BODYSTRUCTURE come from the cache when kept there, so a message is read only for what
    is not."""
    out = []
    header_only = _header_only(items)
    structural = [i for i in items if _needs_content([i]) and _derived_kind(i) is None]
    whole_only = all(i.type == "rfc822" or (i.type == "body" and i.empty and not i.part) or not _needs_content([i])
                     or (i.type in ("binary", "binarysize") and not i.part) for i in items)
    uids = [uid for _, uid in batch]
    derived = _Derived(folder, uids, items)
    # A message needs its bytes unless every item is metadata or cached.
    need = [u for u in uids if structural or not derived.complete(u)] if _needs_content(items) else []
    heads = folder.headers(need) if header_only and need else {}
    # Whole messages for the rest, read in one store call (all but those streamed).
    bodies = folder.read_messages([u for u in need if not whole_only or info[u].size <= STREAM_ABOVE]) \
        if need and not header_only else {}
    need = set(need)
    whole = _whole_body_names(items) if whole_only and not want_modseq else None
    for seq, uid in batch:
        m = info[uid]
        if whole is not None and uid in need and uid not in flagged_now and m.size <= STREAM_ABOVE:
            raw = bodies.get(uid)
            if raw is not None:  # else expunged by another session meanwhile: no response
                out.append(_whole_body_response(whole, seq, uid, raw))
            continue
        entity = raw = None
        files = []
        try:
            if uid in need:
                if header_only:
                    if uid not in heads:
                        raise MessageGone(uid)
                    entity = msgmod.Entity(heads[uid])
                elif whole_only:  # BODY[]/RFC822: the bytes as they are, or streamed when large
                    if m.size <= STREAM_ABOVE:
                        raw = _body(bodies, uid)
                else:
                    entity = msgmod.Entity(_body(bodies, uid))
            segments: list = [b"* %d FETCH (" % seq]
            for n, item in enumerate(items):
                if n:
                    segments.append(b" ")
                segments += _fetch_item(folder, uid, m, item, entity, flag_bytes, files, derived, raw)
        except MessageGone:  # expunged by another session meanwhile: RFC 3501 allows no response
            for f in files:
                f.close()
            continue
        if uid in flagged_now and not any(i.type == "flags" for i in items):
            segments.append(b" FLAGS " + flag_bytes[uid])
        if want_modseq:
            segments.append((b" " if items else b"") + b"MODSEQ (%d)" % flagged_now.get(uid, m.modseq))
        segments.append(b")\r\n")
        if not files and max(map(len, segments)) < KEEP_WHOLE:  # all small bytes: one join
            out.append([b"".join(segments)])
            continue
        # Small pieces joined; a large one (a body) kept as it is: the transport joins its
        # buffer anyway, and a second copy of every body in this thread is time under the GIL.
        merged: list = []
        small = False  # merged[-1] is bytes that may grow
        for seg in segments:
            if not isinstance(seg, bytes):
                merged.append(seg)
                small = False
            elif len(seg) >= KEEP_WHOLE:
                merged.append(seg)
                small = False
            elif small:
                merged[-1] += seg
            else:
                merged.append(seg)
                small = True
        out.append(merged)
    derived.keep(folder)
    return out


def _whole_body_names(items) -> tuple | None:
    """For a FETCH of the whole message (``BODY[]``, ``BODY.PEEK[]`` or ``RFC822``, once) and
    UIDs, nothing else: per item, None for UID or the body's name in the response; else None.
    Clients fetching whole messages (imapsync, mbsync, a first download) ask just this, and it
    is answered without the general per-item loop (the same bytes, a fifth of its cost)."""
    names = []
    for item in items:
        if item.type == "uid":
            names.append(None)
        elif item.type == "rfc822":
            names.append(b"RFC822")
        elif item.type == "body" and item.empty and not item.part and item.partial_begin is None:
            names.append(b"BODY[]")
        else:
            return None
    return tuple(names) if sum(name is not None for name in names) == 1 else None


def _whole_body_response(names: tuple, seq: int, uid: int, raw: bytes) -> list:
    """The segments of one message's response to a :func:`_whole_body_names` FETCH, split as
    :func:`build_fetch` splits them (a large body kept apart from the small pieces)."""
    head, tail = [b"* %d FETCH (" % seq], []
    into = head
    for n, name in enumerate(names):
        if n:
            into.append(b" ")
        if name is None:
            into.append(b"UID %d" % uid)
        else:
            into.append(name + b" {%d}\r\n" % len(raw))
            into = tail
    tail.append(b")\r\n")
    first, last = b"".join(head), b"".join(tail)
    return [first, raw, last] if len(raw) >= KEEP_WHOLE else [first + raw + last]


def _body(bodies: dict[int, bytes], uid: int) -> bytes:
    data = bodies.get(uid)
    if data is None:
        raise MessageGone(uid)
    return data


def _fetch_item(folder, uid, m, item, entity, flag_bytes, files, derived, raw=None) -> list:
    t = item.type
    if t == "uid":
        return [b"UID %d" % uid]
    if t == "flags":
        return [b"FLAGS " + flag_bytes[uid]]
    if t == "internaldate":
        return [b'INTERNALDATE "' + msgmod.format_date_time(m.internaldate) + b'"']
    if t == "rfc822size":
        return [b"RFC822.SIZE %d" % m.size]
    if t == "savedate":  # RFC 8514 3
        saved = m.saved
        return [b'SAVEDATE "' + msgmod.format_date_time(saved) + b'"' if saved is not None else b"SAVEDATE NIL"]
    if t == "envelope":
        return [b"ENVELOPE " + derived.get("imap.envelope", uid, lambda: msgmod.sexp(msgmod.envelope(entity)))]
    if t == "bodystructure":
        return [b"BODYSTRUCTURE " + derived.get("imap.bodystructure", uid,
                                                 lambda: msgmod.sexp(msgmod.bodystructure(entity, True)))]
    if t == "rfc822header":
        return [b"RFC822.HEADER {%d}\r\n" % len(entity.header) + entity.header]
    if t == "rfc822text":
        return [b"RFC822.TEXT {%d}\r\n" % len(entity.body) + entity.body]
    if t in ("binary", "binarysize"):  # RFC 3516
        if entity is None:  # BINARY[] (BINARY.SIZE[]) alone: the message as it is, maybe streamed
            return binarymod.whole_message(folder, uid, item, raw, files)
        return [binarymod.fetch_item(item, entity)]
    if t == "rfc822" or (item.empty and not item.part):
        name = b"RFC822" if t == "rfc822" else b"BODY[]"
        begin = None if t == "rfc822" else item.partial_begin
        if entity is not None or raw is not None:
            data = raw if raw is not None else entity.header + entity.body
            if begin is not None:
                data = data[begin : begin + item.partial_length]
                name += b"<%d>" % begin
            return [name + b" {%d}\r\n" % len(data), data]  # joined once, with the rest
        f = folder.open_message(uid)
        files.append(f)
        size = f.size  # of the CRLF form the store serves (RFC 3501 2.3.4)
        offset, length = 0, size
        if begin is not None:
            offset = min(begin, size)
            length = max(0, min(item.partial_length, size - offset))
            name += b"<%d>" % begin
        return [name + b" {%d}\r\n" % length, (f, offset, length)]
    # t == "body"
    if not (item.header or item.text or item.mime or item.part):
        return [b"BODY " + derived.get("imap.body", uid, lambda: msgmod.sexp(msgmod.bodystructure(entity, False)))]
    kind = derived.kind_of[id(item)]
    if kind is not None:  # HEADER.FIELDS
        data = derived.get(kind, uid, lambda: section_bytes(item, entity))
    else:
        data = section_bytes(item, entity)
    name = derived.section_name[id(item)]
    if item.partial_begin is not None:
        data = data[item.partial_begin : item.partial_begin + item.partial_length]
        name += b"<%d>" % item.partial_begin
    return [name + b" {%d}\r\n" % len(data) + data]


