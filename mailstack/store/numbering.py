"""Giving new files their UIDs, in step with Dovecot's ``dovecot-uidlist`` (issue 18, item 1).

Two servers on one Maildir must never give one UID to two messages, nor two UIDs to one.
Dovecot numbers files under its dot-lock on ``dovecot-uidlist``; so does mailstack, and under
that lock the file is the common record:

* a file Dovecot numbered keeps Dovecot's UID, also one this process has not listed yet (an
  APPEND lists only new/, and Dovecot puts what its clients APPEND into cur/): every record
  the log lacks is taken before anything new is numbered;
* a new UID is above both the log's UIDNEXT and Dovecot's (its ``N`` and its last record),
  and is appended to Dovecot's file before it is logged in ``mailstack-uidlist`` (a crash
  between the two leaves the number in Dovecot's file, where the next numbering finds it).

Dovecot drops the records of expunged files when it rewrites the file; that is no conflict.
A conflict is one name with two UIDs, or one UID with two names, or a message of the log that
Dovecot's file lacks (Dovecot would number it anew): the file is then rewritten from the log,
keeping Dovecot's records for files the log does not know and every record's extension
fields.  The full comparison runs once per version of the file; records read since are
checked one by one.
"""

from __future__ import annotations

from mailstack.store.dovecot import DovecotUids


class UidNumbering:
    """Mixed into :class:`~mailstack.store.folder.MaildirFolder`."""

    def _number(self, fresh: list[tuple[str, int]], records: list[str]) -> dict[str, int]:
        """Caller holds the folder lock.  Give each ``(base, internaldate)`` of ``fresh`` (in
        arrival order) its UID, queued in ``records`` for the log; return base -> UID."""
        if not fresh:
            return {}
        try:
            with self.dovecot.lock() as lock:
                return self._number_locked(lock, fresh, records)
        except BaseException:
            # The mirrors may hold UIDs that neither file got: read both afresh next time.
            self.uidlist.forget()
            self.dovecot.forget()
            raise

    def _number_locked(self, lock, fresh: list[tuple[str, int]], records: list[str]) -> dict[str, int]:
        ul = self.uidlist
        state = ul.state
        given: dict[str, int] = {}
        theirs = self.dovecot.refresh()
        same = theirs is not None and theirs.uidvalidity == state.uidvalidity
        in_step, lacking = self._compare(theirs) if same else (False, [])
        if same:
            # Dovecot's UIDs for the fresh files, and its records the log lacks (files it
            # numbered that this process has not listed), ascending.  A UID below the log's
            # UIDNEXT cannot be taken (clients saw UIDNEXT pass it): such a file gets a new UID,
            # and Dovecot's file is rewritten.
            wanted = dict(fresh)
            candidates = {base: uid for uid, base in lacking}
            candidates.update((base, theirs.uids[base]) for base in wanted if base in theirs.uids)
            unlisted = [base for base in candidates if base not in wanted]
            dates = self._dates_of(unlisted) if unlisted else {}
            for base, uid in sorted(candidates.items(), key=lambda item: item[1]):
                when = wanted.get(base, dates.get(base))
                if when is None or base in state.by_base:
                    continue  # expunged already, or known
                if uid >= state.uidnext:
                    given[base] = ul.add(base, when, records, uid=uid)
                elif base in wanted:
                    in_step = False
        floor = theirs.uidnext if same else 1
        appended = []
        for base, when in fresh:
            if base not in given:
                uid = ul.add(base, when, records, uid=max(state.uidnext, floor))
                given[base] = uid
                appended.append((uid, base))
        if in_step and theirs.records <= 2 * len(state.entries) + 1000:
            self.dovecot.append(appended)
            theirs.fresh.clear()  # acted upon
        else:
            self._rewrite_dovecot(lock, theirs)
        return given

    def _dates_of(self, bases: list[str]) -> dict[str, int]:
        """INTERNALDATE (mtime) of files Dovecot numbered that this process has not listed
        (one listing); the ones gone already are left out."""
        self._invalidate_listing()
        files = self._scan()
        return {base: self._internaldate_of(base, files[base]) for base in bases if base in files}

    def _compare(self, theirs: DovecotUids) -> tuple[bool, list[tuple[int, str]]]:
        """(whether Dovecot's file agrees with the log, Dovecot's records the log lacks): every
        record once per version of the file, after that the records read since the last
        numbering (which clears them once it has acted on them)."""
        state = self.uidlist.state
        full = self._dovecot_checked != self.dovecot.generation
        seen = [(uid, base) for base, uid in theirs.uids.items()] if full else theirs.fresh
        in_step, lacking = True, []
        entries, by_base = state.entries, state.by_base
        for uid, base in seen:
            mine = by_base.get(base)
            entry = entries.get(uid)
            if mine is None and entry is None:
                lacking.append((uid, base))
            elif mine != uid or entry is None or entry.base != base:
                in_step = False  # one name, two UIDs; or one UID, two names
        if full and in_step:
            # Messages of the log that Dovecot's file lacks: Dovecot dropped them as expunged
            # (no conflict), unless their files are still there (Dovecot would number them anew).
            missing = [e.base for e in entries.values() if e.base not in theirs.uids]
            if missing:
                self._invalidate_listing()
                files = self._scan()
                in_step = not any(base in files for base in missing)
        self._dovecot_checked = self.dovecot.generation if in_step else None
        return in_step, sorted(lacking)

    def _rewrite_dovecot(self, lock, theirs: DovecotUids | None) -> None:
        """Rewrite Dovecot's file from the log (through the held ``lock``)."""
        state = self.uidlist.state
        names = {uid: e.base for uid, e in state.entries.items()}
        uidnext = state.uidnext
        exts: dict[int, str] = {}
        if theirs is not None and theirs.uidvalidity == state.uidvalidity:
            for base, uid in theirs.uids.items():
                if base not in state.by_base and uid >= state.uidnext and uid not in names:
                    names[uid] = base  # numbered by Dovecot, not seen here yet: keep it
                if names.get(uid) == base and uid in theirs.exts:
                    exts[uid] = theirs.exts[uid]
            uidnext = max(uidnext, theirs.uidnext)
        self.dovecot.rewrite(lock, state.uidvalidity, uidnext, names, exts)
        self._dovecot_checked = self.dovecot.generation
        if self.dovecot.state is not None:
            self.dovecot.state.fresh.clear()

    def _dovecot_file_kept(self) -> None:
        """Caller holds the folder lock.  Make sure Dovecot's file exists and agrees with the
        log (at a folder's first opening when the file is missing, and by ``store check``)."""
        theirs = self.dovecot.refresh()
        if theirs is not None and theirs.uidvalidity == self.uidlist.state.uidvalidity and self._compare(theirs)[0]:
            return
        with self.dovecot.lock() as lock:
            theirs = self.dovecot.refresh()
            if theirs is None or theirs.uidvalidity != self.uidlist.state.uidvalidity or not self._compare(theirs)[0]:
                self._rewrite_dovecot(lock, theirs)

    def pop3_uidls(self) -> dict[int, str]:
        """uid -> the POP3 UIDL Dovecot kept for it (its ``P`` extension, set by a migration)."""
        return self._dovecot_extension("pop3_uidls")

    def pop3_order(self) -> dict[int, int]:
        """uid -> the POP3 position Dovecot kept for it (``O``, set by a migration)."""
        return self._dovecot_extension("pop3_order")

    def _dovecot_extension(self, table: str) -> dict:
        """One of Dovecot's per-message extension tables, for the messages whose UID and file
        Dovecot's file and the log agree on."""
        with self.uidlist.mutex:
            theirs = self.dovecot.refresh()
            values = getattr(theirs, table) if theirs is not None else {}
            if not values or theirs.uidvalidity != self.uidlist.state.uidvalidity:
                return {}
            entries = self.uidlist.state.entries
            names = {uid: base for base, uid in theirs.uids.items()}
            return {uid: v for uid, v in values.items() if uid in entries and entries[uid].base == names.get(uid)}
