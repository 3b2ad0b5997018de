"""One POP3 session: RFC 1939 with CAPA, RESP-CODES and PIPELINING (RFC 2449), STLS (RFC 2595),
SASL PLAIN (RFC 5034, RFC 4616) and the SYS/AUTH response codes (RFC 3206).

Commands are dispatched through :data:`COMMANDS`, one table per state; a command of the other
state is refused with ``-ERR``, and so is anything the table does not know.  Handlers raise
:class:`~mailstack.pop3.errors.Pop3Error`, which the session turns into ``-ERR [CODE] text``
in one place (:meth:`POP3Session.error`), whether raised at once or by a Deferred.

Lines are read with ``LineReceiver``, which pauses while a command waits on a thread, so a
client may pipeline (RFC 2449 section 6.6) and the replies keep their order.  Bad input never
raises: it gets ``-ERR``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from twisted.internet import defer, reactor, task, threads
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin

from mailstack import logcontext
from mailstack import metrics, sasl
from mailstack.errors import UnknownUser
from mailstack.pacing import CommandPacer
from mailstack.pop3.capabilities import SessionView, capability_lines
from mailstack.pop3.errors import AUTH, IN_USE, SYS_PERM, SYS_TEMP, Pop3Error
from mailstack.pop3.maildrop import IMaildrop, Maildrop, SeenQueue
from mailstack.pop3.transfer import Retriever

log = Logger()

AUTHORIZATION, TRANSACTION = "AUTHORIZATION", "TRANSACTION"


@dataclass(frozen=True)
class Command:
    """A command's handler (a :class:`POP3Session` method) and what it takes: ``words``
    (least, most) are space-separated arguments of at most 40 octets each (RFC 2449
    section 4), passed one by one; ``None`` hands the handler the raw rest of the line."""

    handler: str
    words: tuple[int, int] | None = (0, 0)


#: state -> command -> Command (RFC 1939 sections 4-7, RFC 2449 5, RFC 2595 4, RFC 5034 4).
COMMANDS: dict[str, dict[str, Command]] = {
    AUTHORIZATION: {
        "CAPA": Command("cmd_capa"),
        "STLS": Command("cmd_stls"),
        "USER": Command("cmd_user", None),  # the address is checked by the handler
        "PASS": Command("cmd_pass", None),  # RFC 1939 7: the rest of the line, spaces and all
        "AUTH": Command("cmd_auth", None),
        "QUIT": Command("cmd_quit_authorization", None),
    },
    TRANSACTION: {
        "CAPA": Command("cmd_capa"),
        "STAT": Command("cmd_stat"),
        "LIST": Command("cmd_list", (0, 1)),
        "UIDL": Command("cmd_uidl", (0, 1)),
        "RETR": Command("cmd_retr", (1, 1)),
        "TOP": Command("cmd_top", (2, 2)),
        "DELE": Command("cmd_dele", (1, 1)),
        "RSET": Command("cmd_rset"),
        "NOOP": Command("cmd_noop"),
        "QUIT": Command("cmd_quit_transaction", None),
    },
}

MAX_COMMAND = 255  # RFC 2449 section 4: a command line, CRLF included, is at most 255 octets
MAX_ARGUMENT = 40  # RFC 2449 section 4: each argument at most 40 octets (PASS excepted)
MAX_SASL_LINE = 8192  # a SASL response line is no command; PLAIN needs far less than this
MAX_PENDING_INPUT = 1 << 20  # pipelined input not yet processed, before the client is cut off
SASL_MECHANISMS = ("PLAIN",)
INTERNAL_ERROR = Pop3Error("internal server error", SYS_TEMP)


def words(rest: bytes, least: int, most: int) -> list[bytes]:
    """RFC 2449 sections 3 and 4: arguments separated by one space, each at most 40 octets."""
    args = rest.split(b" ") if rest else []
    if not least <= len(args) <= most:
        raise Pop3Error("wrong number of arguments")
    if any(not a or len(a) > MAX_ARGUMENT for a in args):
        raise Pop3Error("bad argument")
    return args


class POP3Session(LineReceiver, TimeoutMixin):
    timeOut = 600  # RFC 1939 section 3: an autologout timer of at least 10 minutes
    delimiter = b"\n"  # a bare LF ends a line too; the CR before it is dropped
    MAX_LENGTH = MAX_COMMAND - 1  # LineReceiver counts without the delimiter

    def __init__(self, context, listener):
        self.context, self.listener = context, listener
        self.secure = listener.tls == "implicit"
        self.peer = "?"
        self.lost = self.closing = False
        self.unread = 0  # bytes received and not yet taken as a line (pipelined input)
        self.discarding = False  # the rest of an over-long line is still to come
        self.refeed: bytes | None = None  # input after an over-long line, to be read next
        self.commands = 0
        self.pacer = CommandPacer(context.config.command_rate, context.config.command_burst, reactor)
        self.user: bytes | None = None  # USER given, PASS awaited
        self.exchange: sasl.Exchange | None = None  # an AUTH exchange awaiting the client's line
        self.failures = sasl.FailureCounter()
        self.held: Maildrop | None = None  # locked by this session (RFC 1939 section 8)
        self.logout = None
        self.maildrop: Maildrop | None = None  # set in the TRANSACTION state
        self.retriever: Retriever | None = None
        self.seen: SeenQueue | None = None
        self.updating = False

    @property
    def state(self) -> str:
        return TRANSACTION if self.maildrop is not None else AUTHORIZATION

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self):
        self.peer = logcontext.peer_of(self.transport)  # the address, carrying the session's log id
        self.ok("mailstack POP3 server ready")
        self.setTimeout(self.timeOut)

    def connectionLost(self, reason):
        self.lost = self.closing = True
        self.setTimeout(None)
        if self.retriever is not None:
            self.retriever.stop()
        if self.seen is not None and not self.updating:
            self.seen.flush_final()
        if not self.updating:
            self.release()  # RFC 1939 section 6: no QUIT, no UPDATE: nothing is deleted

    def timeoutConnection(self):
        log.info("pop3 autologout of {peer}", peer=self.peer)
        if self.retriever is not None and self.retriever.streaming:
            self.transport.abortConnection()  # a client that stopped reading: nothing more can reach it
            return
        self.close(Pop3Error("autologout: idle for too long"))

    def close(self, last: Pop3Error | None = None) -> None:
        if last is not None:
            self.error(last)
        self.closing = True
        self.transport.loseConnection()

    def release(self) -> None:
        if self.held is not None:
            self.held.unlock()
            self.held = None
        if self.logout is not None:
            logout, self.logout = self.logout, None
            logout()

    # -- replies ---------------------------------------------------------------------------

    def reply(self, line: bytes) -> None:
        if not self.lost:
            self.transport.write(line + b"\r\n")

    def ok(self, text: str = "") -> None:
        self.reply(("+OK " + text if text else "+OK").encode("utf-8"))

    def error(self, e: Pop3Error) -> None:
        """The one place a failed command is answered: ``-ERR [CODE] text`` (RFC 2449 8)."""
        self.reply(e.line())

    def multiline(self, first: str, lines) -> None:
        if not self.lost:
            body = [b"+OK " + first.encode() + b"\r\n"] + [line + b"\r\n" for line in lines] + [b".\r\n"]
            self.transport.write(b"".join(body))

    # -- input: lines, limits, pipelining --------------------------------------------------

    def dataReceived(self, data):
        if self.closing:
            return
        if self.discarding:
            end = data.find(b"\n")
            if end < 0:
                return
            data, self.discarding = data[end + 1 :], False
        self.unread += len(data)
        if self.unread > MAX_PENDING_INPUT:
            log.warn("pop3 client {peer} sent too much input without waiting", peer=self.peer)
            self.close(Pop3Error("too much pipelined input"))
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Hand input to ``LineReceiver``, and after an over-long line the input behind it
        (back into its buffer before anything newer, even while paused)."""
        super().dataReceived(data)
        while self.refeed is not None and not self.closing:
            rest, self.refeed = self.refeed, None
            super().dataReceived(rest)

    def lineLengthExceeded(self, line):
        """RFC 2449 section 4 limits a line; one too long gets -ERR and the session goes on.
        ``line`` is all the input held: the over-long line and whatever follows it."""
        self.unread -= len(line)
        if self.exchange is not None:
            self.end_exchange()
            self.error(Pop3Error("authentication cancelled: response line too long"))
        else:
            self.error(Pop3Error(f"command line too long (at most {MAX_COMMAND} octets, RFC 2449 section 4)"))
        end = line.find(b"\n")
        if end < 0:
            self.discarding = True
        elif end + 1 < len(line):
            self.refeed = line[end + 1 :]
            self.unread += len(self.refeed)

    def lineReceived(self, line):
        self.unread -= len(line) + 1
        if self.closing:
            return
        self.resetTimeout()
        self.run(line[:-1] if line.endswith(b"\r") else line)

    def run(self, line: bytes) -> None:
        try:
            result = self.sasl_response(line) if self.exchange is not None else self.command(line)
        except Pop3Error as e:
            self.error(e)
            return
        except Exception:
            log.failure("pop3 command failed for {peer}", peer=self.peer)
            self.error(INTERNAL_ERROR)
            return
        if isinstance(result, defer.Deferred):
            finished: list = []
            result.addErrback(self.failed)
            result.addBoth(finished.append)
            if not finished:  # still running (``called`` is not enough: it may wait on another)
                # The idle timer keeps running: a client that stops reading mid-RETR must not
                # hold the maildrop lock for ever.  Each chunk sent counts as activity.
                self.paused = True
                result.addBoth(self.command_done)

    def failed(self, failure) -> None:
        if failure.check(Pop3Error):
            self.error(failure.value)
            return
        log.failure("pop3 command failed for {peer}", failure, peer=self.peer)
        if (self.retriever is not None and self.retriever.streaming) or self.closing:
            self.close()  # mid-response: no -ERR can follow, only a close
        else:
            self.error(INTERNAL_ERROR)

    def command_done(self, _):
        self.paused = False
        if not self.closing:
            self.setTimeout(self.timeOut)
            self.feed(b"")

    def command(self, line: bytes):
        self.commands += 1
        limit = self.context.config.max_commands
        if limit and self.commands > limit:
            log.warn("pop3 session of {peer} closed: too many commands", peer=self.peer)
            self.close(Pop3Error("too many commands in one session", SYS_PERM))
            return None
        wait = self.pacer.take()
        if wait:  # over the command rate (mailstack.pacing): run() holds the input behind it
            return task.deferLater(reactor, wait, self.dispatch, line)
        return self.dispatch(line)

    def dispatch(self, line: bytes):
        if self.closing:
            return None
        keyword, _, rest = line.partition(b" ")
        name = keyword.upper().decode("ascii", "replace")
        command = COMMANDS[self.state].get(name)
        if command is None:
            if any(name in table for table in COMMANDS.values()):
                raise Pop3Error(f"{name} is not valid in the {self.state} state")
            raise Pop3Error("unknown command")
        handler = getattr(self, command.handler)
        if command.words is None:
            return metrics.pop3_command(name, handler, rest)
        return metrics.pop3_command(name, handler, *words(rest, *command.words))

    # -- both states -----------------------------------------------------------------------

    def cmd_capa(self):
        """RFC 2449 section 5; the list is :data:`mailstack.pop3.capabilities.CAPABILITIES`."""
        view = SessionView(can_stls=self.can_stls(), login_allowed=self.login_allowed())
        self.multiline("capability list follows", capability_lines(view))

    def cmd_quit_authorization(self, rest):
        self.ok("mailstack POP3 server signing off")
        self.close()

    def cmd_quit_transaction(self, rest):
        return self.update()

    # -- AUTHORIZATION state ---------------------------------------------------------------

    def can_stls(self) -> bool:
        return (self.listener.tls == "starttls" and not self.secure and self.state == AUTHORIZATION
                and self.context.tls is not None)

    def login_allowed(self) -> bool:
        return sasl.login_allowed(self.secure, self.peer, self.context.config.plaintext_on_loopback)

    def require_login_allowed(self) -> None:
        if not self.login_allowed():
            raise Pop3Error("plaintext authentication is not allowed without TLS: use STLS first", AUTH)

    def cmd_stls(self):
        """RFC 2595 section 4.  Input pipelined after STLS is discarded: it arrived in the clear."""
        if not self.can_stls():
            raise Pop3Error("STLS is not available" + (" (TLS is already active)" if self.secure else ""))
        self.ok("begin TLS negotiation")
        self.clearLineBuffer()
        self.unread, self.discarding, self.refeed = 0, False, None
        self.user = None
        self.secure = True
        self.transport.startTLS(self.context.tls)

    def cmd_user(self, rest):
        """RFC 1939 section 7."""
        self.require_login_allowed()
        if not rest or b" " in rest.strip():
            raise Pop3Error("USER needs one argument: the account address")
        self.user = rest.strip()
        self.ok("send PASS")

    def cmd_pass(self, rest):
        """RFC 1939 section 7: the rest of the line is the password (it may contain spaces)."""
        if self.user is None:
            raise Pop3Error("USER first")
        user, self.user = self.user, None
        self.require_login_allowed()
        return self.login(user, rest, "USER/PASS")

    def cmd_auth(self, rest):
        """RFC 5034: AUTH PLAIN, with or without the initial response (section 4).  Plain
        ``AUTH`` lists the mechanisms, as many clients expect."""
        if not rest:
            self.multiline("SASL mechanisms follow", [b"PLAIN"] if self.login_allowed() else [])
            return None
        args = rest.split(b" ")
        if len(args) > 2 or not all(args):
            raise Pop3Error("AUTH mechanism [initial-response]")
        try:
            exchange = sasl.start(args[0].decode("ascii", "replace"), None, SASL_MECHANISMS)
        except sasl.SaslError:
            raise Pop3Error("unsupported SASL mechanism (use PLAIN)") from None
        self.require_login_allowed()
        return self.sasl_step(exchange, args[1] if len(args) == 2 else None)

    def sasl_response(self, line: bytes):
        """A client line inside an AUTH exchange; ``*`` cancels it (RFC 5034 section 4)."""
        exchange = self.exchange
        self.end_exchange()
        return self.sasl_step(exchange, line)

    def end_exchange(self) -> None:
        self.exchange = None
        self.MAX_LENGTH = MAX_COMMAND - 1

    def sasl_step(self, exchange: sasl.Exchange, response: bytes | None):
        """Feed the client's response (if any), then challenge again or log in."""
        if response is not None:
            try:
                exchange.respond(response)
            except sasl.SaslError as e:
                if e.kind == "identity":  # acting as someone else: a failed login
                    return self.refused(exchange.credentials.authcid, "AUTH PLAIN", str(e))
                raise Pop3Error(str(e)) from None
        if exchange.challenge is not None:
            self.exchange = exchange
            self.MAX_LENGTH = MAX_SASL_LINE - 1
            self.reply(b"+ " + base64.b64encode(exchange.challenge))
            return None
        creds = exchange.credentials
        return self.login(creds.authcid, creds.password, "AUTH PLAIN")

    def login(self, user: bytes, password: bytes, method: str) -> defer.Deferred:
        d = sasl.authenticate(self.context.login_gate, user, password, self.peer, self.listener.key, IMaildrop)
        d.addCallbacks(self.authenticated, self.login_failed, callbackArgs=(method,), errbackArgs=(user, method))
        return d

    def refused(self, user: bytes, method: str, why: str) -> None:
        log.warn("pop3 authentication failed for {user} from {peer} ({method}: {why})",
                 user=sasl.shown(user), peer=self.peer, method=method, why=why)
        failed = Pop3Error("authentication failed", AUTH)
        if not self.failures.failed():
            raise failed
        self.error(failed)
        self.close(Pop3Error("too many authentication failures"))

    def login_failed(self, failure, user: bytes, method: str):
        if failure.check(sasl.LoginRefused):
            return self.refused(user, method, "bad user name or password")
        if failure.check(sasl.LoginThrottled):
            raise Pop3Error(str(failure.value), SYS_TEMP)  # RFC 3206 section 4: temporary, try later
        if failure.check(sasl.LoginUnavailable):
            raise Pop3Error("authentication is unavailable, try again later", SYS_TEMP)
        return failure

    def authenticated(self, result: sasl.LoginResult, method: str):
        maildrop = result.avatar
        if self.lost:
            result.logout()
            return None
        if not maildrop.lock():
            result.logout()
            log.info("pop3 login for {user} from {peer} refused: maildrop in use", user=maildrop.address, peer=self.peer)
            raise Pop3Error("the maildrop is in use by another POP3 session", IN_USE)
        self.held, self.logout = maildrop, result.logout
        d = threads.deferToThread(maildrop.load)
        d.addCallbacks(self.opened, self.open_failed, callbackArgs=(maildrop, method))
        return d

    def opened(self, _, maildrop: Maildrop, method: str) -> None:
        if self.lost:
            self.release()
            return
        self.maildrop = maildrop
        logcontext.set_user(self.peer, maildrop.address)
        self.retriever, self.seen = Retriever(self, maildrop), SeenQueue(maildrop)
        count, size = maildrop.stat()
        log.info("pop3 login {user} from {peer} ({method}, {count} messages)", user=maildrop.address,
                 peer=self.peer, method=method, count=count)
        self.ok(f"maildrop has {count} messages ({size} octets)")

    def open_failed(self, failure):
        self.release()
        if failure.check(UnknownUser):
            log.warn("pop3 maildrop unusable from {peer}: {error}", peer=self.peer, error=failure.getErrorMessage())
            raise Pop3Error("this account has no usable maildrop", SYS_PERM)
        log.failure("pop3 cannot open maildrop for {peer}", failure, peer=self.peer)
        metrics.store_error("pop3")
        raise Pop3Error("cannot open the maildrop now, try again later", SYS_TEMP)

    # -- TRANSACTION state -----------------------------------------------------------------

    def number(self, arg: bytes) -> int:
        """A message number of the snapshot -> its 0-based index."""
        n = int(arg) if arg.isdigit() else 0
        if not 1 <= n <= len(self.maildrop.messages):
            raise Pop3Error("no such message")
        if n - 1 in self.maildrop.deleted:
            raise Pop3Error(f"message {n} already deleted")
        return n - 1

    def cmd_stat(self):
        """RFC 1939 section 5; messages marked deleted are not counted."""
        self.ok("%d %d" % self.maildrop.stat())

    def cmd_list(self, *args):
        count, size = self.maildrop.stat()
        self.per_message(args, lambda i: self.maildrop.messages[i].size, f"{count} messages ({size} octets)")

    def cmd_uidl(self, *args):
        """RFC 1939 section 7: as ``[pop3] uidl_format`` makes them (mailstack.pop3.uidl)."""
        self.per_message(args, self.maildrop.uidl, "unique-id listing follows")

    def per_message(self, args, value, heading: str) -> None:
        """LIST and UIDL: one message's line, or a multi-line listing of every live message."""
        if args:
            i = self.number(args[0])
            self.ok(f"{i + 1} {value(i)}")
            return
        self.multiline(heading, (f"{i + 1} {value(i)}".encode() for i in self.maildrop.live()))

    def cmd_dele(self, arg):
        """RFC 1939 section 5: only marked here; removed at QUIT (section 6)."""
        i = self.number(arg)
        self.maildrop.deleted.add(i)
        self.ok(f"message {i + 1} deleted")

    def cmd_rset(self):
        self.maildrop.deleted.clear()
        count, size = self.maildrop.stat()
        self.ok(f"maildrop has {count} messages ({size} octets)")

    def cmd_noop(self):
        self.ok()

    def cmd_retr(self, arg):
        """RFC 1939 section 5.  The message becomes \\Seen once sent in full."""
        return self.retriever.send(self.number(arg), None)

    def cmd_top(self, arg, lines):
        """RFC 1939 section 7.  TOP leaves the \\Seen flag alone."""
        if not lines.isdigit():
            raise Pop3Error("TOP msg n: n must be a number of lines")
        return self.retriever.send(self.number(arg), int(lines))

    # -- UPDATE state ----------------------------------------------------------------------

    def update(self) -> defer.Deferred:
        """RFC 1939 section 6: remove the messages marked deleted, then say goodbye."""
        self.updating = True
        maildrop = self.maildrop
        d = self.seen.settled()
        d.addCallback(lambda _: threads.deferToThread(maildrop.commit))

        def done(removed):
            log.info("pop3 logout {user} from {peer}: {removed} messages deleted", user=maildrop.address,
                     peer=self.peer, removed=removed)
            self.release()
            self.ok(f"mailstack POP3 server signing off ({removed} messages deleted)")

        def failed(failure):
            log.failure("pop3 UPDATE failed for {user}", failure, user=maildrop.address)
            metrics.store_error("pop3")
            self.release()
            self.error(Pop3Error("some deleted messages were not removed", SYS_TEMP))

        def finally_(_):
            self.updating = False
            self.close()

        d.addCallbacks(done, failed)
        d.addBoth(finally_)
        return d
