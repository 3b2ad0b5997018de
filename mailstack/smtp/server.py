"""The SMTP server: MX (port 25) and submission (587 STARTTLS, 465 implicit TLS).

Built on Twisted's public pieces, ``LineReceiver`` and ``TimeoutMixin`` (the way Twisted's own
``IMAP4Server`` is), not on ``twisted.mail.smtp.ESMTP``, whose command handling falls short:

* it reads lines with ``LineOnlyReceiver``, which cannot pause: with PIPELINING (RFC 2920)
  a reply that waits on a thread (AUTH, end of DATA) could be overtaken by the next one, and
  plaintext pipelined behind STARTTLS would be obeyed after the handshake (CVE-2011-0411).
  ``LineReceiver`` can: the session pauses while a command is pending and discards the
  buffer on STARTTLS;
* it feeds DATA a line at a time and rewrites the message (a blank line after its own
  Received header); here DATA and BDAT (RFC 3030) are read raw, byte-exact, into a bounded
  spool (``message.py``);
* its address grammar is ASCII-only (no SMTPUTF8), it advertises only AUTH and STARTTLS, and
  its replies carry no enhanced status codes.

Commands are dispatched through :data:`COMMANDS`, which says in which session states each
is allowed (anything else is ``503 5.5.1``).  Decisions about senders and recipients are
:mod:`policy`'s, which raises :class:`MailError`; the session replies.  What happens to a
message once its data is in is :mod:`accept`'s; the ``250`` after DATA is sent only once
every copy is fsynced.  Replies use the names of :mod:`mailstack.mail.codes`.
"""

from __future__ import annotations

import errno
import re
import secrets

from twisted.internet import protocol, reactor
from twisted.logger import Logger
from twisted.protocols import basic, policies

from mailstack import config as config_mod
from mailstack import logcontext
from mailstack import metrics, sasl
from mailstack.antispam import smtp_hooks
from mailstack.errors import MailError
from mailstack.flow import send_now
from mailstack.mail import codes as c
from mailstack.mail import headers
from mailstack.pacing import CommandPacer
from mailstack.smtp import accept, quota
from mailstack.smtp import address as addr
from mailstack.smtp.auth_commands import AuthCommands
from mailstack.smtp.capabilities import SessionView, ehlo_keywords
from mailstack.smtp.message import DotDecoder, MessageSpool
from mailstack.smtp.policy import SessionFacts
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

#: RFC 4954 4: an AUTH line may be 12288 octets; any other command line is refused past this.
MAX_LINE = 12288
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Input buffered while a reply is pending before the socket is paused.
PAUSE_BUFFER = 1 << 20


def _too_big(max_size: int | None = None) -> MailError:
    limit = f" ({max_size})" if max_size is not None else ""
    return MailError(c.EXCEEDED_STORAGE, c.E_TOO_BIG, f"Message size exceeds fixed maximum message size{limit}")


class SMTPSession(AuthCommands, basic.LineReceiver, policies.TimeoutMixin):
    MAX_LENGTH = MAX_LINE

    def __init__(self, settings: accept.SMTPSettings, listener: config_mod.Listener):
        self.settings = settings
        self.listener = listener
        self.host = settings.hostname.encode("idna")
        self.timeout = settings.timeout
        self.state = FRESH
        self.facts: SessionFacts | None = None
        self.screen = None  # mailstack.antispam.screen.SessionScreen on the MX port
        self.commands = 0
        self.pacer = CommandPacer(settings.command_rate, settings.command_burst, reactor)
        self.helo, self.esmtp = "", False
        self.spool: MessageSpool | None = None
        self._reset_transaction()
        self._sasl: sasl.Exchange | None = None  # an AUTH exchange waiting for the client's next line
        self._raw_handler = None
        self._discard_line = False
        self._lost = False
        self._unsent = False  # replies written since the last send_now
        self._held = 0  # bytes received while paused
        self._transport_paused = False
        self._messages = 0
        self._counted = None  # metrics.smtp_recipient or smtp_transaction: the next reply's code goes there

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self):
        self.peer = logcontext.peer_of(self.transport)  # the address, carrying the session's log id
        self.facts = SessionFacts(peer=self.peer, submission=self.listener.protocol == "submission",
                                  tls=self.listener.tls == "implicit")
        self.session_id = logcontext.session_id(self.peer) or secrets.token_hex(6)
        # The MX port's client checks (mailstack.antispam.screen) start now and greet the client.
        self.screen = self.facts.client = self.settings.screen.start(self) if self.settings.screen else None
        if self.screen is None:
            self.greet()
        self.setTimeout(self.timeout)

    def greet(self) -> None:
        self.reply(c.SERVICE_READY, None, f"{self.host.decode('ascii')} ESMTP mailstack")

    def connectionLost(self, reason):
        self._lost = True
        self.setTimeout(None)
        self._drop_spool()

    def timeoutConnection(self):
        self.reply(c.SERVICE_UNAVAILABLE, c.E_CONNECTION_DROPPED,
                   f"{self.settings.hostname} Timeout, closing connection")
        self.transport.loseConnection()

    def reply(self, code: int, enhanced: str | None, text: str) -> None:
        """Send a reply; the enhanced status code (RFC 2034) goes on every line."""
        self._counted = self._counted and self._counted(self.listener.key, code)  # once: the metrics return None
        lines = text.split("\n")
        prefix = f"{enhanced} " if enhanced else ""
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            self.transport.write(f"{code}{sep}{prefix}{line}\r\n".encode("utf-8"))
        self._unsent = True

    def reply_error(self, e: MailError) -> None:
        """Reply with ``e``'s text; its cause, if any, goes to the log only."""
        if e.cause is not None:
            log.info("{listener} from {peer}: {code} {enhanced} {text}: {cause}", listener=self.listener.key,
                     peer=self.peer, code=e.code, enhanced=e.enhanced, text=e.text, cause=e.cause)
        self.reply(e.code, e.enhanced, e.text)

    def pause(self) -> None:
        """Stop acting on input until :meth:`resume` (a reply is pending on a thread).

        Input keeps being buffered (a pipelining client sends ahead); only past
        ``PAUSE_BUFFER`` bytes is the socket itself paused, so memory stays bounded without
        an epoll change for every message.
        """
        self.paused = True
        self._held = 0

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
            self._held += len(data)
            if self._held > PAUSE_BUFFER and not self._transport_paused:
                self._transport_paused = True
                self.transport.pauseProducing()
        elif self._discard_line:
            end = data.find(b"\n")
            if end < 0:
                return
            data, self._discard_line = data[end + 1 :], False
        # LineReceiver buffers what arrives while paused and goes on from there on resume.
        why = basic.LineReceiver.dataReceived(self, data)
        self._send_replies()  # the replies to all of it (RFC 2920: together), now
        return why

    def _send_replies(self) -> None:
        if self._unsent:
            self._unsent = False
            send_now(self.transport)

    def lineLengthExceeded(self, line):
        self._sasl = None  # an AUTH exchange in progress ends here
        self.reply(c.COMMAND_UNRECOGNIZED, c.E_SYNTAX, "Line too long")
        end = line.find(b"\r\n", self.MAX_LENGTH)
        if end < 0:
            self._discard_line = True  # the rest of this line is still to come
        else:
            # LineReceiver stops after this call: the rest is buffered now and read on the next turn.
            self.dataReceived(line[end + 2 :])
            reactor.callLater(0, self.dataReceived, b"")

    def lineReceived(self, line):
        self.resetTimeout()
        if self._sasl is not None:
            return self._auth_response(line)
        self.commands += 1
        if self.settings.max_commands and self.commands > self.settings.max_commands:
            self.reply(c.SERVICE_UNAVAILABLE, c.E_SECURITY_TEMPORARY, "Too many commands in one session")
            self.transport.loseConnection()
            return
        wait = self.pacer.take()
        if wait:  # over the command rate: this command waits its turn, and the input behind it
            self.pause()
            reactor.callLater(wait, self._paced, line)
            return
        self._command(line)

    def _paced(self, line: bytes) -> None:
        if self._lost:
            return
        self.paused = False
        self._command(line)
        if not self.paused:
            self.resume()

    def _command(self, line: bytes) -> None:
        verb, _, rest = line.strip().partition(b" ")
        entry = COMMANDS.get(verb.upper())
        if entry is None:
            self.reply(c.COMMAND_UNRECOGNIZED, c.E_INVALID_COMMAND, "Command not recognized")
            return
        method, states = entry
        if self.state not in states:
            self.reply(c.BAD_SEQUENCE, c.E_INVALID_COMMAND,
                       f"Bad sequence of commands: {verb.upper().decode()} is not allowed now")
            return
        try:
            text = rest.strip().decode("utf-8")
        except UnicodeDecodeError:
            self.reply(c.SYNTAX_ERROR, c.E_SYNTAX, "Syntax error: the command is not valid UTF-8")
            return
        if _CONTROL.search(text):
            # A bare CR or LF here would end up inside Received or Return-Path as a header of its own.
            self.reply(c.SYNTAX_ERROR, c.E_SYNTAX, "Syntax error: control characters in the command")
            return
        try:
            if method == "cmd_RCPT":
                self._counted = metrics.smtp_recipient  # a refusal by the client checks is a reply to RCPT
            held = self.screen.before(method, self.sender) if self.screen is not None else None
            if held is not None:  # the client checks are not answered yet: this command waits
                self.pause()
                held.addCallback(lambda _: self._paced(line))
                return
            getattr(self, method)(text)
        except MailError as e:
            self.reply_error(e)

    def rawDataReceived(self, data):
        self.resetTimeout()
        self._raw_handler(data)

    def _line_mode(self, rest: bytes) -> None:
        """Back to commands after a message or chunk; ``rest`` is what the client sent after it."""
        self._raw_handler = None
        # Called from rawDataReceived, so LineReceiver buffers ``rest`` and reads it next.
        self.setLineMode(rest)

    # -- greeting and small commands ---------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.sender: str | None = None
        self.recipients = []
        self.mail_params: dict = {}
        self._drop_spool()

    def _drop_spool(self) -> None:
        if self.spool is not None:
            self.spool.close()
        self.spool = None

    def _greet(self, text: str, esmtp: bool) -> str:
        """RFC 5321 4.1.1.1: a domain or an address literal (it goes into Received)."""
        if not addr.valid_hello(text):
            raise MailError(c.SYNTAX_ERROR, c.E_SYNTAX, "Syntax: EHLO your-host-name (a domain or [address literal])")
        self.helo, self.esmtp = text, esmtp
        self._reset_transaction()
        self.state = GREETED
        return f"{self.settings.hostname} Hello {self.helo} [{self.peer}]"

    def cmd_HELO(self, text):
        self.reply(c.OK, None, self._greet(text, esmtp=False))

    def cmd_EHLO(self, text):
        greeting = self._greet(text, esmtp=True)
        view = SessionView(max_size=self.settings.max_size,
                           can_starttls=self.settings.tls is not None and not self.facts.tls,
                           login_allowed=self.auth_allowed())
        self.reply(c.OK, None, "\n".join([greeting] + ehlo_keywords(view)))

    def auth_allowed(self) -> bool:
        """AUTH only on submission, and only under TLS unless on loopback when allowed."""
        return self.facts.submission and sasl.login_allowed(self.facts.tls, self.peer,
                                                            self.settings.plaintext_on_loopback)

    def cmd_NOOP(self, text):
        self.reply(c.OK, c.E_OK, "OK")

    def cmd_RSET(self, text):
        self._reset_transaction()
        if self.state in (MAIL, RCPT):
            self.state = GREETED
        self.reply(c.OK, c.E_OK, "Reset state")

    def cmd_VRFY(self, text):
        # RFC 5321 3.5.3: 252 when we will not say; telling would help address harvesters.
        self.reply(c.CANNOT_VRFY, c.E_VRFY_REFUSED, "Cannot VRFY user, but will accept message and attempt delivery")

    def cmd_HELP(self, text):
        self.reply(c.HELP, c.E_OK, "Commands: " + " ".join(cmd.decode() for cmd in COMMANDS) + "\nSee RFC 5321")

    def cmd_QUIT(self, text):
        self.reply(c.CLOSING, c.E_OK, f"{self.settings.hostname} closing connection")
        self.transport.loseConnection()

    # -- STARTTLS and AUTH ---------------------------------------------------------------------

    def cmd_STARTTLS(self, text):
        if self.facts.tls:
            raise MailError(c.BAD_SEQUENCE, c.E_INVALID_COMMAND, "TLS is already active")
        if self.settings.tls is None:
            raise MailError(c.TEMPORARY_FAILURE, c.E_SECURITY_TEMPORARY, "TLS not available")
        if text:
            raise MailError(c.SYNTAX_ERROR, c.E_INVALID_ARGUMENTS, "STARTTLS takes no parameters")
        self.reply(c.SERVICE_READY, c.E_OK, "Ready to start TLS")
        # RFC 3207 4.2 / CVE-2011-0411: anything pipelined behind STARTTLS was sent in the clear.
        self.clearLineBuffer()
        self.transport.startTLS(self.settings.tls)
        self.facts.tls = True
        self.facts.user = None  # RFC 3207 4.2: forget everything learnt before TLS, AUTH included
        self.state = FRESH  # RFC 3207 4.2: the client must EHLO again
        self._reset_transaction()

    # -- the transaction -------------------------------------------------------------------

    def cmd_MAIL(self, text):
        sender, params = addr.parse_path(text, "FROM", null_ok=True)
        options = addr.parse_params(params)
        for key, value in options.items():
            self._check_mail_parameter(key, value)
        if not addr.is_ascii(sender) and "SMTPUTF8" not in options:
            raise addr.non_ascii()
        self.settings.policy.check_sender(self.facts, sender)
        smtp_hooks.at_mail(self.settings, self.facts)
        self.sender, self.mail_params = sender, options
        self.state = MAIL
        self.reply(c.OK, c.E_SENDER_OK, f"Sender <{sender}> OK")

    def _check_mail_parameter(self, key: str, value: str | None) -> None:
        """The MAIL parameters of the extensions EHLO lists (RFC 1870, RFC 6152, RFC 6531, RFC 4954)."""
        if key == "SIZE":
            if not (value or "").isdigit():
                raise MailError(c.SYNTAX_ERROR, c.E_INVALID_ARGUMENTS, "SIZE needs a number")
            if int(value) > self.settings.max_size:
                raise _too_big(self.settings.max_size)
        elif key == "BODY":
            if (value or "").upper() not in ("7BIT", "8BITMIME"):
                raise MailError(c.SYNTAX_ERROR, c.E_INVALID_ARGUMENTS, "BODY must be 7BIT or 8BITMIME")
        elif key == "SMTPUTF8":
            if value is not None:
                raise MailError(c.SYNTAX_ERROR, c.E_INVALID_ARGUMENTS, "SMTPUTF8 takes no value")
        elif key != "AUTH":  # RFC 4954 5: we may ignore the AUTH= parameter
            raise MailError(c.PARAMETERS_UNRECOGNIZED, c.E_INVALID_ARGUMENTS, f"Unsupported MAIL parameter {key}")

    def cmd_RCPT(self, text):
        self._counted = metrics.smtp_recipient
        address, params = addr.parse_path(text, "TO", null_ok=False) if "@" in text else self._bare_postmaster(text)
        if params:
            raise MailError(c.PARAMETERS_UNRECOGNIZED, c.E_INVALID_ARGUMENTS,
                            f"Unsupported RCPT parameter {params[0].split('=')[0]}")
        if not addr.is_ascii(address) and "SMTPUTF8" not in self.mail_params:
            raise addr.non_ascii()
        recipient = self.settings.policy.check_recipient(self.facts, address, len(self.recipients), self.sender or "")
        wait = smtp_hooks.at_rcpt(self.settings, self.facts, self.sender or "", recipient, len(self.recipients),
                                  self.helo)
        wait = self._quota_at_rcpt(wait, recipient)
        if wait is None:
            return self._rcpt_ok(recipient, address)
        self.pause()  # greylisting asks its database in a thread
        wait.addCallbacks(lambda _: self._rcpt_ok(recipient, address), self._rcpt_failed)
        wait.addBoth(lambda _: self.resume())

    def _rcpt_failed(self, failure) -> None:
        """A check in a thread failed: its refusal, or 451 for a broken one (the quota file
        unreadable, say): RCPT must be answered (RFC 5321 4.2)."""
        if failure.check(MailError):
            self.reply_error(failure.value)
            return
        log.failure("RCPT check failed", failure, peer=self.peer)
        self.reply(c.LOCAL_ERROR, c.E_SYSTEM_TEMPORARY, "Local error in processing; try again later")

    def _quota_at_rcpt(self, wait, recipient):
        """After greylisting (if any), the recipient's quota (mailstack.smtp.quota; SIZE of
        MAIL FROM counted, RFC 1870 6)."""
        size = int(self.mail_params.get("SIZE") or 0)
        if wait is None:
            return quota.at_rcpt(self.settings.store, recipient, size)
        return wait.addCallback(lambda _: quota.at_rcpt(self.settings.store, recipient, size))

    def _rcpt_ok(self, recipient, address: str) -> None:
        self.recipients.append(recipient)
        self.state = RCPT
        self.reply(c.OK, c.E_RECIPIENT_OK, f"Recipient <{address}> OK")

    def _bare_postmaster(self, text: str):
        head, _, rest = text.partition(":")
        path, _, params = rest.strip().partition(" ")
        if head.strip().upper() == "TO" and path.strip("<>").lower() == "postmaster":
            return "postmaster", params.split()
        raise MailError(c.SYNTAX_ERROR, c.E_ADDRESS_SYNTAX, "Bad recipient address syntax")

    def cmd_DATA(self, text):
        if text:
            raise MailError(c.SYNTAX_ERROR, c.E_INVALID_ARGUMENTS, "DATA takes no parameters")
        if self.spool is not None:
            raise MailError(c.BAD_SEQUENCE, c.E_INVALID_COMMAND, "DATA cannot follow BDAT in one transaction")
        self.spool = MessageSpool(self.settings.max_size)
        self._decoder = DotDecoder()
        self._raw_handler = self._data_chunk
        self.setRawMode()
        self.reply(c.START_MAIL_INPUT, None, "Start mail input; end with <CRLF>.<CRLF>")

    def _data_chunk(self, data: bytes):
        out, done, rest = self._decoder.feed(data)
        self.spool.write(out)
        self.spool.bare_newline = self._decoder.bare_newline
        if done:
            self._line_mode(rest)
            self._end_of_message()

    def cmd_BDAT(self, text):
        parts = text.split()
        if not parts or not parts[0].isdigit() or len(parts) > 2 or (len(parts) == 2 and parts[1].upper() != "LAST"):
            # Without a valid size the chunk cannot be skipped: RFC 3030 3 says close.
            self.reply(c.SYNTAX_ERROR, c.E_INVALID_ARGUMENTS, "Syntax: BDAT size [LAST]; closing connection")
            self.transport.loseConnection()
            return
        size, last = int(parts[0]), len(parts) == 2
        refusal = None
        if self.state != RCPT:
            refusal = MailError(c.BAD_SEQUENCE, c.E_INVALID_COMMAND, "BDAT needs MAIL and RCPT first")
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
        self._line_mode(rest)
        if self._bdat_refusal is not None:
            self.reply_error(self._bdat_refusal)
        elif self._bdat_last:
            self._end_of_message()
        elif self.spool.too_big:
            self.reply_error(_too_big())
        else:
            self.reply(c.OK, c.E_OK, f"{self.spool.size} octets received")

    # -- the end of a message -----------------------------------------------------------------

    def _end_of_message(self):
        self._counted = metrics.smtp_transaction
        spool, sender, recipients = self.spool, self.sender, self.recipients
        self.spool = None
        self.state = GREETED
        self.sender, self.recipients = None, []
        if spool.too_big:
            spool.close()
            self.reply_error(_too_big(self.settings.max_size))
            return
        if spool.bare_newline:
            # RFC 5321 2.3.8; passed on, a bare LF before "." lets a sender smuggle a second
            # message past the next hop ("SMTP smuggling").
            spool.close()
            self.reply(c.MAILBOX_UNAVAILABLE, c.E_BAD_LINE_ENDINGS,
                       "Bare CR or LF in the message; lines must end with CRLF")
            return
        if spool.nul:
            # Without BINARYMIME (RFC 3030) a message is text, and text has no NUL (RFC 5322
            # 2.1; RFC 5321 4.5.2); IMAP could not pass it on either (RFC 3501 9, CHAR8).
            spool.close()
            self.reply(c.TRANSACTION_FAILED, c.E_BAD_CONTENT, "NUL characters are not allowed in a message")
            return
        received, added = accept.trace_fields(self._trace_facts(), recipients, spool, self.facts.submission)
        accounts, remote, forwarded = [], [], []
        for r in recipients:
            accounts += [a for a in r.local if a not in accounts]
            out = forwarded if r.forward else remote  # forwarded copies' sender gets SRS (accept.deliver)
            out += [a for a in r.remote if a not in out]
        self._messages += 1
        message_id = f"{self.session_id}.{self._messages}"
        self.pause()
        settings = self.settings

        def deliver(prepared: accept.Prepared):
            if prepared.action in ("reject", "tempfail"):
                what = "refused" if prepared.action == "reject" else "deferred"
                log.info("{what} {id} from <{sender}>: {reason}", what=what, id=message_id, sender=sender,
                         reason=prepared.reason, peer=self.peer)
            return settings.deliver(prepared, received, spool, sender, accounts, remote, self.facts.user,
                                    recipients=recipients, forwarded=forwarded)

        def delivered(result):
            qid, placed = result  # logged as the message's accepted and sent lines, nothing more
            self.reply(c.OK, c.E_OK, f"OK id={message_id}")
            self._send_replies()  # the client's 250 first: what follows need not delay it
            logcontext.accepted(self.peer, message_id, headers.message_id(added + spool.head), sender,
                                [r.address for r in recipients], spool.size, self.listener.key, accounts, placed, qid)
            smtp_hooks.accepted(settings, self.facts, recipients)

        def failed(failure):
            if failure.check(MailError):
                self.reply_error(failure.value)
                return
            log.failure("delivery of {id} failed", failure, id=message_id)
            cause = failure.value if isinstance(failure.value, OSError) else failure.value.__cause__
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):  # RFC 3463 X.3.1
                self.reply(c.INSUFFICIENT_STORAGE, c.E_SYSTEM_FULL, "Insufficient system storage; try again later")
                return
            self.reply(c.LOCAL_ERROR, c.E_SYSTEM_TEMPORARY,
                       "Local error in processing; message not accepted, try again later")

        d = settings.prepare(spool, added, self.facts, sender, self.helo, [r.address for r in recipients], message_id)
        d.addCallback(deliver)
        d.addCallbacks(delivered, failed)
        d.addBoth(lambda _: spool.close())
        d.addBoth(lambda _: self.resume())

    def _trace_facts(self) -> accept.TraceFacts:
        return accept.TraceFacts(
            hostname=self.settings.hostname, session_id=self.session_id, helo=self.helo, peer=self.peer,
            esmtp=self.esmtp, smtputf8="SMTPUTF8" in self.mail_params, user=self.facts.user,
            tls=tls_info(self.transport) if self.facts.tls else None, peer_name=self._verified_name())

    def _verified_name(self) -> str:
        """The client's reverse DNS name when it leads back to its address (iprev pass)."""
        found = getattr(self.facts.client, "iprev", None)
        return found.name if found is not None and found.result == "pass" else ""


class SMTPFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, settings: accept.SMTPSettings, listener: config_mod.Listener):
        self.settings, self.listener = settings, listener

    def buildProtocol(self, addr):
        p = SMTPSession(self.settings, self.listener)
        p.factory = self
        return p

    def reconfigure(self, context) -> None:
        """SIGHUP changed the configuration (mailstack.reconfigure)."""
        self.settings.configure(context)


def build_factory(context, listener: config_mod.Listener) -> SMTPFactory:
    return SMTPFactory(accept.SMTPSettings(context, listener), listener)
