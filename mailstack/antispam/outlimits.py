"""Outbound limits per authenticated user (issue 20, item 5): a stolen password should send
hundreds of messages, not hundreds of thousands, before someone looks.

Per user, over a sliding hour and a sliding day: messages (checked at MAIL FROM) and
recipients (checked at each RCPT, counting those already accepted in the transaction).  Over a
limit -> ``451 4.7.0`` (temporary: a legitimate burst goes out later on its own), counted in
``mailstack_outbound_limited_total``; the first refusal of an episode (until the user is under
every limit again) logs one line at warning level, the alert an administrator watches for.
Only accepted messages count.  Every recipient of a submitted message counts, local ones too
(spam to the server's own users is abuse as well).

SIGHUP applies changed limits and keeps the counts.  The counts also survive a restart: each
accepted message is appended to a journal beside the store (``outbound-usage.log``, one line
"time recipients user"), read back at start-up and rewritten then with only the last day's
lines, so a compromised account gets no fresh allowance from a restart.  The journal is not
fsynced: a crash may forget the last few messages, which a limit can afford.

The journal is also how the processes of ``[server] workers`` share the counts: each appends
its own messages (one ``write`` with ``O_APPEND``, under a shared ``flock`` of
``outbound-usage.log.lock``) and, before each check, reads what was appended since it last
looked; a rewrite happens under the exclusive lock, and a process that finds a new file
(another inode) reads it from the start.  So a user's limit is one limit, whichever process
the client reached.
"""

from __future__ import annotations

import collections
import fcntl
import os
import time

from twisted.logger import Logger

from mailstack import metrics
from mailstack.errors import MailError
from mailstack.mail import codes

log = Logger()

KEYS = ("messages_per_hour", "messages_per_day", "recipients_per_hour", "recipients_per_day")
HOUR, DAY = 3600, 86400
JOURNAL = "outbound-usage.log"
#: Lines appended since the journal was last rewritten before it is rewritten again.
COMPACT_AFTER = 50_000


def parse_override(text: str) -> tuple[str, dict[str, int]]:
    """``"alice@example.org recipients_per_hour=2000 messages_per_day=0"`` -> (user, limits);
    ValueError saying what is wrong."""
    parts = text.split()
    if len(parts) < 2 or "@" not in parts[0] or "=" in parts[0]:
        raise ValueError(f"{text!r}: write USER KEY=NUMBER ... (keys: {', '.join(KEYS)})")
    limits = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if key not in KEYS:
            raise ValueError(f"{text!r}: unknown limit {key!r} (known: {', '.join(KEYS)})")
        if not sep or not value.isdigit():
            raise ValueError(f"{text!r}: {key} needs a number (0: no limit)")
        limits[key] = int(value)
    return parts[0].lower(), limits


class OutboundLimits:
    def __init__(self, defaults: dict[str, int], overrides: dict[str, dict[str, int]] | None = None,
                 clock=time.time):
        self.defaults = {k: defaults[k] for k in KEYS}
        self.overrides = overrides or {}
        self.clock = clock
        self.sent: dict[str, collections.deque] = {}  # user -> (time, recipients) of accepted messages, oldest first
        self.alerted: set[str] = set()  # users refused since they were last under every limit
        self.journal: str | None = None  # see :meth:`open_journal`
        self.appended = 0
        self.position = (None, 0)  # ((st_dev, st_ino), offset): how far the journal has been read

    def limits_of(self, user: str) -> dict[str, int]:
        return {**self.defaults, **self.overrides.get(user.lower(), {})}

    def _usage(self, user: str) -> dict[str, int]:
        self._follow()
        now, sent = self.clock(), self.sent.get(user.lower())
        if not sent:
            return dict.fromkeys(KEYS, 0)
        while sent and sent[0][0] <= now - DAY:
            sent.popleft()
        hour = [n for t, n in sent if t > now - HOUR]
        return {"messages_per_hour": len(hour), "messages_per_day": len(sent),
                "recipients_per_hour": sum(hour), "recipients_per_day": sum(n for _, n in sent)}

    def check_message(self, user: str) -> None:
        """MAIL FROM: one more message would not pass a messages limit."""
        self._check(user, ("messages_per_hour", "messages_per_day"), 1)

    def check_recipient(self, user: str, in_transaction: int) -> None:
        """RCPT: the recipients already accepted in this transaction plus this one."""
        self._check(user, ("recipients_per_hour", "recipients_per_day"), in_transaction + 1)

    def _check(self, user: str, keys, adding: int) -> None:
        limits, usage = self.limits_of(user), self._usage(user)
        for key in keys:
            if limits[key] and usage[key] + adding > limits[key]:
                self._refuse(user, key, limits[key])
        if user.lower() in self.alerted and all(not limits[k] or usage[k] < limits[k] for k in KEYS):
            self.alerted.discard(user.lower())

    def _refuse(self, user: str, key: str, limit: int):
        first = user.lower() not in self.alerted
        if first:
            self.alerted.add(user.lower())
            log.warn("outbound limit: {user} reached {limit} {what}; further mail refused with 451 until under it "
                     "(compromised account? 'mailstack queue hold {user}' freezes what is queued)",
                     user=user, limit=limit, what=key.replace("_", " "))
        metrics.outbound_limited(key, first)
        what, _, per = key.partition("_per_")
        raise MailError(codes.LOCAL_ERROR, codes.E_SECURITY_TEMPORARY,
                        f"Sending limit reached: at most {limit} {what} per {per} for {user}; try again later")

    def record(self, user: str, recipients: int) -> None:
        """A message from ``user`` to ``recipients`` was accepted."""
        now = self.clock()
        if self.journal is None:
            self.sent.setdefault(user.lower(), collections.deque()).append((now, recipients))
            return
        line = f"{now:.0f} {recipients} {user.lower()}\n".encode()
        try:
            with self._locked(fcntl.LOCK_SH):
                fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
        except OSError as e:
            log.warn("outbound limits: cannot append to {path}: {error}", path=self.journal, error=e)
            self.sent.setdefault(user.lower(), collections.deque()).append((now, recipients))
            return
        self._follow()  # reads our line back, with any other process's before it
        self.appended += 1
        if self.appended >= COMPACT_AFTER:
            self._rewrite_journal()

    def _locked(self, how: int):
        """The journal's lock file, flock'ed ``how`` (a context manager)."""
        import contextlib

        @contextlib.contextmanager
        def held():
            fd = os.open(self.journal + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, how)
                yield
            finally:
                os.close(fd)  # releases the lock

        return held()

    def _follow(self) -> None:
        """Take in the lines appended to the journal (by any process) since it was last read."""
        if self.journal is None:
            return
        try:
            st = os.stat(self.journal)
        except OSError:
            return
        identity, offset = self.position
        if identity != (st.st_dev, st.st_ino) or st.st_size < offset:  # rewritten: read it all again
            self.sent, identity, offset = {}, (st.st_dev, st.st_ino), 0
        if st.st_size > offset:
            try:
                with open(self.journal, "rb") as f:
                    f.seek(offset)
                    data = f.read(st.st_size - offset)
            except OSError:
                return
            end = data.rfind(b"\n")  # a line being written is read next time
            if end >= 0:
                offset += end + 1
                cutoff = self.clock() - DAY
                for entry in _entries(data[:end].decode("utf-8", "replace").split("\n"), cutoff):
                    self.sent.setdefault(entry[2], collections.deque()).append(entry[:2])
        self.position = (identity, offset)

    def open_journal(self, path: str) -> None:
        """Take the counts of the last day from ``path`` (lines torn by a crash are skipped),
        rewrite it with only those, and append to it from now on."""
        self.journal = path
        self._rewrite_journal()

    def _rewrite_journal(self) -> None:
        """The journal with only the entries still counted (atomically: tmp, rename), under the
        exclusive lock, so no other process's line is lost in between."""
        self.appended = 0
        try:
            with self._locked(fcntl.LOCK_EX):
                self._read_whole()
                cutoff = self.clock() - DAY
                tmp = f"{self.journal}.{os.getpid()}.tmp"
                entries = sorted((t, n, user) for user, sent in self.sent.items() for t, n in sent if t > cutoff)
                with open(tmp, "w", opener=lambda name, flags: os.open(name, flags, 0o600)) as f:
                    f.writelines(f"{t:.0f} {n} {user}\n" for t, n, user in entries)
                os.replace(tmp, self.journal)
                self.sent = {}
                for t, n, user in entries:
                    self.sent.setdefault(user, collections.deque()).append((t, n))
                st = os.stat(self.journal)
                self.position = ((st.st_dev, st.st_ino), st.st_size)
        except OSError as e:
            log.warn("outbound limits: cannot rewrite {path}: {error}", path=self.journal, error=e)

    def _read_whole(self) -> None:
        """The journal's last day, from its start (lines torn by a crash are skipped)."""
        self.sent, self.position = {}, (None, 0)
        try:
            with open(self.journal, encoding="utf-8", errors="replace") as f:
                entries = sorted(_entries(f, self.clock() - DAY))
        except FileNotFoundError:
            return
        except OSError as e:
            log.warn("outbound limits: cannot read {path}: {error}; counting from zero", path=self.journal, error=e)
            return
        for when, recipients, user in entries:
            self.sent.setdefault(user, collections.deque()).append((when, recipients))


def _entries(lines, cutoff: float):
    """(time, recipients, user) of the journal ``lines`` newer than ``cutoff``; torn ones skipped."""
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() and int(parts[0]) > cutoff:
            yield int(parts[0]), int(parts[1]), parts[2]



def build(cfg, clock=time.time) -> OutboundLimits | None:
    """The limits ``[outbound_limits]`` describes (checked by :func:`check_config`), or None when off."""
    section = cfg.values.get("outbound_limits") or {}
    if not section.get("enabled"):
        return None
    overrides = dict(parse_override(text) for text in section["users"])
    limits = OutboundLimits(section, overrides, clock)
    limits.open_journal(os.path.join(os.path.dirname(os.path.abspath(cfg.store_root)), JOURNAL))
    return limits


def rebuild(old: OutboundLimits | None, cfg) -> OutboundLimits | None:
    """SIGHUP changed ``[outbound_limits]``: the new limits, with the counts so far."""
    new = build(cfg, old.clock if old is not None else time.time)
    if new is not None and old is not None:
        new.sent, new.alerted, new.position = old.sent, old.alerted, old.position
    return new
