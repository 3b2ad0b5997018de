"""The maildrop: one POP3 session's view of a user's INBOX in the Maildir store.

A session works on the snapshot taken at login (RFC 1939 section 5: message numbers do not
change during a session); deletions are only marked until QUIT and made in the UPDATE state
(RFC 1939 section 6).  Methods marked *blocking* touch the disk and run in a thread.
"""

from __future__ import annotations

from twisted.internet import defer, reactor, threads
from twisted.logger import Logger
from zope.interface import Interface, implementer

from mailstack.pop3.uidl import UidlFormat

log = Logger()

SEEN_DELAY = 1.0  # seconds a RETRieved message may wait for its \Seen flag (see SeenQueue)

#: Maildrops with a POP3 session in this process: (store root, address).  RFC 1939 section 8
#: lets a server lock the maildrop for the session; a second login gets [IN-USE] (RFC 2449 8.1.2).
#: Across processes ([server] workers) the store's lock (``MailboxAPI.exclusive``) says it.
LOCKED: set[tuple[str, str]] = set()


class IMaildrop(Interface):
    """The avatar a POP3 login asks the realm for: a :class:`Maildrop` (see ``build_factory``)."""


@implementer(IMaildrop)
class Maildrop:
    """The snapshot taken at :meth:`load`; message indexes are 0-based positions in it."""

    def __init__(self, store, address: str, uidl_format: UidlFormat | None = None):
        self.store, self.address = store, address
        self.uidl_format = uidl_format or UidlFormat()
        self.folder = None
        self.uidvalidity = 0
        self.messages: tuple = ()
        self.stored_uidls: dict[int, str] = {}  # UIDLs another server gave (folder.pop3_uidls)
        self.uidls: dict[int, str] = {}  # index -> UIDL, made at the first UIDL that asks
        self.substituted = False  # a UIDL was not valid as RFC 1939 7 has it (logged once)
        self.deleted: set[int] = set()
        self.locked = False
        self.held = None  # the store's lock while this session has the maildrop

    def lock(self) -> bool:
        """Take the maildrop for this session; False if another session has it, in this
        process or another."""
        key = (self.store.root, self.address)
        if key in LOCKED:
            return False
        try:
            self.held = self.store.mailbox(self.address).exclusive("pop3")
        except OSError as e:  # this process's own lock still holds
            log.warn("pop3: cannot lock the maildrop of {user} across processes: {error}", user=self.address, error=e)
        else:
            if self.held is None:
                return False
        LOCKED.add(key)
        self.locked = True
        return True

    def unlock(self) -> None:
        if self.locked:
            LOCKED.discard((self.store.root, self.address))
            self.locked = False
            if self.held is not None:
                self.held.release()
                self.held = None

    def load(self) -> None:
        """*Blocking.*  Take the snapshot the session works on."""
        self.folder = self.store.mailbox(self.address).folder("INBOX")
        snapshot = self.folder.snapshot()
        self.uidvalidity, self.messages = snapshot.uidvalidity, snapshot.messages
        self.stored_uidls = self.folder.pop3_uidls()
        order = self.folder.pop3_order()
        if order:  # a migration kept the old server's order: those first, in it, then the rest by UID
            self.messages = tuple(sorted(self.messages, key=lambda m: (m.uid not in order, order.get(m.uid, 0), m.uid)))

    def uidl(self, index: int) -> str:
        """RFC 1939 section 7: the UIDL another server stored for the message, else the
        ``[pop3] uidl_format`` one; stable for the message's life (UIDs never change within one
        UIDVALIDITY, base names never) and the same whichever process looks."""
        uidl = self.uidls.get(index)
        if uidl is None:
            m = self.messages[index]
            uidl, substitute = self.uidl_format.uidl(m.uid, self.uidvalidity, m.base, self.stored_uidls.get(m.uid))
            if substitute and not self.substituted:
                self.substituted = True
                log.warn("pop3 UIDL of UID {uid} in {user} is not 1-70 characters 0x21-0x7E (RFC 1939 section 7) "
                         "with uidl_format {uidl_format!r} or as stored: sent {uidl} (the MD5 of UIDVALIDITY.UID) "
                         "instead, and so for any other such message", uid=m.uid, user=self.address,
                         uidl_format=self.uidl_format.text, uidl=uidl)
            self.uidls[index] = uidl
        return uidl

    def live(self) -> list[int]:
        return [i for i in range(len(self.messages)) if i not in self.deleted]

    def stat(self) -> tuple[int, int]:
        live = self.live()
        return len(live), sum(self.messages[i].size for i in live)

    def open_start(self, uid: int, chunk: int):
        """*Blocking.*  Open a message and read its first chunk: (file or None at end, data)."""
        f = self.folder.open_message(uid)
        try:
            data = f.read(chunk)
        except BaseException:
            f.close()
            raise
        if len(data) < chunk:  # a regular file reads short only at its end
            f.close()
            return None, data
        return f, data

    def read_small(self, uids: list[int]) -> dict[int, bytes]:
        """*Blocking.*  uid -> whole message, for small messages (one store call for all)."""
        return self.folder.read_messages(uids)

    def mark_seen(self, uids: list[int]) -> None:
        """*Blocking.*  Messages retrieved are \\Seen for IMAP too (expunged ones are skipped)."""
        self.folder.set_flags(uids, ["\\Seen"], "add")

    def commit(self) -> int:
        """*Blocking.*  The UPDATE state: remove the messages marked deleted; return how many."""
        uids = [self.messages[i].uid for i in sorted(self.deleted)]
        if not uids:
            return 0
        self.folder.expunge(uids)
        return len(uids)


def make_avatar_factory(store, uidl_format: UidlFormat | None = None):
    """The realm's factory for :class:`IMaildrop`: ``address -> (Maildrop, logout)``."""

    def factory(address: str):
        return Maildrop(store, address, uidl_format), lambda: None

    return factory


class SeenQueue:
    """\\Seen flags for RETRieved messages, set in batches.

    Queued flags are set together, at most ``SEEN_DELAY`` seconds later, at QUIT, or when the
    connection drops: one store call (a rename each, one fsync) for many messages instead of
    one per RETR, which would hold the folder lock that the next RETR's open waits on.
    """

    def __init__(self, maildrop: Maildrop, clock=reactor):
        self.maildrop, self.clock = maildrop, clock
        self.pending: list[int] = []
        self.running = False
        self.final = False  # the session is gone: flush everything without delay
        self.timer = None
        self.waiters: list[defer.Deferred] = []

    def add(self, uid: int) -> None:
        self.pending.append(uid)
        if self.timer is None and not self.running:
            self.timer = self.clock.callLater(SEEN_DELAY, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None
        if self.running or not self.pending:
            return
        uids, self.pending = self.pending, []
        self.running = True
        maildrop = self.maildrop
        d = threads.deferToThread(maildrop.mark_seen, uids)
        d.addErrback(lambda f: log.failure("pop3 cannot set \\Seen for {user}", f, user=maildrop.address))
        d.addCallback(self._flushed)

    def flush_final(self) -> None:
        """The connection dropped: what was retrieved in full is \\Seen, QUIT or not."""
        self.final = True
        self.flush()

    def _flushed(self, _):
        self.running = False
        if self.pending:
            if self.waiters or self.final:
                self.flush()
                return
            self.timer = self.clock.callLater(SEEN_DELAY, self.flush)
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(None)

    def settled(self) -> defer.Deferred:
        """Flush now; fires once every queued \\Seen flag is in the store."""
        if not self.running and not self.pending:
            return defer.succeed(None)
        d = defer.Deferred()
        self.waiters.append(d)
        self.flush()
        return d
