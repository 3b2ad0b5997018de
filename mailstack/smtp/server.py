"""The SMTP server: MX (port 25) and submission (587 STARTTLS, 465 implicit TLS).

Built on ``twisted.mail.smtp.ESMTP`` (reply formatting, timeouts, the ESMTP greeting) but
with the command handling replaced, because Twisted's falls short in ways that matter here:

* it reads lines with ``LineOnlyReceiver``, which cannot pause: with PIPELINING (RFC 2920)
  a reply that waits on a thread (AUTH, end of DATA) could be overtaken by the next one, and
  plaintext pipelined behind STARTTLS would be obeyed after the handshake (CVE-2011-0411).
  The session uses ``LineReceiver``'s receiving instead: it pauses while a command is
  pending and discards the buffer on STARTTLS;
* it feeds DATA a line at a time and rewrites the message (a blank line after its own
  Received header); here DATA and BDAT (RFC 3030) are read raw, byte-exact, into a bounded
  spool (``message.py``);
* its address grammar is ASCII-only (no SMTPUTF8), it advertises only AUTH and STARTTLS, and
  its replies carry no enhanced status codes.

Commands are dispatched through :data:`COMMANDS`, which says in which session states each
is allowed (anything else is ``503 5.5.1``).  Decisions about senders and recipients are
:mod:`policy`'s; delivery goes to the store in a worker thread, and the ``250`` after DATA is
sent only once every copy is fsynced.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
import email.utils
import re
import secrets
import time

from twisted.cred import credentials, error as cred_error
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.protocols import basic

from mailstack import config as config_mod
from mailstack.accounts import IMailUser
from mailstack.errors import MailError
from mailstack.smtp import address as addr
from mailstack.smtp import authentication
from mailstack.smtp.delivery import DeliveryBatcher
from mailstack.smtp.message import DotDecoder, MessageSpool
from mailstack.smtp.policy import SessionFacts, SmtpPolicy
from mailstack.throttle import LoginThrottled
from mailstack.tls import tls_info

log = Logger()

BUSY = b"421 4.7.0 Too many connections, try again later\r\n"

# Session states.
FRESH, GREETED, MAIL, RCPT = "fresh", "greeted", "mail", "rcpt"
ANY = frozenset({FRESH, GREETED, MAIL, RCPT})

#: command -> (method, states in which it is allowed).  RFC 5321 4.1.4 for the order.
COMMANDS = {
    b"EHLO": ("cmd_EHLO", ANY),
    b"HELO": ("cmd_HELO", ANY),
    b"STARTTLS": ("cmd_STARTTLS", frozenset({FRESH, GREETED})),  # RFC 3207 4
    b"AUTH": ("cmd_AUTH", frozenset({GREETED})),  # RFC 4954 4: not during a transaction
    b"MAIL": ("cmd_MAIL", frozenset({GREETED})),
    b"RCPT": ("cmd_RCPT", frozenset({MAIL, RCPT})),
    b"DATA": ("cmd_DATA", frozenset({RCPT})),
    b"BDAT": ("cmd_BDAT", ANY),  # checked inside: the chunk must be read even when refused
    b"RSET": ("cmd_RSET", ANY),
    b"NOOP": ("cmd_NOOP", ANY),
    b"VRFY": ("cmd_VRFY", ANY),
    b"HELP": ("cmd_HELP", ANY),
    b"QUIT": ("cmd_QUIT", ANY),
}

#: The EHLO keywords, each with its RFC.  ``None`` entries are decided per session.
CAPABILITIES = (
    ("PIPELINING", "RFC 2920"),
    ("SIZE", "RFC 1870"),
    ("8BITMIME", "RFC 6152"),
    ("SMTPUTF8", "RFC 6531"),
    ("ENHANCEDSTATUSCODES", "RFC 2034"),
    ("CHUNKING", "RFC 3030"),
    ("STARTTLS", "RFC 3207"),
    ("AUTH PLAIN LOGIN", "RFC 4954, RFC 4616"),
)

#: RFC 4954 4: an AUTH line may be 12288 octets; any other command line is refused past this.
MAX_LINE = 12288
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Input buffered while a reply is pending before the socket is paused.
PAUSE_BUFFER = 1 << 20


class SMTPSession(smtp.ESMTP):
    # LineReceiver's receiving (pausable, raw mode) instead of LineOnlyReceiver's.
    setRawMode = basic.LineReceiver.setRawMode
    setLineMode = basic.LineReceiver.setLineMode
    clearLineBuffer = basic.LineReceiver.clearLineBuffer
    line_mode = 1
    paused = False
    _busyReceiving = False
    MAX_LENGTH = MAX_LINE

    def __init__(self, settings: "SMTPSettings", listener: config_mod.Listener):
        smtp.ESMTP.__init__(self)
        self.settings = settings
        self.listener = listener
        self.host = settings.hostname.encode("idna")
        self.timeout = settings.timeout
        self.state = FRESH
        self.facts: SessionFacts | None = None
        self.commands = 0
        self._reset_transaction()
        self._auth_step = None
        self._raw_handler = None
        self._discard_line = False
        self._lost = False
        self._transport_paused = False
        self._messages = 0

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        self.facts = SessionFacts(peer=self.peer, submission=self.listener.protocol == "submission",
                                  tls=self.listener.tls == "implicit")
        self.session_id = secrets.token_hex(6)
        self.sendCode(220, self.host + b" ESMTP mailstack")
        self.setTimeout(self.timeout)

    def connectionLost(self, reason):
        self._lost = True
        self.setTimeout(None)
        self._drop_spool()

    def timeoutConnection(self):
        self.reply(421, "4.4.2", f"{self.settings.hostname} Timeout, closing connection")
        self.transport.loseConnection()

    def reply(self, code: int, enhanced: str | None, text: str) -> None:
        """Send a reply; the enhanced status code (RFC 2034) goes on every line."""
        lines = text.split("\n")
        prefix = f"{enhanced} " if enhanced else ""
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            self.transport.write(f"{code}{sep}{prefix}{line}\r\n".encode("utf-8"))

    def reply_error(self, e: MailError) -> None:
        self.reply(e.code, e.enhanced, e.message)

    def pause(self) -> None:
        """Stop acting on input until :meth:`resume` (a reply is pending on a thread).

        Input keeps being buffered (a pipelining client sends ahead); only past
        ``PAUSE_BUFFER`` bytes is the socket itself paused, so memory stays bounded without
        an epoll change for every message.
        """
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        if self._lost:
            return
        if self._transport_paused:
            self._transport_paused = False
            self.transport.resumeProducing()
        self.dataReceived(b"")

    # -- reading ---------------------------------------------------------------------------

    def dataReceived(self, data):
        if self.paused:
            self._buffer += data
            if len(self._buffer) > PAUSE_BUFFER and not self._transport_paused:
                self._transport_paused = True
                self.transport.pauseProducing()
            return
        if self._discard_line:
            end = data.find(b"\n")
            if end < 0:
                return
            data, self._discard_line = data[end + 1 :], False
        return basic.LineReceiver.dataReceived(self, data)

    def lineLengthExceeded(self, line):
        self._auth_step = None  # an AUTH exchange in progress ends here
        self.reply(500, "5.5.2", "Line too long")
        end = line.find(b"\r\n", self.MAX_LENGTH)
        if end < 0:
            self._discard_line = True  # the rest of this line is still to come
        else:
            self._buffer = line[end + 2 :]
            from twisted.internet import reactor

            reactor.callLater(0, self.dataReceived, b"")

    def lineReceived(self, line):
        self.resetTimeout()
        if self._auth_step is not None:
            return self._auth_step(line)
        self.commands += 1
        if self.commands > self.settings.max_commands:
            self.reply(421, "4.7.0", "Too many commands in one session")
            self.transport.loseConnection()
            return
        verb, _, rest = line.strip().partition(b" ")
        entry = COMMANDS.get(verb.upper())
        if entry is None:
            self.reply(500, "5.5.1", "Command not recognized")
            return
        method, states = entry
        if self.state not in states:
            self.reply(503, "5.5.1", f"Bad sequence of commands: {verb.upper().decode()} is not allowed now")
            return
        try:
            text = rest.strip().decode("utf-8")
        except UnicodeDecodeError:
            self.reply(501, "5.5.2", "Syntax error: the command is not valid UTF-8")
            return
        if _CONTROL.search(text):
            # A bare CR or LF here would end up inside Received or Return-Path as a header of its own.
            self.reply(501, "5.5.2", "Syntax error: control characters in the command")
            return
        try:
            getattr(self, method)(text)
        except MailError as e:
            self.reply_error(e)

    def rawDataReceived(self, data):
        self.resetTimeout()
        self._raw_handler(data)

    # -- greeting and small commands ---------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.sender: str | None = None
        self.recipients = []
        self.mail_params: dict = {}
        self._drop_spool()
        self.bdat_failed: MailError | None = None

    def _drop_spool(self) -> None:
        spool = getattr(self, "spool", None)
        if spool is not None:
            spool.close()
        self.spool = None

    def _hello_name(self, text: str) -> str:
        """RFC 5321 4.1.1.1: a domain or an address literal (it goes into Received)."""
        if not addr.valid_hello(text):
            raise MailError(501, "5.5.2", "Syntax: EHLO your-host-name (a domain or [address literal])")
        return text

    def cmd_HELO(self, text):
        self.helo = self._hello_name(text)
        self.esmtp = False
        self._reset_transaction()
        self.state = GREETED
        self.reply(250, None, f"{self.settings.hostname} Hello {self.helo} [{self.peer}]")

    def cmd_EHLO(self, text):
        self.helo = self._hello_name(text)
        self.esmtp = True
        self._reset_transaction()
        self.state = GREETED
        lines = [f"{self.settings.hostname} Hello {self.helo} [{self.peer}]"] + self.capabilities()
        self.reply(250, None, "\n".join(lines))

    def capabilities(self) -> list[str]:
        out = []
        for keyword, _rfc in CAPABILITIES:
            if keyword == "SIZE":
                out.append(f"SIZE {self.settings.max_size}")
            elif keyword == "STARTTLS":
                if self.settings.tls is not None and not self.facts.tls:
                    out.append(keyword)
            elif keyword.startswith("AUTH"):
                if self.auth_allowed():
                    out.append(keyword)
            else:
                out.append(keyword)
        return out

    def auth_allowed(self) -> bool:
        """AUTH only on submission, and only under TLS unless on loopback when allowed."""
        if not self.facts.submission:
            return False
        return self.facts.tls or (self.settings.plaintext_on_loopback and config_mod.is_loopback(self.peer))

    def cmd_NOOP(self, text):
        self.reply(250, "2.0.0", "OK")

    def cmd_RSET(self, text):
        self._reset_transaction()
        if self.state in (MAIL, RCPT):
            self.state = GREETED
        self.reply(250, "2.0.0", "Reset state")

    def cmd_VRFY(self, text):
        # RFC 5321 3.5.3: 252 when we will not say; telling would help address harvesters.
        self.reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

    def cmd_HELP(self, text):
        self.reply(214, "2.0.0", "Commands: " + " ".join(c.decode() for c in COMMANDS) + "\nSee RFC 5321")

    def cmd_QUIT(self, text):
        self.reply(221, "2.0.0", f"{self.settings.hostname} closing connection")
        self.transport.loseConnection()

    # -- STARTTLS and AUTH ---------------------------------------------------------------------

    def cmd_STARTTLS(self, text):
        if self.facts.tls:
            raise MailError(503, "5.5.1", "TLS is already active")
        if self.settings.tls is None:
            raise MailError(454, "4.7.0", "TLS not available")
        if text:
            raise MailError(501, "5.5.4", "STARTTLS takes no parameters")
        self.reply(220, "2.0.0", "Ready to start TLS")
        # RFC 3207 4.2 / CVE-2011-0411: anything pipelined behind STARTTLS was sent in the clear.
        self.clearLineBuffer()
        self.transport.startTLS(self.settings.tls)
        self.facts.tls = True
        self.facts.user = None  # RFC 3207 4.2: forget everything learnt before TLS, AUTH included
        self.state = FRESH  # RFC 3207 4.2: the client must EHLO again
        self._reset_transaction()

    def cmd_AUTH(self, text):
        if not self.facts.submission:
            raise MailError(503, "5.5.1", "AUTH is not available on this port")
        if self.facts.user is not None:
            raise MailError(503, "5.5.1", "Already authenticated")
        if not self.auth_allowed():
            raise MailError(538, "5.7.11", "Encryption required: use STARTTLS first")
        mechanism, _, initial = text.partition(" ")
        mechanism = mechanism.upper()
        if not mechanism:
            raise MailError(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        if mechanism == "PLAIN":
            if initial:
                return self._auth_plain(initial.encode())
            self._auth_step = self._auth_plain
            self.reply(334, None, "")
        elif mechanism == "LOGIN":
            self._login_user = None
            if initial:
                return self._auth_login(initial.encode())
            self._auth_step = self._auth_login
            self.reply(334, None, base64.b64encode(b"Username:").decode())
        else:
            raise MailError(504, "5.5.4", "Unrecognized authentication mechanism")

    def _decode_auth(self, line: bytes) -> bytes | None:
        self._auth_step = None
        if line.strip() == b"*":
            self.reply(501, "5.7.0", "Authentication cancelled")
            return None
        try:
            return base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError):
            self.reply(501, "5.5.2", "Bad base64 in authentication exchange")
            return None

    def _auth_plain(self, line: bytes):
        decoded = self._decode_auth(line)
        if decoded is None:
            return
        parts = decoded.split(b"\0")
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            self.reply(501, "5.5.2", "Malformed PLAIN response (RFC 4616)")
            return
        self._login(parts[1], parts[2])

    def _auth_login(self, line: bytes):
        decoded = self._decode_auth(line)
        if decoded is None:
            return
        if self._login_user is None:
            self._login_user = decoded
            self._auth_step = self._auth_login
            self.reply(334, None, base64.b64encode(b"Password:").decode())
        else:
            self._login(self._login_user, decoded)

    def _login(self, username: bytes, password: bytes):
        name = username.decode("utf-8", "replace")
        creds = credentials.UsernamePassword(username, password)
        self.pause()
        d = self.settings.login_gate.login(creds, self.peer, self.listener.key, IMailUser)

        def ok(result):
            _iface, avatar, _logout = result
            self.facts.user = avatar.address
            log.info("auth ok {listener} from {peer} as {user}", listener=self.listener.key, peer=self.peer, user=avatar.address)
            self.reply(235, "2.7.0", "Authentication successful")

        def failed(failure):
            if failure.check(cred_error.UnauthorizedLogin):
                log.info("auth failed {listener} from {peer} for {user}", listener=self.listener.key, peer=self.peer, user=name)
                self.reply(535, "5.7.8", "Authentication credentials invalid")
            elif failure.check(LoginThrottled):
                self.reply(454, "4.7.0", f"Too many authentication failures from your address; try again in {int(failure.value.retry_after) + 1} s")
            else:
                log.failure("authentication error", failure)
                self.reply(454, "4.7.0", "Temporary authentication failure")

        d.addCallbacks(ok, failed).addBoth(lambda _: self.resume())

    # -- the transaction -------------------------------------------------------------------

    def cmd_MAIL(self, text):
        sender, params = addr.parse_path(text, "FROM", null_ok=True)
        options = addr.parse_params(params)
        for key, value in options.items():
            if key == "SIZE":
                if not (value or "").isdigit():
                    raise MailError(501, "5.5.4", "SIZE needs a number")
                if int(value) > self.settings.max_size:
                    raise MailError(552, "5.3.4", f"Message size exceeds fixed maximum message size ({self.settings.max_size})")
            elif key == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    raise MailError(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
            elif key == "SMTPUTF8":
                if value is not None:
                    raise MailError(501, "5.5.4", "SMTPUTF8 takes no value")
            elif key == "AUTH":
                pass  # RFC 4954 5: we may ignore the AUTH= parameter
            else:
                raise MailError(555, "5.5.4", f"Unsupported MAIL parameter {key}")
        if not addr.is_ascii(sender) and "SMTPUTF8" not in options:
            raise MailError(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter (RFC 6531)")
        self.settings.policy.check_sender(self.facts, sender)
        self.sender, self.mail_params = sender, options
        self.state = MAIL
        self.reply(250, "2.1.0", f"Sender <{sender}> OK")

    def cmd_RCPT(self, text):
        address, params = addr.parse_path(text, "TO", null_ok=False) if "@" in text else self._bare_postmaster(text)
        if params:
            raise MailError(555, "5.5.4", f"Unsupported RCPT parameter {params[0].split('=')[0]}")
        if not addr.is_ascii(address) and "SMTPUTF8" not in self.mail_params:
            raise MailError(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter (RFC 6531)")
        recipient = self.settings.policy.check_recipient(self.facts, address, len(self.recipients))
        self.recipients.append(recipient)
        self.state = RCPT
        self.reply(250, "2.1.5", f"Recipient <{address}> OK")

    def _bare_postmaster(self, text: str):
        head, _, rest = text.partition(":")
        path, _, params = rest.strip().partition(" ")
        if head.strip().upper() == "TO" and path.strip("<>").lower() == "postmaster":
            return "postmaster", params.split()
        raise MailError(501, "5.1.3", "Bad recipient address syntax")

    def cmd_DATA(self, text):
        if text:
            raise MailError(501, "5.5.4", "DATA takes no parameters")
        if self.spool is not None:
            raise MailError(503, "5.5.1", "DATA cannot follow BDAT in one transaction")
        self.spool = MessageSpool(self.settings.max_size)
        self._decoder = DotDecoder()
        self._raw_handler = self._data_chunk
        self.setRawMode()
        self.reply(354, None, "Start mail input; end with <CRLF>.<CRLF>")

    def _data_chunk(self, data: bytes):
        out, done, rest = self._decoder.feed(data)
        self.spool.write(out)
        self.spool.bare_newline = self._decoder.bare_newline
        if done:
            self._raw_handler = None
            self.line_mode = 1
            if rest:
                self._buffer = rest + self._buffer
            self._end_of_message()

    def cmd_BDAT(self, text):
        parts = text.split()
        if not parts or not parts[0].isdigit() or len(parts) > 2 or (len(parts) == 2 and parts[1].upper() != "LAST"):
            # Without a valid size the chunk cannot be skipped: RFC 3030 3 says close.
            self.reply(501, "5.5.4", "Syntax: BDAT size [LAST]; closing connection")
            self.transport.loseConnection()
            return
        size, last = int(parts[0]), len(parts) == 2
        refusal = None
        if self.state != RCPT:
            refusal = MailError(503, "5.5.1", "BDAT needs MAIL and RCPT first")
        elif self.spool is None:
            self.spool = MessageSpool(self.settings.max_size)
        self._bdat_left, self._bdat_last, self._bdat_refusal = size, last, refusal
        self._raw_handler = self._bdat_chunk
        self.setRawMode()
        if size == 0:
            self._bdat_chunk(b"")

    def _bdat_chunk(self, data: bytes):
        take, rest = data[: self._bdat_left], data[self._bdat_left :]
        self._bdat_left -= len(take)
        if self._bdat_refusal is None and self.spool is not None:
            self.spool.write(take)
            self.spool.note_raw(take)
        if self._bdat_left > 0:
            return
        self._raw_handler = None
        self.line_mode = 1
        if rest:
            self._buffer = rest + self._buffer
        if self._bdat_refusal is not None:
            self.reply_error(self._bdat_refusal)
        elif self._bdat_last:
            self._end_of_message()
        elif self.spool.too_big:
            self.reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        else:
            self.reply(250, "2.0.0", f"{self.spool.size} octets received")

    def _end_of_message(self):
        spool, sender, recipients = self.spool, self.sender, self.recipients
        self.spool = None
        self.state = GREETED
        self.sender, self.recipients = None, []
        if spool.too_big:
            spool.close()
            self.reply(552, "5.3.4", f"Message size exceeds fixed maximum message size ({self.settings.max_size})")
            return
        if spool.bare_newline:
            # RFC 5321 2.3.8; passed on, a bare LF before "." lets a sender smuggle a second
            # message past the next hop ("SMTP smuggling").
            spool.close()
            self.reply(550, "5.6.11", "Bare CR or LF in the message; lines must end with CRLF")
            return
        received, added = self._trace_headers(recipients, spool)
        accounts, remote = [], []
        for r in recipients:
            accounts += [a for a in r.local if a not in accounts]
            remote += [a for a in r.remote if a not in remote]
        self._messages += 1
        message_id = f"{self.session_id}.{self._messages}"
        self.pause()
        settings = self.settings
        if self.facts.submission:
            domain = settings.signer.domain_for(authentication.header_from(spool.head), sender) if settings.signer else None
            d = (threads.deferToThread(settings.sign, spool, added, domain) if domain
                 else defer.succeed(Prepared(header=added)))
        elif settings.checker is not None:
            d = threads.deferToThread(settings.check, spool, self.peer, sender, self.helo)
        else:
            d = defer.succeed(Prepared())

        def deliver(prepared: Prepared):
            if prepared.action == "reject":
                log.info("refused {id} from <{sender}>: {reason}", id=message_id, sender=sender, reason=prepared.reason)
                raise MailError(550, "5.7.1", f"Message refused: {prepared.reason}")
            if prepared.action == "tempfail":
                log.info("deferred {id} from <{sender}>: {reason}", id=message_id, sender=sender, reason=prepared.reason)
                raise MailError(451, "4.7.0", f"Temporary failure: {prepared.reason}; try again later")
            head = received + prepared.header
            body = prepared.body if prepared.body is not None else spool
            # Local copies first, then the queue for the outside (both read the one spool, in
            # turn): a local failure then answers 451 before anything left for elsewhere.
            folder = "Junk" if prepared.action == "junk" else "INBOX"
            d2 = settings.deliver_local(accounts, sender, head, body, folder)
            if remote:
                d2.addCallback(lambda _: settings.relay.enqueue(sender, remote, _compose(head, body)))
            return d2.addCallback(lambda qid: (qid, folder))

        def delivered(result):
            qid, folder = result
            log.info("delivered {id} from <{sender}> to {accounts}{where} ({size} bytes) via {listener}{queued}",
                     id=message_id, sender=sender, accounts=accounts, size=spool.size, listener=self.listener.key,
                     where=f" ({folder})" if folder != "INBOX" else "", queued=f", queued {qid} for {remote}" if qid else "")
            self.reply(250, "2.0.0", f"OK id={message_id}")

        def failed(failure):
            if failure.check(MailError):
                self.reply_error(failure.value)
                return
            log.failure("delivery of {id} failed", failure, id=message_id)
            self.reply(451, "4.3.0", "Local error in processing; message not accepted, try again later")

        d.addCallback(deliver)
        d.addCallbacks(delivered, failed)
        d.addBoth(lambda _: spool.close())
        d.addBoth(lambda _: self.resume())

    def _trace_headers(self, recipients, spool: MessageSpool) -> tuple[bytes, bytes]:
        """(Received (RFC 5321 4.4), Message-ID and Date on submission when missing (RFC 6409 8))."""
        tls = tls_info(self.transport) if self.facts.tls else None
        proto = ("ESMTP" if self.esmtp else "SMTP") + ("S" if tls else "") + ("A" if self.facts.user else "")
        if "SMTPUTF8" in self.mail_params and self.esmtp:
            proto = "UTF8" + proto
        lines = [f"Received: from {self.helo} ([{self.peer}])",
                 f"\tby {self.settings.hostname} (mailstack) with {proto} id {self.session_id}"]
        if tls:
            lines.append(f"\t(using {tls[0]} with cipher {tls[1]})")
        if self.facts.user:
            lines.append(f"\t(authenticated as {self.facts.user})")
        if len(recipients) == 1:
            lines.append(f"\tfor <{recipients[0].address}>")
        lines[-1] += f"; {email.utils.format_datetime(email.utils.localtime())}"
        added = []
        if self.facts.submission:
            present = spool.header_names()
            if "message-id" not in present:
                added.append(f"Message-ID: <{time.strftime('%Y%m%d%H%M%S')}.{secrets.token_hex(8)}@{self.settings.hostname}>")
            if "date" not in present:
                added.append(f"Date: {email.utils.format_datetime(email.utils.localtime())}")
        encode = lambda ls: "".join(line + "\r\n" for line in ls).encode("utf-8")  # noqa: E731
        return encode(lines), encode(added)


class SMTPSettings:
    """What every session of one listener shares."""

    def __init__(self, context, listener: config_mod.Listener):
        cfg = context.config
        self.hostname = cfg.hostname
        self.login_gate = context.login_gate
        self.tls = context.tls
        self.store = context.store
        self.max_size = cfg.max_message_size
        self.max_commands = cfg.max_commands
        self.timeout = cfg.smtp_timeout
        self.plaintext_on_loopback = cfg.plaintext_on_loopback
        self.relay = context.relay
        self.policy = SmtpPolicy(context.accounts, cfg.domains, cfg.max_recipients, cfg.trusted_networks,
                                 relay_available=context.relay is not None)
        self.signer = context.dkim_signer
        self.checker = context.inbound_checker if listener.protocol == "smtp" else None
        if context.delivery_batcher is None:  # one for all SMTP listeners, so they batch together
            context.delivery_batcher = DeliveryBatcher(context.store)
        self.batcher = context.delivery_batcher

    def deliver_local(self, accounts: list[str], sender: str, head: bytes, body, folder: str = "INBOX"):
        """One copy per account, each with its own Return-Path and Delivered-To; a Deferred."""
        items = []
        for account in accounts:
            top = f"Return-Path: <{sender}>\r\nDelivered-To: {account}\r\n".encode("utf-8") + head
            items.append((account, _compose(top, body), folder))
        return self.batcher.deliver(items)

    def sign(self, spool: MessageSpool, added: bytes, domain: str) -> "Prepared":
        """Submission (worker thread): DKIM-sign what the user sent (RFC 6376) with ``domain``'s key."""
        message = added + spool.read_all()
        return Prepared(header=self.signer.sign(message, domain), body=message)

    def check(self, spool: MessageSpool, peer: str, sender: str, helo: str) -> "Prepared":
        """MX (worker thread): SPF, DKIM, DMARC; our own Authentication-Results header on top."""
        message = spool.read_all()
        verdict = self.checker.check(message, peer, sender, helo)
        stripped = authentication.strip_own_results(message, self.hostname)
        return Prepared(header=verdict.header, body=stripped if stripped != message else None,
                        action=verdict.action, reason=verdict.reason)


@dataclass
class Prepared:
    """What signing or checking made of a message before it is stored or queued."""

    header: bytes = b""  # header fields to put above the message (DKIM-Signature, Authentication-Results)
    body: bytes | None = None  # the message to use instead of the spool (None: the spool as it is)
    action: str = "deliver"  # "deliver" | "junk" | "reject" | "tempfail"
    reason: str = ""


def _compose(head: bytes, body):
    """Header lines, then the message (the spool, read in the worker thread, or bytes)."""
    yield head
    if isinstance(body, bytes):
        yield body
    else:
        yield from body.chunks()


class SMTPFactory(smtp.SMTPFactory):
    noisy = False

    def __init__(self, settings: SMTPSettings, listener: config_mod.Listener):
        super().__init__()
        self.settings, self.listener = settings, listener

    def buildProtocol(self, addr):
        p = SMTPSession(self.settings, self.listener)
        p.factory = self
        return p


def build_factory(context, listener: config_mod.Listener) -> SMTPFactory:
    return SMTPFactory(SMTPSettings(context, listener), listener)
