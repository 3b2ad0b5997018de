"""One ManageSieve session (RFC 5804): the states, the command table, login and STARTTLS.

Commands are dispatched through :data:`COMMANDS`, one table per state; a command of the other
state, or one the table does not know, gets ``NO``.  Handlers raise :class:`SieveNo`, which
the session turns into ``NO (CODE) "text"`` in one place (:meth:`ManageSieveSession.failed`),
whether raised at once or by a Deferred.  The script commands are in
:mod:`mailstack.managesieve.commands`; their disk work runs in a thread.

Input: ``LineReceiver`` reads lines; a line ending in a literal ``{n+}`` switches to raw mode
for the n octets (bounded: a script by ``[sieve] max_script_size``, any other string by
:data:`MAX_STRING`; a larger one is read and dropped, then refused with ``NO``, or beyond
:data:`MAX_DISCARD` the session ends).  While a command waits on a thread the input is
paused, so pipelined commands keep their order.  Passwords: AUTHENTICATE PLAIN through
:mod:`mailstack.sasl` and the login gate (throttling, lockout), as IMAP and POP3.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from twisted.internet import defer, reactor, task, threads
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin

from mailstack import logcontext, metrics, sasl
from mailstack.errors import UnknownUser
from mailstack.managesieve import wire
from mailstack.managesieve.capabilities import SessionView, capability_lines
from mailstack.managesieve.commands import ScriptCommands, SieveNo
from mailstack.pacing import CommandPacer
from mailstack.sieve.scripts import DEFAULT_MAX_SCRIPTS, DEFAULT_MAX_SIZE, ScriptStore

log = Logger()

NONAUTH, AUTH = "non-authenticated", "authenticated"


@dataclass(frozen=True)
class Command:
    """A handler (a session method) and its arguments: ``args`` the kinds ("string" or
    "number") in order, the last ``optional`` of them may be left out."""

    handler: str
    args: tuple[str, ...] = ()
    optional: int = 0


#: state -> command -> Command (RFC 5804 section 2; 2.14 for the later additions).
COMMANDS: dict[str, dict[str, Command]] = {
    NONAUTH: {
        "CAPABILITY": Command("cmd_capability"),  # 2.4
        "AUTHENTICATE": Command("cmd_authenticate", ("string", "string"), 1),  # 2.1
        "STARTTLS": Command("cmd_starttls"),  # 2.2
        "LOGOUT": Command("cmd_logout"),  # 2.3
        "NOOP": Command("cmd_noop", ("string",), 1),  # 2.13
    },
    AUTH: {
        "CAPABILITY": Command("cmd_capability"),
        "LOGOUT": Command("cmd_logout"),
        "NOOP": Command("cmd_noop", ("string",), 1),
        "HAVESPACE": Command("cmd_havespace", ("string", "number")),  # 2.5
        "PUTSCRIPT": Command("cmd_putscript", ("string", "string")),  # 2.6
        "LISTSCRIPTS": Command("cmd_listscripts"),  # 2.7
        "SETACTIVE": Command("cmd_setactive", ("string",)),  # 2.8
        "GETSCRIPT": Command("cmd_getscript", ("string",)),  # 2.9
        "DELETESCRIPT": Command("cmd_deletescript", ("string",)),  # 2.10
        "RENAMESCRIPT": Command("cmd_renamescript", ("string", "string")),  # 2.11
        "CHECKSCRIPT": Command("cmd_checkscript", ("string",)),  # 2.12
        "UNAUTHENTICATE": Command("cmd_unauthenticate"),  # 2.14.1
    },
}

MAX_LINE = 8192  # a command line without its literals
MAX_STRING = 8192  # a literal that is not a script (a name, a SASL response)
MAX_DISCARD = 64 * 1024 * 1024  # an over-long literal up to this is read and dropped; beyond: BYE
MAX_TOKENS = 8  # no command has more than three arguments
MAX_PENDING_INPUT = 1 << 20  # input received while a command runs, before the client is cut off
SCRIPT_COMMANDS = (b"PUTSCRIPT", b"CHECKSCRIPT")
SASL_MECHANISMS = ("PLAIN",)
GREETING_TEXT = "mailstack ManageSieve ready"


class ManageSieveSession(ScriptCommands, LineReceiver, TimeoutMixin):
    timeOut = 1800  # idle seconds before BYE (IMAP's autologout: clients keep a connection open)
    delimiter = b"\n"  # a bare LF ends a line too; the CR before it is dropped
    MAX_LENGTH = MAX_LINE

    def __init__(self, context, listener, interface):
        self.context, self.listener, self.interface = context, listener, interface
        limits = getattr(context.config, "sieve_limits", None) or {}
        self.max_script_size = limits.get("max_script_size", DEFAULT_MAX_SIZE)
        self.max_scripts = limits.get("max_scripts", DEFAULT_MAX_SCRIPTS)
        self.secure = listener.tls == "implicit"
        self.peer = "?"
        self.lost = self.closing = False
        self.tokens: list = []  # the command read so far (it spans lines when it has literals)
        self.too_long: SieveNo | None = None  # a literal over its limit was dropped: the answer
        self.literal_left = 0
        self.literal: bytearray | None = None  # None while dropping an over-long literal
        self.held = 0  # octets received while paused
        self.commands = 0
        self.pacer = CommandPacer(context.config.command_rate, context.config.command_burst, reactor)
        self.exchange: sasl.Exchange | None = None  # an AUTHENTICATE awaiting the client's response
        self.failures = sasl.FailureCounter()
        self.user: str | None = None
        self.scripts: ScriptStore | None = None  # set in the authenticated state
        self.logout = None

    @property
    def state(self) -> str:
        return AUTH if self.scripts is not None else NONAUTH

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self):
        self.peer = logcontext.peer_of(self.transport)
        self.send_capabilities(GREETING_TEXT)  # RFC 5804 1.7: the greeting is the capabilities
        self.setTimeout(self.timeOut)

    def connectionLost(self, reason):
        self.lost = self.closing = True
        self.setTimeout(None)
        self.release()

    def timeoutConnection(self):
        log.info("managesieve autologout of {peer}", peer=self.peer)
        self.bye("disconnected for inactivity")

    def release(self) -> None:
        if self.logout is not None:
            logout, self.logout = self.logout, None
            logout()

    def bye(self, text: str, code: bytes | None = None) -> None:
        """RFC 5804 1.3: BYE, then the server closes the connection."""
        self.send(wire.response(b"BYE", text, code))
        self.closing = True
        self.transport.loseConnection()

    # -- replies ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if not self.lost:
            self.transport.write(data)

    def ok(self, text: str | None = None, code: bytes | None = None) -> None:
        self.send(wire.response(b"OK", text, code))

    def view(self) -> SessionView:
        delivery = getattr(self.context.config, "sieve", None) or {}  # [sieve] of mailstack.sieve.delivery
        return SessionView(self.can_starttls(), self.login_allowed(), self.user, delivery.get("max_redirects"))

    def send_capabilities(self, text: str | None = None) -> None:
        self.send(b"".join(line + b"\r\n" for line in capability_lines(self.view())))
        self.ok(text)

    # -- input -----------------------------------------------------------------------------

    def dataReceived(self, data):
        if self.closing:
            return
        if self.paused:
            self.held += len(data)
            if self.held > MAX_PENDING_INPUT:
                log.warn("managesieve client {peer} sent too much input without waiting", peer=self.peer)
                self.bye("too much pipelined input")
                return
        super().dataReceived(data)

    def lineLengthExceeded(self, line):
        self.bye(f"command line too long (at most {MAX_LINE} octets without literals)")

    def lineReceived(self, line):
        if self.closing:
            return
        self.resetTimeout()
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            fragment = wire.parse_fragment(line, first=not self.tokens and self.too_long is None)
        except wire.SyntaxProblem as e:
            self.end_command()
            self.reply_no(SieveNo(str(e)))
            return
        self.tokens += fragment.tokens
        if len(self.tokens) > MAX_TOKENS:
            self.end_command()
            self.reply_no(SieveNo("too many arguments"))
            return
        if fragment.literal is None:
            tokens, too_long = self.tokens, self.too_long
            self.end_command()
            self.run(tokens, too_long)
        else:
            self.start_literal(fragment.literal)

    def start_literal(self, size: int) -> None:
        first = self.tokens[0] if self.tokens else None
        script = self.exchange is None and isinstance(first, wire.Atom) and first.upper() in SCRIPT_COMMANDS
        limit = self.max_script_size if script else MAX_STRING
        if size > limit + MAX_DISCARD:
            self.bye(f"literal of {size} octets refused")
            return
        if size > limit:
            self.literal = None
            self.too_long = (SieveNo(f"the script is too large (at most {limit} octets)", b"QUOTA/MAXSIZE") if script
                             else SieveNo(f"string too long (at most {limit} octets)"))
        else:
            self.literal = bytearray()
        self.literal_left = size
        self.tokens.append(None)  # where the literal goes
        if size == 0:
            self.end_literal(b"")
        else:
            self.setRawMode()

    def rawDataReceived(self, data):
        if self.closing:
            return
        self.resetTimeout()
        take = data[: self.literal_left]
        self.literal_left -= len(take)
        if self.literal is not None:
            self.literal += take
        if self.literal_left == 0:
            self.end_literal(data[len(take):])

    def end_literal(self, rest: bytes) -> None:
        self.tokens[-1] = bytes(self.literal) if self.literal is not None else b""
        self.literal = None
        self.setLineMode(rest)

    def end_command(self) -> None:
        self.tokens, self.too_long, self.literal, self.literal_left = [], None, None, 0

    # -- running a command -----------------------------------------------------------------

    def run(self, tokens: list, too_long: SieveNo | None) -> None:
        try:
            if too_long is not None:
                raise too_long
            result = self.sasl_response(tokens) if self.exchange is not None else self.command(tokens)
        except SieveNo as e:
            self.reply_no(e)
            return
        except Exception:
            log.failure("managesieve command failed for {peer}", peer=self.peer)
            self.reply_no(SieveNo("internal server error, try again later", b"TRYLATER"))
            return
        if isinstance(result, defer.Deferred):
            finished: list = []
            result.addErrback(self.failed)
            result.addBoth(finished.append)
            if not finished:
                self.paused, self.held = True, 0
                result.addBoth(self.command_done)

    def reply_no(self, e: SieveNo) -> None:
        """The one place a failed command is answered (RFC 5804 1.3)."""
        self.send(wire.response(b"NO", e.text, e.code))

    def failed(self, failure) -> None:
        if failure.check(SieveNo):
            self.reply_no(failure.value)
            return
        log.failure("managesieve command failed for {peer}", failure, peer=self.peer)
        metrics.store_error("managesieve")  # the scripts' directory could not be read or written
        self.reply_no(SieveNo("internal server error, try again later", b"TRYLATER"))

    def command_done(self, _):
        self.paused = False
        if not self.closing:
            self.setTimeout(self.timeOut)
            LineReceiver.dataReceived(self, b"")  # what arrived meanwhile

    def command(self, tokens: list):
        self.commands += 1
        limit = self.context.config.max_commands
        if limit and self.commands > limit:
            log.warn("managesieve session of {peer} closed: too many commands", peer=self.peer)
            self.bye("too many commands in one session")
            return None
        wait = self.pacer.take()
        if wait:  # over the command rate (mailstack.pacing): run() holds the input behind it
            return task.deferLater(reactor, wait, self.dispatch, tokens)
        return self.dispatch(tokens)

    def dispatch(self, tokens: list):
        if self.closing:
            return None
        if not tokens or not isinstance(tokens[0], wire.Atom):
            raise SieveNo("expected a command name")
        name = tokens[0].upper().decode("ascii")
        command = COMMANDS[self.state].get(name)
        if command is None:
            if any(name in table for table in COMMANDS.values()):
                raise SieveNo(f"{name} is not allowed in the {self.state} state")
            raise SieveNo("unknown command")
        return getattr(self, command.handler)(*arguments(name, command, tokens[1:]))

    # -- commands of either state ----------------------------------------------------------

    def cmd_capability(self):
        """RFC 5804 2.4."""
        self.send_capabilities()

    def cmd_logout(self):
        """RFC 5804 2.3: OK, then the server closes the connection."""
        self.ok("logout complete")
        self.closing = True
        self.transport.loseConnection()

    def cmd_noop(self, tag: bytes | None = None):
        """RFC 5804 2.13: the tag comes back in a TAG response code."""
        self.ok("done", None if tag is None else b"TAG " + wire.string(tag))

    # -- non-authenticated state -----------------------------------------------------------

    def can_starttls(self) -> bool:
        return (self.listener.tls == "starttls" and not self.secure and self.state == NONAUTH
                and self.context.tls is not None)

    def login_allowed(self) -> bool:
        return sasl.login_allowed(self.secure, self.peer, self.context.config.plaintext_on_loopback)

    def cmd_starttls(self):
        """RFC 5804 2.2: after the handshake the capabilities again (SASL may list more now).
        Input pipelined after STARTTLS is dropped: it arrived in the clear."""
        if not self.can_starttls():
            raise SieveNo("STARTTLS is not available" + (" (TLS is already active)" if self.secure else ""))
        self.ok("begin TLS negotiation now")
        self.clearLineBuffer()
        self.end_command()
        self.secure = True
        self.transport.startTLS(self.context.tls)
        self.send_capabilities()  # written through TLS, after the handshake

    def cmd_authenticate(self, mechanism: bytes, initial: bytes | None = None):
        """RFC 5804 2.1 with SASL PLAIN (RFC 4616); the initial response is optional."""
        if mechanism.upper().decode("ascii", "replace") not in SASL_MECHANISMS:
            raise SieveNo("unsupported authentication mechanism (use PLAIN)")
        if not self.login_allowed():
            raise SieveNo("authentication needs TLS: use STARTTLS first", b"ENCRYPT-NEEDED")
        try:
            exchange = sasl.start(mechanism.decode("ascii"), None, SASL_MECHANISMS)
        except sasl.SaslError as e:
            raise SieveNo(str(e)) from None
        return self.sasl_step(exchange, initial)  # an initial response is the first response

    def sasl_response(self, tokens: list):
        """The client's answer to a challenge: one string; ``"*"`` cancels (RFC 5804 2.1)."""
        exchange, self.exchange = self.exchange, None
        if len(tokens) != 1 or not is_string(tokens[0]):
            raise SieveNo("expected the SASL response as one string")
        return self.sasl_step(exchange, tokens[0])

    def sasl_step(self, exchange: sasl.Exchange, response: bytes | None):
        try:
            if response is not None:
                exchange.respond(response)
        except sasl.SaslError as e:
            if e.kind == "identity":
                return self.refused(exchange.credentials.authcid, str(e))
            raise SieveNo(str(e)) from None
        if exchange.challenge is not None:
            self.exchange = exchange
            self.send(wire.string(base64.b64encode(exchange.challenge)) + b"\r\n")
            return None
        creds = exchange.credentials
        d = sasl.authenticate(self.context.login_gate, creds.authcid, creds.password, self.peer, self.listener.key,
                              self.interface)
        d.addCallbacks(self.authenticated, self.login_failed, errbackArgs=(creds.authcid,))
        return d

    def refused(self, user: bytes, why: str) -> None:
        log.warn("managesieve authentication failed for {user} from {peer} ({why})", user=sasl.shown(user),
                 peer=self.peer, why=why)
        if not self.failures.failed():
            raise SieveNo("authentication failed")
        self.reply_no(SieveNo("authentication failed"))
        self.bye("too many authentication failures")

    def login_failed(self, failure, user: bytes):
        if failure.check(sasl.LoginRefused):
            return self.refused(user, "bad user name or password")
        if failure.check(sasl.LoginThrottled):
            raise SieveNo(str(failure.value), b"TRYLATER")
        if failure.check(sasl.LoginUnavailable):
            raise SieveNo("authentication is unavailable, try again later", b"TRYLATER")
        return failure

    def authenticated(self, result: sasl.LoginResult):
        account = result.avatar
        d = threads.deferToThread(account.user_dir)

        def opened(user_dir: str):
            if self.lost:
                result.logout()
                return
            self.user, self.logout = account.address, result.logout
            self.scripts = ScriptStore(user_dir, self.max_script_size, self.max_scripts, self.context.config.store_fsync)
            logcontext.set_user(self.peer, account.address)
            log.info("managesieve login {user} from {peer}", user=account.address, peer=self.peer)
            self.ok("logged in")

        def unusable(failure):
            result.logout()
            if failure.check(UnknownUser):
                log.warn("managesieve account unusable from {peer}: {error}", peer=self.peer,
                         error=failure.getErrorMessage())
                raise SieveNo("this account has no usable mailbox")
            return failure

        return d.addCallbacks(opened, unusable)

    # -- authenticated state ---------------------------------------------------------------

    def cmd_unauthenticate(self):
        """RFC 5804 2.14.1: back to the non-authenticated state; TLS stays."""
        log.info("managesieve unauthenticate {user} from {peer}", user=self.user, peer=self.peer)
        self.release()
        self.user, self.scripts = None, None
        self.ok()


def is_string(token) -> bool:
    return isinstance(token, bytes) and not isinstance(token, wire.Atom)


def arguments(name: str, command: Command, given: list) -> list:
    """Check ``given`` against the command's argument kinds (RFC 5804 section 2's syntax)."""
    least = len(command.args) - command.optional
    if not least <= len(given) <= len(command.args):
        raise SieveNo(f"wrong number of arguments for {name}")
    for kind, value in zip(command.args, given):
        ok = isinstance(value, wire.Number) if kind == "number" else is_string(value)
        if not ok:
            raise SieveNo(f"{name}: expected a {kind}" + (" (quoted or a literal)" if kind == "string" else ""))
    return given
