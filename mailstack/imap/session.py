"""One IMAP session: RFC 3501 IMAP4rev1 and the extensions in :mod:`mailstack.imap.capabilities`.

The session owns its engine on Twisted's public pieces (``Protocol``, ``TimeoutMixin``):

* a command is read whole (lines and literals, :mod:`mailstack.imap.reader`), then parsed
  (:mod:`mailstack.imap.parser`) and run; until its tagged response is out, further input
  waits unread, so responses never interleave;
* the selected mailbox is a :class:`~mailstack.imap.view.Selected` view of the UIDs the client
  knows (RFC 3501 2.3.1.2); after each command the store's changes are reported as untagged
  responses, EXPUNGE only where RFC 3501 7.4.1 allows (never during FETCH, STORE or SEARCH);
* every store call runs in the reactor's thread pool (:meth:`ImapSession.store_call`).

The commands of the authenticated and selected states live in :mod:`mailstack.imap.mailboxes`,
:mod:`mailstack.imap.selected` and :mod:`mailstack.imap.fetch`; this module holds the command
table, the framing, the responses and the commands of any state and before login.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from time import perf_counter
from typing import Callable

from twisted.internet import defer, protocol, reactor, threads
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from mailstack import logcontext
from mailstack import metrics, sasl
from mailstack.errors import StoreError
from mailstack.flow import send_now
from mailstack.imap import catenate, fetch, login, mailboxes, parser, quota, results, selected
from mailstack.imap.capabilities import SessionView, capability_names
from mailstack.imap.errors import NO_REPLY, Bad, Disconnect, ImapError, No, os_error, store_error
from mailstack.imap.reader import (
    DATA,
    MESSAGE,
    Complete,
    CommandAssembler,
    Continue,
    Framing,
    LineTooLong,
    RawCommand,
    Refused,
)
from mailstack.imap.view import Selected
from mailstack.pacing import CommandPacer

log = Logger()

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = "not authenticated", "authenticated", "selected", "logout"


@dataclass(frozen=True)
class Command:
    """``handler(session, tag, *grammar(arguments))``; ``expunge_ok``: EXPUNGE responses may
    follow (RFC 3501 7.4.1); ``uid``: the UID form (RFC 3501 6.4.8), passed as ``uid=True``."""

    handler: Callable
    grammar: Callable = parser.no_arguments
    expunge_ok: bool = True
    uid: bool = False
    name: bytes = b""  # the key in COMMANDS (set there): the metrics label


def _any_state() -> dict:
    return {
        b"CAPABILITY": Command(lambda s, tag: s.capability()),
        b"NOOP": Command(lambda s, tag: s.noop()),
        b"LOGOUT": Command(lambda s, tag: s.logout(tag)),
        b"ID": Command(lambda s, tag, _params: s.identify(), parser.all_tokens),
    }


def _authenticated() -> dict:
    m = mailboxes
    return {
        b"SELECT": Command(m.select, parser.select),
        b"EXAMINE": Command(m.examine, parser.select),
        b"CREATE": Command(m.create, parser.one_mailbox),
        b"DELETE": Command(m.delete, parser.one_mailbox),
        b"RENAME": Command(m.rename, parser.two_mailboxes),
        b"SUBSCRIBE": Command(m.subscribe, parser.one_mailbox),
        b"UNSUBSCRIBE": Command(m.unsubscribe, parser.one_mailbox),
        b"LIST": Command(m.list_mailboxes, parser.all_tokens),
        b"LSUB": Command(m.lsub, parser.all_tokens),
        b"STATUS": Command(m.status, parser.status),
        b"APPEND": Command(m.append, parser.append),
        b"NAMESPACE": Command(m.namespace),
        b"ENABLE": Command(m.enable, parser.all_tokens),
        b"COMPRESS": Command(lambda s, tag, mech: s.compress(tag, mech), parser.mechanism),
        b"IDLE": Command(lambda s, tag: s.idle(tag)),
        b"GETQUOTA": Command(quota.getquota, parser.one_mailbox),  # RFC 9208 4.1
        b"GETQUOTAROOT": Command(quota.getquotaroot, parser.one_mailbox),
        b"SETQUOTA": Command(quota.setquota, parser.all_tokens),
    }


def _selected() -> dict:
    s, f = selected, fetch
    return {
        b"CHECK": Command(s.check),
        b"CLOSE": Command(s.close),
        b"UNSELECT": Command(s.unselect),
        b"EXPUNGE": Command(s.expunge),
        b"SEARCH": Command(s.search, parser.search, expunge_ok=False),
        b"SORT": Command(s.sort, parser.sort, expunge_ok=False),
        b"THREAD": Command(s.thread, parser.thread, expunge_ok=False),
        b"FETCH": Command(f.fetch, parser.fetch, expunge_ok=False),
        b"STORE": Command(s.store, parser.store, expunge_ok=False),
        b"COPY": Command(s.copy, parser.copy),
        b"MOVE": Command(s.move, parser.copy),
        b"UID SEARCH": Command(s.search, parser.search, uid=True),
        b"UID SORT": Command(s.sort, parser.sort, uid=True),
        b"UID THREAD": Command(s.thread, parser.thread, uid=True),
        b"UID FETCH": Command(f.fetch, parser.fetch, uid=True),
        b"UID STORE": Command(s.store, parser.store, uid=True),
        b"UID COPY": Command(s.copy, parser.copy, uid=True),
        b"UID MOVE": Command(s.move, parser.copy, uid=True),
        b"UID EXPUNGE": Command(s.uid_expunge, parser.sequence_set, uid=True),
        b"CANCELUPDATE": Command(s.cancel_update, parser.all_tokens),
    }


#: The commands each state accepts (RFC 3501 3, 6).
COMMANDS: dict[str, dict[bytes, Command]] = {
    NOT_AUTHENTICATED: {
        **_any_state(),
        b"STARTTLS": Command(login.starttls),
        b"LOGIN": Command(login.login, parser.login),
        b"AUTHENTICATE": Command(login.authenticate, parser.authenticate),
    },
    AUTHENTICATED: {**_any_state(), **_authenticated()},
    SELECTED: {**_any_state(), **_authenticated(), **_selected()},
}
COMMANDS = {state: {name: replace(c, name=name) for name, c in table.items()} for state, table in COMMANDS.items()}
_KNOWN = {name for table in COMMANDS.values() for name in table}

def command_name(first_line: bytes) -> tuple[bytes, int]:
    """(the command name upper-cased, ``b"UID FETCH"`` for the UID forms; how many words it
    and the tag take)."""
    words = first_line.split(b" ", 3)
    name = words[1].upper() if len(words) > 1 else b""
    if name == b"UID" and len(words) > 2:
        return name + b" " + words[2].upper(), 3
    return name, 2


#: Sent by the listener when a connection limit turns a client away (RFC 3501 7.1.5, RFC 5530).
BUSY = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
GREETING = b"mailstack IMAP4rev1 server ready"
MAX_PENDING_INPUT = 1 << 20  # pipelined input held while a command runs
PREAUTH_TIMEOUT = 120  # seconds; RFC 3501 5.4 asks for 30 minutes only once authenticated
INFLATE_CHUNK = 64 * 1024


class DeflateTransport:
    """RFC 4978 COMPRESS=DEFLATE: the session's transport, with everything written deflated
    (raw DEFLATE, RFC 1951) and flushed at each write, so the client can decode each response
    as it arrives.  Everything else (producers, peer, loseConnection) is the transport's."""

    def __init__(self, transport):
        self.transport = transport
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)

    def write(self, data: bytes) -> None:
        self.transport.write(self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH))

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def __getattr__(self, name):
        return getattr(self.transport, name)


class ImapSession(protocol.Protocol, TimeoutMixin):
    """One client connection, from greeting to LOGOUT."""

    def __init__(self, context, listener, avatar_interface):
        self.context, self.listener, self.avatar_interface = context, listener, avatar_interface
        self.secure = listener.tls == "implicit"
        self.peer = "?"
        self.state = NOT_AUTHENTICATED
        self.address: str | None = None
        self.mailbox = None  # the store's mailbox of the logged-in user
        self.sel: Selected | None = None
        self.lost = False
        self.closing = False  # a last response is out and the connection closes: read no more commands
        self.busy = False  # a command runs: input waits
        self.commands = 0
        self.pacer = CommandPacer(context.config.command_rate, context.config.command_burst, reactor)
        self.failures = sasl.FailureCounter()
        self.logout_avatar = None
        self.framing = Framing()
        self.assembler = CommandAssembler(self.framing, self.literal_kind, context.config.max_message_size)
        self.line_waiter: defer.Deferred | None = None  # IDLE's DONE, a SASL response
        self.idling = False
        self.flow = None  # the FETCH's producer, while one streams
        self.sync_lock = defer.DeferredLock()
        self.condstore = False  # RFC 7162 3.1: once used, flag changes carry their MODSEQ
        self.qresync = False  # RFC 7162 3.2.3: after ENABLE QRESYNC, expunges are VANISHED
        self.rev2 = False  # RFC 9051: after ENABLE IMAP4rev2 (see mailboxes.enable)
        self.utf8 = False  # RFC 6855 3: mailbox names in UTF-8 (UTF8=ACCEPT, or IMAP4rev2)
        self.inflate = None  # RFC 4978: after COMPRESS DEFLATE, input is inflated here
        self.timing = None  # (command name, perf_counter() at dispatch) for the metrics

    # -- connection --------------------------------------------------------------------------

    def connectionMade(self):
        self.peer = logcontext.peer_of(self.transport)  # the address, carrying the session's log id
        self.setTimeout(PREAUTH_TIMEOUT)
        self.write_line(b"* OK [CAPABILITY " + b" ".join(self.capabilities()) + b"] " + GREETING)

    def connectionLost(self, reason=protocol.connectionDone):
        self.lost = True
        self.setTimeout(None)
        self.assembler.abandon()
        if self.flow is not None:
            self.flow.stopProducing()
        if self.line_waiter is not None:
            waiter, self.line_waiter = self.line_waiter, None
            waiter.errback(Disconnect())
        self.deselect()
        if self.logout_avatar is not None:
            logout, self.logout_avatar = self.logout_avatar, None
            logout()

    def timeoutConnection(self):
        log.info("imap autologout of {peer}", peer=self.peer)
        self.close(b"* BYE Autologout; idle for too long")

    def close(self, line: bytes) -> None:
        self.write_line(line)
        self.transport.loseConnection()

    def capabilities(self) -> list[bytes]:
        view = SessionView(can_starttls=self.can_starttls(), login_allowed=self.login_allowed(),
                           authenticated=self.state in (AUTHENTICATED, SELECTED), compressed=self.inflate is not None)
        return capability_names(view)

    def can_starttls(self) -> bool:
        return (self.listener.tls == "starttls" and not self.secure and self.state == NOT_AUTHENTICATED
                and self.context.tls is not None)

    def login_allowed(self) -> bool:
        return sasl.login_allowed(self.secure, self.peer, self.context.config.plaintext_on_loopback)

    # -- input: one command at a time ----------------------------------------------------------

    def dataReceived(self, data):
        if self.lost:
            return
        self.resetTimeout()
        if self.inflate is None:
            self.receive(data)
            return
        try:  # at most 64 KB inflated at a time: a small input inflating to gigabytes meets the same limits
            while data and not self.lost:
                piece = self.inflate.decompress(data, INFLATE_CHUNK)
                data = self.inflate.unconsumed_tail
                self.receive(piece)
        except zlib.error:
            log.info("imap client {peer} sent data that does not inflate", peer=self.peer)
            self.close(b"* BYE Compressed data error")

    def receive(self, data: bytes) -> None:
        self.framing.feed(data)
        self.process()
        if self.busy and self.line_waiter is None and self.framing.pending() > MAX_PENDING_INPUT:
            log.warn("imap client {peer} sent too much input without waiting", peer=self.peer)
            self.framing.clear()
            self.close(b"* BYE Too much pipelined input")

    def process(self) -> None:
        """Act on what has arrived, as far as the running command allows."""
        try:
            while not self.lost and not self.closing:
                if self.line_waiter is not None:
                    line = self.framing.line()
                    if line is None:
                        return
                    waiter, self.line_waiter = self.line_waiter, None
                    waiter.callback(line)
                    continue
                if self.busy:
                    return
                event = self.assembler.step()
                if event is None:
                    return
                self.act_on(event)
        except LineTooLong:
            self.framing.clear()
            self.close(b"* BYE Command line too long")

    def act_on(self, event) -> None:
        if isinstance(event, Continue):
            self.continuation(b"Ready for literal data")
        elif isinstance(event, Refused):
            if event.fatal:
                self.close(b"* " + event.status + b" " + event.text)
            else:
                self.write_line(event.tag + b" " + event.status + b" " + event.text)
        elif isinstance(event, Complete):
            self.execute(event.command)

    def read_line(self) -> defer.Deferred:
        """The client's next line (a SASL response, IDLE's DONE)."""
        self.line_waiter = defer.Deferred()
        reactor.callLater(0, self.process)  # it may be here already
        return self.line_waiter

    def literal_kind(self, command: RawCommand):
        """What the literal announced now is (see :class:`CommandAssembler`): a command that
        cannot run in this state, or LOGIN without TLS, is refused before its literal is
        invited, so no password is asked for that would be refused (issue 14)."""
        if command.tag == b"*":
            return b"BAD", b"invalid or missing tag"
        name, _used = command_name(command.texts[0])
        if name not in COMMANDS.get(self.state, {}):
            return b"BAD", self.unavailable(name).encode("ascii", "replace")
        if name == b"LOGIN" and not self.login_allowed():
            return b"NO", b"[PRIVACYREQUIRED] LOGIN is disabled without TLS: use STARTTLS first"
        return MESSAGE if name == b"APPEND" and self.is_append_message(command) else DATA

    def is_append_message(self, command: RawCommand) -> bool:
        """Is the literal announced now APPEND's message (``APPEND mailbox [flags] [date] literal``,
        or a CATENATE TEXT part, RFC 4469)?"""
        if catenate.announces_text(command) or command.texts[-1].rstrip(b" ").upper().endswith(b" UTF8 ("):
            return True  # a CATENATE TEXT part, or RFC 6855 4's UTF8 (literal8)
        words = command.texts[0].split(b" ", 2)
        try:
            return len(parser.tokens(command, len(words[0]) + len(words[1]) + 2)) >= 1
        except parser.ParseError:
            return False

    # -- dispatch --------------------------------------------------------------------------------

    def execute(self, raw: RawCommand) -> None:
        self.busy = True
        self.commands += 1
        limit = self.context.config.max_commands
        if limit and self.commands > limit:
            raw.close()
            log.warn("imap session of {peer} closed: too many commands", peer=self.peer)
            self.close(b"* BYE too many commands in one session")
            return
        wait = self.pacer.take()
        if wait:  # over the command rate (mailstack.pacing): this one waits, and the input behind it
            reactor.callLater(wait, self.paced, raw)
            return
        self.dispatch(raw)

    def paced(self, raw: RawCommand) -> None:
        if self.lost:
            raw.close()
        else:
            self.dispatch(raw)

    def dispatch(self, raw: RawCommand) -> None:
        started = perf_counter()
        try:
            tag, command, args = self.parse(raw)
        except ImapError as e:
            raw.close()
            self.tagged(raw.tag, e.status, e.line())
            return
        self.timing = (command.name, started)  # observed when the tagged response is out (finished)
        self.run(tag, command, args)

    def parse(self, raw: RawCommand) -> tuple[bytes, Command, tuple]:
        tag = raw.tag
        if tag == b"*":
            raise Bad("invalid or missing tag")
        name, used = command_name(raw.texts[0])
        if not name:
            raise Bad("missing command")
        words = raw.texts[0].split(b" ", 3)
        table = COMMANDS.get(self.state, {})
        command = table.get(name)
        if command is None:
            raise Bad(self.unavailable(name))
        start = sum(len(w) + 1 for w in words[:used])
        try:
            args = command.grammar(parser.Arguments(parser.tokens(raw, start)))
        except parser.ParseError as e:
            raise Bad("syntax error: " + str(e)[:200]) from None
        return tag, command, args

    def unavailable(self, name: bytes) -> str:
        text = name.decode("ascii", "replace")
        if name not in _KNOWN:
            return "UID works with COPY, MOVE, FETCH, SEARCH, STORE and EXPUNGE" if text.startswith("UID") \
                else "unknown command"
        if self.state == NOT_AUTHENTICATED:
            return f"{text} is not valid before login"
        if self.state == AUTHENTICATED and name in COMMANDS[SELECTED]:
            return f"{text} needs a selected mailbox"
        return f"{text} is not valid now"

    def run(self, tag: bytes, command: Command, args: tuple) -> None:
        kw = {"uid": True} if command.uid else {}
        expunge_ok = command.expunge_ok

        async def go():
            result = await command.handler(self, tag, *args, **kw)
            if result is not NO_REPLY and self.sel is not None and not self.lost:
                await self.sync(expunge_ok)
            return result

        def done(result):
            if result is not NO_REPLY:
                self.tagged(tag, b"OK", result or b"completed")

        d = defer.ensureDeferred(go())
        d.addCallbacks(done, self.failed, errbackArgs=(tag,))
        d.addErrback(lambda f: log.failure("imap response failed for {peer}", f, peer=self.peer))

    def failed(self, failure, tag: bytes) -> None:
        e = failure.value
        if isinstance(e, StoreError):
            e = store_error(e)
        if isinstance(e, ImapError):
            self.tagged(tag, e.status, e.line())
        elif isinstance(e, Disconnect):
            self.finished()
        else:
            log.failure("imap command failed for {peer}", failure, peer=self.peer)
            self.tagged(tag, b"NO", b"[SERVERBUG] internal server error")

    # -- responses -------------------------------------------------------------------------------

    def write_line(self, line: bytes) -> None:
        if not self.lost:
            self.transport.write(line + b"\r\n")

    def tagged(self, tag: bytes, status: bytes, text: bytes) -> None:
        self.write_line(tag + b" " + status + (b" " + text if text else b""))
        self.finished()

    def untagged(self, text: bytes) -> None:
        self.write_line(b"* " + text)

    def continuation(self, text: bytes) -> None:
        self.write_line(b"+ " + text)

    def finished(self) -> None:
        """The running command sent its tagged response: read the next one."""
        if self.timing is not None:
            metrics.imap_command_done(self.timing)
            self.timing = None
        if self.busy:
            self.busy = False
            reactor.callLater(0, self.process)
        if not self.lost and not self.framing.pending():  # the client waits for this response: now
            send_now(self.transport)

    # -- the selected mailbox --------------------------------------------------------------------

    async def store_call(self, fn, *args):
        """``fn(*args)`` in a worker thread; store exceptions become NO with RFC 5530 codes."""
        try:
            return await threads.deferToThread(fn, *args)
        except StoreError as e:
            raise store_error(e) from None
        except OSError as e:
            metrics.store_error("imap")
            answer = os_error(e)
            if answer is None:
                raise
            log.warn("imap store call failed for {user} from {peer}: {e}", user=self.address, peer=self.peer, e=e)
            raise answer from None

    def opened(self, sel: Selected) -> None:
        self.sel, self.state = sel, SELECTED
        if self.context.watcher is not None:
            sel.subscription = self.context.watcher.subscribe(sel.folder.path, self.folder_changed)

    def deselect(self) -> None:
        sel, self.sel = self.sel, None
        if sel is not None and sel.subscription is not None:
            sel.subscription.cancel()
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    def folder_changed(self) -> None:
        if self.idling:
            self.idle_sync()

    def idle_sync(self) -> None:
        d = defer.ensureDeferred(self.sync(True))
        d.addErrback(lambda f: log.failure("imap IDLE update failed for {peer}", f, peer=self.peer))

    async def sync(self, expunge: bool) -> None:
        """Report what changed in the selected folder since the client last heard (see
        :meth:`Selected.resync`); only one sync runs at a time."""
        await self.sync_lock.acquire()
        try:
            sel = self.sel
            if sel is None or self.lost:
                return
            folder, last = sel.folder, sel.last_uid()

            def work():
                snap = folder.snapshot()
                if snap is sel.synced:  # the store hands out the same snapshot while nothing changed
                    return snap, None
                taken = []
                if not sel.readonly and any(snap.is_recent(m) and m.uid > last for m in snap.messages):
                    taken = folder.take_recent()
                    snap = folder.snapshot()
                return snap, taken

            try:
                snap, taken = await threads.deferToThread(work)
            except StoreError as e:
                log.warn("imap cannot refresh {folder} for {user}: {error}", folder=folder.name,
                         user=self.address, error=str(e))
                return
            if self.sel is not sel or self.lost or taken is None:
                return
            contexts = list(sel.contexts.values())
            fresh = await threads.deferToThread(results.recompute, contexts, folder, snap, sel.recent) if contexts else {}
            if self.sel is not sel or self.lost:
                return
            for line in results.removals(contexts, fresh, sel.uids):  # RFC 5267 4.3.4: before EXPUNGE
                self.untagged(line)
            for line in sel.resync(snap, taken, last, expunge, self.qresync, self.condstore):
                self.untagged(line)
            for line in results.additions(contexts, fresh, sel.uids):  # RFC 5267 4.3.3: after EXISTS
                self.untagged(line)
        finally:
            self.sync_lock.release()

    # -- any state (RFC 3501 6.1) ------------------------------------------------------------------

    async def capability(self):
        """RFC 3501 6.1.1; the list is :data:`mailstack.imap.capabilities.CAPABILITIES`."""
        self.untagged(b"CAPABILITY " + b" ".join(self.capabilities()))
        return b"CAPABILITY completed"

    async def noop(self):
        """RFC 3501 6.1.2: the store's changes are reported after every command."""
        return b"NOOP completed"

    async def logout(self, tag: bytes):
        self.untagged(b"BYE mailstack IMAP4rev1 server logging out")
        self.deselect()
        self.state = LOGOUT
        self.tagged(tag, b"OK", b"LOGOUT completed")
        self.transport.loseConnection()
        return NO_REPLY

    async def identify(self):
        """RFC 2971: the client's ID is ignored; ours names the software only."""
        self.untagged(b'ID ("name" "mailstack")')
        return b"ID completed"

    def logged_in(self, address: str, mailbox, logout) -> None:
        """Enter the authenticated state (RFC 3501 3.2) with RFC 3501 5.4's longer timeout."""
        self.logout_avatar = logout
        self.address, self.mailbox = address, mailbox
        self.state = AUTHENTICATED
        self.setTimeout(self.context.config.imap_autologout)

    # -- authenticated, of the session itself --------------------------------------------------------

    async def compress(self, tag: bytes, mechanism: bytes):
        """RFC 4978: from the tagged OK on, both directions are raw DEFLATE."""
        if self.inflate is not None:
            raise No("compression is already active", "COMPRESSIONACTIVE")
        if mechanism.upper() != b"DEFLATE":
            raise Bad("the only compression mechanism is DEFLATE")
        if self.framing.pending():  # RFC 4978 3: the client waits for the OK before compressing
            raise Bad("no command may follow COMPRESS before its response")
        self.tagged(tag, b"OK", b"DEFLATE active")
        log.info("imap compression on for {user} from {peer}", user=self.address, peer=self.peer)
        if not self.lost:
            self.transport = DeflateTransport(self.transport)
            self.inflate = zlib.decompressobj(-15)
        return NO_REPLY

    async def idle(self, tag: bytes):
        """RFC 2177.  Changes to the selected folder (this process: at once; others: inotify,
        within about a second) are pushed as they happen, until the client sends DONE."""
        self.idling = True
        self.continuation(b"idling")
        if self.sel is not None:
            self.idle_sync()
        try:
            line = await self.read_line()
        finally:
            self.idling = False
        if line.strip().upper() != b"DONE":
            raise Bad("expected DONE")
        return b"IDLE terminated"
