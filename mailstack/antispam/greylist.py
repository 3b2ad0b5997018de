"""Greylisting on the MX port (issue 20, item 4): the first delivery attempt of an unknown
(client network, sender, recipient) triplet gets ``451 4.7.1`` at RCPT; a real MTA retries
after a while (RFC 5321 4.5.4.1), most spam software does not.

* The client is taken as its /24 (IPv4) or /64 (IPv6): big senders retry from another
  address of the same pool.
* A retry at least ``delay`` seconds after the first attempt passes; the triplet is then
  remembered for ``memory`` seconds since it was last seen (36 days: monthly senders stay
  known).  Triplets never retried are forgotten after the same time.
* A client network with ``auto_allow`` passed triplets is let through for any triplet.
* A client passing SPF (RFC 7208) for a sender domain on ``spf_allow_domains`` is not
  greylisted.  The MX's own SPF check runs only at the end of DATA, so for such senders (only
  those: the list is usually short) SPF is evaluated here, at RCPT, in a reactor thread.

State lives in SQLite beside the store (survives a restart).  Every database call runs in one
dedicated thread (one connection, no locking between writers), with at most ``max_pending``
checks waiting: beyond that, or when the database fails, mail is let through (greylisting
is a nuisance filter; failing open loses nothing a retry would not).  ``clock`` is a function
so tests can move time.
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
import time

from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mailstack import metrics
from mailstack.errors import MailError
from mailstack.mail import codes

log = Logger()

SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (client TEXT, sender TEXT, recipient TEXT, first_seen REAL, last_seen REAL,
    passed INTEGER, PRIMARY KEY (client, sender, recipient));
CREATE TABLE IF NOT EXISTS clients (client TEXT PRIMARY KEY, passed INTEGER, last_seen REAL);
"""

#: Expired rows are removed at most this often (seconds).
PRUNE_INTERVAL = 3600


def client_network(ip: str) -> str:
    """The client's /24 or /64 (an IPv4-mapped IPv6 address counts as IPv4)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


#: RFC 3463 X.7.1: delivery not authorized (for now).
E_GREYLISTED = "4.7.1"


def deferred_error(delay: int) -> MailError:
    return MailError(codes.LOCAL_ERROR, E_GREYLISTED,
                     f"Greylisted: this server delays first-time senders; please try again in {delay} seconds")


class GreylistDB:
    """The triplets (blocking; one thread at a time, see :class:`Greylist`)."""

    def __init__(self, path: str, delay: int, memory: int, auto_allow: int, clock=time.time):
        self.path, self.delay, self.memory, self.auto_allow, self.clock = path, delay, memory, auto_allow, clock
        self.db: sqlite3.Connection | None = None
        self._pruned = 0.0

    def open(self) -> None:
        if self.db is None:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def check(self, ip: str, sender: str, recipient: str) -> int:
        """0: let this attempt through; else greylisted (the attempt is recorded), the seconds
        until a retry may pass."""
        self.open()
        now, db = self.clock(), self.db
        cutoff = now - self.memory
        if now - self._pruned > PRUNE_INTERVAL:
            self._pruned = now
            db.execute("DELETE FROM triplets WHERE last_seen < ?", (cutoff,))
            db.execute("DELETE FROM clients WHERE last_seen < ?", (cutoff,))
        client, sender, recipient = client_network(ip), sender.lower(), recipient.lower()
        known = db.execute("SELECT passed FROM clients WHERE client = ? AND last_seen >= ?", (client, cutoff)).fetchone()
        if self.auto_allow and known and known[0] >= self.auto_allow:
            db.execute("UPDATE clients SET last_seen = ? WHERE client = ?", (now, client))
            return 0
        key = (client, sender, recipient)
        row = db.execute("SELECT first_seen, last_seen, passed FROM triplets WHERE client = ? AND sender = ? "
                         "AND recipient = ?", key).fetchone()
        if row is None or row[1] < cutoff:
            db.execute("INSERT OR REPLACE INTO triplets VALUES (?, ?, ?, ?, ?, 0)", key + (now, now))
            return self.delay
        first_seen, _, passed = row
        if not passed and now - first_seen < self.delay:
            return max(1, int(self.delay - (now - first_seen) + 0.999))  # too early: the clock does not restart
        db.execute("UPDATE triplets SET last_seen = ?, passed = 1 WHERE client = ? AND sender = ? AND recipient = ?",
                   (now,) + key)
        if not passed:
            db.execute("INSERT INTO clients VALUES (?, 1, ?) ON CONFLICT(client) DO UPDATE SET passed = "
                       "CASE WHEN last_seen < ? THEN 1 ELSE passed + 1 END, last_seen = excluded.last_seen",
                       (client, now, cutoff))
        return 0


class Greylist(service.Service):
    """The asynchronous face of :class:`GreylistDB` plus the SPF allow list."""

    name = "greylist"

    def __init__(self, db: GreylistDB, spf_allow_domains: list[str] = (), max_pending: int = 100, spf_check=None):
        self.db = db
        self.spf_allow = {d.lower().rstrip(".") for d in spf_allow_domains}
        self.max_pending = max_pending
        self.pending = 0
        self.overloaded = False  # warned about max_pending; logged again only after it cleared
        self.pool = ThreadPool(1, 1, name="greylist")
        self.spf_check = spf_check or _spf_check

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        self.pool.callInThread(self.db.close)
        self.pool.stop()
        return super().stopService()

    def _in_pool(self, f, *args):
        from twisted.internet import reactor

        if not self.pool.started:  # not under a service parent (a test): start on first use
            self.pool.start()
        return threads.deferToThreadPool(reactor, self.pool, f, *args)

    @defer.inlineCallbacks
    def check(self, ip: str, sender: str, recipient: str, helo: str):
        """Fires with None (go on) or fails with the 451 MailError."""
        if self.pending >= self.max_pending:
            if not self.overloaded:
                self.overloaded = True
                log.warn("greylisting: {n} checks waiting; letting mail through unchecked until fewer", n=self.pending)
            metrics.greylist("unchecked")
            return None
        self.overloaded = self.overloaded and self.pending > self.max_pending // 2
        self.pending += 1
        try:
            domain = sender.rpartition("@")[2].lower().rstrip(".")
            if domain and domain in self.spf_allow:
                result = yield threads.deferToThread(self.spf_check, ip, sender, helo)
                if result == "pass":
                    metrics.greylist("spf_allowed")
                    return None
            wait = yield self._in_pool(self.db.check, ip, sender, recipient)
            if not wait:
                metrics.greylist("passed")
                return None
        except Exception:
            log.failure("greylisting: check of {ip} failed; letting it through", ip=ip)
            metrics.greylist("unchecked")
            return None
        finally:
            self.pending -= 1
        log.info("greylisted {ip} <{sender}> -> <{recipient}>", ip=ip, sender=sender, recipient=recipient)
        metrics.greylist("greylisted")
        raise deferred_error(wait)


def _spf_check(ip: str, sender: str, helo: str) -> str:
    """SPF result for this client and sender (pyspf through dnspython's default resolver,
    which the service points at [dns]); blocking, a worker thread calls it."""
    import spf

    return spf.check2(i=ip, s=sender, h=helo or "unknown", querytime=10)[0]


def build(cfg, clock=time.time) -> Greylist | None:
    """The greylist ``[greylisting]`` describes, or None when it is off."""
    g = cfg.values.get("greylisting") or {}
    if not g.get("enabled"):
        return None
    path = g["database"] or os.path.join(os.path.dirname(cfg.store_root), "greylist.sqlite")
    db = GreylistDB(path, g["delay"], g["memory"], g["auto_allow"], clock)
    return Greylist(db, g["spf_allow_domains"], g["max_pending"])
