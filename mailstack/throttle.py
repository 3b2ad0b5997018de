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
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.cred import error as cred_error
from twisted.internet import defer, task
from twisted.logger import Logger

from mailstack import metrics

log = Logger()


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
                 max_delay: float = 8.0, window: float = 900.0):
        if reactor is None:
            from twisted.internet import reactor
        self.portal, self.reactor = portal, reactor
        self.max_failures, self.lockout = max_failures, lockout
        self.delay, self.max_delay, self.window = delay, max_delay, window
        self.by_address: dict[str, _Record] = {}
        self.by_account: dict[str, _Record] = {}

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
        account = _name(creds.username)
        rec = self.by_address.get(peer)
        if rec is not None and rec.locked_until > now:
            log.warn("auth refused {protocol} from {peer} for {user}: address locked out", protocol=protocol,
                     peer=peer, user=account)
            metrics.auth(protocol, "locked_out")
            return defer.fail(LoginThrottled(rec.locked_until - now))
        d = self.portal.login(creds, None, *interfaces)

        def succeeded(result):
            self.by_account.pop(account, None)
            metrics.auth(protocol, "success")
            return result

        def failed(failure):
            if not failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
                return failure
            now = self.reactor.seconds()
            a = self._record(self.by_address, peer, now)
            u = self._record(self.by_account, account, now)
            a.failures += 1
            u.failures += 1
            n = max(a.failures, u.failures)
            delay = min(self.max_delay, self.delay * 2 ** (n - 1))
            metrics.auth(protocol, "failure")
            if a.failures >= self.max_failures:
                if a.locked_until <= now:  # newly locked (not already)
                    metrics.auth_lockout(protocol)
                a.locked_until = now + self.lockout
            log.warn("auth failed {protocol} from {peer} for {user} (failure {n}; answering in {delay:.2f} s{locked})",
                     protocol=protocol, peer=peer, user=account, n=n, delay=delay,
                     locked="; address locked out" if a.locked_until > now else "")
            return task.deferLater(self.reactor, delay, lambda: failure)

        return d.addCallbacks(succeeded, failed)


def _name(username) -> str:
    if isinstance(username, bytes):
        username = username.decode("utf-8", "replace")
    return (username or "").strip().lower()[:256]
