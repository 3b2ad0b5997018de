"""Authentication throttling, shared by every protocol that takes a password.

Every password login goes through :class:`LoginGate` rather than straight to the portal.
A wrong password is answered only after a delay that doubles with each recent failure from
that client address or for that account (``delay``, ``2*delay``, ... up to ``max_delay``);
past ``max_failures`` failures from one address within ``window`` seconds, that address is
refused outright for ``lockout`` seconds with the protocol's temporary error, without the
password being checked.  A success clears its account's count but never the address's,
which only time clears: otherwise an attacker holding one valid account could log in
between guesses at another's and never be locked out (issue 14).  Right passwords are never delayed, so a user logging in from
elsewhere is not slowed by an attack on their account; accounts are never locked, since
that would hand attackers a way to lock users out.  Each failure is logged with the address
and the account, never the password.

With a ``journal`` (the service gives ``auth-failures.log`` beside the store) the counts are
shared by every process of ``[server] workers`` and survive a restart: each failure, and each
success that clears an account's count, is appended as one line ("F time address account",
"S time account") and every login first reads what any process appended since; an attacker
gains nothing by reaching another process, or by waiting for a restart.  The file is
rewritten, under an exclusive ``flock``, with only the lines that still count once it holds
:data:`COMPACT_AFTER` more.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.cred import error as cred_error
from twisted.internet import defer, task
from twisted.logger import Logger

from mailstack import metrics
from mailstack.journal import SharedJournal

log = Logger()


COMPACT_AFTER = 20_000  # journal lines appended by this process before it rewrites the file


class LoginThrottled(Exception):
    """This address failed too often; it may try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"too many authentication failures; try again in {int(retry_after) + 1} s")


@dataclass
class _Record:
    failures: int = 0
    first: float = 0.0
    locked_until: float = 0.0


class LoginGate:
    MAX_ENTRIES = 100_000  # bound on remembered addresses and accounts (memory under a spray)

    def __init__(self, portal, reactor=None, max_failures: int = 10, lockout: float = 900.0, delay: float = 0.5,
                 max_delay: float = 8.0, window: float = 900.0, journal: str | None = None):
        if reactor is None:
            from twisted.internet import reactor
        self.portal, self.reactor = portal, reactor
        self.max_failures, self.lockout = max_failures, lockout
        self.delay, self.max_delay, self.window = delay, max_delay, window
        self.by_address: dict[str, _Record] = {}
        self.by_account: dict[str, _Record] = {}
        self.journal = SharedJournal(journal) if journal is not None else None
        self.appended = 0
        if self.journal is not None:
            self._compact()

    def _record(self, table: dict, key: str, now: float) -> _Record:
        rec = table.get(key)
        if rec is None or (now - rec.first > self.window and rec.locked_until <= now):
            if len(table) >= self.MAX_ENTRIES:
                self._prune(table, now)
            rec = table[key] = _Record(first=now)
        return rec

    def _prune(self, table: dict, now: float) -> None:
        for key in [k for k, r in table.items() if now - r.first > self.window and r.locked_until <= now]:
            del table[key]
        while len(table) >= self.MAX_ENTRIES:  # still full: forget the oldest
            del table[min(table, key=lambda k: table[k].first)]

    def login(self, creds, peer: str, protocol: str, *interfaces) -> defer.Deferred:
        """Like ``Portal.login``; fails with :class:`LoginThrottled` for a locked-out address."""
        now = self.reactor.seconds()
        named = _name(creds.username)  # as logged (mailstack.logfilter escapes it)
        account, address = _word(named), _word(peer)  # the keys, as the journal writes them
        self._follow()
        rec = self.by_address.get(address)
        if rec is not None and rec.locked_until > now:
            log.warn("auth refused {protocol} from {peer} for {user}: address locked out", protocol=protocol,
                     peer=peer, user=named)
            metrics.auth(protocol, "locked_out")
            return defer.fail(LoginThrottled(rec.locked_until - now))
        d = self.portal.login(creds, None, *interfaces)

        def succeeded(result):
            self._follow()
            if account in self.by_account:
                self._append(f"S {self.reactor.seconds():.3f} {account}")
            metrics.auth(protocol, "success")
            return result

        def failed(failure):
            if not failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
                return failure
            now = self.reactor.seconds()
            self._follow()
            was_locked = (self.by_address.get(address) or _Record()).locked_until > now
            self._append(f"F {now:.3f} {address} {account}")
            a, u = self.by_address[address], self.by_account[account]
            n = max(a.failures, u.failures)
            delay = min(self.max_delay, self.delay * 2 ** (n - 1))
            metrics.auth(protocol, "failure")
            if a.locked_until > now and not was_locked:
                metrics.auth_lockout(protocol)
            log.warn("auth failed {protocol} from {peer} for {user} (failure {n}; answering in {delay:.2f} s{locked})",
                     protocol=protocol, peer=peer, user=named, n=n, delay=delay,
                     locked="; address locked out" if a.locked_until > now else "")
            return task.deferLater(self.reactor, delay, lambda: failure)

        return d.addCallbacks(succeeded, failed)

    def _failure(self, peer: str, account: str, when: float) -> None:
        a = self._record(self.by_address, peer, when)
        u = self._record(self.by_account, account, when)
        a.failures += 1
        u.failures += 1
        if a.failures >= self.max_failures:
            a.locked_until = when + self.lockout

    # -- the journal shared by processes (mailstack.journal) ------------------------------------

    def _append(self, line: str) -> None:
        """One event to the journal, then what it holds since this process last read it
        (this line included: every process applies the lines the same way)."""
        if self.journal is None:
            self._apply(line.split())
            return
        try:
            self.journal.append(line)
        except OSError as e:
            log.warn("auth: cannot append to {path}: {error}", path=self.journal.path, error=e)
            self._apply(line.split())
            return
        self._follow()
        self.appended += 1
        if self.appended >= COMPACT_AFTER:
            self._compact()

    def _follow(self) -> None:
        """Apply what the journal gained since it was last read (other processes' failures)."""
        if self.journal is None:
            return
        restarted, lines = self.journal.new_lines()
        if restarted:  # rewritten by another process: what it kept is what counts (ours included)
            self.by_address, self.by_account = {}, {}
        for line in lines:
            self._apply(line.split())

    def _apply(self, parts: list[str]) -> None:
        try:
            if len(parts) == 4 and parts[0] == "F":
                self._failure(parts[2], parts[3], float(parts[1]))
            elif len(parts) == 3 and parts[0] == "S":
                self.by_account.pop(parts[2], None)
            elif len(parts) == 5 and parts[0] in ("A", "U"):  # a record as a rewrite kept it
                table = self.by_address if parts[0] == "A" else self.by_account
                table[parts[4]] = _Record(int(parts[2]), float(parts[1]), float(parts[3]))
        except ValueError:  # a line torn by a crash
            pass

    def _compact(self) -> None:
        """Rewrite the journal with what still counts (start-up, and every COMPACT_AFTER lines)."""
        self.appended = 0

        def keep(lines: list[str]) -> list[str]:
            self.by_address, self.by_account = {}, {}
            for line in lines:
                self._apply(line.split())
            now = self.reactor.seconds()
            return [f"{kind} {rec.first:.3f} {rec.failures} {rec.locked_until:.3f} {key}"
                    for table, kind in ((self.by_address, "A"), (self.by_account, "U"))
                    for key, rec in table.items() if now - rec.first <= self.window or rec.locked_until > now]

        try:
            kept = self.journal.rewrite(keep)
        except OSError as e:
            log.warn("auth: cannot rewrite {path}: {error}", path=self.journal.path, error=e)
            return
        self.by_address, self.by_account = {}, {}
        for line in kept:
            self._apply(line.split())


def _word(text: str) -> str:
    """A journal field: no blanks or line breaks (a client's account name may hold them)."""
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in text) or "-"


def _name(username) -> str:
    if isinstance(username, bytes):
        username = username.decode("utf-8", "replace")
    return (username or "").strip().lower()[:256]
