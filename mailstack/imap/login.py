"""The commands of the not-authenticated state (RFC 3501 6.2): STARTTLS, LOGIN, AUTHENTICATE.

Passwords go through :mod:`mailstack.sasl` (one rule for every protocol) and the login gate
(throttling, lockout); a refused login is logged with the address and account, never the
password, and after :data:`~mailstack.sasl.MAX_AUTH_FAILURES` the session is closed.
"""

from __future__ import annotations

import base64

from twisted.internet import reactor, threads
from twisted.logger import Logger

from mailstack import logcontext, sasl
from mailstack.errors import UnknownUser
from mailstack.imap.errors import NO_REPLY, Bad, No

log = Logger()

SASL_MECHANISMS = ("PLAIN",)


async def starttls(s, tag: bytes):
    """RFC 3501 6.2.1.  Input pipelined after STARTTLS is discarded: it arrived in the clear."""
    if not s.can_starttls():
        raise Bad("STARTTLS is not available" + (" (TLS is already active)" if s.secure else ""))
    s.framing.clear()
    s.tagged(tag, b"OK", b"Begin TLS negotiation now")
    s.secure = True
    s.transport.startTLS(s.context.tls)
    return NO_REPLY


async def login(s, tag: bytes, user: bytes, password: bytes):
    """RFC 3501 6.2.3."""
    if not s.login_allowed():
        raise No("LOGIN is disabled without TLS: use STARTTLS first", "PRIVACYREQUIRED")
    return await check_password(s, user, password, "LOGIN")


async def authenticate(s, tag: bytes, mechanism: bytes, initial: bytes | None):
    """RFC 3501 6.2.2 with SASL PLAIN (RFC 4616) and the initial response of RFC 4959."""
    if mechanism.upper().decode("ascii", "replace") not in SASL_MECHANISMS:
        raise No("unsupported authentication mechanism (use PLAIN)", "CANNOT")
    if not s.login_allowed():
        raise No("authentication is disabled without TLS: use STARTTLS first", "PRIVACYREQUIRED")
    exchange = None
    try:
        exchange = sasl.start(mechanism.decode("ascii"), initial, SASL_MECHANISMS)
        while exchange.challenge is not None:
            s.continuation(base64.b64encode(exchange.challenge))
            exchange.respond(await s.read_line())
    except sasl.SaslError as e:
        if e.kind == "identity":
            refused(s, exchange.credentials.authcid, "AUTHENTICATE PLAIN", str(e))
        raise Bad(str(e)) from None
    creds = exchange.credentials
    return await check_password(s, creds.authcid, creds.password, "AUTHENTICATE PLAIN")


def refused(s, user: bytes, method: str, why: str):
    log.warn("imap authentication failed for {user} from {peer} ({method}: {why})",
             user=sasl.shown(user), peer=s.peer, method=method, why=why)
    if s.failures.failed():
        s.untagged(b"BYE Too many authentication failures")
        s.closing = True  # a command sent after the BYE is not acted on (it would count again)
        reactor.callLater(0, s.transport.loseConnection)
    raise No("Authentication failed", "AUTHENTICATIONFAILED")


async def check_password(s, user: bytes, password: bytes, method: str):
    gate = s.context.login_gate
    try:
        result = await sasl.authenticate(gate, user, password, s.peer, s.listener.key, s.avatar_interface)
    except sasl.LoginRefused:
        refused(s, user, method, "bad user name or password")
    except sasl.LoginThrottled as e:
        raise No(str(e), "UNAVAILABLE") from None  # RFC 5530 3: temporary, try later
    except sasl.LoginUnavailable:
        raise No("authentication is unavailable, try again later", "UNAVAILABLE") from None
    account = result.avatar
    try:
        # Not through the thread pool when there is nothing to make: a LOGIN then does not wait
        # behind the other sessions' store work (the authentication cache hit did not either).
        mailbox = account.existing_mailbox() or await threads.deferToThread(account.mailbox)
    except UnknownUser as e:
        result.logout()
        log.warn("imap mailbox unusable for {user} from {peer}: {error}", user=account.address,
                 peer=s.peer, error=str(e))
        raise No("this account has no usable mailbox", "UNAVAILABLE") from None
    if s.lost:
        result.logout()
        return NO_REPLY
    s.logged_in(account.address, mailbox, result.logout)
    logcontext.set_user(s.peer, account.address)
    log.info("imap login {user} from {peer} ({method})", user=account.address, peer=s.peer, method=method)
    return b"[CAPABILITY " + b" ".join(s.capabilities()) + b"] Logged in"
