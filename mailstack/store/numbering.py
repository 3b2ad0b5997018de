"""Giving new files their UIDs, in step with Dovecot's ``dovecot-uidlist`` (issue 18, item 1).

Two servers on one Maildir must never give one UID to two messages, nor two UIDs to one.
Dovecot numbers files under its dot-lock on ``dovecot-uidlist``; so does mailstack, and under
that lock the file is the common record: a file Dovecot numbered keeps Dovecot's UID, and a UID
mailstack gives is appended to the file before it is logged in ``mailstack-uidlist`` (a crash
between the two leaves the number in Dovecot's file, where the next numbering finds it again).

The file is checked against the store's own log when first met and whenever Dovecot rewrote
it (a new inode); if they disagree (it was lost, edited, or belongs to an older UIDVALIDITY),
it is rewritten from the log, keeping the UIDs Dovecot gave to files the log does not know yet.
"""

from __future__ import annotations

from mailstack.store.dovecot import DovecotUids


class UidNumbering:
    """Mixed into :class:`~mailstack.store.folder.MaildirFolder`."""

    def _number(self, fresh: list[tuple[str, int]], records: list[str]) -> dict[str, int]:
        """Caller holds the folder lock.  Give each ``(base, internaldate)`` of ``fresh`` (in
        arrival order) its UID, queued in ``records`` for the log; return base -> UID."""
        ul = self.uidlist
        state = ul.state
        given: dict[str, int] = {}
        if not fresh:
            return given
        with self.dovecot.lock() as lock:
            theirs = self.dovecot.refresh()
            in_step = self._in_step(theirs)
            if in_step:
                # Files Dovecot numbered before this process saw them keep its UIDs (they
                # ascend in its file, as it numbered them in its arrival order).
                for uid, base, when in sorted((theirs.uids[b], b, w) for b, w in fresh if b in theirs.uids):
                    if uid >= state.uidnext:
                        given[base] = ul.add(base, when, records, uid=uid)
                    else:
                        in_step = False  # a UID we cannot take any more: its record must go
            appended = []
            for base, when in fresh:
                if base not in given:
                    uid = max(state.uidnext, theirs.uidnext if in_step else 1)
                    given[base] = ul.add(base, when, records, uid=uid)
                    appended.append((uid, base))
            if in_step and theirs.records <= 2 * len(state.entries) + 1000:
                self.dovecot.append(appended)
            else:
                self._rewrite_dovecot(lock, theirs)
        return given

    def _in_step(self, theirs: DovecotUids | None) -> bool:
        """Whether Dovecot's file agrees with the log on every message the log knows (checked
        in full once per version of the file, cheaply after that)."""
        state = self.uidlist.state
        if theirs is None or theirs.uidvalidity != state.uidvalidity:
            return False
        inode = self.dovecot.inode
        if self._dovecot_checked == inode:
            return True
        uids = theirs.uids
        if all(uids.get(e.base) == uid for uid, e in state.entries.items()):
            self._dovecot_checked = inode
            return True
        return False

    def _rewrite_dovecot(self, lock, theirs: DovecotUids | None) -> None:
        """Rewrite Dovecot's file from the log (through the held ``lock``)."""
        state = self.uidlist.state
        names = {uid: e.base for uid, e in state.entries.items()}
        uidnext = state.uidnext
        exts: dict[int, str] = {}
        if theirs is not None and theirs.uidvalidity == state.uidvalidity:
            for base, uid in theirs.uids.items():
                if base not in state.by_base and uid >= state.uidnext:
                    names[uid] = base  # numbered by Dovecot, not yet seen here: keep it
                elif names.get(uid) != base:
                    continue
                fields = [f"{kind}{table[uid]}" for kind, table in
                          (("P", theirs.pop3_uidls), ("O", theirs.pop3_order), ("W", theirs.vsizes)) if uid in table]
                if fields:
                    exts[uid] = " ".join(fields)
            uidnext = max(uidnext, theirs.uidnext)
        self.dovecot.rewrite(lock, state.uidvalidity, uidnext, names, exts)
        self._dovecot_checked = self.dovecot.inode

    def _dovecot_file_kept(self) -> None:
        """Caller holds the folder lock.  Make sure Dovecot's file exists and agrees with the
        log (once per folder and process, and whenever the file is replaced)."""
        theirs = self.dovecot.refresh()
        if self._dovecot_checked is not None and self._dovecot_checked == self.dovecot.inode:
            return
        if self._in_step(theirs):
            return
        with self.dovecot.lock() as lock:
            theirs = self.dovecot.refresh()
            if not self._in_step(theirs):
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
