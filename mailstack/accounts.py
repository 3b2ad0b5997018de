"""Users, passwords, aliases, and authentication through ``twisted.cred``.

Users file: Dovecot's passwd-file form, one user a line, ``user@domain:{SCHEME}hash`` with any
further ``:``-separated Dovecot fields ignored, so an administrator can bring users over
from Dovecot unchanged; the hashes are :mod:`mailstack.passwords`'.

Aliases file: ``source: target, target`` a line.  ``source`` is an address or ``@domain``
(that domain's catch-all); targets are local users, other aliases or outside addresses.
Plus-addressing (``bob+lists@example.test``) reaches bob unless an alias names the full
address.

Send-as file: ``user@domain: identity, identity`` a line: the addresses (or ``@domain`` for
any address of a domain) a user may send as besides their own and the aliases that reach
them, e.g. a shared ``sales@`` that is not an alias.  Submission holds MAIL FROM and the
header From and Sender to this (Postfix's ``reject_sender_login_mismatch``).

Both files are re-read whenever they change on disk (checked on each use: one ``stat``), so
``mailstack user add`` takes effect in a running server at once.  Edits from the CLI go
through :class:`UsersFile`/:class:`AliasesFile`, which keep comments and write atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import threading
import time
from dataclasses import dataclass, field

from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from mailstack.errors import ConfigError
from mailstack.fsutil import atomic_write
from mailstack.quotarules import rules_of, with_rules
from mailstack.passwords import burn_time, check_hash_syntax, hash_password, needs_rehash, verify_password

log = Logger()

_ADDRESS_RE = re.compile(r"^[^\x00-\x20\x7f()<>,;:\\\"\[\]@/]+@[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$")


def normalise_address(address: str) -> str:
    return address.strip().lower()


def valid_address(address: str) -> bool:
    local = address.rpartition("@")[0]
    return bool(_ADDRESS_RE.match(address)) and not local.startswith(".") and len(local) <= 64 and ".." not in local


# -- the two files -----------------------------------------------------------------------------


class _WatchedFile:
    """A text file whose parsed form is refreshed when its (inode, size, mtime) changes."""

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple | None = None
        self._lock = threading.Lock()
        #: Set while something (inotify) promises to call :meth:`changed`: no stat per use then.
        self.watched = False
        self._dirty = True

    def changed(self) -> None:
        self._dirty = True

    def _current_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def refresh(self, force: bool = False) -> None:
        """Re-read if changed.  A broken file at reload keeps the last good state (logged)."""
        if self.watched and not self._dirty and not force:
            return
        self._dirty = False
        stamp = self._current_stamp()
        if stamp == self._stamp and not force:
            return
        with self._lock:
            stamp = self._current_stamp()
            if stamp == self._stamp and not force:
                return
            try:
                lines = [] if stamp is None else open(self.path, encoding="utf-8").read().splitlines()
                self._parse(lines)
            except ConfigError as e:
                if self._stamp is None:
                    raise
                log.error("not reloading {path}: {error}", path=self.path, error=str(e))
            self._stamp = stamp

    def _parse(self, lines: list[str]) -> None:
        """Subclasses parse the lines into their own attributes."""

    def _edit(self, change) -> None:
        """Apply ``change(lines) -> lines`` under a lock and replace the file atomically."""
        lock_path = self.path + ".lock"
        try:
            st = os.stat(self.path)
            # Keep what the administrator set: mode, owner and group (root editing a file that
            # the service user reads through its group, issue 17).
            mode, owner = st.st_mode & 0o777, (st.st_uid, st.st_gid)
        except FileNotFoundError:
            mode, owner = 0o640, None
        with open(lock_path, "a") as lock:
            if owner is not None and os.geteuid() == 0:
                os.fchown(lock.fileno(), *owner)  # the service takes this lock too (rehash_on_login)
                os.fchmod(lock.fileno(), 0o660 if mode & 0o020 else 0o640)
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                lines = open(self.path, encoding="utf-8").read().splitlines()
            except FileNotFoundError:
                lines = []
            new = change(lines)
            atomic_write(self.path, "".join(line + "\n" for line in new).encode("utf-8"), mode=mode,
                         owner=owner if os.geteuid() == 0 else None)
        self.refresh(force=True)


def _content(line: str) -> str:
    return "" if line.lstrip().startswith("#") else line.strip()


class UsersFile(_WatchedFile):
    def __init__(self, path: str):
        super().__init__(path)
        self.users: dict[str, str] = {}
        #: user -> {"storage": bytes, "messages": n}, what the line's Dovecot quota rules set.
        self.quotas: dict[str, dict[str, int]] = {}

    def _parse(self, lines: list[str]) -> None:
        users: dict[str, str] = {}
        quotas: dict[str, dict[str, int]] = {}
        for n, line in enumerate(lines, 1):
            text = _content(line)
            if not text:
                continue
            user, sep, rest = text.partition(":")
            user = normalise_address(user)
            stored = rest.split(":", 1)[0]
            where = f"line {n}"
            if not sep or not valid_address(user):
                raise ConfigError(self.path, where, f"expected user@domain:{{SCHEME}}hash, got {text[:60]!r}")
            problem = check_hash_syntax(stored)
            if problem:
                raise ConfigError(self.path, where, f"{user}: {problem}")
            if user in users:
                raise ConfigError(self.path, where, f"{user} is listed twice")
            users[user] = stored
            rules = _quota_rules(self.path, where, rest)
            if rules:
                quotas[user] = rules
        self.users, self.quotas = users, quotas

    def set_quota(self, user: str, storage: int | None, messages: int | None) -> None:
        """Rewrite the user's ``userdb_quota_rule`` extra fields (Dovecot's passwd-file: the
        eighth field on, space-separated; None leaves a limit as it is); KeyError if unknown."""
        user = normalise_address(user)

        def edit(text: str) -> str:
            fields = (text.partition(":")[2].split(":", 6) + [""] * 6)[:7]
            fields[6] = with_rules(fields[6], storage, messages)
            line = f"{user}:" + ":".join(fields)
            return line.rstrip(":") if not any(fields[1:6]) and not fields[6] else line

        def missing(found: bool) -> list[str]:
            if not found:
                raise KeyError(f"no such user: {user}")
            return []

        self._edit_user_line(user, edit, missing)

    def set(self, user: str, stored: str, must_exist: bool | None, unless_changed_from: str | None = None) -> None:
        """Set (or with ``stored`` empty, delete) a user's hash.  ``unless_changed_from``:
        only if the hash on disk is still that one (a rehash must not undo a new password);
        KeyError otherwise."""
        user = normalise_address(user)

        def edit(text: str) -> str | None:
            if unless_changed_from is not None and text.partition(":")[2].split(":", 1)[0] != unless_changed_from:
                raise KeyError(f"the password of {user} changed meanwhile")
            if not stored:
                return None
            rest = text.partition(":")[2].split(":", 1)
            return f"{user}:{stored}" + (":" + rest[1] if len(rest) > 1 else "")

        def missing(found: bool) -> list[str]:
            if must_exist is True and not found:
                raise KeyError(f"no such user: {user}")
            if must_exist is False and found:
                raise KeyError(f"user exists: {user}")
            return [f"{user}:{stored}"] if not found and stored else []

        self._edit_user_line(user, edit, missing)

    def _edit_user_line(self, user: str, edit, missing) -> None:
        """Rewrite the file with ``user``'s line replaced by ``edit(line)`` (None: removed), then
        the lines ``missing(found)`` returns added (it raises to refuse the change)."""
        def change(lines):
            out, found = [], False
            for line in lines:
                text = _content(line)
                if text and normalise_address(text.partition(":")[0]) == user:
                    found = True
                    line = edit(text)
                    if line is None:
                        continue
                out.append(line)
            return out + missing(found)

        self._edit(change)


def _quota_rules(path: str, where: str, rest: str) -> dict[str, int]:
    """The quota limits of a line's extra fields (after password, uid, gid, gecos, home, shell)."""
    fields = rest.split(":", 6)
    if len(fields) < 7:
        return {}
    try:
        return rules_of(fields[6])
    except ValueError as e:
        raise ConfigError(path, where, f"quota rule: {e}") from None


class AliasesFile(_WatchedFile):
    #: what a line's targets may be besides addresses: ``@domain`` in a send-as file
    DOMAIN_TARGETS = False
    FORM = "'alias@domain: target, ...' or '@domain: target'"

    def __init__(self, path: str):
        super().__init__(path)
        self.aliases: dict[str, list[str]] = {}

    def _parse(self, lines: list[str]) -> None:
        aliases: dict[str, list[str]] = {}
        for n, line in enumerate(lines, 1):
            text = _content(line)
            if not text:
                continue
            source, sep, targets = text.partition(":")
            source = normalise_address(source)
            where = f"line {n}"
            ok_source = valid_address(source) or (not self.DOMAIN_TARGETS and _domain_pattern(source))
            if not sep or not ok_source:
                raise ConfigError(self.path, where, f"expected {self.FORM}, got {text[:60]!r}")
            dests = [normalise_address(t) for t in targets.split(",") if t.strip()]
            if not dests:
                raise ConfigError(self.path, where, f"{source} has no target")
            for d in dests:
                if not (valid_address(d) or (self.DOMAIN_TARGETS and _domain_pattern(d))):
                    raise ConfigError(self.path, where, f"{source}: target {d!r} is not an address")
            aliases.setdefault(source, []).extend(d for d in dests if d not in aliases.get(source, []))
        self.aliases = aliases

    def add(self, source: str, targets: list[str]) -> None:
        source = normalise_address(source)

        def change(lines):
            return lines + [f"{source}: {', '.join(normalise_address(t) for t in targets)}"]

        self._edit(change)

    def delete(self, source: str) -> None:
        source = normalise_address(source)

        def change(lines):
            out = [l for l in lines if not (_content(l) and normalise_address(_content(l).partition(":")[0]) == source)]
            if len(out) == len(lines):
                raise KeyError(f"no such alias: {source}")
            return out

        self._edit(change)


class SendAsFile(AliasesFile):
    """``user@domain: identity, ...``: what else a user may send as (``@domain``: all of it)."""

    DOMAIN_TARGETS = True
    FORM = "'user@domain: address, @domain, ...'"


def _domain_pattern(text: str) -> bool:
    return text.startswith("@") and valid_address("x" + text)


# -- the accounts as protocols see them --------------------------------------------------------


@dataclass
class Resolution:
    """Where mail for one address goes."""

    local: list[str] = field(default_factory=list)  # users of this server
    remote: list[str] = field(default_factory=list)  # outside addresses (alias forwarding)


class Accounts:
    """Users and aliases of the server, always current with the files on disk."""

    MAX_ALIAS_DEPTH = 10

    def __init__(self, users_file: str, aliases_file: str = "", domains: list[str] = (), recipient_delimiter: str = "+",
                 send_as_file: str = ""):
        self.users_file = UsersFile(users_file)
        self.aliases_file = AliasesFile(aliases_file) if aliases_file else None
        self.send_as_file = SendAsFile(send_as_file) if send_as_file else None
        self.domains = [d.lower() for d in domains]
        self.delimiter = recipient_delimiter
        self._cache_key = os.urandom(32)
        self._auth_cache: dict[str, tuple[bytes, float]] = {}
        self.reload()

    def files(self) -> list:
        """The watched files behind the accounts (for change notification)."""
        return [f for f in (self.users_file, self.aliases_file, self.send_as_file) if f is not None]

    def reload(self, force: bool = False) -> None:
        for watched in self.files():
            watched.refresh(force)

    @property
    def users(self) -> dict[str, str]:
        self.reload()
        return self.users_file.users

    @property
    def aliases(self) -> dict[str, list[str]]:
        self.reload()
        return self.aliases_file.aliases if self.aliases_file else {}

    def quota(self, user: str) -> dict[str, int]:
        """The user's own limits from the users file ({"storage": bytes, "messages": n}, each
        only when set; [quota] gives the rest)."""
        self.reload()
        return self.users_file.quotas.get(normalise_address(user), {})

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    def canonical_login(self, username: str) -> str:
        """What a client typed as user name -> the account address (bare names need one domain)."""
        username = normalise_address(username)
        if "@" not in username and len(self.domains) == 1:
            username = f"{username}@{self.domains[0]}"
        return username

    #: How long a verified password is remembered (seconds; 0: never), see :meth:`authenticate`.
    auth_cache_ttl = 3600.0

    def authenticate(self, username: str, password: str) -> str | None:
        """The account address if the password is right, else None.  Blocks (hashing).

        A right password is remembered for :attr:`auth_cache_ttl` as an HMAC, under a key
        made for this process, of the user, the stored hash and the password (never the
        password itself), as Dovecot's ``auth_cache`` does: the next connections of a client
        (Thunderbird opens five) do not each pay Argon2's ~0.2 s of CPU.  A changed password
        changes the stored hash, so the entry no longer matches; failures are never cached.
        """
        user = self.canonical_login(username)
        stored = self.users.get(user)
        if stored is None:
            burn_time(password)
            return None
        if self.cached(username, password) is not None:
            return user
        if not verify_password(stored, password):
            return None
        if self.rehash and needs_rehash(stored) and self._users_file_writable():
            stored = self._rehash(user, stored, password)
        if self.auth_cache_ttl > 0:
            if len(self._auth_cache) > 100_000:  # bound the memory a spray of accounts could take
                self._auth_cache.clear()
            self._auth_cache[user] = (self._cache_tag(user, stored, password), time.monotonic() + self.auth_cache_ttl)
        return user

    def _cache_tag(self, user: str, stored: str, password: str) -> bytes:
        return hmac.new(self._cache_key, "\0".join((user, stored, password)).encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()

    def cached(self, username: str, password: str) -> str | None:
        """The account address if this user name and password are in the authentication cache
        (see :meth:`authenticate`), else None: no hashing, so the reactor thread may ask, and a
        LOGIN that hits does not wait behind the store's work in the thread pool."""
        user = self.canonical_login(username)
        stored = self.users.get(user)
        hit = self._auth_cache.get(user) if stored is not None else None
        if hit is None or time.monotonic() >= hit[1]:
            return None
        return user if hmac.compare_digest(hit[0], self._cache_tag(user, stored, password)) else None

    #: Make Argon2 hashes with old parameters again at login (``[auth] rehash_on_login``).
    rehash = True

    def _users_file_writable(self) -> bool:
        """Whether a rehash could be stored: the users file, its lock and its directory are the
        service's to write.  Not (root:mailstack 0640, as ``mailstack init`` makes it): said
        once, and no second Argon2 hash is made at every login for nothing."""
        path = self.users_file.path
        lock = path + ".lock"
        directory = os.path.dirname(path) or "."
        ok = (os.access(path, os.W_OK) and os.access(directory, os.W_OK | os.X_OK)
              and (not os.path.exists(lock) or os.access(lock, os.W_OK)))
        if not ok and not self._said_read_only:
            self._said_read_only = True
            log.info("{path} is not writable by this service: password hashes with old Argon2 parameters "
                     "stay until the user's password is set again (mailstack user passwd)", path=path)
        return ok

    _said_read_only = False

    def _rehash(self, user: str, stored: str, password: str) -> str:
        """*Blocking.*  Store a hash with today's parameters; the old one stays when the
        users file cannot be written (a read-only deployment): the login still succeeds."""
        try:
            new = hash_password(password)
            self.users_file.set(user, new, must_exist=True, unless_changed_from=stored)
        except (OSError, KeyError, ValueError) as e:
            log.warn("cannot store a new password hash for {user} in {path}: {e}", user=user,
                     path=self.users_file.path, e=e)
            return stored
        log.info("password hash of {user} made again with the configured Argon2 parameters", user=user)
        return new

    def _strip_detail(self, address: str) -> str:
        local, _, domain = address.rpartition("@")
        if self.delimiter and self.delimiter in local:
            local = local.split(self.delimiter, 1)[0]
        return f"{local}@{domain}"

    def resolve(self, address: str) -> Resolution | None:
        """Expand an address of a local domain to users (and outside addresses); None if unknown."""
        address = normalise_address(address)
        if not self.is_local_domain(address.rpartition("@")[2]):
            return None
        result = Resolution()
        if not self._expand(address, result, set(), 0):
            return None
        return result

    def _expand(self, address: str, result: Resolution, seen: set, depth: int) -> bool:
        if address in seen or depth > self.MAX_ALIAS_DEPTH:
            return True  # a loop or a chain too long adds nothing more
        seen.add(address)
        domain = address.rpartition("@")[2]
        if not self.is_local_domain(domain):
            if address not in result.remote:
                result.remote.append(address)
            return True
        aliases, users = self.aliases, self.users
        bare = self._strip_detail(address)
        targets = aliases.get(address) or aliases.get(bare)
        if targets:
            for target in targets:
                self._expand(target, result, seen, depth + 1)
            return True
        if bare in users:
            if bare not in result.local:
                result.local.append(bare)
            return True
        catchall = aliases.get("@" + domain)
        if catchall:
            for target in catchall:
                self._expand(target, result, seen, depth + 1)
            return True
        return False

    def owns(self, user: str, address: str) -> bool:
        """May ``user`` send as ``address`` (MAIL FROM, From, Sender)?  Their own address and
        its plus-details, an alias that reaches them, or an identity of the send-as file."""
        user, address = normalise_address(user), normalise_address(address)
        bare = self._strip_detail(address)
        if bare == user:
            return True
        if self.send_as_file is not None:
            self.send_as_file.refresh()
            identities = self.send_as_file.aliases.get(user, ())
            if address in identities or bare in identities or "@" + address.rpartition("@")[2] in identities:
                return True
        targets = self.aliases.get(address) or self.aliases.get(bare)
        return bool(targets) and user in (self.resolve(address) or Resolution()).local


# -- twisted.cred -------------------------------------------------------------------------------


class IMailUser(Interface):
    """The avatar every protocol can ask for: who logged in."""

    address = Attribute("the account's address, lower case")


@implementer(IMailUser)
class MailUser:
    def __init__(self, address: str):
        self.address = address


@implementer(ICredentialsChecker)
class AccountsChecker:
    """Checks user name and password against the users file, in a worker thread."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, accounts: Accounts):
        self.accounts = accounts

    def requestAvatarId(self, creds):
        username = creds.username.decode("utf-8", "replace") if isinstance(creds.username, bytes) else creds.username
        password = creds.password.decode("utf-8", "replace") if isinstance(creds.password, bytes) else creds.password

        def done(address):
            if address is None:
                raise error.UnauthorizedLogin("authentication failed")
            return address

        hit = self.accounts.cached(username, password)
        if hit is not None:
            return defer.succeed(hit)
        return threads.deferToThread(self.accounts.authenticate, username, password).addCallback(done)


@implementer(portal.IRealm)
class MailRealm:
    """Hands each protocol its avatar.  Protocol packages register a factory per interface."""

    def __init__(self):
        self.factories = {IMailUser: lambda address: (MailUser(address), lambda: None)}

    def register(self, interface, factory) -> None:
        """``factory(address) -> (avatar, logout)`` for sessions asking for ``interface``."""
        self.factories[interface] = factory

    def requestAvatar(self, avatarId, mind, *interfaces):
        address = avatarId.decode() if isinstance(avatarId, bytes) else avatarId
        for iface in interfaces:
            factory = self.factories.get(iface)
            if factory is not None:
                avatar, logout = factory(address)
                return iface, avatar, logout
        raise LookupError(f"no avatar for {interfaces}")


def make_portal(accounts: Accounts) -> tuple[portal.Portal, MailRealm]:
    realm = MailRealm()
    return portal.Portal(realm, [AccountsChecker(accounts)]), realm
