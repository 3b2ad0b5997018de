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

The journal (mailstack.journal) is also how the processes of ``[server] workers`` share the
counts: each appends its own messages and, before each check, reads what any process appended
since it last looked, so a user's limit is one limit, whichever process the client reached.
"""

from __future__ import annotations

import collections
import os
import time

from twisted.logger import Logger

from mailstack import metrics
from mailstack.errors import MailError
from mailstack.journal import SharedJournal
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
        self.journal: SharedJournal | None = None  # see :meth:`open_journal`
        self.appended = 0

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
        if self.journal is not None:
            try:
                self.journal.append(f"{now:.0f} {recipients} {user.lower()}")
            except OSError as e:
                log.warn("outbound limits: cannot append to {path}: {error}", path=self.journal.path, error=e)
            else:
                self._follow()  # reads our line back, with any other process's before it
                self.appended += 1
                if self.appended >= COMPACT_AFTER:
                    self._rewrite_journal()
                return
        self.sent.setdefault(user.lower(), collections.deque()).append((now, recipients))

    def _follow(self) -> None:
        """Take in the lines appended to the journal (by any process) since it was last read."""
        if self.journal is None:
            return
        restarted, lines = self.journal.new_lines()
        if restarted:
            self.sent = {}
        self._take(lines)

    def _take(self, lines: list[str]) -> None:
        for when, recipients, user in _entries(lines, self.clock() - DAY):
            self.sent.setdefault(user, collections.deque()).append((when, recipients))

    def open_journal(self, path: str) -> None:
        """Take the counts of the last day from ``path`` (lines torn by a crash are skipped),
        rewrite it with only those, and append to it from now on."""
        self.journal = SharedJournal(path)
        self._rewrite_journal()

    def _rewrite_journal(self) -> None:
        """The journal with only the entries still counted, oldest first."""
        self.appended = 0

        def keep(lines: list[str]) -> list[str]:
            return [f"{t:.0f} {n} {user}" for t, n, user in sorted(_entries(lines, self.clock() - DAY))]

        try:
            kept = self.journal.rewrite(keep)
        except OSError as e:
            log.warn("outbound limits: cannot rewrite {path}: {error}", path=self.journal.path, error=e)
            return
        self.sent = {}
        self._take(kept)


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
        new.alerted = old.alerted
        if new.journal is None:  # else the new one has read the counts from the journal
            new.sent = old.sent
    return new
