"""Commands of the selected state on messages (RFC 3501 6.4): CHECK, CLOSE, UNSELECT (RFC 3691),
EXPUNGE and UID EXPUNGE (RFC 4315), STORE (RFC 7162 UNCHANGEDSINCE), COPY (RFC 4315 COPYUID),
MOVE (RFC 6851), SEARCH (:mod:`mailstack.imap.search`; what it keeps:
:mod:`mailstack.imap.results`), SORT, THREAD and CANCELUPDATE (RFC 5267 4.3.5).  FETCH has its own module.

Each command is ``async def name(session, tag, *arguments, uid=False)`` returning the text of
its tagged OK or raising :class:`~mailstack.imap.errors.ImapError`.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from mailstack.imap import filing
from mailstack.imap import results as resultsmod
from mailstack.imap import search as searchmod
from mailstack.imap import sort as sortmod
from mailstack.imap import thread as threadmod
from mailstack.imap.errors import Bad, No, quota_failed
from mailstack.imap.mailboxes import check_flags, destination, mailbox_name
from mailstack.imap.parser import String
from mailstack.imap.view import uid_set

log = Logger()


async def check(s, tag):
    """RFC 3501 6.4.1: every change is already durable in the store."""
    return b"CHECK completed"


async def close(s, tag):
    """RFC 3501 6.4.2: expunge \\Deleted messages silently (unless read-only), deselect."""
    sel = s.sel
    if not sel.readonly:
        await s.store_call(_expunge_deleted, sel, None)
    s.deselect()
    return b"CLOSE completed"


async def unselect(s, tag):
    """RFC 3691: deselect without expunging."""
    s.deselect()
    return b"UNSELECT completed"


def _expunge_deleted(sel, only: set | None) -> None:
    """*Blocking.*  Expunge the \\Deleted messages the client knows (of ``only``, if given)."""
    snap = sel.folder.snapshot()
    known = set(sel.uids)
    doomed = [m.uid for m in snap.messages if "\\Deleted" in m.flags and m.uid in known
              and (only is None or m.uid in only)]
    if doomed:
        sel.folder.expunge(doomed)


async def expunge(s, tag, ranges=None, uid=False):
    """RFC 3501 6.4.3, and UID EXPUNGE (RFC 4315 2.1) with a UID set.  The EXPUNGE
    responses come from the sync that follows every command."""
    sel = s.sel
    if sel.readonly:
        raise No("the mailbox is read-only (EXAMINE)", "READ-ONLY")
    only = None if ranges is None else {u for _, u in sel.resolve(ranges, True)}
    await s.store_call(_expunge_deleted, sel, only)
    return b"EXPUNGE completed"


async def uid_expunge(s, tag, ranges, uid=True):
    return await expunge(s, tag, ranges, uid=True)


_STORE_MODES = {b"FLAGS": "replace", b"+FLAGS": "add", b"-FLAGS": "remove"}


async def store(s, tag, ranges, unchangedsince, mode, flags, uid=False):
    """RFC 3501 6.4.6.  Without .SILENT every message in the set gets a FETCH FLAGS.
    With (UNCHANGEDSINCE n) (RFC 7162 3.1.3) messages changed since are left alone and
    listed in [MODIFIED]."""
    if unchangedsince is not None:
        s.condstore = True
    sel = s.sel
    mode = mode.upper()
    silent = mode.endswith(b".SILENT")
    how = _STORE_MODES.get(mode[:-7] if silent else mode)
    if how is None:
        raise Bad("STORE needs FLAGS, +FLAGS or -FLAGS")
    wanted = check_flags(flags)
    if sel.readonly:
        raise No("the mailbox is read-only (EXAMINE)", "READ-ONLY")
    targets = sel.resolve(ranges, uid)
    if not targets:
        return b"STORE completed"
    changed, refused = await s.store_call(sel.folder.set_flags, [u for _, u in targets], wanted, how, unchangedsince)
    if s.sel is not sel:
        return b"STORE completed"
    for line in sel.stored(changed, wanted):
        s.untagged(line)
    refused_set = set(refused)
    for seq, u in targets:
        if u not in sel.flags or u in refused_set:
            continue
        extra = b" UID %d" % u if uid else b""
        if s.condstore and u in changed:  # RFC 7162 3.1.3: sent even with .SILENT
            extra += b" MODSEQ (%d)" % changed[u][1]
            if silent:
                s.untagged(b"%d FETCH (%s)" % (seq, extra.strip()))
                continue
        if not silent:
            s.untagged(b"%d FETCH (FLAGS %s%s)" % (seq, sel.flag_bytes(u), extra))
    if refused:
        numbers = refused if uid else [seq for seq, u in targets if u in refused_set]
        return b"[MODIFIED " + uid_set(numbers) + b"] conditional STORE failed for some messages"
    return b"STORE completed"


async def copy(s, tag, ranges, raw_name, uid=False, move=False):
    """RFC 3501 6.4.7 with COPYUID (RFC 4315 3); MOVE (RFC 6851) is copy then expunge."""
    sel = s.sel
    if move and sel.readonly:
        raise No("the mailbox is read-only (EXAMINE)", "READ-ONLY")
    name = mailbox_name(raw_name, utf8=s.utf8)
    targets = sel.resolve(ranges, uid)
    mailbox = s.mailbox
    report = filing.wanted(s)

    def work():
        dest = destination(mailbox, name)
        uids = [u for _, u in targets]
        pairs = sel.folder.move(uids, dest) if move else sel.folder.copy(uids, dest)
        return pairs, dest.snapshot().uidvalidity, dest, filing.special_uses(mailbox) if report and pairs else {}

    try:
        pairs, uidvalidity, dest, uses = await s.store_call(work)
    except No as e:
        raise quota_failed(e, b"MOVE" if move else b"COPY") from None
    if report:
        filing.report(s, uses, sel.folder.name, dest, [p[1] for p in pairs])
    word = b"MOVE" if move else b"COPY"
    if targets and not pairs:
        raise No("the messages were expunged meanwhile", "EXPUNGEISSUED")
    if not pairs:
        return word + b" completed"
    code = b"[COPYUID %d %s %s]" % (uidvalidity, uid_set(p[0] for p in pairs), uid_set(p[1] for p in pairs))
    if move:
        s.untagged(b"OK " + code + b" moved")
        return b"MOVE completed"
    return code + b" COPY completed"


async def move(s, tag, ranges, raw_name, uid=False):
    return await copy(s, tag, ranges, raw_name, uid=uid, move=True)


def _compile(charset, keys, saved: frozenset = frozenset()):
    cs = (charset or b"US-ASCII").upper()
    if cs not in (b"US-ASCII", b"UTF-8"):
        raise No("unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
    try:
        return searchmod.compile_query(keys, "utf-8", saved=saved)
    except searchmod.SearchSyntaxError as e:
        raise Bad(str(e)) from None
    except (IndexError, AttributeError, TypeError):
        raise Bad("incomplete search key") from None


def _finder(s, tree):
    """A blocking function returning the search candidates that match ``tree`` (for a
    worker thread: it works on a copy of the view, taken now)."""
    sel = s.sel
    uids, flags, recent, folder = list(sel.uids), sel.flags.copy(), set(sel.recent), sel.folder

    def find():
        snap = folder.snapshot()
        info = snap.by_uid()
        heads, allowed = searchmod.prefiltered(folder, snap.uidvalidity, [u for u in uids if u in info], tree)
        candidates = [searchmod.Candidate(folder, seq, u, info[u], flags.get(u, frozenset()), u in recent,
                                          heads.get(u)) for seq, u in enumerate(uids, 1) if u in info
                      and (allowed is None or u in allowed)]
        return searchmod.run(tree, candidates, len(uids), uids[-1] if uids else 0)

    return find


async def _in_thread(s, work):
    try:
        return await s.store_call(work)
    except searchmod.SearchSyntaxError as e:
        raise Bad(str(e)) from None


async def search(s, tag, charset, keys, returns=None, uid=False):
    """RFC 3501 6.4.4 (see :mod:`mailstack.imap.search`); with ``RETURN (...)``, or always in
    IMAP4rev2 (RFC 9051 6.4.4), the answer is one ESEARCH response (RFC 4731)."""
    if returns is None and s.rev2:
        returns = resultsmod.ALL
    sel = s.sel
    try:
        tree = _compile(charset, keys, sel.saved)
        found = await _in_thread(s, _finder(s, tree))
    except Exception:
        if returns is not None and b"SAVE" in returns.options:
            sel.saved = frozenset()  # RFC 5182 2.1: a failed SAVE leaves $ empty
        raise
    numbers = [c.uid if uid else c.seq for c in found]
    modseq = None
    if found and searchmod.uses_modseq(tree):  # RFC 7162 3.1.5
        s.condstore = True
        modseq = max(c.info.modseq for c in found)
    if returns is None:
        s.untagged(b"SEARCH" + b"".join(b" %d" % n for n in numbers) + (b" (MODSEQ %d)" % modseq if modseq else b""))
        return b"SEARCH completed"
    _keep(s, tag, uid, tree, None, [c.uid for c in found], returns)
    if returns.answered:
        s.untagged(resultsmod.esearch(tag, uid, numbers, returns, modseq))
    return b"SEARCH completed"


def _keep(s, tag, uid, tree, criteria, uids: list[int], returns) -> None:
    """SAVE (RFC 5182 2.4) and UPDATE (RFC 5267 4.3): what the server keeps of a result."""
    sel = s.sel
    if b"SAVE" in returns.options:
        sel.saved = resultsmod.saved_result(uids, returns, ordered=criteria is not None)
    if b"UPDATE" not in returns.options:
        return
    if tag in sel.contexts:  # RFC 5267 4.3: tags of update contexts are not reused
        raise Bad("tag reuse: an update context already has this tag")
    if len(sel.contexts) >= resultsmod.MAX_CONTEXTS:
        s.untagged(b'NO [NOUPDATE "' + tag + b'"] too many update contexts')  # RFC 5267 4.3.1
        return
    sel.contexts[tag] = resultsmod.Context(tag, uid, tree, criteria, list(uids))


async def cancel_update(s, tag, tokens):
    """RFC 5267 4.3.5 ``CANCELUPDATE "tag" ...``: those contexts get no more updates (a tag
    with no context is ignored: the client may not have seen its NOUPDATE)."""
    if not tokens or not all(isinstance(t, String) for t in tokens):
        raise Bad("CANCELUPDATE takes the quoted tags of searching commands")
    for t in tokens:
        s.sel.contexts.pop(bytes(t), None)
    return b"CANCELUPDATE completed"


async def sort(s, tag, criteria, charset, keys, returns=None, uid=False):
    """RFC 5256 3 SORT (and RFC 5957 DISPLAYFROM/DISPLAYTO): the matches of a search, ordered;
    the keys from the store's cache (:mod:`mailstack.imap.sort`).  With ``RETURN (...)``
    one ESEARCH response (RFC 5267 3.1 ESORT)."""
    tree = _compile(charset, keys, s.sel.saved)
    find, folder = _finder(s, tree), s.sel.folder
    groups = sortmod.groups_for(criteria)

    def work():
        with sortmod.no_gc():
            found = find()
            keys = sortmod.load_keys(folder, {c.uid: c.info for c in found}, groups) if groups else {}
            return sortmod.order(found, criteria, keys)

    ranked = await _in_thread(s, work)
    _keep_tables()
    numbers = [c.uid if uid else c.seq for c in ranked]
    if returns is None:
        s.untagged(b"SORT" + b"".join(b" %d" % n for n in numbers))
        return b"SORT completed"
    _keep(s, tag, uid, tree, criteria, [c.uid for c in ranked], returns)
    if returns.answered:
        s.untagged(resultsmod.esearch(tag, uid, numbers, returns, None, ordered=True))
    return b"SORT completed"


#: Seconds after a SORT or THREAD answer before the keys it made are written (in a worker):
#: not while the client reads the answer and sends its next command.
KEEP_TABLES_AFTER = 1.0


def _keep_tables() -> None:
    """The sort keys made for this answer go to the store's cache a moment after it (memory
    has them meanwhile; a restart before that only costs computing them again)."""
    def keep():
        deferToThread(sortmod.keep_tables).addErrback(
            lambda failure: log.failure("keeping the IMAP sort keys failed", failure))

    reactor.callLater(KEEP_TABLES_AFTER, keep)


async def thread(s, tag, algorithm, charset, keys, uid=False):
    """RFC 5256 3 THREAD, ORDEREDSUBJECT or REFERENCES (:mod:`mailstack.imap.thread`)."""
    tree = _compile(charset, keys, s.sel.saved)
    find, folder = _finder(s, tree), s.sel.folder

    def work():
        with sortmod.no_gc():
            found = find()
            groups = ("basic",) if algorithm == "ORDEREDSUBJECT" else ("basic", "thread")  # RFC 5256 3
            keys = sortmod.load_keys(folder, {c.uid: c.info for c in found}, groups)
            messages = [(c.uid if uid else c.seq, keys[c.uid]) for c in found if c.uid in keys]
            build = threadmod.ordered_subject if algorithm == "ORDEREDSUBJECT" else threadmod.references
            return threadmod.thread_list(build(messages))

    threads = await _in_thread(s, work)
    s.untagged(b"THREAD" + (b" " + threads if threads else b""))
    _keep_tables()
    return b"THREAD completed"
