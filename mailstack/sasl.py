"""SASL for every protocol that takes a password: one behaviour for SMTP, IMAP and POP3.

The protocols differ only in how they frame an exchange (``334``, ``+``, ``+ ``) and how they
word a failure; what a client may send and what it means is decided here, once:

- Mechanisms: PLAIN (RFC 4616) everywhere, LOGIN (draft-murchison-sasl-login) where a
  protocol offers it (SMTP, for old clients).  A protocol passes the mechanisms it offers.
- Responses are base64 (RFC 4422 5); ``*`` cancels the exchange (RFC 4954 4, RFC 3501 6.2.2,
  RFC 5034 4); an initial response of ``=`` is an empty one (RFC 4954 4, RFC 4959 3).
- The identity rule: the authentication identity (authcid) must not be empty; an
  authorization identity (authzid) may be given only if it names the same account, compared
  case-insensitively as addresses are.  Acting as someone else is not supported, so a
  different authzid is a failed login (counted, throttled) rather than a syntax error.
- Passwords are compared after SASLprep (RFC 4013), so the same password typed on systems
  that normalise Unicode differently (NFC, NFD) is the same password: :func:`saslprep`,
  applied by :mod:`mailstack.accounts` when hashing and when verifying.
- Clear-text passwords only over TLS, or on loopback where ``[auth]
  plaintext_on_loopback`` allows it (RFC 8314 3, RFC 2595 2.2): :func:`login_allowed`.
- After :data:`MAX_AUTH_FAILURES` failed logins a session is closed (:class:`FailureCounter`);
  the address- and account-wide throttling lives in :mod:`mailstack.throttle`.
"""

from __future__ import annotations

import binascii
import stringprep
import unicodedata
from dataclasses import dataclass

from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.internet import defer
from twisted.logger import Logger

from mailstack.config import is_loopback
from mailstack.throttle import LoginThrottled

__all__ = [
    "MAX_AUTH_FAILURES", "Credentials", "Exchange", "FailureCounter", "LoginRefused", "LoginResult",
    "LoginThrottled", "LoginUnavailable", "SaslError", "authenticate", "login_allowed", "saslprep", "shown", "start",
]

log = Logger()

MAX_AUTH_FAILURES = 3  # failed logins in one session before it is closed
MAX_SHOWN = 100  # characters of a user name written to the log


class SaslError(Exception):
    """The exchange failed.  ``kind`` is ``unsupported``, ``malformed``, ``cancelled`` or
    ``identity``; only ``identity`` counts as a failed login.  ``str()`` is safe to send."""

    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind = kind


class LoginRefused(Exception):
    """Wrong user name or password (already delayed by the throttle)."""


class LoginUnavailable(Exception):
    """Authentication could not be done now (an internal error, already logged)."""


@dataclass(frozen=True)
class Credentials:
    authcid: bytes
    password: bytes
    authzid: bytes = b""


@dataclass(frozen=True)
class LoginResult:
    address: str
    avatar: object
    logout: object


def login_allowed(secure: bool, peer: str, plaintext_on_loopback: bool) -> bool:
    """May a password be sent on this connection?  (RFC 8314 3, RFC 2595 2.2)"""
    return secure or (plaintext_on_loopback and is_loopback(peer))


_PROHIBITED = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3, stringprep.in_table_c4,
               stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
               stringprep.in_table_c9)


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep of a password or user name, as a query (unassigned code points are
    let through, RFC 3454 7); ValueError for a prohibited character or bad bidi text.

    Mapping (RFC 4013 2.1): non-ASCII spaces to SPACE, "commonly mapped to nothing" dropped;
    then NFKC (2.2); prohibited output (2.3); the bidirectional rule (2.4, RFC 3454 6).
    """
    if text.isascii() and text.isprintable():
        return text  # nothing to map, normalise or prohibit: the common case, at no cost
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c))
    normal = unicodedata.normalize("NFKC", mapped)
    for c in normal:
        if any(prohibited(c) for prohibited in _PROHIBITED):
            raise ValueError(f"character U+{ord(c):04X} is not allowed (RFC 4013 2.3)")
    rtl = [stringprep.in_table_d1(c) for c in normal]
    if any(rtl):
        if any(stringprep.in_table_d2(c) for c in normal):
            raise ValueError("mixes right-to-left and left-to-right text (RFC 3454 6)")
        if not (rtl[0] and rtl[-1]):
            raise ValueError("right-to-left text must start and end with a right-to-left character (RFC 3454 6)")
    return normal


def shown(user: bytes | str) -> str:
    """A client-supplied user name as it may appear in a log line: decoded, control
    characters escaped (no forged log lines), at most :data:`MAX_SHOWN` characters."""
    if isinstance(user, bytes):
        user = user.decode("utf-8", "replace")
    user = user[:MAX_SHOWN]
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in user)


def _decode(line: bytes) -> bytes:
    line = line.strip()
    if line == b"*":
        raise SaslError("cancelled", "authentication cancelled")
    if line == b"=":
        return b""
    try:
        return binascii.a2b_base64(line, strict_mode=True)
    except (binascii.Error, ValueError):
        raise SaslError("malformed", "invalid base64 in the SASL response") from None


def _same_identity(authzid: bytes, authcid: bytes) -> bool:
    return not authzid or authzid.lower() == authcid.lower()


class Exchange:
    """One SASL exchange.  While :attr:`challenge` is not None the protocol sends it
    (base64-encoded, in its own framing) and feeds the client's next line to :meth:`respond`;
    then :attr:`credentials` holds what to check."""

    def __init__(self, mechanism: str):
        self.mechanism = mechanism
        self.challenge: bytes | None = b""
        self.credentials: Credentials | None = None
        self._user: bytes | None = None

    def respond(self, line: bytes) -> None:
        """Take one client response (base64 text as on the wire); raises :class:`SaslError`."""
        if self.challenge is None:
            raise SaslError("malformed", "the exchange is already complete")
        self._take(_decode(line))

    def _take(self, data: bytes) -> None:
        if self.mechanism == "PLAIN":
            self._plain(data)
        elif self._user is None:  # LOGIN: first the user name, then the password
            if not data:
                raise SaslError("malformed", "empty user name")
            self._user, self.challenge = data, b"Password:"
        else:
            self._finish(Credentials(self._user, data))

    def _plain(self, message: bytes) -> None:
        """RFC 4616 2: [authzid] NUL authcid NUL passwd."""
        parts = message.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise SaslError("malformed", "malformed PLAIN response (RFC 4616)")
        self._finish(Credentials(parts[1], parts[2], parts[0]))

    def _finish(self, creds: Credentials) -> None:
        self.challenge, self.credentials = None, creds
        if not _same_identity(creds.authzid, creds.authcid):
            raise SaslError("identity", "authorization identity differs from the authentication identity")


def start(mechanism: str, initial: bytes | None, offered: tuple[str, ...]) -> Exchange:
    """Begin an exchange for ``mechanism`` (any case), with the initial response as the client
    sent it (None when absent).  Raises :class:`SaslError`, ``unsupported`` for a mechanism
    not in ``offered``."""
    mechanism = mechanism.upper()
    if mechanism not in offered or mechanism not in ("PLAIN", "LOGIN"):
        raise SaslError("unsupported", "unsupported authentication mechanism")
    exchange = Exchange(mechanism)
    if mechanism == "LOGIN":
        exchange.challenge = b"Username:"
    if initial is not None:
        exchange.challenge = b""
        exchange._take(_decode(initial))
    return exchange


def authenticate(gate, username: bytes, password: bytes, peer: str, protocol: str, interface) -> defer.Deferred:
    """Check a password through the login gate (throttling, lockout).  Fires a
    :class:`LoginResult`, or fails with :class:`LoginRefused`, :class:`LoginThrottled` or
    :class:`LoginUnavailable` (the cause already logged)."""
    d = gate.login(credentials.UsernamePassword(username, password), peer, protocol, interface)

    def succeeded(result):
        _iface, avatar, logout = result
        return LoginResult(getattr(avatar, "address", None), avatar, logout)

    def failed(failure):
        if failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
            raise LoginRefused()
        if failure.check(LoginThrottled):
            return failure
        log.failure("{protocol} authentication error for {user} from {peer}", failure, protocol=protocol,
                    user=shown(username), peer=peer)
        raise LoginUnavailable()

    return d.addCallbacks(succeeded, failed)


class FailureCounter:
    """Failed logins within one session."""

    def __init__(self, limit: int = MAX_AUTH_FAILURES):
        self.limit, self.count = limit, 0

    def failed(self) -> bool:
        """Count one failure; True when the session must now be closed."""
        self.count += 1
        return self.count >= self.limit
