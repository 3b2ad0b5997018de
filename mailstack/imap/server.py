"""The IMAP server: RFC 3501 IMAP4rev1 with IDLE (RFC 2177), UIDPLUS (RFC 4315), MOVE
(RFC 6851), SPECIAL-USE (RFC 6154), NAMESPACE (RFC 2342), ID (RFC 2971), ENABLE (RFC 5161), COMPRESS=DEFLATE (RFC 4978),
UNSELECT (RFC 3691), LITERAL+ (RFC 7888), SASL-IR (RFC 4959), CHILDREN (RFC 3348),
LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), CONDSTORE and QRESYNC (RFC 7162, MODSEQ
and expunge MODSEQs from the store).

Built on :class:`twisted.mail.imap4.IMAP4Server` for what it does well: reading command lines
and literals, its argument parsers (astring, flag lists, FETCH attributes), its dispatch by
state (``unauth_``, ``auth_``, ``select_`` attributes) and the ``IAccount`` avatar interface.
Every command handler is replaced, because Twisted's

* runs the next command while the previous one still waits on a Deferred (responses then
  interleave); here input is paused until the tagged response of the running command is out;
* numbers messages through an ``IMailbox`` with no notion of which EXPUNGE responses the client
  has seen; here each session keeps the list of UIDs the client knows (RFC 3501 2.3.1.2) and
  applies the store's changes to it, as untagged responses, only where RFC 3501 7.4.1 allows;
* re-formats headers (``BODY[HEADER]`` is not byte-exact), ignores ``<partial>``, and reads
  message files on the reactor thread.  Here FETCH builds its responses in a worker thread from
  the stored bytes, and streams whole messages from the file in chunks under flow control.

UIDs, UIDVALIDITY, flags and \\Recent come from the store (:mod:`mailstack.store`): the same
numbers POP3 (UIDL) and other processes see, stable across restarts.  Every store call runs in
the reactor's thread pool.

Not implemented: UTF8=ACCEPT, MULTIAPPEND, BINARY, QUOTA, ESEARCH, SORT/THREAD, and
LIST-EXTENDED's RECURSIVEMATCH/CHILDINFO.  Sections other than the whole message,
BODYSTRUCTURE and SEARCH BODY/TEXT read the message into memory (in a worker thread); header
items come from the store's message cache; BODY[] and RFC822 of messages above
``STREAM_ABOVE`` are streamed.
"""

from __future__ import annotations

import binascii
import bisect
import hashlib
import os
import re
import zlib
from dataclasses import dataclass, field

from twisted.cred import credentials, error as cred_error
from twisted.internet import defer, protocol, reactor, threads
from twisted.logger import Logger
from twisted.mail import imap4
from zope.interface import implementer

from mailstack.config import is_loopback
from mailstack.flow import Flow
from mailstack.errors import (
    FolderExists,
    FolderNotFound,
    InvalidFolderName,
    KeywordLimit,
    MessageGone,
    StoreError,
    UnknownUser,
)
from mailstack.imap import message as msgmod
from mailstack.imap import search as searchmod
from mailstack.imap.capabilities import SessionView, capability_names
from mailstack.store import names as folder_names
from mailstack.throttle import LoginThrottled

log = Logger()

#: Sent by the listener when a connection limit turns a client away (RFC 3501 7.1.5, RFC 5530).
BUSY = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_BY_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}
MAX_LINE = 65536  # long UID sets from clients that resynchronise; the line itself is not a literal
MAX_PENDING_INPUT = 1 << 20  # pipelined input held while a command runs
MAX_AUTH_FAILURES = 3
PREAUTH_TIMEOUT = 120  # seconds; RFC 3501 5.4 asks for 30 minutes only once authenticated
STREAM_ABOVE = 256 * 1024  # whole messages larger than this are streamed from the file
READ_CHUNK = 64 * 1024
FETCH_BATCH = 64  # messages per worker-thread call in FETCH
MAX_UID_SET = 10_000_000  # UIDs a QRESYNC known-uids or VANISHED range may expand to
_TAG_RE = re.compile(rb"^[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7e]+$")  # astring-char minus "+"
_LITERAL_RE = re.compile(rb"\{(\d{1,19})(\+?)\}$")
_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ")
_CHANGEDSINCE_RE = re.compile(rb"^(.*?) ?\(CHANGEDSINCE (\d{1,19})( VANISHED)?\)$", re.IGNORECASE)
_MODSEQ_ATT_RE = re.compile(rb"(?<![\w.\[\-])MODSEQ(?![\w.\]\-])", re.IGNORECASE)
_UNCHANGEDSINCE_RE = re.compile(rb"^\(UNCHANGEDSINCE (\d{1,19})\) ?", re.IGNORECASE)


class ImapError(Exception):
    status = b"NO"

    def __init__(self, text: str, code: str = ""):
        super().__init__(text)
        self.text, self.code = text, code

    def line(self) -> bytes:
        return ((f"[{self.code}] " if self.code else "") + self.text).encode("utf-8", "replace")


class No(ImapError):
    status = b"NO"


class Bad(ImapError):
    status = b"BAD"


def _store_error(e: StoreError) -> ImapError:
    """Store exceptions -> responses with RFC 5530 codes."""
    if isinstance(e, InvalidFolderName):
        return No(f"invalid mailbox name: {e}", "CANNOT")
    if isinstance(e, FolderNotFound):
        return No("no such mailbox", "NONEXISTENT")
    if isinstance(e, FolderExists):
        return No("mailbox already exists", "ALREADYEXISTS")
    if isinstance(e, KeywordLimit):
        return No(str(e), "LIMIT")
    if isinstance(e, MessageGone):
        return No("message was expunged", "EXPUNGEISSUED")
    return No(str(e) or "the mailbox store refused", "CANNOT")


# -- the avatar --------------------------------------------------------------------------------


@implementer(imap4.IAccount)
class Account:
    """A logged-in user's Maildir as ``IAccount``.  The protocol calls the store itself, in
    threads; the ``IAccount`` methods exist for the interface (and tests) and block."""

    def __init__(self, store, address: str):
        self.store, self.address = store, address
        self._mailbox = None

    def mailbox(self):
        """*Blocking.*  The user's Maildir, made with its special folders on first use."""
        if self._mailbox is None:
            self._mailbox = self.store.mailbox(self.address)
        return self._mailbox

    # twisted.mail.imap4.IAccount
    def addMailbox(self, name, mbox=None):
        return self.create(name)

    def create(self, pathspec):
        self.mailbox().create_folder(pathspec.rstrip("/"))
        return True

    def select(self, name, rw=True):
        return self.mailbox().folder(name)

    def delete(self, name):
        self.mailbox().delete_folder(name)

    def rename(self, oldname, newname):
        self.mailbox().rename_folder(oldname, newname)

    def isSubscribed(self, name):
        return folder_names.normalise(name) in self.mailbox().subscriptions()

    def subscribe(self, name):
        self.mailbox().subscribe(name)

    def unsubscribe(self, name):
        self.mailbox().unsubscribe(name)

    def listMailboxes(self, ref, wildcard):
        rx = pattern_regex(ref + wildcard)
        return [(f.name, f) for f in self.mailbox().list_folders() if name_matches(rx, f.name)]


def make_avatar_factory(store):
    """The realm's factory for ``imap4.IAccount``: ``address -> (Account, logout)``."""

    def factory(address: str):
        return Account(store, address), lambda: None

    return factory


# -- helpers -----------------------------------------------------------------------------------


def pattern_regex(pattern: str) -> re.Pattern:
    """LIST wildcards (RFC 3501 6.3.8): ``*`` matches anything, ``%`` anything but ``/``."""
    out = []
    for ch in pattern:
        out.append(".*" if ch == "*" else ("[^/]*" if ch == "%" else re.escape(ch)))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def name_matches(rx: re.Pattern, name: str) -> bool:
    """INBOX is case-insensitive (RFC 3501 5.1): "inbox" and "Inbox/%" find it."""
    if rx.match(name):
        return True
    if name == "INBOX" or name.startswith("INBOX/"):
        for variant in ("inbox", "Inbox"):
            if rx.match(variant + name[5:]):
                return True
    return False


def uid_set(uids) -> bytes:
    """Ascending UIDs -> compact sequence set ("1:3,7")."""
    out, start, prev = [], None, None
    for u in sorted(uids):
        if start is None:
            start = prev = u
        elif u == prev + 1:
            prev = u
        else:
            out.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = u
    if start is not None:
        out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out).encode()


def _astring_out(name: str) -> bytes:
    """A mailbox name on the wire: modified UTF-7 (RFC 3501 5.1.3), quoted."""
    return msgmod.nstring(folder_names.encode_mutf7(name).encode("ascii"))


@dataclass
class Selected:
    """The selected mailbox as this session's client knows it."""

    folder: object
    readonly: bool
    uidvalidity: int = 0
    uids: list = field(default_factory=list)  # ascending: index + 1 is the sequence number
    flags: dict = field(default_factory=dict)  # uid -> frozenset, as last reported
    recent: set = field(default_factory=set)  # UIDs this session reports as \Recent
    keywords: frozenset = frozenset()
    subscription: object = None
    synced: object = None  # the store snapshot this view was last brought in step with

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def flag_bytes(self, uid: int) -> bytes:
        return format_flags(self.flags.get(uid, ()), uid in self.recent)


def format_flags(flags, recent: bool) -> bytes:
    out = sorted(flags)
    if recent:
        out.append("\\Recent")
    return b"(" + " ".join(out).encode("utf-8", "replace") + b")"



def _safe(parser):
    """One of Twisted's argument parsers, with every failure turned into a syntax error (BAD):
    some raise bare ``Exception`` or ``TypeError`` on malformed input."""

    def parse(self, line):
        if line is None:
            line = b""
        try:
            return parser(self, line)
        except (imap4.IllegalClientResponse, ImapError):
            raise
        except Exception as e:
            raise imap4.IllegalClientResponse(str(e)[:100] or type(e).__name__) from None

    parse.__name__ = parser.__name__
    return parse


_arg_atom = _safe(imap4.IMAP4Server.arg_atom)
_arg_plist = _safe(imap4.IMAP4Server.arg_plist)
_opt_plist = _safe(imap4.IMAP4Server.opt_plist)
_opt_datetime = _safe(imap4.IMAP4Server.opt_datetime)
_opt_charset = _safe(imap4.IMAP4Server.opt_charset)
_arg_fetchatt = _safe(imap4.IMAP4Server.arg_fetchatt)
_arg_flaglist = _safe(imap4.IMAP4Server.arg_flaglist)


def command(handler, expunge_ok: bool = True):
    """Make an ``async`` handler usable in Twisted's dispatch tables.

    The handler returns the text of the tagged OK (or None when it sent its own tagged
    response) or raises :class:`ImapError`.  When a mailbox is selected the store's changes
    are reported before the tagged response; EXPUNGE responses only when ``expunge_ok`` (RFC
    3501 7.4.1: never during FETCH, STORE or SEARCH; the UID forms are other commands).
    """

    def run(self, tag, *args, **kw):
        self._run(tag, handler, args, kw, expunge_ok or bool(kw.get("uid")))

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


NO_REPLY = object()


# -- the protocol ------------------------------------------------------------------------------


class DeflateTransport:
    """RFC 4978 COMPRESS=DEFLATE: the session's transport, with everything written deflated
    (raw DEFLATE, RFC 1951) and flushed at each write, so the client can decode each response
    as it arrives.  Everything else (producers, peer, loseConnection) is the transport's."""

    def __init__(self, transport):
        self.transport = transport
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)

    def write(self, data: bytes) -> None:
        self.transport.write(self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH))

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def __getattr__(self, name):
        return getattr(self.transport, name)


class IMAPServer(imap4.IMAP4Server):
    """One IMAP session."""

    IDENT = b"mailstack IMAP4rev1 server ready"
    MAX_LENGTH = MAX_LINE

    def __init__(self, context, listener):
        super().__init__(chal={}, contextFactory=None)
        self.context = context
        self.listener = listener
        self.portal = context.portal
        self.secure = listener.tls == "implicit"
        self.autologout = getattr(context.config, "imap_autologout", 1800)
        self.peer = "?"
        self.address: str | None = None
        self.mailbox = None
        self.sel: Selected | None = None
        self._inflight = False
        self._lost = False
        self._failures = 0
        self._sync_lock = defer.DeferredLock()
        self._idle_tag: bytes | None = None
        self._flow: Flow | None = None
        #: RFC 7162 3.1: once a client uses CONDSTORE, flag changes carry their MODSEQ.
        self.condstore = False
        #: RFC 7162 3.2.3: after ENABLE QRESYNC, expunges are reported as VANISHED.
        self.qresync = False
        #: RFC 4978: after COMPRESS DEFLATE, what the client sends is inflated here.
        self._inflate = None

    # -- connection --------------------------------------------------------------------------

    def connectionMade(self):
        self.tags = {}
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", None) or str(peer)
        self.setTimeout(PREAUTH_TIMEOUT)
        self._no_delay()
        self.sendLine(b"* OK [CAPABILITY " + b" ".join(self._capabilities()) + b"] " + self.IDENT)

    def _no_delay(self):
        """Untagged and tagged responses are often written apart (a thread call in between):
        with Nagle's algorithm the second waits for the client's delayed ACK, 40 ms a command."""
        t = self.transport
        for _ in range(5):
            setter = getattr(t, "setTcpNoDelay", None)
            if setter is not None:
                try:
                    setter(True)
                except Exception:
                    pass
                return
            t = getattr(t, "transport", None)

    def connectionLost(self, reason):
        self._lost = True
        self.setTimeout(None)
        if self._flow is not None:
            self._flow.stopProducing()
        self._deselect()
        if self._onLogout:
            logout, self._onLogout = self._onLogout, None
            logout()

    def timeoutConnection(self):
        log.info("imap autologout of {peer}", peer=self.peer)
        self.sendLine(b"* BYE Autologout; idle for too long")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line):
        self.sendLine(b"* BYE Command line too long")
        self.transport.loseConnection()

    def _capabilities(self) -> list[bytes]:
        view = SessionView(can_starttls=self._can_starttls(), login_allowed=self._login_allowed(),
                           authenticated=self.state in ("auth", "select"), compressed=self._inflate is not None)
        return capability_names(view)

    listCapabilities = _capabilities

    def _can_starttls(self) -> bool:
        return (self.listener.tls == "starttls" and not self.secure and self.state == "unauth"
                and self.context.tls is not None)

    def _login_allowed(self) -> bool:
        """RFC 3501 6.2.3 / RFC 8314: no clear-text password outside TLS, except on loopback
        when ``[auth] plaintext_on_loopback`` says so."""
        return self.secure or (self.context.config.plaintext_on_loopback and is_loopback(self.peer))

    # -- input: one command at a time ----------------------------------------------------------

    def dataReceived(self, data):
        if self._lost:
            return
        if self._inflate is not None:
            self._inflated(data)
            return
        self._take(data)

    def _inflated(self, data: bytes) -> None:
        """Inflate in pieces of at most 64 KB, each read before the next is made: a small
        compressed input that inflates to gigabytes meets the same limits as plain input."""
        inflate = self._inflate
        try:
            while data and not self._lost:
                piece = inflate.decompress(data, READ_CHUNK)
                data = inflate.unconsumed_tail
                self._take(piece)
        except zlib.error:
            log.info("imap client {peer} sent data that does not inflate", peer=self.peer)
            self.sendLine(b"* BYE Compressed data error")
            self.transport.loseConnection()

    def setLineMode(self, extra=b""):
        """LineReceiver hands the bytes after a literal back through dataReceived; they are
        already inflated, so they go straight to the parser."""
        self.line_mode = 1
        if extra:
            self._take(extra)

    def _take(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.paused and len(self._buffer) > MAX_PENDING_INPUT:
            log.warn("imap client {peer} sent too much input without waiting", peer=self.peer)
            self._buffer = b""
            self.sendLine(b"* BYE Too much pipelined input")
            self.transport.loseConnection()

    def lineReceived(self, line):
        self.resetTimeout()
        try:
            if self.parseState == "command":
                self.parse_command(line)
            else:
                getattr(self, "parse_" + self.parseState)(line)
        except Exception:
            log.failure("imap input handling failed for {peer}", peer=self.peer)
            self.sendLine(b"* BAD internal server error")
            self._finished()
        self._check_pause()

    def rawDataReceived(self, data):
        self.resetTimeout()
        super().rawDataReceived(data)
        self._check_pause()

    def _check_pause(self):
        """While a command runs (and reads no literal), further input waits in the buffer."""
        if self._inflight and self.parseState == "command":
            self.paused = True

    def _finished(self):
        """The running command sent its tagged response: read the next one."""
        self._inflight = False
        if self.paused:
            self.paused = False
            reactor.callLater(0, self._resume)

    def _resume(self):
        if not self._lost and not self.paused:
            super().dataReceived(b"")

    def parse_command(self, line):
        self._inflight = True
        parts = line.split(b" ", 2)
        tag = parts[0]
        if not tag or not _TAG_RE.match(tag):
            self._tagged(b"*", b"BAD", b"invalid or missing tag")
            return
        if len(parts) < 2 or not parts[1]:
            self._tagged(tag, b"BAD", b"missing command")
            return
        cmd = parts[1].upper()
        rest = parts[2] if len(parts) == 3 else None
        try:
            self.dispatchCommand(tag, cmd, rest)
        except ImapError as e:
            self._tagged(tag, e.status, e.line())
        except imap4.IllegalClientResponse as e:
            self._tagged(tag, b"BAD", b"syntax error: " + str(e).encode("utf-8", "replace")[:200])
        except (imap4.IllegalMailboxEncoding, InvalidFolderName):
            self._tagged(tag, b"NO", b"[CANNOT] invalid mailbox name")
        except Exception:
            log.failure("imap command failed for {peer}", peer=self.peer)
            self._tagged(tag, b"BAD", b"[SERVERBUG] internal server error")

    def dispatchCommand(self, tag, cmd, rest, uid=None):
        self._commands = getattr(self, "_commands", 0) + 1
        if self._commands > self.context.config.max_commands:
            log.warn("imap session of {peer} closed: too many commands", peer=getattr(self, "peer", "?"))
            self.sendLine(b"* BYE too many commands in one session")
            self.transport.loseConnection()
            return
        if not cmd.isalpha():
            raise Bad("unknown command")
        entry = self.lookupCommand(cmd)
        if entry is None:
            known = any(getattr(self, f"{s}_{cmd.decode()}", None) for s in ("unauth", "auth", "select"))
            if not known:
                raise Bad("unknown command")
            if self.state == "unauth":
                raise Bad(f"{cmd.decode()} is not valid before login")
            if self.state == "auth":
                raise Bad(f"{cmd.decode()} needs a selected mailbox")
            raise Bad(f"{cmd.decode()} is not valid now")
        self._IMAP4Server__doCommand(tag, entry[0], [self, tag], entry[1:], rest, uid)

    def lookupCommand(self, cmd):
        return getattr(self, f"{self.state}_{cmd.decode('ascii', 'replace')}", None)

    def _IMAP4Server__ebDispatch(self, failure, tag):
        """An argument parser failed (Twisted calls this by its private name)."""
        e = failure.value
        if isinstance(e, ImapError):
            self._tagged(tag, e.status, e.line())
        elif isinstance(e, imap4.IllegalClientResponse):
            self._tagged(tag, b"BAD", b"syntax error: " + str(e).encode("utf-8", "replace")[:200])
        elif isinstance(e, (imap4.IllegalMailboxEncoding, InvalidFolderName)):
            self._tagged(tag, b"NO", b"[CANNOT] invalid mailbox name")
        elif isinstance(e, _Disconnect):
            pass
        else:
            log.failure("imap argument parsing failed for {peer}", failure, peer=self.peer)
            self._tagged(tag, b"BAD", b"[SERVERBUG] internal server error")

    # -- responses -------------------------------------------------------------------------------

    def _tagged(self, tag: bytes, status: bytes, text: bytes) -> None:
        if not self._lost:
            self.sendLine(tag + b" " + status + (b" " + text if text else b""))
        self._finished()

    def _untagged(self, text: bytes) -> None:
        if not self._lost:
            self.sendLine(b"* " + text)

    def _run(self, tag, handler, args, kw, expunge_ok):
        async def go():
            result = await handler(self, tag, *args, **kw)
            if result is not NO_REPLY and self.sel is not None and not self._lost:
                await self._sync(expunge_ok)
            return result

        def done(result):
            if result is not NO_REPLY:
                self._tagged(tag, b"OK", result or b"completed")

        d = defer.ensureDeferred(go())
        d.addCallbacks(done, self._failed, errbackArgs=(tag,))
        d.addErrback(lambda f: log.failure("imap response failed for {peer}", f, peer=self.peer))

    def _failed(self, failure, tag):
        e = failure.value
        if isinstance(e, StoreError):
            e = _store_error(e)
        if isinstance(e, ImapError):
            self._tagged(tag, e.status, e.line())
        elif isinstance(e, _Disconnect):
            self._finished()
        else:
            log.failure("imap command failed for {peer}", failure, peer=self.peer)
            self._tagged(tag, b"NO", b"[SERVERBUG] internal server error")

    # -- argument parsers (Twisted's, extended) --------------------------------------------------

    def _literal_size(self, spec: bytes):
        m = _LITERAL_RE.match(spec)
        if not m:
            raise imap4.IllegalClientResponse("malformed literal")
        return int(m.group(1)), bool(m.group(2))

    def _too_big(self, size: int, limit: int, sync: bool):
        if size <= limit:
            return
        if not sync:  # RFC 7888 4: the data is already on its way; the session cannot go on
            self.sendLine(b"* BYE [TOOBIG] literal larger than %d octets" % limit)
            self.transport.loseConnection()
            raise _Disconnect()
        raise No(f"literal larger than {limit} octets", "TOOBIG")

    def _read_literal(self, size: int, sync: bool, to_file: bool) -> defer.Deferred:
        d = defer.Deferred()
        self.parseState = "pending"
        self._pendingLiteral = (imap4.LiteralFile if to_file else imap4.LiteralString)(size, d)
        if sync:
            self.sendContinuationRequest(b"Ready for literal data")
        self.setRawMode()
        return d

    def arg_astring(self, line, final=False):
        """astring (RFC 3501 9): atom, quoted string with escapes, or literal (also ``{n+}``)."""
        line = (line or b"").lstrip(b" ")
        if not line:
            raise imap4.IllegalClientResponse("missing argument")
        if line[:1] == b'"':
            out, i = bytearray(), 1
            while i < len(line):
                c = line[i : i + 1]
                if c == b"\\" and i + 1 < len(line):
                    out += line[i + 1 : i + 2]
                    i += 2
                    continue
                if c == b'"':
                    return bytes(out), line[i + 1 :].lstrip(b" ")
                out += c
                i += 1
            raise imap4.IllegalClientResponse("unmatched quote")
        if line[:1] == b"{":
            size, plus = self._literal_size(line)
            if final and not size:
                return (b"", b"")
            self._too_big(size, 64 * 1024, not plus)
            return self._read_literal(size, not plus, False).addCallback(
                lambda result: (result[0], result[1].lstrip(b" ")))
        arg, _, rest = line.partition(b" ")
        if not arg or any(c in b'(){"\\' or c < 0x21 or c > 0x7e for c in arg.replace(b"]", b"")):
            raise imap4.IllegalClientResponse("invalid atom")
        return arg, rest

    def arg_finalastring(self, line):
        return self.arg_astring(line, final=True)

    def arg_literal(self, line):
        """The APPEND message: refused before it is read when above ``[limits] message_size``."""
        if not line or line[:1] != b"{":
            raise imap4.IllegalClientResponse("missing literal")
        size, plus = self._literal_size(line)
        self._too_big(size, self.context.config.max_message_size, not plus)
        return self._read_literal(size, not plus, True)

    def arg_seqset(self, line):
        arg, _, rest = (line or b"").partition(b" ")
        try:
            return searchmod.parse_seqset(arg), rest
        except searchmod.SearchSyntaxError as e:
            raise Bad(str(e)) from None

    def arg_searchkeys(self, line):
        """SEARCH keys, parsed into nested lists (literals spliced in by :meth:`arg_rest`)."""

        def parse(result):
            try:
                return imap4.parseNestedParens(result[0]), b""
            except Exception as e:
                raise imap4.IllegalClientResponse(f"cannot parse search keys: {type(e).__name__}") from None

        result = self.arg_rest(line)
        if isinstance(result, defer.Deferred):
            return result.addCallback(parse)
        return parse(result)

    def arg_rest(self, line):
        """The rest of the command line; literals (``{n}``, ``{n+}``) at line ends are read
        and spliced in as quoted strings, so LIST, SEARCH and friends accept them."""
        line = line or b""
        m = _LITERAL_RE.search(line)
        if m is None:
            return line, b""
        size, plus = self._literal_size(m.group(0))
        self._too_big(size, 64 * 1024, not plus)

        def got(result):
            data, rest = result
            # Twisted's parseNestedParens undoes \\" but not \\\\: escape the quotes only.
            quoted = b'"' + data.replace(b'"', b'\\"') + b'"'
            return self.arg_rest(line[: m.start()] + quoted + rest)

        return self._read_literal(size, not plus, False).addCallback(got)

    def opt_unchangedsince(self, line):
        """STORE's optional (UNCHANGEDSINCE n) (RFC 7162 3.1.3)."""
        line = line or b""
        if not line.startswith(b"("):
            return None, line
        m = _UNCHANGEDSINCE_RE.match(line)
        if m is None:
            raise Bad("the only STORE modifier is (UNCHANGEDSINCE n)")
        return int(m.group(1)), line[m.end() :]

    def arg_fetchspec(self, line):
        """FETCH attributes, plus RFC 7162's MODSEQ item and (CHANGEDSINCE n) modifier, which
        Twisted's parser does not know: they are taken out before it sees the rest."""
        line = (line or b"").strip()
        changedsince, vanished = None, False
        m = _CHANGEDSINCE_RE.match(line)
        if m:
            line, changedsince, vanished = m.group(1).strip(), int(m.group(2)), bool(m.group(3))
        stripped = _MODSEQ_ATT_RE.sub(b"", line)
        want_modseq = stripped != line
        if want_modseq:
            line = re.sub(rb" {2,}", b" ", re.sub(rb"\( +", b"(", re.sub(rb" +\)", b")", stripped))).strip()
        if line in (b"", b"()"):
            if not want_modseq:
                raise imap4.IllegalClientResponse("no FETCH attributes")
            items = []
        else:
            items = _arg_fetchatt(self, line)[0]
        return (items, want_modseq, changedsince, vanished), b""


    def opt_rest(self, line):
        return (line or None, b"")

    # -- any state -------------------------------------------------------------------------------

    async def c_capability(self, tag):
        """RFC 3501 6.1.1; the list is :data:`mailstack.imap.capabilities.CAPABILITIES`."""
        self._untagged(b"CAPABILITY " + b" ".join(self._capabilities()))
        return b"CAPABILITY completed"

    async def c_noop(self, tag):
        """RFC 3501 6.1.2: the store's changes are reported by the command wrapper."""
        return b"NOOP completed"

    async def c_logout(self, tag):
        self._untagged(b"BYE mailstack IMAP4rev1 server logging out")
        self._deselect()
        self.state = "logout"
        self._tagged(tag, b"OK", b"LOGOUT completed")
        self.transport.loseConnection()
        return NO_REPLY

    async def c_id(self, tag, rest):
        """RFC 2971: the client's ID is ignored; ours names the software only."""
        self._untagged(b'ID ("name" "mailstack")')
        return b"ID completed"

    unauth_CAPABILITY = auth_CAPABILITY = select_CAPABILITY = (command(c_capability),)
    unauth_NOOP = auth_NOOP = select_NOOP = (command(c_noop),)
    unauth_LOGOUT = auth_LOGOUT = select_LOGOUT = (command(c_logout),)
    unauth_ID = auth_ID = select_ID = (command(c_id), arg_rest)

    # -- not authenticated -------------------------------------------------------------------------

    async def c_starttls(self, tag):
        """RFC 3501 6.2.1.  Input pipelined after STARTTLS is discarded: it arrived in the clear."""
        if not self._can_starttls():
            raise Bad("STARTTLS is not available" + (" (TLS is already active)" if self.secure else ""))
        self._buffer = b""
        self._tagged(tag, b"OK", b"Begin TLS negotiation now")
        self.secure = True
        self.transport.startTLS(self.context.tls)
        return NO_REPLY

    async def c_login(self, tag, user, password):
        """RFC 3501 6.2.3."""
        if not self._login_allowed():
            raise No("LOGIN is disabled without TLS: use STARTTLS first", "PRIVACYREQUIRED")
        return await self._login(user, password, "LOGIN")

    async def c_authenticate(self, tag, mechanism, initial):
        """RFC 3501 6.2.2 with SASL PLAIN (RFC 4616) and the initial response of RFC 4959."""
        if mechanism.upper() != b"PLAIN":
            raise No("unsupported authentication mechanism (use PLAIN)", "CANNOT")
        if not self._login_allowed():
            raise No("authentication is disabled without TLS: use STARTTLS first", "PRIVACYREQUIRED")
        if initial is not None:
            response = b"" if initial.strip() == b"=" else initial.strip()
        else:
            d = defer.Deferred()
            self.parseState = "pending"
            self._pendingLiteral = d
            self.sendContinuationRequest(None)
            response = (await d).strip()
        if response == b"*":
            raise Bad("authentication cancelled")
        try:
            decoded = binascii.a2b_base64(response, strict_mode=True)
        except (binascii.Error, ValueError):
            raise Bad("invalid base64 in the SASL response") from None
        parts = decoded.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise Bad("malformed PLAIN response")
        authzid, authcid, password = parts
        if authzid and authzid.lower() != authcid.lower():
            self._refused(authcid, "AUTHENTICATE PLAIN", "authorization identity differs")
        return await self._login(authcid, password, "AUTHENTICATE PLAIN")

    def _shown(self, user: bytes) -> str:
        return user.decode("utf-8", "replace")[:100]

    def _refused(self, user: bytes, method: str, why: str):
        log.warn("imap authentication failed for {user} from {peer} ({method}: {why})",
                 user=self._shown(user), peer=self.peer, method=method, why=why)
        self._failures += 1
        if self._failures >= MAX_AUTH_FAILURES:
            self.sendLine(b"* BYE Too many authentication failures")
            reactor.callLater(0, self.transport.loseConnection)
        raise No("Authentication failed", "AUTHENTICATIONFAILED")

    async def _login(self, user: bytes, password: bytes, method: str):
        creds = credentials.UsernamePassword(user, password)
        gate = getattr(self.context, "login_gate", None)  # mailstack.throttle: delays, lockout
        try:
            if gate is not None:
                _iface, account, logout = await gate.login(creds, self.peer, self.listener.key, imap4.IAccount)
            else:
                _iface, account, logout = await self.portal.login(creds, None, imap4.IAccount)
        except (cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
            self._refused(user, method, "bad user name or password")
        except LoginThrottled as e:
            raise No(str(e), "UNAVAILABLE") from None  # RFC 5530 3: temporary, try later
        except Exception:
            log.failure("imap authentication error for {user} from {peer}", user=self._shown(user), peer=self.peer)
            raise No("authentication is unavailable, try again later", "UNAVAILABLE") from None
        try:
            mailbox = await threads.deferToThread(account.mailbox)
        except UnknownUser as e:
            logout()
            log.warn("imap mailbox unusable for {user} from {peer}: {error}", user=account.address, peer=self.peer, error=str(e))
            raise No("this account has no usable mailbox", "UNAVAILABLE") from None
        if self._lost:
            logout()
            return NO_REPLY
        self.account, self._onLogout = account, logout
        self.address, self.mailbox = account.address, mailbox
        self.state = "auth"
        self.setTimeout(self.autologout)
        log.info("imap login {user} from {peer} ({method})", user=account.address, peer=self.peer, method=method)
        return b"[CAPABILITY " + b" ".join(self._capabilities()) + b"] Logged in"

    unauth_STARTTLS = (command(c_starttls),)
    unauth_LOGIN = (command(c_login), arg_astring, arg_finalastring)
    unauth_AUTHENTICATE = (command(c_authenticate), _arg_atom, opt_rest)

    # -- authenticated -----------------------------------------------------------------------------

    def _name(self, raw: bytes, for_create: bool = False) -> str:
        """A mailbox name from the wire (modified UTF-7) -> the store's name; NO if invalid."""
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise No("mailbox names must be modified UTF-7 (RFC 3501 5.1.3)", "CANNOT") from None
        try:
            name = folder_names.decode_mutf7(text)
            if for_create:
                name = name.rstrip("/")
            return folder_names.normalise(name)
        except InvalidFolderName as e:
            raise No(f"invalid mailbox name: {e}", "CANNOT") from None

    async def _store(self, fn, *args):
        try:
            return await threads.deferToThread(fn, *args)
        except StoreError as e:
            raise _store_error(e) from None

    async def c_select(self, tag, raw_name, params=None, readonly=False):
        """RFC 3501 6.3.1/6.3.2.  SELECT claims the messages in new/ as this session's \\Recent
        (RFC 3501 2.3.2); EXAMINE only reports them."""
        resync = self._select_params(params)
        if self.sel is not None:  # RFC 7162 3.2.11 (and IMAP4rev2): say the old one is closed
            self._untagged(b"OK [CLOSED] previous mailbox closed")
        self._deselect()
        name = self._name(raw_name)
        mailbox = self.mailbox

        def work():
            folder = mailbox.folder(name)
            snap, recent = folder.select(take_recent=not readonly)
            vanished = []
            if resync is not None and resync[0] == snap.uidvalidity:
                vanished = folder.expunged_since(resync[1], resync[2])
            return folder, snap, recent, vanished

        folder, snap, recent, vanished = await self._store(work)
        sel = Selected(folder, readonly, snap.uidvalidity)
        sel.uids = [m.uid for m in snap.messages]
        sel.flags = {m.uid: m.flags for m in snap.messages}
        sel.recent = {m.uid for m in snap.messages if m.recent} if readonly else set(recent)
        sel.keywords = self._keywords(snap)
        sel.synced = snap
        flags = self._flag_names(sel)
        self._untagged(b"FLAGS (" + flags + b")")
        # RFC 3501 7.1: no flag can be changed in a mailbox opened with EXAMINE.
        permanent = b"()" if readonly else b"(" + flags + b" \\*)"
        self._untagged(b"OK [PERMANENTFLAGS " + permanent + b"] flags permitted")
        self._untagged(b"%d EXISTS" % len(sel.uids))
        self._untagged(b"%d RECENT" % sum(1 for u in sel.uids if u in sel.recent))
        unseen = next((i + 1 for i, m in enumerate(snap.messages) if "\\Seen" not in m.flags), None)
        if unseen is not None:
            self._untagged(b"OK [UNSEEN %d] first unseen message" % unseen)
        self._untagged(b"OK [UIDVALIDITY %d] UIDs valid" % snap.uidvalidity)
        self._untagged(b"OK [UIDNEXT %d] predicted next UID" % snap.uidnext)
        # RFC 7162 3.1.2.1: modification sequences are positive; an untouched folder says 1.
        self._untagged(b"OK [HIGHESTMODSEQ %d] highest" % max(1, snap.highestmodseq))
        if resync is not None and resync[0] == snap.uidvalidity:
            # RFC 7162 3.2.5: what the client missed since its MODSEQ, expunges first.
            _, since, known = resync
            if vanished:
                self._untagged(b"VANISHED (EARLIER) " + uid_set(vanished))
            known_set = None if known is None else set(known)
            for seq, m in enumerate(snap.messages, 1):
                if m.modseq > since and (known_set is None or m.uid in known_set):
                    self._untagged(b"%d FETCH (UID %d FLAGS %s MODSEQ (%d))"
                                   % (seq, m.uid, sel.flag_bytes(m.uid), m.modseq))
        if self._lost:
            return NO_REPLY
        self.sel = sel
        self.state = "select"
        if self.context.watcher is not None:
            sel.subscription = self.context.watcher.subscribe(folder.path, self._folder_changed)
        return (b"[READ-ONLY] EXAMINE" if readonly else b"[READ-WRITE] SELECT") + b" completed"

    def _select_params(self, params: bytes | None):
        """SELECT/EXAMINE parameters (RFC 7162 3.1.8 CONDSTORE, 3.2.5 QRESYNC): None, or
        (uidvalidity, modseq, known UIDs or None) to resynchronise.  Sets CONDSTORE."""
        if params is None:
            return None
        try:
            parsed = imap4.parseNestedParens(params.strip())
        except Exception:
            parsed = None
        if not parsed or len(parsed) != 1 or not isinstance(parsed[0], list) or not parsed[0]:
            raise Bad("SELECT parameters are (CONDSTORE) or (QRESYNC (uidvalidity modseq [known-uids]))")
        resync, words = None, parsed[0]
        while words:
            word = words.pop(0)
            if isinstance(word, bytes) and word.upper() == b"CONDSTORE":
                self.condstore = True
            elif isinstance(word, bytes) and word.upper() == b"QRESYNC":
                if not self.qresync:
                    raise Bad("QRESYNC must be enabled first (ENABLE QRESYNC)")
                args = words.pop(0) if words and isinstance(words[0], list) else []
                if not (2 <= len(args) <= 4) or not all(isinstance(a, bytes) and a.isdigit() for a in args[:2]):
                    raise Bad("QRESYNC needs (uidvalidity modseq [known-uids [sequence match data]])")
                known = None
                if len(args) >= 3:
                    if not isinstance(args[2], bytes):
                        raise Bad("QRESYNC known-uids must be a UID set")
                    known = self._uid_list(args[2])
                # args[3], the sequence match data, only saves a server work (3.2.5.2): unused.
                resync = (int(args[0]), int(args[1]), known)
            else:
                raise Bad("unknown SELECT parameter")
        return resync

    @staticmethod
    def _uid_list(text: bytes, top: int | None = None) -> list[int]:
        """A UID set as a list (``*`` is ``top``), at most ``MAX_UID_SET`` UIDs."""
        try:
            ranges = searchmod.parse_seqset(text)
        except searchmod.SearchSyntaxError as e:
            raise Bad(str(e)) from None
        out: set[int] = set()
        for lo, hi in ranges:
            lo = top if lo is None else lo
            hi = top if hi is None else hi
            if lo is None or hi is None:
                raise Bad("* is not allowed here")
            lo, hi = min(lo, hi), max(lo, hi)
            if hi - lo + len(out) > MAX_UID_SET:
                raise Bad("UID set too large")
            out.update(range(lo, hi + 1))
        return sorted(out)

    async def c_examine(self, tag, raw_name, params=None):
        return await IMAPServer.c_select(self, tag, raw_name, params, readonly=True)

    @staticmethod
    def _keywords(snap) -> frozenset:
        return frozenset(f for m in snap.messages for f in m.flags if not f.startswith("\\"))

    @staticmethod
    def _flag_names(sel: Selected) -> bytes:
        return " ".join(list(SYSTEM_FLAGS) + sorted(sel.keywords)).encode("utf-8", "replace")

    def _deselect(self):
        sel, self.sel = self.sel, None
        if sel is not None and sel.subscription is not None:
            sel.subscription.cancel()
        if self.state == "select":
            self.state = "auth"

    async def c_create(self, tag, raw_name):
        """RFC 3501 6.3.3: missing parents are made too; a trailing "/" is dropped."""
        name = self._name(raw_name, for_create=True)
        if name == "INBOX":
            raise No("INBOX always exists", "ALREADYEXISTS")
        await self._store(self.mailbox.create_folder, name)
        return b"CREATE completed"

    async def c_delete(self, tag, raw_name):
        """RFC 3501 6.3.4: the folder and its mail go; its children stay."""
        name = self._name(raw_name)
        if name == "INBOX":
            raise No("INBOX cannot be deleted", "CANNOT")
        if self.sel is not None and self.sel.folder.name == name:
            self._deselect()
        await self._store(self.mailbox.delete_folder, name)
        return b"DELETE completed"

    async def c_rename(self, tag, raw_old, raw_new):
        """RFC 3501 6.3.5: children move along; renaming INBOX moves its mail to the new folder."""
        old, new = self._name(raw_old), self._name(raw_new, for_create=True)
        if new == "INBOX":
            raise No("cannot rename to INBOX", "ALREADYEXISTS")
        await self._store(self.mailbox.rename_folder, old, new)
        return b"RENAME completed"

    async def c_subscribe(self, tag, raw_name):
        await self._store(self.mailbox.subscribe, self._name(raw_name))
        return b"SUBSCRIBE completed"

    async def c_unsubscribe(self, tag, raw_name):
        await self._store(self.mailbox.unsubscribe, self._name(raw_name))
        return b"UNSUBSCRIBE completed"

    async def c_list(self, tag, rest, lsub=False):
        """RFC 3501 6.3.8 LIST (with RFC 5258 selection and return options, RFC 6154 special-use,
        RFC 3348 children and RFC 5819 STATUS) and 6.3.9 LSUB."""
        try:
            tokens = imap4.parseNestedParens(rest or b"")
        except Exception:
            raise Bad("cannot parse LIST arguments") from None
        select_opts = []
        if tokens and isinstance(tokens[0], list) and not lsub:
            select_opts = [t.upper() for t in tokens.pop(0) if isinstance(t, bytes)]
        if len(tokens) < 2 or isinstance(tokens[0], list):
            raise Bad("LIST needs a reference and a mailbox pattern")
        ref, patterns = tokens[0], tokens[1]
        patterns = patterns if isinstance(patterns, list) else [patterns]
        return_opts: list = []
        if len(tokens) > 2:
            if (lsub or len(tokens) != 4 or not isinstance(tokens[2], bytes) or tokens[2].upper() != b"RETURN"
                    or not isinstance(tokens[3], list)):
                raise Bad("unexpected LIST arguments")
            return_opts = tokens[3]
        want_status = None
        ret = set()
        i = 0
        while i < len(return_opts):
            opt = return_opts[i]
            if isinstance(opt, bytes) and opt.upper() == b"STATUS" and i + 1 < len(return_opts):
                items = return_opts[i + 1]
                if not isinstance(items, list) or not all(isinstance(x, bytes) for x in items):
                    raise Bad("RETURN (STATUS (...)) needs a list of status items")
                want_status = [x.upper().decode("ascii", "replace") for x in items]
                i += 2
                continue
            if isinstance(opt, bytes):
                ret.add(opt.upper())
            i += 1
        if want_status and any(s not in _STATUS_ITEMS for s in want_status):
            raise Bad("unknown STATUS item")
        subscribed_only = lsub or b"SUBSCRIBED" in select_opts
        special_only = b"SPECIAL-USE" in select_opts
        show_subscribed = b"SUBSCRIBED" in select_opts or b"SUBSCRIBED" in ret
        word = b"LSUB" if lsub else b"LIST"
        if not isinstance(ref, bytes) or not patterns:  # NIL is not a mailbox name (RFC 3501 9)
            raise Bad("LIST needs a reference name and a mailbox pattern")
        try:
            ref_text = folder_names.decode_mutf7(ref.decode("ascii"))
            texts = [folder_names.decode_mutf7(p.decode("ascii")) for p in patterns if isinstance(p, bytes)]
        except (InvalidFolderName, UnicodeDecodeError):
            raise No("invalid mailbox pattern", "CANNOT") from None
        if texts == [""] and not select_opts:  # RFC 3501 6.3.8: the hierarchy delimiter
            self._untagged(word + b' (\\Noselect) "/" ""')
            return word + b" completed"
        mailbox = self.mailbox
        folders, subs = await self._store(lambda: (mailbox.list_folders(), set(mailbox.subscriptions())))
        subs.add("INBOX")  # always there, always shown: clients that list subscribed folders only need it
        regexes = [pattern_regex(ref_text + p) for p in texts if p]
        existing = {f.name: f for f in folders}
        found: list[tuple[str, list[str]]] = []
        if subscribed_only:
            candidates = sorted(subs, key=lambda n: (n != "INBOX", n))
        else:
            candidates = [f.name for f in folders]
        seen = set()
        for name in candidates:
            if not any(name_matches(rx, name) for rx in regexes):
                if lsub and any("%" in p for p in texts):  # a subscribed child: its parent, \Noselect
                    parts = name.split("/")
                    for k in range(len(parts) - 1, 0, -1):
                        parent = "/".join(parts[:k])
                        if parent not in subs and parent not in seen and any(name_matches(rx, parent) for rx in regexes):
                            seen.add(parent)
                            found.append((parent, ["\\Noselect"]))
                            break
                continue
            if name in seen:
                continue
            seen.add(name)
            info = existing.get(name)
            attrs: list[str] = []
            if info is None:
                attrs.append("\\NonExistent" if not lsub else "\\Noselect")
            else:
                if not info.selectable:
                    attrs.append("\\Noselect")
                children = any(other.startswith(name + "/") for other in existing)
                attrs.append("\\HasChildren" if children else "\\HasNoChildren")
                if info.special_use:
                    attrs.append(info.special_use)
            if special_only and not (info and info.special_use):
                continue
            if show_subscribed and not lsub and name in subs:
                attrs.append("\\Subscribed")
            found.append((name, attrs))
        for name, attrs in found:
            self._untagged(word + b" (" + " ".join(attrs).encode() + b') "/" ' + _astring_out(name))
            if want_status and name in existing and existing[name].selectable:
                try:
                    await self._status_line(name, want_status)
                except ImapError:
                    pass
        return word + b" completed"

    async def c_lsub(self, tag, rest):
        return await IMAPServer.c_list(self, tag, rest, lsub=True)

    async def _status_line(self, name: str, items: list[str]):
        mailbox = self.mailbox
        snap = await self._store(lambda: mailbox.folder(name).snapshot())
        values = {
            "MESSAGES": len(snap.messages),
            "RECENT": sum(1 for m in snap.messages if m.recent),
            "UIDNEXT": snap.uidnext,
            "UIDVALIDITY": snap.uidvalidity,
            "UNSEEN": sum(1 for m in snap.messages if "\\Seen" not in m.flags),
            "HIGHESTMODSEQ": max(1, snap.highestmodseq),
        }
        if self.sel is not None and self.sel.folder.name == name:
            values["RECENT"] = sum(1 for u in self.sel.uids if u in self.sel.recent)
        body = " ".join(f"{k} {values[k]}" for k in items).encode()
        self._untagged(b"STATUS " + _astring_out(name) + b" (" + body + b")")

    async def c_status(self, tag, raw_name, items):
        """RFC 3501 6.3.10."""
        name = self._name(raw_name)
        wanted = []
        for item in items or []:
            if not isinstance(item, bytes) or item.upper().decode() not in _STATUS_ITEMS:
                raise Bad("unknown STATUS item")
            wanted.append(item.upper().decode())
        if not wanted:
            raise Bad("STATUS needs at least one item")
        await self._status_line(name, wanted)
        return b"STATUS completed"

    async def c_append(self, tag, raw_name, flags, date, literal):
        """RFC 3501 6.3.11 with APPENDUID (RFC 4315).  The message is stored byte for byte."""
        name = self._name(raw_name)
        stored_flags = self._check_flags(flags or [])
        when = None
        if date is not None:
            try:
                when = msgmod.parse_date_time(date)
            except ValueError:
                raise Bad("invalid date-time (use \"dd-Mon-yyyy hh:mm:ss +zzzz\")") from None
        mailbox = self.mailbox

        def work():
            try:
                folder = mailbox.folder(name)
            except FolderNotFound:
                raise No("no such mailbox", "TRYCREATE") from None
            uid = folder.append(literal, stored_flags, when)
            return folder.snapshot().uidvalidity, uid

        try:
            uidvalidity, uid = await self._store(work)
        finally:
            literal.close()
        return b"[APPENDUID %d %d] APPEND completed" % (uidvalidity, uid)

    async def c_compress(self, tag, mechanism):
        """RFC 4978: from the tagged OK on, both directions are raw DEFLATE."""
        if self._inflate is not None:
            raise No("compression is already active", "COMPRESSIONACTIVE")
        if mechanism.upper() != b"DEFLATE":
            raise Bad("the only compression mechanism is DEFLATE")
        if self._buffer:  # RFC 4978 3: the client waits for the OK before compressing
            raise Bad("no command may follow COMPRESS before its response")
        self._tagged(tag, b"OK", b"DEFLATE active")
        log.info("imap compression on for {user} from {peer}", user=self.address, peer=self.peer)
        if not self._lost:
            self.transport = DeflateTransport(self.transport)
            self._inflate = zlib.decompressobj(-15)
        return NO_REPLY

    async def c_namespace(self, tag):
        """RFC 2342: one personal namespace, "/" as the separator."""
        self._untagged(b'NAMESPACE (("" "/")) NIL NIL')
        return b"NAMESPACE completed"

    async def c_enable(self, tag, rest):
        """RFC 5161; CONDSTORE (RFC 7162 3.1) and QRESYNC (RFC 7162 3.2.3) can be enabled."""
        if not rest or not rest.strip():
            raise Bad("ENABLE needs at least one capability")
        enabled = []
        for word in rest.split():
            if word.upper() == b"CONDSTORE" and b"CONDSTORE" not in enabled:
                self.condstore = True
                enabled.append(b"CONDSTORE")
            elif word.upper() == b"QRESYNC" and b"QRESYNC" not in enabled:
                self.condstore = self.qresync = True  # RFC 7162 3.2.3: QRESYNC implies CONDSTORE
                enabled.append(b"QRESYNC")
        self._untagged(b"ENABLED" + b"".join(b" " + w for w in enabled))
        return b"ENABLE completed"

    async def c_idle(self, tag):
        """RFC 2177.  Changes to the selected folder (this process: at once; others: inotify,
        within about a second) are pushed as they happen, until the client sends DONE."""
        self._idle_tag = tag
        self.parseState = "idle"
        self.sendContinuationRequest(b"idling")
        if self.sel is not None:
            self._idle_sync()
        return NO_REPLY

    def parse_idle(self, line):
        tag, self._idle_tag = self._idle_tag, None
        self.parseState = "command"
        if line.strip().upper() != b"DONE":
            self._tagged(tag, b"BAD", b"expected DONE")
            return

        async def finish():
            if self.sel is not None:
                await self._sync(True)
            return b"IDLE terminated"

        self._run(tag, lambda _self, _tag: finish(), (), {}, True)

    def _folder_changed(self):
        if self._idle_tag is not None:
            self._idle_sync()

    def _idle_sync(self):
        d = defer.ensureDeferred(self._sync(True))
        d.addErrback(lambda f: log.failure("imap IDLE update failed for {peer}", f, peer=self.peer))

    auth_SELECT = select_SELECT = (command(c_select), arg_astring, opt_rest)
    auth_EXAMINE = select_EXAMINE = (command(c_examine), arg_astring, opt_rest)
    auth_CREATE = select_CREATE = (command(c_create), arg_finalastring)
    auth_DELETE = select_DELETE = (command(c_delete), arg_finalastring)
    auth_RENAME = select_RENAME = (command(c_rename), arg_astring, arg_finalastring)
    auth_SUBSCRIBE = select_SUBSCRIBE = (command(c_subscribe), arg_finalastring)
    auth_UNSUBSCRIBE = select_UNSUBSCRIBE = (command(c_unsubscribe), arg_finalastring)
    auth_LIST = select_LIST = (command(c_list), arg_rest)
    auth_LSUB = select_LSUB = (command(c_lsub), arg_rest)
    auth_STATUS = select_STATUS = (command(c_status), arg_astring, _arg_plist)
    auth_APPEND = select_APPEND = (command(c_append), arg_astring, _opt_plist,
                                   _opt_datetime, arg_literal)
    auth_NAMESPACE = select_NAMESPACE = (command(c_namespace),)
    auth_COMPRESS = select_COMPRESS = (command(c_compress), _arg_atom)
    auth_ENABLE = select_ENABLE = (command(c_enable), arg_rest)
    auth_IDLE = select_IDLE = (command(c_idle),)

    # -- selected: keeping the client's view in step with the store --------------------------------

    async def _sync(self, expunge: bool) -> None:
        """Report what changed in the selected folder since the client last heard (RFC 3501
        7.3.1 EXISTS, 7.3.2 RECENT, 7.4.1 EXPUNGE, 7.4.2 FETCH FLAGS) and update the session's
        UID list to match.  EXPUNGE responses go out highest sequence number first, so each
        number is right when the client applies it."""
        await self._sync_lock.acquire()
        try:
            sel = self.sel
            if sel is None or self._lost:
                return
            folder = sel.folder
            last = sel.uids[-1] if sel.uids else 0

            def work():
                snap = folder.snapshot()
                if snap is sel.synced:  # the store hands out the same snapshot while nothing changed
                    return snap, None
                taken = []
                if not sel.readonly and any(m.recent and m.uid > last for m in snap.messages):
                    taken = folder.take_recent()
                    snap = folder.snapshot()
                return snap, taken

            try:
                snap, taken = await threads.deferToThread(work)
            except StoreError as e:
                log.warn("imap cannot refresh {folder} for {user}: {error}", folder=folder.name,
                         user=self.address, error=str(e))
                return
            if self.sel is not sel or self._lost or taken is None:
                return
            present = snap.by_uid()
            lines = []
            if expunge:
                gone = []
                for i in range(len(sel.uids) - 1, -1, -1):
                    uid = sel.uids[i]
                    if uid not in present:
                        lines.append(b"%d EXPUNGE" % (i + 1))
                        gone.append(uid)
                        del sel.uids[i]
                        sel.flags.pop(uid, None)
                        sel.recent.discard(uid)
                if gone and self.qresync:  # RFC 7162 3.2.10: VANISHED replaces EXPUNGE
                    lines = [b"VANISHED " + uid_set(sorted(gone))]
            sel.recent.update(taken)
            new = [m for m in snap.messages if m.uid > last]
            keywords = self._keywords(snap) | sel.keywords
            if keywords != sel.keywords:
                sel.keywords = keywords
                flags = self._flag_names(sel)
                lines.append(b"FLAGS (" + flags + b")")
                if not sel.readonly:
                    lines.append(b"OK [PERMANENTFLAGS (" + flags + b" \\*)] flags permitted")
            for seq, uid in enumerate(sel.uids, 1):
                m = present.get(uid)
                if m is not None and m.flags != sel.flags.get(uid):
                    sel.flags[uid] = m.flags
                    modseq = b" MODSEQ (%d)" % m.modseq if self.condstore else b""
                    lines.append(b"%d FETCH (UID %d FLAGS %s%s)" % (seq, uid, sel.flag_bytes(uid), modseq))
            if new:
                for m in new:
                    sel.uids.append(m.uid)
                    sel.flags[m.uid] = m.flags
                    if sel.readonly and m.recent:
                        sel.recent.add(m.uid)
                lines.append(b"%d EXISTS" % len(sel.uids))
                lines.append(b"%d RECENT" % sum(1 for u in sel.uids if u in sel.recent))
            for line in lines:
                self._untagged(line)
            if expunge:  # the session's view now matches this snapshot exactly
                sel.synced = snap
        finally:
            self._sync_lock.release()

    def _resolve(self, ranges, uid: bool) -> list[tuple[int, int]]:
        """A sequence set -> [(sequence number, UID)] of the messages the client knows."""
        sel = self.sel
        n = len(sel.uids)
        chosen: set[int] = set()
        if uid:
            last = sel.uids[-1] if sel.uids else 0
            for lo, hi in ranges:
                lo = last if lo is None else lo
                hi = last if hi is None else hi
                if lo > hi:
                    lo, hi = hi, lo
                i, j = bisect.bisect_left(sel.uids, lo), bisect.bisect_right(sel.uids, hi)
                chosen.update(range(i, j))
        else:
            if n == 0:
                if all(lo is None or hi is None for lo, hi in ranges):
                    return []
                raise Bad("invalid message sequence number: the mailbox is empty")
            for lo, hi in ranges:
                lo = n if lo is None else lo
                hi = n if hi is None else hi
                if lo > hi:
                    lo, hi = hi, lo
                if hi > n:
                    raise Bad(f"invalid message sequence number (the mailbox has {n} messages)")
                chosen.update(range(lo - 1, hi))
        return [(i + 1, sel.uids[i]) for i in sorted(chosen)]

    # -- selected state commands -----------------------------------------------------------------

    async def c_check(self, tag):
        """RFC 3501 6.4.1: every change is already durable in the store."""
        return b"CHECK completed"

    async def c_close(self, tag):
        """RFC 3501 6.4.2: expunge \\Deleted messages silently (unless read-only), deselect."""
        sel = self.sel
        if not sel.readonly:
            def work():
                snap = sel.folder.snapshot()
                known = set(sel.uids)
                doomed = [m.uid for m in snap.messages if "\\Deleted" in m.flags and m.uid in known]
                if doomed:
                    sel.folder.expunge(doomed)
            await self._store(work)
        self._deselect()
        return b"CLOSE completed"

    async def c_unselect(self, tag):
        """RFC 3691: deselect without expunging."""
        self._deselect()
        return b"UNSELECT completed"

    async def c_expunge(self, tag, ranges=None, uid=0):
        """RFC 3501 6.4.3, and UID EXPUNGE (RFC 4315 2.1) with a UID set.  The EXPUNGE
        responses come from the sync that follows every command."""
        sel = self.sel
        if sel.readonly:
            raise No("the mailbox is read-only (EXAMINE)", "READ-ONLY")
        only = None if ranges is None else {u for _, u in self._resolve(ranges, True)}

        def work():
            snap = sel.folder.snapshot()
            known = set(sel.uids)
            doomed = [m.uid for m in snap.messages if "\\Deleted" in m.flags and m.uid in known
                      and (only is None or m.uid in only)]
            if doomed:
                sel.folder.expunge(doomed)

        await self._store(work)
        return b"EXPUNGE completed"

    async def c_uid_expunge(self, tag, ranges, uid=1):
        return await IMAPServer.c_expunge(self, tag, ranges, uid=1)

    def _check_flags(self, flags) -> list[str]:
        out = []
        for raw in flags:
            flag = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if flag.startswith("\\"):
                canonical = _SYSTEM_BY_LOWER.get(flag.lower())
                if canonical is None:
                    raise Bad(f"{flag} is not a flag that can be set")
                out.append(canonical)
            else:
                if not flag or any(c in '(){ %*"\\]' or ord(c) < 0x21 or ord(c) > 0x7e for c in flag):
                    raise Bad(f"invalid keyword {flag[:40]!r}")
                out.append(flag)
        return out

    async def c_store(self, tag, ranges, unchangedsince, mode, flags, uid=0):
        """RFC 3501 6.4.6.  Without .SILENT every message in the set gets a FETCH FLAGS.
        With (UNCHANGEDSINCE n) (RFC 7162 3.1.3) messages changed since are left alone and
        listed in [MODIFIED]."""
        if unchangedsince is not None:
            self.condstore = True
        sel = self.sel
        mode = mode.upper()
        silent = mode.endswith(b".SILENT")
        base = mode[:-7] if silent else mode
        how = {b"FLAGS": "replace", b"+FLAGS": "add", b"-FLAGS": "remove"}.get(base)
        if how is None:
            raise Bad("STORE needs FLAGS, +FLAGS or -FLAGS")
        wanted = self._check_flags(flags)
        if sel.readonly:
            raise No("the mailbox is read-only (EXAMINE)", "READ-ONLY")
        targets = self._resolve(ranges, bool(uid))
        if not targets:
            return b"STORE completed"
        changed, refused = await self._store(sel.folder.set_flags, [u for _, u in targets], wanted, how, unchangedsince)
        if self.sel is not sel:
            return b"STORE completed"
        for u, (new_flags, _modseq) in changed.items():
            sel.flags[u] = new_flags
        new_keywords = {f for f in wanted if not f.startswith("\\")} - sel.keywords
        if new_keywords:
            sel.keywords = sel.keywords | new_keywords
            names = self._flag_names(sel)
            self._untagged(b"FLAGS (" + names + b")")
            self._untagged(b"OK [PERMANENTFLAGS (" + names + b" \\*)] flags permitted")
        refused_set = set(refused)
        for seq, u in targets:
            if u not in sel.flags or u in refused_set:
                continue
            extra = b" UID %d" % u if uid else b""
            if self.condstore and u in changed:  # RFC 7162 3.1.3: sent even with .SILENT
                extra += b" MODSEQ (%d)" % changed[u][1]
                if silent:
                    self._untagged(b"%d FETCH (%s)" % (seq, extra.strip()))
                    continue
            if not silent:
                self._untagged(b"%d FETCH (FLAGS %s%s)" % (seq, sel.flag_bytes(u), extra))
        if refused:
            numbers = refused if uid else [seq for seq, u in targets if u in refused_set]
            return b"[MODIFIED " + uid_set(numbers) + b"] conditional STORE failed for some messages"
        return b"STORE completed"

    async def c_copy(self, tag, ranges, raw_name, uid=0, move=False):
        """RFC 3501 6.4.7 with COPYUID (RFC 4315 3); MOVE (RFC 6851) is copy then expunge."""
        sel = self.sel
        if move and sel.readonly:
            raise No("the mailbox is read-only (EXAMINE)", "READ-ONLY")
        name = self._name(raw_name)
        targets = self._resolve(ranges, bool(uid))
        mailbox = self.mailbox

        def work():
            try:
                dest = mailbox.folder(name)
            except FolderNotFound:
                raise No("no such mailbox", "TRYCREATE") from None
            uids = [u for _, u in targets]
            pairs = sel.folder.move(uids, dest) if move else sel.folder.copy(uids, dest)
            return pairs, dest.snapshot().uidvalidity

        pairs, uidvalidity = await self._store(work)
        word = b"MOVE" if move else b"COPY"
        if targets and not pairs:
            raise No("the messages were expunged meanwhile", "EXPUNGEISSUED")
        if not pairs:
            return word + b" completed"
        code = b"[COPYUID %d %s %s]" % (uidvalidity, uid_set(p[0] for p in pairs), uid_set(p[1] for p in pairs))
        if move:
            self._untagged(b"OK " + code + b" moved")
            return b"MOVE completed"
        return code + b" COPY completed"

    async def c_move(self, tag, ranges, raw_name, uid=0):
        return await IMAPServer.c_copy(self, tag, ranges, raw_name, uid=uid, move=True)

    async def c_search(self, tag, charset, query, uid=0):
        """RFC 3501 6.4.4 (see :mod:`mailstack.imap.search`)."""
        sel = self.sel
        cs = (charset or b"US-ASCII").upper()
        if cs not in (b"US-ASCII", b"UTF-8"):
            raise No("unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
        try:
            tree = searchmod.compile_query(query, "utf-8")
        except searchmod.SearchSyntaxError as e:
            raise Bad(str(e)) from None
        except (IndexError, AttributeError, TypeError):
            raise Bad("incomplete search key") from None
        uids = list(sel.uids)
        flags = dict(sel.flags)
        recent = set(sel.recent)
        folder = sel.folder

        def work():
            info = folder.snapshot().by_uid()
            heads = folder.headers([u for u in uids if u in info]) if searchmod.needs_header(tree) else {}
            may_match = searchmod.header_prefilter(searchmod.required_header_text(tree))
            candidates = [searchmod.Candidate(folder, seq, u, info[u], flags.get(u, frozenset()), u in recent,
                                              heads.get(u)) for seq, u in enumerate(uids, 1) if u in info
                          and (may_match is None or u not in heads or may_match(heads[u]))]
            return searchmod.run(tree, candidates, len(uids), uids[-1] if uids else 0)

        try:
            found = await self._store(work)
        except searchmod.SearchSyntaxError as e:
            raise Bad(str(e)) from None
        numbers = [c.uid if uid else c.seq for c in found]
        tail = b""
        if found and searchmod.uses_modseq(tree):  # RFC 7162 3.1.5
            self.condstore = True
            tail = b" (MODSEQ %d)" % max(c.info.modseq for c in found)
        self._untagged(b"SEARCH" + b"".join(b" %d" % n for n in numbers) + tail)
        return b"SEARCH completed"

    # -- FETCH -------------------------------------------------------------------------------

    async def c_fetch(self, tag, ranges, spec, uid=0):
        """RFC 3501 6.4.5.  Responses are built from the stored bytes in a worker thread, a few
        dozen messages at a time; large whole messages are streamed from their file."""
        sel = self.sel
        query, want_modseq, changedsince, vanished = spec
        if vanished and not (uid and self.qresync):  # RFC 7162 3.2.6
            raise Bad("VANISHED needs UID FETCH with QRESYNC enabled")
        if want_modseq or changedsince is not None:
            self.condstore = True
            want_modseq = True  # RFC 7162 3.1.4.1: CHANGEDSINCE implies MODSEQ
        targets = self._resolve(ranges, bool(uid))
        if vanished:
            folder = sel.folder
            top = sel.uids[-1] if sel.uids else 0

            def asked():
                wanted = []
                for lo, hi in ranges:
                    lo, hi = (top if lo is None else lo), (top if hi is None else hi)
                    lo, hi = min(lo, hi), max(lo, hi)
                    wanted.append((lo, hi))
                return wanted

            def earlier():
                spans = asked()
                return [u for u in folder.expunged_since(changedsince) if any(lo <= u <= hi for lo, hi in spans)]

            gone = await self._store(earlier)
            if gone:
                self._untagged(b"VANISHED (EARLIER) " + uid_set(gone))
        items = list(query)
        if uid and not any(i.type == "uid" for i in items):
            items.insert(0, imap4._FetchParser.UID())
        sets_seen = not sel.readonly and any(
            (i.type == "body" and not i.peek and (i.empty or i.header or i.text or i.mime or i.part))
            or i.type in ("rfc822", "rfc822text") for i in items)
        folder = sel.folder
        known_flags, recent = sel.flags, sel.recent  # read by the worker; nothing else runs meanwhile

        def prepare():
            """*Blocking.*  Snapshot, \\Seen where the FETCH sets it, and (for the usual few
            messages) the responses too: one thread call for the whole command."""
            info = folder.snapshot().by_uid()
            changed = {}
            if sets_seen:
                unseen = [u for _, u in targets if u in info and "\\Seen" not in known_flags.get(u, ())]
                if unseen:
                    changed, _ = folder.set_flags(unseen, ["\\Seen"], "add")
            modseqs = {u: m for u, (_f, m) in changed.items()}
            live = [(sq, u) for sq, u in targets if u in info
                    and (changedsince is None or modseqs.get(u, info[u].modseq) > changedsince)]
            first = None
            if len(live) <= FETCH_BATCH:
                flag_bytes = {u: format_flags(changed[u][0] if u in changed else known_flags.get(u, ()), u in recent)
                              for _, u in live}
                first = build_fetch(folder, live, info, items, flag_bytes, modseqs, want_modseq)
            return info, changed, modseqs, live, first

        info, changed, flagged_now, targets, first = await self._store(prepare)
        for u, (new_flags, _m) in changed.items():
            sel.flags[u] = new_flags
        if first is not None:
            await self._write_fetch(first)
            return NO_REPLY if self._lost else b"FETCH completed"
        # Many messages: one batch is built (in a thread) while the one before is written, and
        # no further until the client has taken that one (the transport pauses the flow when
        # its buffer fills), so memory stays at about two batches however many messages are
        # fetched and however slow the client, and the socket does not wait for the builder.
        flow = self._flow = Flow()
        self.transport.registerProducer(flow, True)

        def build(start: int) -> defer.Deferred:
            batch = targets[start : start + FETCH_BATCH]
            flag_bytes = {u: sel.flag_bytes(u) for _, u in batch}
            return defer.ensureDeferred(self._store(build_fetch, folder, batch, info, items, flag_bytes,
                                                    flagged_now, want_modseq))

        ahead = build(0)
        try:
            for start in range(0, len(targets), FETCH_BATCH):
                current, ahead = ahead, None
                responses = await current
                if start + FETCH_BATCH < len(targets):
                    ahead = build(start + FETCH_BATCH)
                await self._write_fetch(responses)
                await flow.ready()
                if self._lost or flow.stopped:
                    return NO_REPLY
        finally:
            if ahead is not None:  # the connection went away: close what the next batch opened
                ahead.addCallback(_close_streams)
                ahead.addErrback(lambda f: None)
            self._flow = None
            if not self._lost:
                self.transport.unregisterProducer()
        return b"FETCH completed"

    async def _write_fetch(self, responses) -> None:
        pending = [seg for segments in responses for seg in segments]
        try:
            while pending and not self._lost:
                seg = pending.pop(0)
                if isinstance(seg, bytes):
                    self.transport.write(seg)
                else:
                    await self._stream(*seg)  # closes the file
        finally:
            for seg in pending:  # the connection went away: close what was opened
                if not isinstance(seg, bytes):
                    seg[0].close()

    async def _stream(self, f, offset: int, length: int) -> None:
        """Write ``length`` bytes of an open message file, read in a thread chunk by chunk
        (under the FETCH's flow control when it has one)."""
        owner = self._flow is None
        flow = self._flow if not owner else Flow()
        if owner:
            self._flow = flow
            self.transport.registerProducer(flow, True)
        try:
            if offset:
                await threads.deferToThread(f.seek, offset)
            remaining = length
            while remaining > 0 and not flow.stopped:
                chunk = await threads.deferToThread(f.read, min(READ_CHUNK, remaining))
                if not chunk:  # cannot happen (files never change), but the literal must be whole
                    chunk = b" " * remaining
                self.transport.write(chunk)
                remaining -= len(chunk)
                await flow.ready()
        finally:
            f.close()
            if owner:
                self._flow = None
                if not self._lost:
                    self.transport.unregisterProducer()

    select_CHECK = (command(c_check),)
    select_CLOSE = (command(c_close),)
    select_UNSELECT = (command(c_unselect),)
    select_EXPUNGE = (command(c_expunge),)
    select_UID_EXPUNGE = (command(c_uid_expunge), arg_seqset)
    select_SEARCH = (command(c_search, expunge_ok=False), _opt_charset, arg_searchkeys)
    select_FETCH = (command(c_fetch, expunge_ok=False), arg_seqset, arg_fetchspec)
    select_STORE = (command(c_store, expunge_ok=False), arg_seqset, opt_unchangedsince, _arg_atom,
                    _arg_flaglist)
    select_COPY = (command(c_copy), arg_seqset, arg_finalastring)
    select_MOVE = (command(c_move), arg_seqset, arg_finalastring)

    def do_UID(self, tag, command_name, line):
        """RFC 3501 6.4.8: UID COPY/FETCH/SEARCH/STORE, UID MOVE (RFC 6851), UID EXPUNGE (RFC 4315)."""
        name = command_name.upper()
        if name not in (b"COPY", b"MOVE", b"FETCH", b"SEARCH", b"STORE", b"EXPUNGE"):
            raise Bad("UID works with COPY, MOVE, FETCH, SEARCH, STORE and EXPUNGE")
        if name == b"EXPUNGE":
            entry = self.select_UID_EXPUNGE
            self._IMAP4Server__doCommand(tag, entry[0], [self, tag], entry[1:], line, None)
            return
        self.dispatchCommand(tag, name, line, uid=1)

    select_UID = (do_UID, _arg_atom, arg_rest)


def _close_streams(responses) -> None:
    """Close the message files of FETCH responses that will not be written."""
    for segments in responses:
        for seg in segments:
            if not isinstance(seg, bytes):
                seg[0].close()


class _Disconnect(Exception):
    """The session is being closed; no tagged response follows."""


# -- FETCH responses (worker thread) -------------------------------------------------------------


def _section_name(item) -> bytes:
    spec = ".".join(str(p + 1) for p in item.part)
    sub = ""
    if item.header:
        h = item.header
        if h.fields:
            sub = ("HEADER.FIELDS.NOT" if h.negate else "HEADER.FIELDS") + " (" + " ".join(
                f.decode("ascii", "replace") if isinstance(f, bytes) else f for f in h.fields).upper() + ")"
        else:
            sub = "HEADER"
    elif item.text:
        sub = "TEXT"
    elif item.mime:
        sub = "MIME"
    return ("BODY[" + ".".join(x for x in (spec, sub) if x) + "]").encode()


def _section_bytes(item, entity: msgmod.Entity) -> bytes:
    path = tuple(p + 1 for p in item.part)
    try:
        target = entity.locate(path)
    except KeyError:
        return b""
    if item.mime:
        return target.header if path else b""
    if item.header or item.text:
        message = target if not path else target.message
        if message is None:
            return b""
        if item.text:
            return message.body
        if item.header.fields:
            fields = [f.decode("ascii", "replace") if isinstance(f, bytes) else f for f in item.header.fields]
            return message.header_fields(fields, bool(item.header.negate))
        return message.header
    if not path:
        return entity.header + entity.body
    return target.body


def _header_only(items) -> bool:
    """True when every item needs only the message's header."""
    for i in items:
        if i.type in ("envelope", "rfc822header"):
            continue
        if i.type == "body" and i.header and not i.part:
            continue
        if i.type in ("uid", "flags", "internaldate", "rfc822size"):
            continue
        return False
    return True


def _needs_content(items) -> bool:
    return any(i.type not in ("uid", "flags", "internaldate", "rfc822size") for i in items)


#: FETCH items whose value is kept in the store's cache (see MaildirFolder.keep_derived): the
#: message never changes, so neither do they.  BODY is BODYSTRUCTURE without extension data.
_DERIVED = {"envelope": "imap.envelope", "bodystructure": "imap.bodystructure", "body": "imap.body"}


def _derived_kind(item) -> str | None:
    if item.type == "body" and item.header and item.header.fields and not item.part:
        # BODY[HEADER.FIELDS (...)]: a client asks for the same fields for every message it
        # lists (Thunderbird's message list), so the section itself is kept, per field list.
        names = sorted({(f.decode("ascii", "replace") if isinstance(f, bytes) else f).lower()
                        for f in item.header.fields})
        key = ("not " if item.header.negate else "") + " ".join(names)
        return "imap.fields." + hashlib.sha256(key.encode()).hexdigest()[:16]
    if item.type == "body" and (item.header or item.text or item.mime or item.part or item.empty):
        return None  # a section, not the structure
    return _DERIVED.get(item.type)


class _Derived:
    """The cached ENVELOPE/BODYSTRUCTURE values of one batch, and the ones computed for it."""

    def __init__(self, folder, uids, items):
        self.kind_of = {id(i): _derived_kind(i) for i in items}
        self.section_name = {id(i): _section_name(i) for i in items if i.type == "body"}
        self.kinds = {k for k in self.kind_of.values() if k}
        self.values = {k: folder.derived(uids, k) for k in self.kinds}
        self.fresh: dict[str, dict[int, bytes]] = {k: {} for k in self.kinds}

    def get(self, kind: str, uid: int, compute) -> bytes:
        value = self.values[kind].get(uid)
        if value is None:
            value = self.fresh[kind][uid] = compute()
        return value

    def complete(self, uid: int) -> bool:
        return all(uid in self.values[k] for k in self.kinds)

    def keep(self, folder) -> None:
        for kind, values in self.fresh.items():
            folder.keep_derived(kind, values)


def build_fetch(folder, batch, info, items, flag_bytes, flagged_now, want_modseq=False) -> list[list]:
    """*Blocking.*  One list of segments (bytes, or (open file, offset, length)) per message.

    Header-only items read header sections through the store's cache; ENVELOPE and
    BODYSTRUCTURE come from the cache when kept there, so a message is read only for what
    is not."""
    out = []
    header_only = _header_only(items)
    structural = [i for i in items if _needs_content([i]) and _derived_kind(i) is None]
    whole_only = all(i.type == "rfc822" or (i.type == "body" and i.empty and not i.part) or not _needs_content([i])
                     for i in items)
    uids = [uid for _, uid in batch]
    derived = _Derived(folder, uids, items)
    # A message needs its bytes unless every item is metadata or cached.
    need = [u for u in uids if structural or not derived.complete(u)] if _needs_content(items) else []
    heads = folder.headers(need) if header_only and need else {}
    need = set(need)
    for seq, uid in batch:
        m = info[uid]
        entity = raw = None
        files = []
        try:
            if uid in need:
                if header_only:
                    if uid not in heads:
                        raise MessageGone(uid)
                    entity = msgmod.Entity(heads[uid])
                elif whole_only:  # BODY[]/RFC822: the bytes as they are, or streamed when large
                    if m.size <= STREAM_ABOVE:
                        raw = folder.read_message(uid)
                else:
                    entity = msgmod.Entity(folder.read_message(uid))
            segments: list = [b"* %d FETCH (" % seq]
            for n, item in enumerate(items):
                if n:
                    segments.append(b" ")
                segments += _fetch_item(folder, uid, m, item, entity, flag_bytes, files, derived, raw)
        except MessageGone:  # expunged by another session meanwhile: RFC 3501 allows no response
            for f in files:
                f.close()
            continue
        if uid in flagged_now and not any(i.type == "flags" for i in items):
            segments.append(b" FLAGS " + flag_bytes[uid])
        if want_modseq:
            segments.append((b" " if items else b"") + b"MODSEQ (%d)" % flagged_now.get(uid, m.modseq))
        segments.append(b")\r\n")
        if not files:  # the usual case: nothing to stream, one piece of bytes
            out.append([b"".join(segments)])
            continue
        merged: list = []
        for seg in segments:
            if isinstance(seg, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] += seg
            else:
                merged.append(seg)
        out.append(merged)
    derived.keep(folder)
    return out


def _fetch_item(folder, uid, m, item, entity, flag_bytes, files, derived, raw=None) -> list:
    t = item.type
    if t == "uid":
        return [b"UID %d" % uid]
    if t == "flags":
        return [b"FLAGS " + flag_bytes[uid]]
    if t == "internaldate":
        return [b'INTERNALDATE "' + msgmod.format_date_time(m.internaldate) + b'"']
    if t == "rfc822size":
        return [b"RFC822.SIZE %d" % m.size]
    if t == "envelope":
        return [b"ENVELOPE " + derived.get("imap.envelope", uid, lambda: msgmod.sexp(msgmod.envelope(entity)))]
    if t == "bodystructure":
        return [b"BODYSTRUCTURE " + derived.get("imap.bodystructure", uid,
                                                 lambda: msgmod.sexp(msgmod.bodystructure(entity, True)))]
    if t == "rfc822header":
        return [b"RFC822.HEADER {%d}\r\n" % len(entity.header) + entity.header]
    if t == "rfc822text":
        return [b"RFC822.TEXT {%d}\r\n" % len(entity.body) + entity.body]
    if t == "rfc822" or (item.empty and not item.part):
        name = b"RFC822" if t == "rfc822" else b"BODY[]"
        begin = None if t == "rfc822" else item.partialBegin
        if entity is not None or raw is not None:
            data = raw if raw is not None else entity.header + entity.body
            if begin is not None:
                data = data[begin : begin + item.partialLength]
                name += b"<%d>" % begin
            return [name + b" {%d}\r\n" % len(data), data]  # joined once, with the rest
        f = folder.open_message(uid)
        files.append(f)
        size = os.fstat(f.fileno()).st_size
        offset, length = 0, size
        if begin is not None:
            offset = min(begin, size)
            length = max(0, min(item.partialLength, size - offset))
            name += b"<%d>" % begin
        return [name + b" {%d}\r\n" % length, (f, offset, length)]
    # t == "body"
    if not (item.header or item.text or item.mime or item.part):
        return [b"BODY " + derived.get("imap.body", uid, lambda: msgmod.sexp(msgmod.bodystructure(entity, False)))]
    kind = derived.kind_of[id(item)]
    if kind is not None:  # HEADER.FIELDS
        data = derived.get(kind, uid, lambda: _section_bytes(item, entity))
    else:
        data = _section_bytes(item, entity)
    name = derived.section_name[id(item)]
    if item.partialBegin is not None:
        data = data[item.partialBegin : item.partialBegin + item.partialLength]
        name += b"<%d>" % item.partialBegin
    return [name + b" {%d}\r\n" % len(data) + data]


# -- the factory ---------------------------------------------------------------------------------


class IMAPFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, context, listener):
        self.context, self.listener = context, listener

    def buildProtocol(self, addr):
        p = IMAPServer(self.context, self.listener)
        p.factory = self
        return p


def build_factory(context, listener) -> IMAPFactory:
    """The factory for one imap/imaps listener (see :mod:`mailstack.service`)."""
    context.realm.register(imap4.IAccount, make_avatar_factory(context.store))
    return IMAPFactory(context, listener)
