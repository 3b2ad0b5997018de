"""``mailstack-recent``: messages stored straight into cur/ that no session has claimed yet.

IMAP's \\Recent (RFC 3501 2.3.2) belongs to the first session told of a message.  For mail in
new/ the folder itself says so: claiming moves it to cur/.  An APPEND or a COPY writes into
cur/ at once (new/ cannot hold flags, and new/ stays small that way), so their UIDs are listed
here until a session claims them, as Dovecot keeps \\Recent in its index rather than in the
file names.

The file is a hint, not mail: one UID a line, added to under the folder lock, not fsynced.
Lost (a crash, a deleted file), those messages are simply not \\Recent; the store checker
ignores it, and Dovecot ignores files it does not know.
"""

from __future__ import annotations

import os


RECENT_FILE = "mailstack-recent"


class RecentMarks:
    def __init__(self, folder_path: str):
        self.path = os.path.join(folder_path, RECENT_FILE)
        self._stamp: tuple | None = None
        self._uids: frozenset = frozenset()

    def stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> frozenset:
        """The UIDs now listed (one stat when nothing changed)."""
        stamp = self.stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                with open(self.path, encoding="ascii", errors="replace") as f:
                    # whole lines only: one being added as this reads is taken next time
                    self._uids = frozenset(int(line) for line in f if line.endswith("\n") and line.strip().isdigit())
            except FileNotFoundError:
                self._uids = frozenset()
        return self._uids

    def add(self, uids) -> None:
        """Caller holds the folder lock.  Appended to, not rewritten: an upload of many
        messages adds one line each, whatever the list holds already."""
        with open(self.path, "a", encoding="ascii") as f:
            f.write("".join(f"{u}\n" for u in uids))
        self._stamp = None

    def take(self) -> frozenset:
        """Caller holds the folder lock: the UIDs listed, and the list emptied."""
        uids = self.load()
        if uids:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._stamp, self._uids = None, frozenset()
        return uids
