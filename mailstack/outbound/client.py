"""One delivery attempt to one remote host, on Twisted's ESMTP client.

``twisted.mail.smtp.ESMTPClient`` speaks the protocol (EHLO, STARTTLS, AUTH, per-recipient
RCPT results); this module feeds it one message and collects what happened to each
recipient.  Two things of Twisted's are replaced: its ``transformChunk`` turns every LF into
CRLF (our stored messages already have CRLF, so it would send CR CR LF) and misses a
leading dot split across two chunks; and its result reporting is folded into
:class:`AttemptResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import defer, endpoints, error as net_error, protocol
from twisted.mail import smtp

from mailstack.errors import MailError
from mailstack.mail import codes


@dataclass
class AttemptResult:
    host: str
    #: address -> (code, text) for every recipient the session got as far as answering for.
    recipients: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: a failure of the whole session (connect, greeting, TLS, timeout), if any.
    error: MailError | None = None
    tls: bool = False
    tls_failed: bool = False


class DotStuffer:
    """RFC 5321 4.5.2 transparency, correct across chunk boundaries."""

    def __init__(self):
        self.tail = b"\r\n"  # the start of the message counts as the start of a line

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        joined = self.tail + chunk
        stuffed = joined.replace(b"\r\n.", b"\r\n..")[len(self.tail):]
        self.tail = joined[-2:]
        return stuffed


class RelayClient(smtp.ESMTPClient):
    debug = True  # keep the last lines of the session for diagnostics

    def __init__(self, result: AttemptResult, done: defer.Deferred, identity: str, sender: str,
                 recipients: list[str], open_message, context=None, secret=None, username=None,
                 require_tls: bool = False, reply_timeout: float = 300):
        super().__init__(secret, context, identity)
        self.result, self.done = result, done
        self.sender, self.recipients, self.open_message = sender, recipients, open_message
        self.requireTransportSecurity = require_tls
        self.requireAuthentication = bool(secret)
        self.timeout = reply_timeout
        self.stuffer = DotStuffer()
        self._sent = False
        self._starting_tls = False
        if secret:
            self.registerAuthenticator(smtp.PLAINAuthenticator(username.encode()))
            self.registerAuthenticator(smtp.LOGINAuthenticator(username.encode()))

    def getMailFrom(self):
        if self._sent:
            return None
        self._sent = True
        return self.sender

    def getMailTo(self):
        return list(self.recipients)

    def getMailData(self):
        self.stuffer = DotStuffer()
        return self.open_message()

    def transformChunk(self, chunk):
        self.resetTimeout()
        return self.stuffer(chunk)

    def esmtpState_starttls(self, code, resp):
        self._starting_tls = True
        super().esmtpState_starttls(code, resp)

    def esmtpState_serverConfig(self, code, resp):
        if self._starting_tls:
            self.result.tls, self._starting_tls = True, False
        super().esmtpState_serverConfig(code, resp)

    def sentMail(self, code, resp, numOk, addresses, log):
        text = _text(resp)
        answered = {}
        for addr, rcode, rresp in addresses:
            addr = addr.decode() if isinstance(addr, bytes) else str(addr)
            answered[addr] = (code, text) if 200 <= rcode < 300 else (rcode, _text(rresp))
        for rcpt in self.recipients:
            # Recipients never asked about (MAIL FROM refused) share the session's answer.
            self.result.recipients[rcpt] = answered.get(rcpt, (code, text))

    def sendError(self, exc):
        if self.result.error is None:
            code = getattr(exc, "code", -1)
            text = _text(getattr(exc, "resp", b"") or str(exc))
            if code is None or code < 400:
                code = codes.LOCAL_ERROR
            enhanced = codes.E_PERMANENT if code >= 500 else codes.E_CONNECTION_DROPPED
            self.result.error = MailError(code, enhanced, f"{self.result.host}: {text}")
        super().sendError(exc)

    def connectionLost(self, reason=protocol.connectionDone):
        super().connectionLost(reason)
        if self._starting_tls:
            self.result.tls_failed = True
        if not self.result.recipients and self.result.error is None:
            why = "TLS handshake failed" if self.result.tls_failed else f"connection lost: {reason.getErrorMessage()}"
            self.result.error = MailError(codes.LOCAL_ERROR, codes.E_CONNECTION_DROPPED, f"{self.result.host}: {why}")
        if not self.done.called:
            self.done.callback(self.result)


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).split())[:500]


def attempt(reactor, host: str, address: str, port: int, identity: str, sender: str, recipients: list[str],
            open_message, starttls_context=None, implicit_tls_creator=None, require_tls: bool = False,
            username: str | None = None, password: str | None = None,
            connect_timeout: float = 30, reply_timeout: float = 300) -> defer.Deferred:
    """Connect to ``address:port`` and try to deliver; fires with an :class:`AttemptResult`."""
    result = AttemptResult(host)
    done: defer.Deferred = defer.Deferred()
    kind = endpoints.TCP6ClientEndpoint if ":" in address else endpoints.TCP4ClientEndpoint
    endpoint = kind(reactor, address, port, timeout=connect_timeout)
    if implicit_tls_creator is not None:
        endpoint = endpoints.wrapClientTLS(implicit_tls_creator, endpoint)
        result.tls = True
    factory = protocol.Factory.forProtocol(lambda: RelayClient(
        result, done, identity, sender, recipients, open_message, starttls_context,
        password.encode() if password else None, username, require_tls, reply_timeout))

    def failed(failure):
        if not done.called:
            reason = "connection timed out" if failure.check(net_error.TimeoutError) else failure.getErrorMessage()
            result.error = MailError(codes.LOCAL_ERROR, codes.E_NO_ANSWER, f"{host} [{address}]:{port}: {reason}")
            done.callback(result)

    endpoint.connect(factory).addErrback(failed)
    return done
