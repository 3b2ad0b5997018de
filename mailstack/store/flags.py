"""Flags: the ``:2,`` letters of a file name, the folder's keyword letters, and changing them.

System flags use Dovecot's letters (D draft, F flagged, R answered, S seen, T deleted);
keywords get ``a``..``z`` through ``dovecot-keywords``, one ``<index> <keyword>`` per line,
so a folder can be rsynced between mailstack and Dovecot.  Setting flags renames the file
(new/ -> cur/ on the way); expunging removes it.
"""

from __future__ import annotations

import os
import time
from itertools import repeat
from typing import Iterable

from mailstack.errors import KeywordLimit
from mailstack.fsutil import fsync_dir
from mailstack.store.dotlock import DotLock
from mailstack.store.quota import file_size, refund

SYSTEM_FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_SYSTEM_FLAGS = {v: k for k, v in SYSTEM_FLAG_LETTERS.items()}
KEYWORDS_FILE = "dovecot-keywords"
#: Tries at changing a message's flags that another process keeps renaming under us.
RENAME_ATTEMPTS = 20
#: The file whose Dovecot dot-lock (``dovecot-uidlist.lock``) guards the keywords file too.
UIDLIST_DOTLOCKED = "dovecot-uidlist"
MAX_KEYWORDS = 26


def flags_of(rel: str, keywords: list[str]) -> frozenset:
    """The flags a file name's ``:2,`` suffix stands for (unknown letters are left out)."""
    i = rel.find(":2,")
    if i < 0:
        return frozenset()
    flags = set()
    for letter in rel[i + 3 :]:
        if letter in LETTER_SYSTEM_FLAGS:
            flags.add(LETTER_SYSTEM_FLAGS[letter])
        elif "a" <= letter <= "z":
            idx = ord(letter) - ord("a")
            if idx < len(keywords) and keywords[idx]:
                flags.add(keywords[idx])
    return frozenset(flags)


class FolderKeywords:
    """One folder's ``dovecot-keywords``, re-read only when its mtime changes."""

    def __init__(self, folder_path: str, fsync: bool):
        self.path = os.path.join(folder_path, KEYWORDS_FILE)
        self.fsync = fsync
        self.words: list[str] | None = None  # index = letter - "a"; "" for a free letter
        self.mtime: int | None = None  # of the file when ``words`` was read; None: no file

    def load(self) -> list[str]:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            self.words, self.mtime = [], None
            return []
        if self.words is not None and mtime == self.mtime:
            return self.words
        keywords: list[str] = [""] * MAX_KEYWORDS
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                idx, _, word = line.rstrip("\n").partition(" ")
                if idx.isdigit() and int(idx) < MAX_KEYWORDS and word:
                    keywords[int(idx)] = word
        while keywords and not keywords[-1]:
            keywords.pop()
        self.words, self.mtime = keywords, mtime
        return keywords

    def letters(self, flags: Iterable[str], keep_unknown: str = "") -> str:
        """Caller holds the folder lock.  The ``:2,`` letters for ``flags`` (sorted, as
        Maildir wants); letters of ``keep_unknown`` that mean nothing here stay: upper-case ones
        no system flag has, and keyword letters ``dovecot-keywords`` does not name (yet: another
        server may have given one a meaning an instant ago)."""
        words = self.words or []
        letters = set(c for c in keep_unknown if (c.isupper() and c not in LETTER_SYSTEM_FLAGS)
                      or ("a" <= c <= "z" and not (ord(c) - 97 < len(words) and words[ord(c) - 97])))
        for flag in flags:
            if flag in SYSTEM_FLAG_LETTERS:
                letters.add(SYSTEM_FLAG_LETTERS[flag])
            elif flag.startswith("\\"):
                continue  # \Recent and unknown system flags are not stored
            else:
                letters.add(self._letter(flag))
        return "".join(sorted(letters))

    def _letter(self, word: str) -> str:
        """Give ``word`` a letter (keywords compare case-insensitively), recording a new one."""
        found = _find(self.load(), word)
        if found is not None:
            return found
        # A new keyword.  Dovecot adds one only while it holds its dovecot-uidlist dot-lock, and
        # replaces the file through dovecot-keywords.lock: do both, and read the file again under
        # the lock, so that two servers never give one letter two meanings (issue 18).
        folder = os.path.dirname(self.path)
        with DotLock(os.path.join(folder, UIDLIST_DOTLOCKED)):
            self.words = None
            keywords = list(self.load())
            found = _find(keywords, word)
            if found is not None:
                return found
            free = keywords.index("") if "" in keywords else len(keywords)  # the first free letter, as Dovecot
            if free >= MAX_KEYWORDS:
                raise KeywordLimit(f"this folder already has {MAX_KEYWORDS} keywords")
            keywords[free:free + 1] = [word]
            data = "".join(f"{i} {w}\n" for i, w in enumerate(keywords) if w).encode("utf-8")
            before = self.mtime // 1_000_000_000 if self.mtime else 0
            # As Dovecot: the uidlist lock already excludes every writer, so a keywords lock
            # still there is a dead one's; remove it and take it without waiting.
            lock = DotLock(self.path, timeout=0)
            try:
                os.unlink(lock.lock_path)
            except FileNotFoundError:
                pass
            lock.acquire()
            try:
                # Dovecot notices a new file by its mtime in whole seconds: it must grow each time.
                lock.replace(data, mode=0o600, fsync=self.fsync, mtime=max(int(time.time()), before + 1))
            except BaseException:
                lock.release()
                raise
            if self.fsync:
                fsync_dir(folder)
            self.words, self.mtime = keywords, os.stat(self.path).st_mtime_ns
            return chr(ord("a") + free)


def _find(keywords: list[str], word: str) -> str | None:
    for i, known in enumerate(keywords):
        if known and known.lower() == word.lower():
            return chr(ord("a") + i)
    return None


class FlagChanges:
    """The part of :class:`~mailstack.store.folder.MaildirFolder` that renames and removes
    message files: STORE, the claiming of \\Recent, EXPUNGE."""

    def set_flags(
        self, uids: Iterable[int], flags: Iterable[str], mode: str = "replace", unchangedsince: int | None = None
    ) -> tuple[dict[int, tuple[frozenset, int]], list[int]]:
        """Change flags (mode ``replace``, ``add`` or ``remove``).

        Returns ({uid: (new flags, modseq)} for messages whose flags changed, [uids refused
        because their MODSEQ is above ``unchangedsince``] (RFC 7162 3.1.3)).  A message moves
        from new/ to cur/ when its flags are set.  Expunged UIDs are skipped silently.
        """
        if mode not in ("replace", "add", "remove"):
            raise ValueError(mode)
        wanted = frozenset(f for f in flags if f != "\\Recent")
        changed: dict[int, tuple[frozenset, int]] = {}
        refused: list[int] = []
        with self.locked():
            files = self._sync()
            state = self.uidlist.state
            keywords = self.keywords.load()
            records: list[str] = []
            dirs_touched = set()
            for uid in uids:
                entry = state.entries.get(uid)
                rel = files.get(entry.base) if entry else None
                if rel is None:
                    continue
                if unchangedsince is not None and entry.modseq > unchangedsince:
                    refused.append(uid)
                    continue
                for _attempt in range(RENAME_ATTEMPTS):
                    old = flags_of(rel, keywords)
                    new = wanted if mode == "replace" else (old | wanted if mode == "add" else old - wanted)
                    old_suffix = rel.split(":2,", 1)[1] if ":2," in rel else ""
                    letters = self.keywords.letters(new, keep_unknown=old_suffix)
                    keywords = self.keywords.load()
                    target = f"cur/{entry.base}:2,{letters}"
                    if target == rel:
                        break
                    try:
                        os.rename(os.path.join(self.path, rel), os.path.join(self.path, target))
                        break
                    except FileNotFoundError:
                        # Renamed meanwhile by another server (Dovecot changing flags, or moving it
                        # to cur/): start again from its new name, or stop if it is gone.  Under
                        # UNCHANGEDSINCE that other change is one after the client's MODSEQ: refused
                        # (RFC 7162 3.1.3), its new MODSEQ given at the next listing.
                        self._invalidate_listing()
                        files = self._scan()
                        # Its new name may hold a keyword that server has just added to
                        # dovecot-keywords (it writes the file first, then renames).
                        keywords = self.keywords.load()
                        rel = files.get(entry.base)
                        if rel is None:
                            break
                        if unchangedsince is not None and flags_of(rel, keywords) != old:
                            refused.append(uid)
                            rel = None
                            break
                else:
                    rel = None
                if rel is None or target == rel:
                    continue
                self._renamed.pop(entry.base, None)  # our own change supersedes: its MODSEQ is below
                dirs_touched.update({rel[:3], "cur"})
                files[entry.base] = target
                if new != old:
                    changed[uid] = (new, self.uidlist.touch(uid, records))
            if self.store.fsync:
                for d in dirs_touched:
                    fsync_dir(os.path.join(self.path, d))
            self.uidlist.append(records)
            self._invalidate_listing()
        if changed or dirs_touched:
            self.store.on_change(self.path)
        return changed, refused

    def take_recent(self) -> list[int]:
        """Claim every unclaimed message: move those in new/ to cur/, and empty the list of
        those stored into cur/ directly (:mod:`mailstack.store.recent`); return their UIDs.

        The session that does this is the one that reports them as \\Recent (RFC 3501 2.3.2).
        """
        return self._take_recent()[1]

    def _take_recent(self) -> tuple[dict[str, str], list[int]]:
        taken: list[int] = []
        files = self._sync()
        if not self.recent_marks.load() and (self._nothing_new == self._files_gen
                                             or not any(map(str.startswith, files.values(), repeat("new/")))):
            return files, taken  # the usual case: no lock, no rename, and the snapshot stays valid
        with self.locked():
            files = self._sync()
            state = self.uidlist.state
            taken += [uid for uid in self.recent_marks.take() if uid in state.entries]
            for base, rel in list(files.items()):
                if not rel.startswith("new/"):
                    continue
                target = f"cur/{base}:2,"
                try:
                    os.rename(os.path.join(self.path, rel), os.path.join(self.path, target))
                except FileNotFoundError:
                    continue
                files[base] = target
                uid = state.by_base.get(base)
                if uid is not None:
                    taken.append(uid)
            if taken and self.store.fsync:
                fsync_dir(os.path.join(self.path, "new"))
                fsync_dir(os.path.join(self.path, "cur"))
            if taken:
                self._invalidate_listing()  # files is still right: only our renames changed it
        return files, sorted(taken)

    def expunge(self, uids: Iterable[int], counted: bool = True) -> list[int]:
        """Remove messages for good; return the UIDs that were removed.  Their sizes come off
        the user's quota usage (quota.py) unless ``counted`` is False (a move within the user)."""
        removed, gone_bases, freed = [], [], 0
        with self.locked():
            files = self._sync()
            state = self.uidlist.state
            records: list[str] = []
            for uid in sorted(set(uids)):
                entry = state.entries.get(uid)
                rel = files.get(entry.base) if entry else None
                if rel is None:
                    continue
                if counted:
                    freed += file_size(self.path, entry.base, rel)
                try:
                    os.unlink(os.path.join(self.path, rel))
                except FileNotFoundError:
                    pass
                files.pop(entry.base, None)
                gone_bases.append(entry.base)
                self.uidlist.remove(uid, records)
                removed.append(uid)
            if removed and self.store.fsync:
                fsync_dir(os.path.join(self.path, "cur"))
                fsync_dir(os.path.join(self.path, "new"))
            self.uidlist.append(records)
            self._invalidate_listing()
        self.cache.forget(gone_bases)
        if removed and counted:
            refund(self.store, self.mailbox, freed, len(removed))
        if removed:
            self.store.on_change(self.path)
        return removed
