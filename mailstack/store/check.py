"""Check a user's Maildir against its UID state, and repair it.

The UID state is a cache of facts about the mail files plus the UIDs already shown to
clients.  The checker reads it *without* the automatic fix-ups that opening a folder does, so
it can report what is wrong: files without a UID, UIDs without a file, duplicate UIDs, UIDNEXT
too low, unreadable records, a ``dovecot-uidlist`` that is missing or says other UIDs (Dovecot
would renumber the folder: numbering.py); and the message cache (cache.py) and the saved folder
index (index.py) against the files.  A folder that has only Dovecot's ``dovecot-uidlist`` is
fine: its first opening takes those UIDs over (folder.py), which ``--repair`` does at once.
Repair keeps every UID that still names a file (clients have cached them), gives new UIDs above
UIDNEXT to the rest, and rewrites the log and Dovecot's file; a cache or index that disagrees
with the files is removed, to be rebuilt as it is used.  Cache entries of messages expunged
elsewhere (by Dovecot, say) are housekeeping, not a problem: counted, and dropped on repair.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mailstack.store import crlf
from mailstack.store import index as folder_index
from mailstack.store.cache import HEADER, header_section
from mailstack.store.dovecot import DovecotUidList, DovecotUids
from mailstack.store.files import base_of
from mailstack.store.folder import MaildirFolder
from mailstack.store.maildir import MaildirStore
from mailstack.store.quota import Limits, UserCounter, walk
from mailstack.store.uidlist import UidList, UidState, next_uidvalidity


@dataclass
class FolderReport:
    folder: str
    messages: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: bool = False
    waiting: int = 0  # delivered into new/, not numbered yet: normal, see _waiting
    from_dovecot: int = 0  # UIDs that Dovecot's file gives and the first opening takes over
    stale_cache: int = 0  # cache entries of messages no longer there (dropped on repair)
    expunged_elsewhere: int = 0  # UIDs whose file another program deleted (forgotten at the next opening)


def _listing(path: str) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(path, sub)):
            if not name.startswith("."):
                files.setdefault(base_of(name), []).append(f"{sub}/{name}")
    return files


def _waiting(folder: MaildirFolder, rels: list[str], log_mtime_ns: int | None) -> bool:
    """Mail delivered without a UID (SMTP delivery leaves numbering to the next listing) and
    linked into new/ after the UID log last changed: it waits for its first listing, which is
    normal.  A file in cur/, or one already there when the log was last written, without a UID
    is a lost UID.  (The rule errs only when a flag change wrote the log after the delivery
    without listing new/ first: that file is then reported, and ``--repair`` numbers it.)"""
    if len(rels) != 1 or not rels[0].startswith("new/"):
        return False
    if log_mtime_ns is None:
        return True  # never listed (the caller checked cur/ is empty): the first listing makes the log
    try:
        return os.stat(os.path.join(folder.path, rels[0])).st_ctime_ns >= log_mtime_ns
    except FileNotFoundError:
        return False  # gone meanwhile (read by a session): not waiting


def _log_mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def check_folder(folder: MaildirFolder, repair: bool = False) -> FolderReport:
    report = FolderReport(folder.name)
    with folder.locked():
        raw = UidList(folder.path, fsync=False)
        missing = raw.refresh()
        state = raw.state
        files = _listing(folder.path)
        report.messages = len(files)
        theirs = DovecotUidList(folder.path, fsync=False).refresh()
        if missing and theirs is not None:
            return _check_dovecot_only(folder, report, theirs, files, repair)
        log_mtime_ns = None if missing else _log_mtime_ns(raw.path)
        # No log and nothing in cur/ (only a client puts mail there): a folder never listed.
        # No log beside mail in cur/: the log was lost, and every file has lost its UID.
        never_listed = missing and not any(r.startswith("cur/") for rels in files.values() for r in rels)
        waiting = set() if missing and not never_listed else {
            b for b, rels in files.items() if b not in state.by_base and _waiting(folder, rels, log_mtime_ns)}
        report.waiting = len(waiting)
        if missing and len(waiting) < len(files):
            report.problems.append("no UID state file")
        elif state.uidvalidity < 1:
            report.problems.append("UID state has no valid UIDVALIDITY")
        report.problems += state.problems
        same = theirs is not None and not missing and theirs.uidvalidity == state.uidvalidity
        for base, rels in sorted(files.items()):
            if len(rels) > 1:
                report.problems.append(f"{base} is present {len(rels)} times: {', '.join(rels)}")
            if base in state.by_base or base in waiting:
                continue
            if same and theirs.uids.get(base, 0) >= state.uidnext:
                report.from_dovecot += 1  # numbered by Dovecot: the next opening takes its UID
            else:
                report.problems.append(f"file without UID: {rels[0]}")
        # A UID whose file is gone: expunged by another program (Dovecot, a MUA on the Maildir);
        # the next opening forgets it.  Not a problem: Maildir lets any program delete mail.
        report.expunged_elsewhere = sum(e.base not in files for e in state.entries.values())
        if state.entries and state.uidnext <= max(state.entries):
            report.problems.append(f"UIDNEXT {state.uidnext} is not above the highest UID {max(state.entries)}")
        if not missing and state.uidvalidity >= 1:
            report.problems += _check_dovecot(state, theirs, files)
        cache_problems, report.stale_cache = _check_cache(folder, files)
        cache_problems += _check_index(folder, state, files)
        if repair and report.problems:
            _repair(folder, state, files)
            report.repaired = True
        if repair and report.stale_cache and not cache_problems:
            folder.cache.forget([b for b, _k, _v in folder.cache.entries() if b not in files])
        if repair and cache_problems:
            folder.cache.clear()  # it is only a cache: rebuilt from the mail files as it is used
            try:
                os.unlink(os.path.join(folder.path, folder_index.INDEX_FILE))
            except FileNotFoundError:
                pass
            report.repaired = True
        report.problems += cache_problems
    return report


def _check_index(folder: MaildirFolder, state: UidState, files: dict[str, list[str]]) -> list[str]:
    """A saved index (index.py) that would be used, yet says other than the log and files."""
    doc = folder_index.read(folder.path)
    if doc is None or not folder_index.still_valid(folder.path, doc, folder.uidlist.path, folder.keywords.path):
        return []  # absent, or stale and so ignored: nothing wrong
    saved = set(zip(doc["uids"], doc["bases"]))
    listed = sorted(doc["rels"])
    suffixes = [folder_index.NO_SUFFIX if (i := r.find(":2,")) < 0 else r[i + 3:] for r in doc["rels"]]
    named = map(crlf.size_from_name, doc["bases"])
    if suffixes != doc["flag_letters"] or any(n is not None and n != size for n, size in zip(named, doc["sizes"])):
        return ["the folder index disagrees with the UID log or the files"]
    if saved != {(uid, e.base) for uid, e in state.entries.items()} or listed != sorted(
            r for rels in files.values() for r in rels):
        return ["the folder index disagrees with the UID log or the files"]
    return []


def _check_dovecot_only(folder: MaildirFolder, report: FolderReport, theirs: DovecotUids,
                        files: dict[str, list[str]], repair: bool) -> FolderReport:
    """A folder Dovecot served, not opened here yet: its UIDs are Dovecot's."""
    report.from_dovecot = sum(b in theirs.uids for b in files)
    report.waiting = len(files) - report.from_dovecot  # numbered above Dovecot's at the first opening
    report.problems += [f"{base} is present {len(rels)} times: {', '.join(rels)}"
                        for base, rels in sorted(files.items()) if len(rels) > 1]
    if repair:
        folder.snapshot()  # the first opening: takes the UIDs over, numbers the rest
        report.repaired = True
    return report


def _check_dovecot(state: UidState, theirs: DovecotUids | None, files: dict[str, list[str]]) -> list[str]:
    """Dovecot's file against the log: Dovecot, served this store, must see the same UIDs.
    Records it dropped for expunged files are no disagreement (numbering.py)."""
    if theirs is None:
        return ["no dovecot-uidlist (Dovecot would give every message a new UID)"]
    if theirs.uidvalidity != state.uidvalidity:
        return [f"dovecot-uidlist has UIDVALIDITY {theirs.uidvalidity}, not {state.uidvalidity}"]
    names = {uid: base for base, uid in theirs.uids.items()}
    live = [(uid, e) for uid, e in state.entries.items() if e.base in files]
    differ = sum(theirs.uids.get(e.base) != uid or names.get(uid, e.base) != e.base for uid, e in live)
    return [f"dovecot-uidlist disagrees on {differ} of {len(live)} UIDs"] if differ else []


def _check_cache(folder: MaildirFolder, files: dict[str, list[str]]) -> tuple[list[str], int]:
    """The message cache against the files: cached header sections that differ from the
    file's (problems), and how many entries are of messages that are gone (not a problem)."""
    problems, stale = [], 0
    for base, kind, value in folder.cache.entries():
        rels = files.get(base)
        if rels is None:
            stale += 1
            continue
        if kind == HEADER:
            try:
                with crlf.open_served(os.path.join(folder.path, rels[-1]), crlf.size_from_name(base)) as f:
                    actual = header_section(f)
            except FileNotFoundError:
                continue
            if actual != value:
                problems.append(f"cached header of {rels[-1]} differs from the file")
    return problems, stale


def _repair(folder: MaildirFolder, state: UidState, files: dict[str, list[str]]) -> None:
    for rels in files.values():
        # The same message in new/ and cur/: keep the one in cur/ (it carries the flags).
        for rel in sorted(rels, key=lambda r: r.startswith("cur/"))[:-1]:
            os.unlink(os.path.join(folder.path, rel))
    keep = {uid: e for uid, e in state.entries.items() if e.base in files}
    theirs = folder.dovecot.refresh()
    same = theirs is not None and theirs.uidvalidity == state.uidvalidity >= 1
    fixed = UidState(
        uidvalidity=state.uidvalidity if state.uidvalidity >= 1 else next_uidvalidity(folder.mailbox.path, folder.store.fsync),
        uidnext=max([state.uidnext, theirs.uidnext if same else 1] + [uid + 1 for uid in keep]),
        highestmodseq=state.highestmodseq,
        entries=keep,
        by_base={e.base: uid for uid, e in keep.items()},
    )
    ul = folder.uidlist
    ul.state = fixed
    records: list[str] = []
    lacking = [b for b in files if b not in fixed.by_base]
    # Files Dovecot numbered keep its UIDs (ascending, above the log's); the rest get new ones.
    for uid, base in sorted((theirs.uids[b], b) for b in lacking if same and b in theirs.uids):
        if uid >= state.uidnext and uid not in keep:
            ul.add(base, folder._internaldate_of(base, files[base][-1]), records, uid=uid)
    for base in sorted(b for b in lacking if b not in fixed.by_base):
        ul.add(base, folder._internaldate_of(base, files[base][-1]), records)
    ul.rewrite()
    folder._invalidate_listing()
    folder.dovecot.refresh()
    with folder.dovecot.lock() as lock:
        folder._rewrite_dovecot(lock, folder.dovecot.refresh())


def check_user(store: MaildirStore, address: str, repair: bool = False) -> list[FolderReport]:
    mailbox = store.mailbox(address, create=False)
    reports = []
    for info in mailbox.list_folders():
        if info.selectable:
            reports.append(check_folder(mailbox.folder(info.name), repair=repair))
    return reports


@dataclass
class QuotaReport:
    """``maildirsize`` (quota.py) against a walk of the Maildir."""

    recorded: tuple[int, int] | None  # (bytes, messages) the file says; None: missing or unreadable
    actual: tuple[int, int]
    limits: Limits
    problems: list[str] = field(default_factory=list)
    repaired: bool = False


def check_quota(store: MaildirStore, address: str, repair: bool = False) -> QuotaReport | None:
    """Recount the user's mail and compare with ``maildirsize``: changes made by a program
    that did not append to it (Dovecot without its quota plugin, a script) show as a
    disagreement; ``repair`` rewrites the file.  A missing file is no problem (it is made at
    its first use).  None: no limits and no file, nothing kept."""
    mailbox = store.mailbox(address, create=False)
    limits = store.quota.limits(mailbox.address) if store.quota is not None else Limits()
    counter = UserCounter(mailbox.path, store.fsync)
    recorded = counter.recorded()
    if recorded is None and limits.unlimited and not os.path.exists(counter.path):
        return None
    actual = walk(mailbox.path)
    report = QuotaReport(None if recorded is None else recorded[1:], actual, limits)
    if recorded is None and os.path.exists(counter.path):
        report.problems.append("maildirsize is unreadable (it is rebuilt at its next use)")
    elif recorded is not None and recorded[1:] != actual:
        report.problems.append(f"maildirsize says {recorded[1]} bytes in {recorded[2]} messages, "
                               f"the Maildir holds {actual[0]} bytes in {actual[1]}")
    elif recorded is not None and not limits.unlimited and recorded[0] != limits:
        report.problems.append(f"maildirsize has the limits {recorded[0].definition()}, "
                               f"the configuration {limits.definition()}")
    if repair and report.problems:
        counter.rebuild(limits if not limits.unlimited or recorded is None else recorded[0])
        report.repaired = True
    return report
