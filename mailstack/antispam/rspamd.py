"""The content filter: rspamd over its HTTP protocol (issue 20, item 1).

Each message is POSTed to ``/checkv2`` on rspamd's normal worker with the SMTP envelope as
request headers (``IP``, ``Helo``, ``From``, one ``Rcpt`` per recipient, ``Queue-Id``, and
``User`` for mail from an authenticated user, which puts rspamd in its "user" mode: outbound
spam from a stolen password is caught too).  Scans over http:// go as one HTTP/1.0
request per connection (rspamd closes it after each answer anyway), learning and https://
through twisted.web's Agent and its pool; nothing blocks the reactor.

rspamd's answer is mapped to what the session replies:

* ``reject`` -> ``550 5.7.1`` at the end of DATA;
* ``soft reject``, ``greylist`` -> ``451 4.7.1``;
* ``add header``, ``rewrite subject`` -> ``X-Spam: Yes``, ``X-Spamd-Result`` and
  ``X-Spam-Score`` above the message, and delivery to the recipients' Junk folder
  (``[rspamd] junk = false``: to INBOX, headers only);
* ``no action`` -> delivered as it is;
* no answer within ``[rspamd] timeout``, or an error -> ``[rspamd] on_failure``:
  ``"tempfail"`` (``451 4.7.1``, the sender retries) or ``"accept"``.

SPF, DKIM and DMARC are not done twice.  With ``[rspamd] checks = "rspamd"`` (the default)
rspamd does them, in C and with its own caches, and mailstack takes its results from the
symbols of its answer (R_SPF_*, R_DKIM_*, DMARC_*: :func:`authentication_of`): mailstack
still writes the Authentication-Results header (RFC 8601) under its own authserv-id, removes
forged ones, and acts on DMARC's reject/quarantine and on DNS failures exactly as its own
checks would (mailstack.smtp.accept).  A message rspamd did not check (rspamd skips its
``local_addrs``; an answer without those symbols), or got no answer for with ``on_failure =
"accept"``, is checked by mailstack itself.  With ``checks = "mailstack"`` mailstack's checks
run and rspamd is told to skip its own (the request's ``Settings`` header disables those
symbol groups); the scan then starts when the data is in, beside those checks (a message
they refuse is refused for their reason, whatever rspamd said), so their latencies overlap.
With ``checks = "rspamd"`` a check ``[checks]`` turns off is skipped by rspamd too.
Submission is scanned after signing, as signed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from twisted.internet import defer, threads
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from mailstack import metrics
from mailstack.errors import MailError
from mailstack.mail import codes

log = Logger()

SPAM_ACTIONS = ("add header", "rewrite subject")
DEFER_ACTIONS = ("soft reject", "greylist")
#: rspamd's symbol groups for what mailstack's [checks] already does (key: the [checks] key).
GROUPS = {"spf": "spf", "dkim": "dkim", "dmarc": "dmarc"}


@dataclass
class Result:
    """rspamd's verdict on one message."""

    action: str
    score: float = 0.0
    required: float = 0.0
    symbols: dict = field(default_factory=dict)  # name -> score
    options: dict = field(default_factory=dict)  # name -> [option, ...] (what a symbol says it found)

    def headers(self) -> bytes:
        """X-Spam, X-Spamd-Result (the symbols, highest score first, folded), X-Spam-Score."""
        spam = self.action in SPAM_ACTIONS or self.action == "reject"
        symbols = sorted(self.symbols.items(), key=lambda kv: (-kv[1], kv[0]))
        lines = [f"X-Spam: {'Yes' if spam else 'No'}",
                 f"X-Spamd-Result: default: {spam} [{self.score:.2f} / {self.required:.2f}]"
                 + "".join(f";\r\n\t{_safe(name)}({score:.2f})" for name, score in symbols),
                 f"X-Spam-Score: {self.score:.2f}"]
        return "".join(line + "\r\n" for line in lines).encode("utf-8")


def _safe(name: str) -> str:
    return "".join(ch for ch in name if ch.isalnum() or ch in "_-.")[:80]


def parse_result(body: bytes) -> Result:
    """The JSON of /checkv2; ValueError when it is not one."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("action"), str):
        raise ValueError(f"no action in rspamd's answer: {body[:200]!r}")
    found = {str(k): v for k, v in (data.get("symbols") or {}).items() if isinstance(v, dict)}
    symbols = {k: float(v.get("score", 0)) for k, v in found.items()}
    options = {k: [str(o) for o in v["options"]] for k, v in found.items() if isinstance(v.get("options"), list)}
    return Result(data["action"], float(data.get("score", 0)), float(data.get("required_score", 0)), symbols, options)


#: rspamd's symbols for the results (RFC 8601 2.7) of SPF, DKIM and DMARC.
SPF_SYMBOLS = {"R_SPF_ALLOW": "pass", "R_SPF_FAIL": "fail", "R_SPF_SOFTFAIL": "softfail",
               "R_SPF_NEUTRAL": "neutral", "R_SPF_NA": "none", "R_SPF_DNSFAIL": "temperror",
               "R_SPF_PERMFAIL": "permerror"}
DKIM_SYMBOLS = {"R_DKIM_ALLOW": "pass", "R_DKIM_REJECT": "fail", "R_DKIM_TEMPFAIL": "temperror",
                "R_DKIM_PERMFAIL": "permerror", "R_DKIM_NA": "none"}
#: DMARC: (result, the policy a failure met); p=none's failure is rspamd's SOFTFAIL.
DMARC_SYMBOLS = {"DMARC_POLICY_ALLOW": ("pass", ""), "DMARC_POLICY_REJECT": ("fail", "reject"),
                 "DMARC_POLICY_QUARANTINE": ("fail", "quarantine"), "DMARC_POLICY_SOFTFAIL": ("fail", "none"),
                 "DMARC_NA": ("none", ""), "DMARC_BAD_POLICY": ("permerror", ""), "DMARC_DNSFAIL": ("temperror", "")}


@dataclass
class Authentication:
    """SPF, DKIM and DMARC as rspamd found them, as authres results for the header."""

    results: list  # authres results: SPF, DKIM (one per signature), DMARC; those [checks] leaves on
    temporary: list  # "SPF", "DKIM", "DMARC": a DNS failure, so no verdict (451)
    dmarc: object = None  # the DMARC result (.result, .policy, .header_from), if checked


def authentication_of(result: Result, spf: bool, dkim: bool, dmarc: bool, sender: str,
                      helo: str) -> Authentication | None:
    """The results of the checks asked for, from rspamd's symbols; None when one of them has
    no symbol in the answer (rspamd did not run it: the caller checks the message itself)."""
    from authres import DKIMAuthenticationResult, SPFAuthenticationResult
    from authres.dmarc import DMARCAuthenticationResult

    found = Authentication([], [])
    if spf:
        spf_results = [r for name, r in SPF_SYMBOLS.items() if name in result.symbols]
        if not spf_results:
            return None
        domain = (sender.rpartition("@")[2] if sender else "") or helo
        found.results.append(SPFAuthenticationResult(result=spf_results[0], smtp_helo=_property(helo) or None,
                                                     smtp_mailfrom=_property(domain) or None))
        if spf_results[0] == "temperror":
            found.temporary.append("SPF")
    if dkim:
        signatures = []
        for name, outcome in DKIM_SYMBOLS.items():  # pass first
            if name not in result.symbols:
                continue
            for option in result.options.get(name) or [""]:
                domain, _, selector = option.partition(":")
                signatures.append(DKIMAuthenticationResult(
                    result=outcome, header_d=_property(domain) or None,
                    header_s=_property(selector[2:] if selector.startswith("s=") else "") or None))
        if not signatures:
            return None
        found.results.extend(signatures)
        if signatures[0].result == "temperror":  # no signature passed, and one could not be checked
            found.temporary.append("DKIM")
    if dmarc:
        named = [name for name in DMARC_SYMBOLS if name in result.symbols]
        if not named:
            return None
        outcome, policy = DMARC_SYMBOLS[named[0]]
        options = result.options.get(named[0]) or []
        domain = _property(options[0].split(" : ", 1)[0].strip()) if options else ""
        if outcome == "pass" and len(options) > 1:
            policy = options[1]
        found.dmarc = DMARCAuthenticationResult(result=outcome, header_from=domain or "none",
                                                policy=_property(policy) or None)
        found.results.append(found.dmarc)
        if outcome == "temperror":
            found.temporary.append("DMARC")
    return found


def _property(value: str) -> str:
    """A value for a header property (RFC 8601 2.2 pvalue): a domain, a selector or a policy
    word as rspamd wrote it, anything else dropped (it came over the wire from a stranger)."""
    value = value.strip()
    return value if value and len(value) <= 255 and all(ch.isalnum() or ch in "-._" for ch in value) else ""


class _Body(Protocol):
    """Collects a response body, at most MAX_ANSWER octets.  (Twisted's readBody warns when
    the connection is gone by the time it is called, as rspamd's always is.)"""

    MAX_ANSWER = 4 * 1024 * 1024

    def __init__(self, code: int, done: defer.Deferred):
        self.code, self.done, self.parts, self.size = code, done, [], 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.MAX_ANSWER:
            self.transport.stopProducing()
        else:
            self.parts.append(data)

    def connectionLost(self, reason) -> None:
        if self.done.called:  # cancelled: the timeout came first
            return
        if self.size > self.MAX_ANSWER:
            self.done.errback(ValueError(f"rspamd's answer is over {self.MAX_ANSWER} octets"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback((self.code, b"".join(self.parts)))
        else:
            self.done.errback(reason)


def _read_body(response) -> defer.Deferred:
    done = defer.Deferred()
    response.deliverBody(_Body(response.code, done))
    return done


@implementer(IAgentEndpointFactory)
class _PlainEndpoints:
    """TCP endpoints for http:// URLs.  Agent's default, HostnameEndpoint, resolves even an
    address literal in a thread and builds classes per connection: about a third of the
    client's CPU per scan, and rspamd's normal worker closes every connection after its
    answer (3.4 answers "Connection: close"), so each scan pays for a connection."""

    def __init__(self, reactor, timeout: float):
        self.reactor, self.timeout = reactor, timeout

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii")
        if isIPv6Address(host.strip("[]")):
            return TCP6ClientEndpoint(self.reactor, host.strip("[]"), uri.port, self.timeout)
        if isIPAddress(host):
            return TCP4ClientEndpoint(self.reactor, host, uri.port, self.timeout)
        return HostnameEndpoint(self.reactor, uri.host, uri.port, self.timeout)


@implementer(IBodyProducer)
class BytesProducer:
    """The request body in one write (FileBodyProducer would feed it in pieces, one reactor
    turn each: a 100 KB message would cost several turns per request)."""

    def __init__(self, data: bytes):
        self.data, self.length = data, len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _OneExchange(Factory):
    """Builds the one :class:`_Exchange` of a connection.  Not twisted's connectProtocol: its
    factory logs "Starting factory" and "Stopping factory" at info level, two log lines per
    scan (a third of the reactor's cost of a scan, and noise in the admin's log)."""

    noisy = False

    def __init__(self, exchange: "_Exchange"):
        self.exchange = exchange

    def buildProtocol(self, addr):
        return self.exchange


class _Exchange(Protocol):
    """One HTTP/1.0 request and its answer on a connection of its own.

    rspamd's normal worker closes the connection after each answer anyway, so a persistent
    pool reuses nothing; twisted.web's Agent then costs a third of a millisecond of the
    reactor's CPU per scan in objects and state machines this needs none of.  The request goes
    in one write; the answer is done at Content-Length (or at close), at most MAX_ANSWER octets.
    """

    MAX_ANSWER = 4 * 1024 * 1024

    def __init__(self, request: bytes, done: defer.Deferred, sent: defer.Deferred | None = None):
        self.request, self.done, self.buffer, self.expected = request, done, b"", None
        self.sent = sent if sent is not None else defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)
        self.request = b""
        if not self.sent.called:
            self.sent.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.buffer += data
        if len(self.buffer) > self.MAX_ANSWER:
            self._finish(ValueError(f"rspamd's answer is over {self.MAX_ANSWER} octets"))
            return
        if self.expected is None and b"\r\n\r\n" in self.buffer:
            self.expected = content_length(self.buffer)
        if self.expected is not None and self.expected >= 0 and len(self.buffer) >= self.expected:
            self._finish(None)

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self._finish(None if b"\r\n\r\n" in self.buffer else
                         ConnectionError(f"rspamd closed the connection without an answer ({reason.getErrorMessage()})"))

    def _finish(self, error: Exception | None) -> None:
        try:
            result = parse_answer(self.buffer) if error is None else None
        except ValueError as e:
            error = e
        self.transport.loseConnection()
        if error is not None:
            self.done.errback(error)
        else:
            self.done.callback(result)


def content_length(buffer: bytes) -> int:
    """The total length (head and body) an answer will have; -1 when only its close tells."""
    head, _, _ = buffer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(head) + 4 + int(value.strip())
    return -1


def parse_answer(buffer: bytes) -> tuple[int, bytes]:
    """(status code, body) of an HTTP/1.x answer; ValueError when it is not one."""
    head, sep, body = buffer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise ValueError(f"not an HTTP answer from rspamd: {buffer[:80]!r}")
    if b"\r\ntransfer-encoding:" in head.lower():
        raise ValueError("rspamd answered an HTTP/1.0 request with a transfer coding")
    expected = content_length(buffer)
    return int(status[1]), body[: expected - len(head) - 4] if expected >= 0 else body


def _field(value) -> bytes:
    """A request header value without CR or LF (an envelope address cannot split the request)."""
    value = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return value.replace(b"\r", b"").replace(b"\n", b"")


class RspamdClient:
    """HTTP to rspamd: /checkv2 on the normal worker, learnspam/learnham on the controller."""

    def __init__(self, reactor, url: str, timeout: float, pool_size: int = 16,
                 controller_url: str = "", password: str = ""):
        self.reactor = reactor
        self.url = url.rstrip("/")
        self.controller_url = controller_url.rstrip("/")
        self.timeout = timeout
        self.password = password
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = pool_size
        self.pool.retryAutomatically = True
        if self.url.startswith("http://") and (not self.controller_url or self.controller_url.startswith("http://")):
            self.agent = Agent.usingEndpointFactory(reactor, _PlainEndpoints(reactor, timeout), pool=self.pool)
        else:  # https: Agent's own endpoints, with TLS
            self.agent = Agent(reactor, pool=self.pool, connectTimeout=timeout)
        self.scan_endpoint = None  # http:// scans go over _Exchange, https:// ones through Agent
        if self.url.startswith("http://"):
            uri = URI.fromBytes(self.url.encode("ascii"))
            self.scan_endpoint = _PlainEndpoints(reactor, timeout).endpointForURI(uri)
            self.scan_host = uri.netloc
            self.scan_path = (uri.path.rstrip(b"/") or b"") + b"/checkv2"

    def _post(self, url: str, message: bytes, headers: dict) -> defer.Deferred:
        """POST; fires with (status code, body); fails on no answer within the timeout."""
        h = Headers({k: v if isinstance(v, list) else [v] for k, v in headers.items()})
        d = self.agent.request(b"POST", url.encode("ascii"), h, BytesProducer(message))
        d.addCallback(_read_body)
        d.addTimeout(self.timeout, self.reactor)
        return d

    def _exchange(self, message: bytes, headers: dict, sent: defer.Deferred | None = None) -> defer.Deferred:
        """POST /checkv2 over a connection of its own (:class:`_Exchange`); the same answer
        and failures as :meth:`_post`.  ``sent`` fires once the request is written (or could
        not be), never failing."""
        lines = [b"POST " + self.scan_path + b" HTTP/1.0", b"Host: " + self.scan_host,
                 b"Content-Length: " + str(len(message)).encode("ascii")]
        for name, value in headers.items():
            for one in value if isinstance(value, list) else [value]:
                lines.append(name.encode("ascii") + b": " + _field(one))
        request = b"\r\n".join(lines) + b"\r\n\r\n" + message
        exchange = None

        def cancel(_):
            if exchange is not None and exchange.transport is not None:
                exchange.transport.abortConnection()
            connecting.cancel()

        done = defer.Deferred(cancel)
        exchange = _Exchange(request, done, sent)

        def not_connected(failure):
            if not exchange.sent.called:
                exchange.sent.callback(None)
            if not done.called:
                done.errback(failure)
        connecting = self.scan_endpoint.connect(_OneExchange(exchange))
        connecting.addErrback(not_connected)
        done.addTimeout(self.timeout, self.reactor)
        return done

    def check(self, message: bytes, envelope: dict, sent: defer.Deferred | None = None) -> defer.Deferred:
        """Scan; fires with a :class:`Result`.  ``sent``, if given, fires (never fails) once
        the message is on its way to rspamd."""
        def answered(result):
            code, body = result
            if code != 200:
                raise ValueError(f"rspamd answered HTTP {code}: {body[:200]!r}")
            return parse_result(body)
        if self.scan_endpoint is not None:
            return self._exchange(message, envelope, sent).addCallback(answered)
        if sent is not None:
            sent.callback(None)
        return self._post(self.url + "/checkv2", message, envelope).addCallback(answered)

    def learn(self, kind: str, message: bytes) -> defer.Deferred:
        """``kind`` "spam" or "ham"; fires with True when learned (or already known: rspamd
        answers 208 for a message it has learned before)."""
        def answered(result):
            code, body = result
            if code in (200, 208):
                return True
            raise ValueError(f"rspamd learn{kind} answered HTTP {code}: {body[:200]!r}")
        return self._post(f"{self.controller_url}/learn{kind}", message,
                          {"Password": self.password} if self.password else {}).addCallback(answered)

    def close(self) -> defer.Deferred:
        return self.pool.closeCachedConnections()


class RspamdFilter:
    """What the SMTP listeners ask before storing a message (mailstack.smtp.accept)."""

    def __init__(self, client: RspamdClient, settings: dict, checks: dict):
        self.client = client
        self.on_failure = settings["on_failure"]
        self.junk = settings["junk"]
        self.outbound = settings["scan_outbound"]
        self.max_size = settings["max_size"]
        #: rspamd does SPF/DKIM/DMARC for mailstack (mailstack.smtp.accept), else mailstack does
        self.authenticates = settings.get("checks", "rspamd") == "rspamd"
        # rspamd skips what [checks] turns off when it checks for mailstack, else what mailstack checks
        skipped = [group for key, group in GROUPS.items() if bool(checks.get(key)) != self.authenticates]
        self.settings_header = json.dumps({"groups_disabled": skipped}) if skipped else ""

    def envelope(self, peer: str, helo: str, sender: str, recipients: list[str], queue_id: str,
                 user: str | None) -> dict:
        headers = {"IP": peer.split("%", 1)[0], "Helo": helo or "unknown", "From": sender.encode("utf-8"),
                   "Rcpt": [r.encode("utf-8") for r in recipients], "Queue-Id": queue_id}
        if user:
            headers["User"] = user.encode("utf-8")
        if self.settings_header:
            headers["Settings"] = self.settings_header
        return headers

    def wanted(self, prepared, submission: bool, size: int) -> bool:
        if prepared.action in ("reject", "tempfail") or size > self.max_size:
            return False
        return self.outbound or not submission

    def scan(self, prepared, spool, facts, helo: str, sender: str, recipients: list[str],
             queue_id: str) -> defer.Deferred:
        """Fires with ``prepared``, changed by rspamd's verdict, or fails with MailError."""
        if not self.wanted(prepared, facts.submission, spool.size):
            return defer.succeed(prepared)
        envelope = self.envelope(facts.peer, helo, sender, recipients, queue_id, facts.user)
        d = defer.succeed(prepared.body) if prepared.body is not None else _read(spool)
        d.addCallback(lambda message: self.client.check(prepared.header + message, envelope))
        return d.addCallbacks(self.verdict, self.failed, callbackArgs=(prepared, facts.submission),
                              errbackArgs=(prepared, queue_id))

    def begin(self, spool, facts, helo: str, sender: str, recipients: list[str], queue_id: str):
        """Start scanning an MX message at once, beside mailstack's own checks, so the two
        latencies overlap instead of adding up.  Returns (sent, started): ``sent`` fires once
        the request is written (start the checks then: their thread holds the GIL for
        milliseconds, and the write would wait for it); ``started``, for :meth:`finish`, fires
        with a Result or ``[Failure]``; neither fails.  None when this message is not scanned
        early (submission, too big, or still on disk: then :meth:`scan` after the checks).
        rspamd is sent the message without the Authentication-Results the checks add."""
        if facts.submission or spool.size > self.max_size or spool.size > spool.MEMORY:
            return None
        envelope = self.envelope(facts.peer, helo, sender, recipients, queue_id, facts.user)
        sent = defer.Deferred()
        started = self.client.check(spool.read_all(), envelope, sent).addErrback(lambda failure: [failure])
        return sent, started

    def finish(self, prepared, started: defer.Deferred, queue_id: str) -> defer.Deferred:
        """Apply the scan :meth:`begin` started to what the checks made of the message; a
        message the checks refuse is refused for their reason, whatever rspamd said."""
        if prepared.action in ("reject", "tempfail"):
            return defer.succeed(prepared)

        def arrived(outcome):
            if isinstance(outcome, Result):
                return self.verdict(outcome, prepared, False)
            return self.failed(outcome[0], prepared, queue_id)
        return started.addCallback(arrived)

    def examine(self, spool, facts, helo: str, sender: str, recipients: list[str], queue_id: str) -> defer.Deferred:
        """``checks = "rspamd"``: scan an MX message for its spam verdict and its SPF, DKIM and
        DMARC at once; fires with (the message, a Result or the Failure of the scan)."""
        envelope = self.envelope(facts.peer, helo, sender, recipients, queue_id, facts.user)
        return _read(spool).addCallback(lambda message: self.client.check(message, envelope).addBoth(
            lambda outcome: (message, outcome)))

    def verdict(self, result: Result, prepared, submission: bool):
        """Apply rspamd's action to ``prepared``: raise MailError, or return it, marked as spam."""
        metrics.rspamd_scan(result.action)
        why = f"rspamd: {result.action} (score {result.score:.2f}/{result.required:.2f})"
        if result.action == "reject":
            raise MailError(codes.MAILBOX_UNAVAILABLE, codes.E_NOT_AUTHORIZED,
                            "Message refused: it looks like spam", why)
        if result.action in DEFER_ACTIONS:
            raise MailError(codes.LOCAL_ERROR, codes.E_NOT_AUTHORIZED_TEMPORARY,
                            "Message deferred by the content filter; try again later", why)
        if result.action in SPAM_ACTIONS:
            if submission:  # outbound: not filed as Junk for the recipient, but the log says so
                log.warn("outbound message scored as spam: {why}", why=why)
                return prepared
            prepared.header += result.headers()
            if self.junk and prepared.action == "deliver":
                prepared.action = "junk"
        return prepared

    def failed(self, failure, prepared, queue_id: str):
        """No verdict: log and count it, then raise MailError (tempfail) or return ``prepared``."""
        metrics.rspamd_scan("error")
        log.warn("rspamd scan of {id} failed ({on_failure}): {error}", id=queue_id, on_failure=self.on_failure,
                 error=failure.getErrorMessage() or failure.type.__name__)
        if self.on_failure == "accept":
            return prepared
        raise MailError(codes.LOCAL_ERROR, codes.E_NOT_AUTHORIZED_TEMPORARY,
                        "Content filter unavailable; try again later", f"rspamd: {failure.getErrorMessage()}")


def _read(spool) -> defer.Deferred:
    """The whole message: at once while it is still in memory (SpooledTemporaryFile: no I/O,
    no thread), else read in a thread."""
    if spool.size <= spool.MEMORY:
        return defer.succeed(spool.read_all())
    return threads.deferToThread(spool.read_all)


def build(reactor, cfg) -> tuple[RspamdFilter | None, RspamdClient | None]:
    """The filter and client from ``[rspamd]``; (None, None) when no url is set."""
    settings = cfg.rspamd
    if not settings.get("url"):
        return None, None
    client = RspamdClient(reactor, settings["url"], settings["timeout"], settings["pool_size"],
                          settings["controller_url"], settings["password"])
    return RspamdFilter(client, settings, cfg.checks), client
