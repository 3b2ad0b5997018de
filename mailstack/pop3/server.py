"""The POP3 server: RFC 1939 with CAPA, RESP-CODES and PIPELINING (RFC 2449), STLS (RFC 2595),
SASL PLAIN (RFC 5034, RFC 4616) and the SYS/AUTH response codes (RFC 3206).

Built on :class:`twisted.mail.pop3.POP3` (its ``IMailbox`` avatar interface, its responses and
its timeout handling), with the command loop, authentication and message streaming replaced:
Twisted's own loop logs a traceback for bad input, advertises capabilities no RFC defines,
doubles the CR of CRLF-stored messages and misses dot-stuffing across read boundaries.

The maildrop is the user's INBOX in the Maildir store.  A session works on the snapshot taken
at login (RFC 1939 section 5: message numbers do not change during a session); deletions happen
only at QUIT (the UPDATE state, RFC 1939 section 6).  Every store call runs in the reactor's
thread pool; a message is read in chunks from a thread and written under flow control, so a
large message neither blocks the reactor nor is held in memory.
"""

from __future__ import annotations

import binascii

from twisted.cred import credentials, error as cred_error
from twisted.internet import defer, protocol, reactor, threads
from twisted.logger import Logger
from twisted.mail import pop3
from zope.interface import implementer

from mailstack.config import is_loopback
from mailstack.flow import Flow
from mailstack.throttle import LoginThrottled
from mailstack.errors import MessageGone, UnknownUser
from mailstack.pop3.capabilities import SessionView, capability_lines

log = Logger()

#: Sent by the listener when a connection limit turns a client away (RFC 3206 section 4).
BUSY = b"-ERR [SYS/TEMP] too many connections, try again later\r\n"

MAX_COMMAND = 255  # RFC 2449 section 4: a command line, CRLF included, is at most 255 octets
MAX_ARGUMENT = 40  # RFC 2449 section 4: each argument at most 40 octets (PASS excepted below)
MAX_SASL_LINE = 8192  # a SASL response line is no command; PLAIN needs far less than this
MAX_PENDING_INPUT = 1 << 20  # pipelined input not yet processed, before the client is cut off
MAX_AUTH_FAILURES = 3
READ_CHUNK = 128 * 1024
SEEN_DELAY = 1.0  # seconds a RETRieved message may wait for its \Seen flag (see _mark_seen)
AUTHORIZATION, TRANSACTION = "AUTHORIZATION", "TRANSACTION"

#: Maildrops with a POP3 session in this process: (store root, address).  RFC 1939 section 8
#: lets a server lock the maildrop for the session; a second login gets [IN-USE] (RFC 2449 8.1.2).
_LOCKED: set[tuple[str, str]] = set()


# -- the maildrop ------------------------------------------------------------------------------


@implementer(pop3.IMailbox)
class Maildrop:
    """One session's view of a user's INBOX: the snapshot taken at :meth:`load`.

    Message indexes are 0-based positions in that snapshot.  Methods marked *blocking* touch
    the disk and run in a thread.  The ``IMailbox`` methods make this usable by Twisted's own
    ``POP3`` too; :class:`POP3Server` uses the richer methods.
    """

    loginDelay = 0
    messageExpiration = None

    def __init__(self, store, address: str):
        self.store, self.address = store, address
        self.folder = None
        self.uidvalidity = 0
        self.messages: tuple = ()
        self.deleted: set[int] = set()

    def load(self) -> None:
        """*Blocking.*  Take the snapshot the session works on."""
        self.folder = self.store.mailbox(self.address).folder("INBOX")
        snapshot = self.folder.snapshot()
        self.uidvalidity, self.messages = snapshot.uidvalidity, snapshot.messages

    def uidl(self, index: int) -> str:
        """RFC 1939 section 7: stable for the message's life, since UIDs never change within
        one UIDVALIDITY, and the same whichever protocol or process looks."""
        return f"{self.uidvalidity}.{self.messages[index].uid}"

    def live(self) -> list[int]:
        return [i for i in range(len(self.messages)) if i not in self.deleted]

    def stat(self) -> tuple[int, int]:
        live = self.live()
        return len(live), sum(self.messages[i].size for i in live)

    def open_start(self, uid: int, chunk: int):
        """*Blocking.*  Open a message and read its first chunk: (file or None at end, data)."""
        f = self.folder.open_message(uid)
        try:
            data = f.read(chunk)
        except BaseException:
            f.close()
            raise
        if len(data) < chunk:  # a regular file reads short only at its end
            f.close()
            return None, data
        return f, data

    def mark_seen(self, uids: list[int]) -> None:
        """*Blocking.*  Messages retrieved are \\Seen for IMAP too (expunged ones are skipped)."""
        self.folder.set_flags(uids, ["\\Seen"], "add")

    def commit(self) -> int:
        """*Blocking.*  The UPDATE state: remove the messages marked deleted; return how many."""
        uids = [self.messages[i].uid for i in sorted(self.deleted)]
        if not uids:
            return 0
        self.folder.expunge(uids)
        return len(uids)

    # -- twisted.mail.pop3.IMailbox ----------------------------------------------------------

    def _check(self, i: int) -> None:
        if not 0 <= i < len(self.messages):
            raise ValueError(f"no message {i + 1}")

    def listMessages(self, i=None):
        if i is None:
            return [0 if n in self.deleted else m.size for n, m in enumerate(self.messages)]
        self._check(i)
        return 0 if i in self.deleted else self.messages[i].size

    def getMessage(self, i):
        self._check(i)
        return self.folder.open_message(self.messages[i].uid)

    def getUidl(self, i):
        self._check(i)
        return self.uidl(i)

    def deleteMessage(self, i):
        self._check(i)
        self.deleted.add(i)

    def undeleteMessages(self):
        self.deleted.clear()

    def sync(self):
        self.commit()


def make_avatar_factory(store):
    """The realm's factory for ``pop3.IMailbox``: ``address -> (Maildrop, logout)``."""

    def factory(address: str):
        return Maildrop(store, address), lambda: None

    return factory


# -- message encoding --------------------------------------------------------------------------


class DotStuffer:
    """Turn a message file, chunk by chunk, into a POP3 multi-line response body.

    RFC 1939 section 3: lines end in CRLF and a line starting with "." gets one more.  A bare
    LF becomes CRLF; every other byte (8-bit, bare CR) passes unchanged.  State carried from
    chunk to chunk: whether the output is at a line start, and a CR at a chunk's end, held
    back until the next byte shows whether it starts a CRLF.  With ``top`` (TOP n m, RFC 1939
    section 7) the output stops after the header, the blank line and ``top`` body lines.
    """

    def __init__(self, top: int | None = None):
        self._carry = b""
        self._bol = True
        self._top = top
        self._in_headers = True
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        data = self._carry + chunk if self._carry else chunk
        if data.endswith(b"\r"):
            self._carry, data = b"\r", data[:-1]
        else:
            self._carry = b""
        return self._emit(data)

    def finish(self) -> bytes:
        """The rest, and the terminating ".": the last line is closed first if it is open."""
        out = b""
        if self._carry and not self.done:
            out, self._carry = self._emit(self._carry), b""
        return out + (b".\r\n" if self._bol else b"\r\n.\r\n")

    def _emit(self, data: bytes) -> bytes:
        if not data:
            return b""
        if data.count(b"\n") != data.count(b"\r\n"):  # some bare LF (counting allocates nothing)
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._top is not None:
            data = self._cut(data)
            if not data:
                return b""
        out = data.replace(b"\r\n.", b"\r\n..") if b"\r\n." in data else data
        if self._bol and data[:1] == b".":
            out = b"." + out
        self._bol = data.endswith(b"\n")
        return out

    def _cut(self, data: bytes) -> bytes:
        """TOP: ``data`` (CRLF-normalised) up to where the response ends."""
        pos, n, bol = 0, len(data), self._bol
        while pos < n:
            if self._in_headers and bol and data.startswith(b"\r\n", pos):
                self._in_headers = False
                pos += 2
                if self._top == 0:
                    self.done = True
                    return data[:pos]
                continue
            j = data.find(b"\n", pos)
            if j < 0:
                return data
            pos, bol = j + 1, True
            if not self._in_headers:
                self._top -= 1
                if self._top == 0:
                    self.done = True
                    return data[:pos]
        return data



# -- the protocol ------------------------------------------------------------------------------


class POP3Server(pop3.POP3):
    """One POP3 session.

    Commands are queued and run one at a time in the order received, so clients may pipeline
    (RFC 2449 section 6.6).  Bad input never raises: it gets ``-ERR``.
    """

    timeOut = 600  # RFC 1939 section 3: an autologout timer of at least 10 minutes

    def __init__(self, context, listener):
        self.context = context
        self.listener = listener
        self.secure = listener.tls == "implicit"
        self.peer = "?"
        self.mbox: Maildrop | None = None
        self._buffer = b""
        self._pos = 0
        self._discarding = False
        self._busy = False
        self._draining = False
        self._closing = False
        self._lost = False
        self._user: bytes | None = None
        self._sasl = False
        self._failures = 0
        self._lock: tuple[str, str] | None = None
        self._logout = None
        self._updating = False
        self._flow: Flow | None = None
        self._streaming = False  # between a RETR/TOP's "+OK" and its final "."
        self._prefetched: tuple[int, defer.Deferred] | None = None
        self._seen_pending: list[int] = []
        self._seen_running = False
        self._seen_timer = None
        self._seen_waiters: list[defer.Deferred] = []

    # -- connection ----------------------------------------------------------------------

    def connectionMade(self):
        self.peer = getattr(self.transport.getPeer(), "host", None) or str(self.transport.getPeer())
        self.successResponse(b"mailstack POP3 server ready")
        self.setTimeout(self.timeOut)

    def connectionLost(self, reason):
        self._lost = self._closing = True
        self.setTimeout(None)
        if self._flow is not None:
            self._flow.stopProducing()
        if self._seen_pending and not self._updating:
            self._flush_seen()  # what was retrieved in full is \Seen, QUIT or not
        if not self._updating:
            self._release()  # RFC 1939 section 6: no QUIT, no UPDATE: nothing is deleted

    def timeoutConnection(self):
        log.info("pop3 autologout of {peer}", peer=self.peer)
        if self._streaming:  # a client that stopped reading: nothing more can be flushed to it
            self.transport.abortConnection()
            return
        self._close(b"-ERR autologout: idle for too long\r\n")

    def _close(self, last: bytes = b""):
        if last and not self._lost:
            self.transport.write(last)
        self._closing = True
        self.transport.loseConnection()

    def _release(self):
        if self._lock is not None:
            _LOCKED.discard(self._lock)
            self._lock = None
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    @property
    def state(self) -> str:
        return TRANSACTION if self.mbox is not None else AUTHORIZATION

    def _reply(self, line: str | bytes) -> None:
        if not self._lost:
            self.transport.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\r\n")

    def _ok(self, text: str = "") -> None:
        self._reply("+OK" + (" " + text if text else ""))

    def _err(self, text: str) -> None:
        self._reply("-ERR " + text)

    def _multiline(self, first: str, lines) -> None:
        if not self._lost:
            body = [b"+OK " + first.encode() + b"\r\n"] + [line + b"\r\n" for line in lines] + [b".\r\n"]
            self.transport.write(b"".join(body))

    # -- input: lines, limits, pipelining ------------------------------------------------

    def dataReceived(self, data: bytes):
        if self._closing:
            return
        self._buffer += data
        if len(self._buffer) - self._pos > MAX_PENDING_INPUT:
            log.warn("pop3 client {peer} sent too much input without waiting", peer=self.peer)
            self._close(b"-ERR too much pipelined input\r\n")
            return
        self._drain()

    def _next_line(self) -> bytes | None:
        """The next complete line, without its line end, or None.  Over-long lines get -ERR."""
        while True:
            limit = MAX_SASL_LINE if self._sasl else MAX_COMMAND
            i = self._buffer.find(b"\n", self._pos)
            if self._discarding:
                if i < 0:
                    self._buffer, self._pos = b"", 0
                    return None
                self._pos, self._discarding = i + 1, False
                continue
            if i < 0:
                if len(self._buffer) - self._pos >= limit:
                    self._buffer, self._pos, self._discarding = b"", 0, True
                    self._too_long()
                else:
                    self._compact()
                return None
            line = self._buffer[self._pos : i + 1]
            self._pos = i + 1
            if len(line) > limit:
                self._too_long()
                continue
            return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    def _compact(self):
        if self._pos:
            self._buffer, self._pos = self._buffer[self._pos :], 0

    def _too_long(self):
        if self._sasl:
            self._sasl = False
            self._err("authentication cancelled: response line too long")
        else:
            self._err(f"command line too long (at most {MAX_COMMAND} octets, RFC 2449 section 4)")

    def _drain(self):
        if self._draining:
            return
        self._draining = True
        try:
            while not self._busy and not self._closing:
                line = self._next_line()
                if line is None:
                    break
                self.resetTimeout()
                self._run(line)
        finally:
            self._draining = False
        if not self._busy:
            self._compact()

    def _run(self, line: bytes) -> None:
        try:
            result = self._sasl_response(line) if self._sasl else self._command(line)
        except Exception:
            log.failure("pop3 command failed for {peer}", peer=self.peer)
            self._err("[SYS/TEMP] internal server error")
            return
        if isinstance(result, defer.Deferred):
            finished: list = []
            result.addErrback(self._unexpected)
            result.addBoth(finished.append)
            if not finished:  # still running (``called`` is not enough: it may wait on another)
                # The idle timer keeps running: a client that stops reading mid-RETR must not
                # hold the maildrop lock for ever.  Each chunk sent counts as activity.
                self._busy = True
                result.addBoth(self._command_done)

    def _unexpected(self, failure):
        log.failure("pop3 command failed for {peer}", failure, peer=self.peer)
        if self._streaming or self._closing:  # mid-response: no -ERR can follow, only a close
            self._close()
        else:
            self._err("[SYS/TEMP] internal server error")

    def _command_done(self, _):
        self._busy = False
        if not self._closing:
            self.setTimeout(self.timeOut)
            self._drain()

    # -- commands ------------------------------------------------------------------------

    def _command(self, line: bytes):
        self._commands = getattr(self, "_commands", 0) + 1
        if self._commands > self.context.config.max_commands:
            log.warn("pop3 session of {peer} closed: too many commands", peer=self.peer)
            self._close(b"-ERR [SYS/PERM] too many commands in one session\r\n")
            return None
        keyword, _, rest = line.partition(b" ")
        name = keyword.upper().decode("ascii", "replace")
        handler = getattr(self, "cmd_" + name, None) if name.isalpha() and name.isascii() else None
        if handler is None:
            self._err("unknown command")
            return None
        states = _STATES.get(name, (AUTHORIZATION, TRANSACTION))
        if self.state not in states:
            self._err(f"{name} is not valid in the {self.state} state")
            return None
        return handler(rest)

    def _args(self, rest: bytes, least: int, most: int) -> list[bytes] | None:
        """RFC 2449 section 3/4: arguments separated by one space, each at most 40 octets."""
        args = rest.split(b" ") if rest else []
        if not least <= len(args) <= most or any(not a or len(a) > MAX_ARGUMENT for a in args):
            self._err("wrong number of arguments" if not least <= len(args) <= most else "bad argument")
            return None
        return args

    def _number(self, arg: bytes) -> int | None:
        """A message number of the snapshot -> 0-based index; -ERR and None if there is none."""
        n = int(arg) if arg.isdigit() else 0
        if not 1 <= n <= len(self.mbox.messages):
            self._err("no such message")
            return None
        if n - 1 in self.mbox.deleted:
            self._err(f"message {n} already deleted")
            return None
        return n - 1

    def cmd_CAPA(self, rest):
        """RFC 2449 section 5; the list is :data:`mailstack.pop3.capabilities.CAPABILITIES`."""
        if self._args(rest, 0, 0) is None:
            return
        self._multiline("capability list follows", self.listCapabilities())

    def listCapabilities(self) -> list[bytes]:
        """Replaces Twisted's list, which has names no RFC defines (PIPELINE, CELERITY, ...)."""
        return capability_lines(SessionView(can_stls=self._can_stls(), login_allowed=self._login_allowed()))

    def cmd_QUIT(self, rest):
        if self.state == AUTHORIZATION:
            self._ok("mailstack POP3 server signing off")
            self._close()
            return None
        return self._update()

    def cmd_NOOP(self, rest):
        if self._args(rest, 0, 0) is not None:
            self._ok()

    # -- AUTHORIZATION state ---------------------------------------------------------------

    def _can_stls(self) -> bool:
        return (self.listener.tls == "starttls" and not self.secure and self.state == AUTHORIZATION
                and self.context.tls is not None)

    def _login_allowed(self) -> bool:
        """RFC 2595 section 2.2 / RFC 8314: no clear-text password outside TLS, except on
        loopback when ``[auth] plaintext_on_loopback`` says so."""
        return self.secure or (self.context.config.plaintext_on_loopback and is_loopback(self.peer))

    def _refuse_plaintext(self) -> bool:
        if self._login_allowed():
            return False
        self._err("[AUTH] plaintext authentication is not allowed without TLS: use STLS first")
        return True

    def cmd_STLS(self, rest):
        """RFC 2595 section 4.  Input pipelined after STLS is discarded: it arrived in the clear."""
        if self._args(rest, 0, 0) is None:
            return
        if not self._can_stls():
            self._err("STLS is not available" + (" (TLS is already active)" if self.secure else ""))
            return
        self._ok("begin TLS negotiation")
        self._buffer, self._pos, self._discarding = b"", 0, False
        self._user = None
        self.secure = True
        self.transport.startTLS(self.context.tls)

    def cmd_USER(self, rest):
        """RFC 1939 section 7."""
        if self._refuse_plaintext():
            return
        if not rest or b" " in rest.strip():
            self._err("USER needs one argument: the account address")
            return
        self._user = rest.strip()
        self._ok("send PASS")

    def cmd_PASS(self, rest):
        """RFC 1939 section 7: the rest of the line is the password (it may contain spaces)."""
        if self._user is None:
            self._err("USER first")
            return None
        user, self._user = self._user, None
        if self._refuse_plaintext():
            return None
        return self._login(user, rest, "USER/PASS")

    def cmd_AUTH(self, rest):
        """RFC 5034: AUTH PLAIN, with or without the initial response (section 4).  Plain
        ``AUTH`` lists the mechanisms, as many clients expect."""
        if not rest:
            self._multiline("SASL mechanisms follow", [b"PLAIN"] if self._login_allowed() else [])
            return None
        args = rest.split(b" ")
        if len(args) > 2 or not all(args):
            self._err("AUTH mechanism [initial-response]")
            return None
        if args[0].upper() != b"PLAIN":
            self._err("unsupported SASL mechanism (use PLAIN)")
            return None
        if self._refuse_plaintext():
            return None
        if len(args) == 2:
            return self._sasl_plain(b"" if args[1] == b"=" else args[1])
        self._sasl = True
        self._reply(b"+ ")
        return None

    def _sasl_response(self, line: bytes):
        self._sasl = False
        if line.strip() == b"*":  # RFC 5034 section 4: the client cancels
            self._err("authentication cancelled")
            return None
        return self._sasl_plain(line.strip())

    def _sasl_plain(self, encoded: bytes):
        """RFC 4616: [authzid] NUL authcid NUL passwd; no acting as another user."""
        try:
            message = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            self._err("invalid base64 in the SASL response")
            return None
        parts = message.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            self._err("[AUTH] malformed PLAIN response")
            return None
        authzid, authcid, password = parts
        if authzid and authzid.lower() != authcid.lower():
            self._login_refused(authcid, "AUTH PLAIN", "authorization identity differs")
            return None
        return self._login(authcid, password, "AUTH PLAIN")

    def _login(self, user: bytes, password: bytes, method: str):
        d = self.context.login_gate.login(credentials.UsernamePassword(user, password), self.peer, self.listener.key,
                                          pop3.IMailbox)
        d.addCallbacks(self._authenticated, self._login_failed, callbackArgs=(user, method), errbackArgs=(user, method))
        return d

    def _shown(self, user: bytes) -> str:
        return user.decode("utf-8", "replace")[:100]

    def _login_refused(self, user: bytes, method: str, why: str) -> None:
        log.warn("pop3 authentication failed for {user} from {peer} ({method}: {why})",
                 user=self._shown(user), peer=self.peer, method=method, why=why)
        self._failures += 1
        self._err("[AUTH] authentication failed")
        if self._failures >= MAX_AUTH_FAILURES:
            self._close(b"-ERR too many authentication failures\r\n")

    def _login_failed(self, failure, user: bytes, method: str):
        if failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
            self._login_refused(user, method, "bad user name or password")
        elif failure.check(LoginThrottled):
            self._err(f"[SYS/TEMP] {failure.value}")  # RFC 3206 4: temporary, try later
        else:
            log.failure("pop3 authentication error for {user} from {peer}", failure, user=self._shown(user), peer=self.peer)
            self._err("[SYS/TEMP] authentication is unavailable, try again later")

    def _authenticated(self, result, user: bytes, method: str):
        _iface, maildrop, logout = result
        if self._lost:
            logout()
            return None
        key = (maildrop.store.root, maildrop.address)
        if key in _LOCKED:
            logout()
            log.info("pop3 login for {user} from {peer} refused: maildrop in use", user=maildrop.address, peer=self.peer)
            self._err("[IN-USE] the maildrop is in use by another POP3 session")
            return None
        _LOCKED.add(key)
        self._lock, self._logout = key, logout
        d = threads.deferToThread(maildrop.load)
        d.addCallbacks(self._opened, self._open_failed, callbackArgs=(maildrop, method))
        return d

    def _opened(self, _, maildrop: Maildrop, method: str):
        if self._lost:
            self._release()
            return
        self.mbox = maildrop
        count, size = maildrop.stat()
        log.info("pop3 login {user} from {peer} ({method}, {count} messages)", user=maildrop.address,
                 peer=self.peer, method=method, count=count)
        self._ok(f"maildrop has {count} messages ({size} octets)")

    def _open_failed(self, failure):
        self._release()
        if failure.check(UnknownUser):
            log.warn("pop3 maildrop unusable from {peer}: {error}", peer=self.peer, error=failure.getErrorMessage())
            self._err("[SYS/PERM] this account has no usable maildrop")
        else:
            log.failure("pop3 cannot open maildrop for {peer}", failure, peer=self.peer)
            self._err("[SYS/TEMP] cannot open the maildrop now, try again later")

    # -- TRANSACTION state -----------------------------------------------------------------

    def cmd_STAT(self, rest):
        """RFC 1939 section 5; messages marked deleted are not counted."""
        if self._args(rest, 0, 0) is not None:
            self._ok("%d %d" % self.mbox.stat())

    def cmd_LIST(self, rest):
        count, size = self.mbox.stat()
        self._per_message(rest, lambda i: self.mbox.messages[i].size, f"{count} messages ({size} octets)")

    def cmd_UIDL(self, rest):
        """RFC 1939 section 7: "<uidvalidity>.<uid>", unique and stable for the message's life."""
        self._per_message(rest, self.mbox.uidl, "unique-id listing follows")

    def _per_message(self, rest, value, heading: str) -> None:
        """LIST and UIDL: one message's line, or a multi-line listing of every live message."""
        args = self._args(rest, 0, 1)
        if args is None:
            return
        if args:
            i = self._number(args[0])
            if i is not None:
                self._ok(f"{i + 1} {value(i)}")
            return
        self._multiline(heading, (f"{i + 1} {value(i)}".encode() for i in self.mbox.live()))

    def cmd_DELE(self, rest):
        """RFC 1939 section 5: only marked here; removed at QUIT (section 6)."""
        args = self._args(rest, 1, 1)
        if args is None:
            return
        i = self._number(args[0])
        if i is not None:
            self.mbox.deleted.add(i)
            self._ok(f"message {i + 1} deleted")

    def cmd_RSET(self, rest):
        if self._args(rest, 0, 0) is None:
            return
        self.mbox.deleted.clear()
        count, size = self.mbox.stat()
        self._ok(f"maildrop has {count} messages ({size} octets)")

    def cmd_RETR(self, rest):
        """RFC 1939 section 5.  The message becomes \\Seen once sent in full."""
        args = self._args(rest, 1, 1)
        if args is None:
            return None
        i = self._number(args[0])
        return None if i is None else self._send(i, None)

    def cmd_TOP(self, rest):
        """RFC 1939 section 7.  TOP leaves the \\Seen flag alone."""
        args = self._args(rest, 2, 2)
        if args is None:
            return None
        if not args[1].isdigit():
            self._err("TOP msg n: n must be a number of lines")
            return None
        i = self._number(args[0])
        return None if i is None else self._send(i, int(args[1]))

    def _send(self, i: int, top: int | None) -> defer.Deferred:
        info = self.mbox.messages[i]
        if self._prefetched is not None and self._prefetched[0] == i:
            d = self._prefetched[1].addCallback(lambda box: box[0])  # a Failure in the box errs
        else:
            d = threads.deferToThread(self.mbox.open_start, info.uid, READ_CHUNK)
        self._prefetched = None
        if top is None:
            self._prefetch(i + 1)
        d.addCallbacks(lambda opened: defer.ensureDeferred(self._stream(opened, i, top)),
                       self._send_failed, errbackArgs=(i,))
        return d

    def _prefetch(self, i: int) -> None:
        """Clients RETR one message after the other: read the next small one meanwhile, so
        its RETR is answered without waiting for a thread.  Only messages that fit in one
        chunk (no open file to keep), and only one at a time."""
        if i >= len(self.mbox.messages) or i in self.mbox.deleted or self.mbox.messages[i].size >= READ_CHUNK:
            return
        d = threads.deferToThread(self.mbox.open_start, self.mbox.messages[i].uid, READ_CHUNK)
        d.addBoth(lambda result: [result])  # kept as a value: an unused failure is no error
        self._prefetched = (i, d)

    def _send_failed(self, failure, i: int):
        if failure.check(MessageGone):
            self._err(f"message {i + 1} was removed by another session")
        elif failure.check(OSError):
            log.failure("pop3 cannot read message {n} for {user}", failure, n=i + 1, user=self.mbox.address)
            self._err(f"[SYS/TEMP] cannot read message {i + 1} now")
        else:
            return failure

    async def _stream(self, opened, i: int, top: int | None) -> None:
        f, chunk = opened
        info = self.mbox.messages[i]
        if self._lost:
            if f is not None:
                f.close()
            return
        encoder = DotStuffer(top)
        self._ok(f"{info.size} octets" if top is None else "top of message follows")
        if f is None:  # the whole message is in hand: no reading, no flow control to wait on
            self.transport.write(encoder.feed(chunk) + encoder.finish())
            if top is None and "\\Seen" not in info.flags:
                self._mark_seen(info.uid)
            return
        self._flow = flow = Flow()
        self.transport.registerProducer(flow, True)
        self._streaming = True
        try:
            while True:
                out = encoder.feed(chunk)
                if out:
                    self.transport.write(out)
                if not chunk or encoder.done:
                    break
                await flow.ready()
                if flow.stopped:
                    return
                self.resetTimeout()
                chunk = await threads.deferToThread(f.read, READ_CHUNK)
            if not self._lost:
                self.transport.write(encoder.finish())
            self._streaming = False
        finally:
            self._flow = None
            f.close()
            if not self._lost:
                self.transport.unregisterProducer()
        if top is None and "\\Seen" not in info.flags:
            self._mark_seen(info.uid)

    # -- \Seen, batched --------------------------------------------------------------------

    def _mark_seen(self, uid: int) -> None:
        """Queue a \\Seen flag.  Queued flags are set together, at most ``SEEN_DELAY`` seconds
        later, at QUIT, or when the connection drops: one store call (a rename each, one
        fsync) for many messages instead of one per RETR, which would hold the folder lock
        that the next RETR's open waits on."""
        self._seen_pending.append(uid)
        if self._seen_timer is None and not self._seen_running:
            self._seen_timer = reactor.callLater(SEEN_DELAY, self._flush_seen)

    def _flush_seen(self) -> None:
        if self._seen_timer is not None:
            if self._seen_timer.active():
                self._seen_timer.cancel()
            self._seen_timer = None
        if self._seen_running or not self._seen_pending:
            return
        uids, self._seen_pending = self._seen_pending, []
        self._seen_running = True
        maildrop = self.mbox
        d = threads.deferToThread(maildrop.mark_seen, uids)
        d.addErrback(lambda f: log.failure("pop3 cannot set \\Seen for {user}", f, user=maildrop.address))
        d.addCallback(self._seen_flushed)

    def _seen_flushed(self, _):
        self._seen_running = False
        if self._seen_pending:
            if self._seen_waiters or self._lost:
                self._flush_seen()
                return
            self._seen_timer = reactor.callLater(SEEN_DELAY, self._flush_seen)
        waiters, self._seen_waiters = self._seen_waiters, []
        for d in waiters:
            d.callback(None)

    def _seen_settled(self) -> defer.Deferred:
        """Flush now; fires once every queued \\Seen flag is in the store."""
        if not self._seen_running and not self._seen_pending:
            return defer.succeed(None)
        d = defer.Deferred()
        self._seen_waiters.append(d)
        self._flush_seen()
        return d

    # -- UPDATE state ----------------------------------------------------------------------

    def _update(self) -> defer.Deferred:
        """RFC 1939 section 6: remove the messages marked deleted, then say goodbye."""
        self._updating = True
        maildrop = self.mbox
        d = self._seen_settled()
        d.addCallback(lambda _: threads.deferToThread(maildrop.commit))

        def done(removed):
            log.info("pop3 logout {user} from {peer}: {removed} messages deleted", user=maildrop.address,
                     peer=self.peer, removed=removed)
            self._release()
            self._ok(f"mailstack POP3 server signing off ({removed} messages deleted)")

        def failed(failure):
            log.failure("pop3 UPDATE failed for {user}", failure, user=maildrop.address)
            self._release()
            self._err("[SYS/TEMP] some deleted messages were not removed")

        def finally_(_):
            self._updating = False
            self._close()

        d.addCallbacks(done, failed)
        d.addBoth(finally_)
        return d


#: Commands valid in only one state (RFC 1939 sections 4-7, RFC 2595 section 4, RFC 5034).
_STATES = {
    "USER": (AUTHORIZATION,), "PASS": (AUTHORIZATION,), "AUTH": (AUTHORIZATION,), "STLS": (AUTHORIZATION,),
    "STAT": (TRANSACTION,), "LIST": (TRANSACTION,), "UIDL": (TRANSACTION,), "RETR": (TRANSACTION,),
    "TOP": (TRANSACTION,), "DELE": (TRANSACTION,), "RSET": (TRANSACTION,), "NOOP": (TRANSACTION,),
}


class POP3Factory(protocol.ServerFactory):
    noisy = False

    def __init__(self, context, listener):
        self.context, self.listener = context, listener

    def buildProtocol(self, addr):
        p = POP3Server(self.context, self.listener)
        p.factory = self
        return p


def build_factory(context, listener) -> POP3Factory:
    """The factory for one pop3/pop3s listener (see :mod:`mailstack.service`)."""
    context.realm.register(pop3.IMailbox, make_avatar_factory(context.store))
    return POP3Factory(context, listener)
