"""Outbound delivery: takes messages from the queue to the recipients' MX hosts (or a smarthost).

A scheduler claims due messages from :class:`~mailstack.outbound.queue.OutboundQueue`, groups
their recipients by domain, looks up each domain's route in a worker thread
(:mod:`routing`), and delivers each domain's recipients over one connection per host
(:mod:`client`), within a cap on connections overall and per domain.  The outcome per
recipient: 2xx delivered (recorded at once), 4xx or a network failure retried on the backoff
schedule, 5xx (or expiry) bounced to the sender as an RFC 3464 report (:mod:`bounce`).
Nothing here blocks the reactor: disk and DNS work runs in threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from twisted.application import service
from twisted.internet import defer, ssl, task, threads
from twisted.logger import Logger

from mailstack import logcontext
from mailstack import metrics
from mailstack.errors import MailError
from mailstack.mail import codes
from mailstack.outbound import client, dsn
from mailstack.outbound.bounce import BounceSender
from mailstack.outbound.queue import DELIVERED, FAILED, PENDING, Envelope, OutboundQueue
from mailstack.outbound.routing import Hop, MXRouter

log = Logger()


@dataclass
class RelaySettings:
    hostname: str
    port: int = 25
    retry_schedule: list[int] = field(default_factory=lambda: [300, 900, 1800, 3600, 7200, 14400])
    max_age: int = 5 * 86400
    delay_warning: int = 4 * 3600
    connect_timeout: float = 30
    reply_timeout: float = 300
    max_connections: int = 20
    max_connections_per_domain: int = 3
    tls: str = "opportunistic"  # "opportunistic" | "required" | "none"
    plaintext_fallback: bool = True  # after a failed STARTTLS handshake, try again without TLS
    scan_interval: float = 10
    smarthost: str = ""  # "host:port"
    smarthost_tls: str = "starttls"  # "starttls" | "implicit"
    smarthost_username: str = ""
    smarthost_password: str = ""
    smarthost_ca_file: str = ""
    smarthost_verify: bool = True


class RelayService(service.Service):
    name = "relay"

    def __init__(self, queue: OutboundQueue, router: MXRouter, settings: RelaySettings, bounces: BounceSender,
                 reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.queue, self.router, self.settings = queue, router, settings
        self.bounces = bounces
        self.inflight: set[str] = set()
        self.redelivered = 0  # messages picked up again after an attempt a crash cut short
        self.connections = defer.DeferredSemaphore(settings.max_connections)
        self.per_domain: dict[str, defer.DeferredSemaphore] = {}
        self._scan_call = None
        self._scanning = False
        self._loop = task.LoopingCall(self.kick)
        self._loop.clock = reactor
        # No certificate check on opportunistic STARTTLS to MX hosts (RFC 7435: better than
        # plaintext; MX certificates rarely match); the smarthost is verified.
        self._mx_tls = ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2) if settings.tls != "none" else None

    # -- life cycle ------------------------------------------------------------------------------

    def startService(self):
        super().startService()
        recovered = self.queue.recover()
        if recovered:
            log.info("relay: recovered {n} messages claimed by a process that is gone", n=len(recovered))
        self._loop.start(self.settings.scan_interval, now=True)

    def stopService(self):
        if self._loop.running:
            self._loop.stop()
        if self._scan_call is not None and self._scan_call.active():
            self._scan_call.cancel()
        return super().stopService()

    def enqueue(self, sender: str, recipients: list[str], source, user: str = "") -> defer.Deferred:
        """Queue a message durably (thread); fires with its queue id, then delivery starts."""
        d = threads.deferToThread(self.queue.enqueue, sender, recipients, source, user)

        def queued(qid):
            log.info("relay: queued {id} from <{sender}> for {recipients}", id=qid, sender=sender, recipients=recipients)
            metrics.message("queued")
            self.kick()
            return qid

        return d.addCallback(queued)

    def enqueue_now(self, sender: str, recipients: list[str], source, user: str = "") -> str:
        """:meth:`enqueue` from a worker thread (Sieve's redirects and replies): blocking; the
        scan is started on the reactor."""
        qid = self.queue.enqueue(sender, recipients, source, user)
        log.info("relay: queued {id} from <{sender}> for {recipients}", id=qid, sender=sender, recipients=recipients)
        metrics.message("queued")
        self.reactor.callFromThread(self.kick)
        return qid

    def kick(self) -> None:
        """Look for due messages now (a later scan already planned is brought forward)."""
        if not self.running:
            return
        if self._scan_call is not None and self._scan_call.active():
            self._scan_call.reset(0)
        else:
            self._scan_call = self.reactor.callLater(0, self._scan)

    # -- scheduling ------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _scan(self):
        if self._scanning:
            return
        self._scanning = True
        try:
            due = yield threads.deferToThread(self.queue.due)
            now = time.time()
            for when, qid in due:
                if when > now:
                    self._scan_call = self.reactor.callLater(min(when - now, self.settings.scan_interval), self._scan)
                    break
                if qid in self.inflight:
                    continue
                env = yield threads.deferToThread(self.queue.claim, qid)
                if env is None:
                    continue  # another process took it
                self.inflight.add(qid)
                self._process(env).addErrback(lambda f, qid=qid: log.failure("relay: processing {id} failed", f, id=qid))
        except Exception:
            log.failure("relay: queue scan failed")
        finally:
            self._scanning = False

    def _domain_lock(self, domain: str) -> defer.DeferredSemaphore:
        if domain not in self.per_domain:
            self.per_domain[domain] = defer.DeferredSemaphore(self.settings.max_connections_per_domain)
        return self.per_domain[domain]

    @defer.inlineCallbacks
    def _process(self, env: Envelope):
        try:
            env.attempts += 1
            self._note_interrupted(env)
            failed_before = {r.address for r in env.recipients if r.status == FAILED}
            by_domain: dict[str, list[str]] = {}
            for r in env.pending():
                if not (r.address.isascii() and env.sender.isascii()):
                    # Twisted's client cannot send SMTPUTF8 (RFC 6531) addresses: say so at once.
                    r.status, r.code = FAILED, codes.MAILBOX_NAME_INVALID
                    r.diagnostic = f"{codes.E_NON_ASCII_ADDRESS} non-ASCII addresses cannot be relayed by this server"
                    log_outcome(env, r)
                    continue
                by_domain.setdefault(r.address.rpartition("@")[2].lower(), []).append(r.address)
            results = yield defer.DeferredList([self._deliver_domain(env, d, rcpts) for d, rcpts in by_domain.items()],
                                               consumeErrors=True)
            for ok, failure in results:
                if not ok:
                    log.failure("relay: {id}: delivery attempt failed", failure, id=env.id)
            yield self._after_attempt(env, failed_before)
        except Exception:
            # Whatever went wrong, the message must not stay claimed: back to the queue, later.
            log.failure("relay: {id}: processing failed; will try again", id=env.id)
            env.next_attempt = time.time() + self.settings.retry_schedule[0]
            env.attempt_started = 0.0
            try:
                yield threads.deferToThread(self.queue.release, env)
            except Exception:
                log.failure("relay: {id}: could not put the message back; it returns at the next start", id=env.id)
        finally:
            self.inflight.discard(env.id)

    def _note_interrupted(self, env: Envelope) -> None:
        """Log and count a redelivery if the last attempt was cut short: its marker (written by
        _attempt before connecting, cleared when the attempt ends) survived a crash."""
        if env.attempt_started:
            env.interrupted += 1
            self.redelivered += 1
            log.warn("relay: {id}: redelivering after interrupted attempt (started {ago:.0f}s ago; {n} interrupted for "
                     "this message, {total} since start-up): recipients not recorded as delivered may get it twice",
                     id=env.id, ago=time.time() - env.attempt_started, n=env.interrupted, total=self.redelivered)
            env.attempt_started = 0.0  # the next connection writes a new marker

    @defer.inlineCallbacks
    def _deliver_domain(self, env: Envelope, domain: str, recipients: list[str]):
        lock = self._domain_lock(domain)
        yield lock.acquire()
        try:
            outcome = yield self._try_hops(env, domain, recipients)
        except MailError as e:
            outcome = {r: (e.code, f"{e.enhanced} {e.text}", "") for r in recipients}
        finally:
            lock.release()
        for r in env.recipients:
            if r.address in outcome:
                code, text, host = outcome[r.address]
                r.code, r.diagnostic, r.remote_mta = code, text, host
                r.status = DELIVERED if 200 <= code < 300 else FAILED if code >= 500 else PENDING
                log.info("relay: {id} to <{rcpt}> via {host}: {code} {text}", id=env.id, rcpt=r.address,
                         host=host or "-", code=code, text=text)
                log_outcome(env, r)
                metrics.relay_reply(code)
        yield threads.deferToThread(self.queue.update, env)  # delivered recipients are recorded now

    @defer.inlineCallbacks
    def _routes(self, domain: str):
        s = self.settings
        if s.smarthost:
            host, _, port = s.smarthost.rpartition(":")
            addresses = yield threads.deferToThread(self.router.addresses, host)
            return [Hop(host, addresses)], int(port)
        hops = yield threads.deferToThread(self.router.route, domain)
        return hops, s.port

    @defer.inlineCallbacks
    def _try_hops(self, env: Envelope, domain: str, recipients: list[str]):
        """{recipient: (code, text, host)}; raises MailError when no host could be asked."""
        s = self.settings
        hops, port = yield self._routes(domain)
        last: MailError | None = None
        for hop in hops:
            for address in hop.addresses:
                result = yield self._attempt(env, hop.host, address, port, recipients, use_tls=True)
                if result.tls_failed and s.plaintext_fallback and s.tls == "opportunistic" and not s.smarthost:
                    log.warn("relay: TLS handshake with {host} failed; trying again without TLS", host=hop.host)
                    result = yield self._attempt(env, hop.host, address, port, recipients, use_tls=False)
                if result.recipients:
                    outcome = {r: (c, t, hop.host) for r, (c, t) in result.recipients.items()}
                    for r in recipients:
                        outcome.setdefault(r, (codes.LOCAL_ERROR, f"{codes.E_CONNECTION_DROPPED} no answer for this recipient", hop.host))
                    return outcome
                last = result.error
                log.info("relay: {id}: {host} [{address}] failed: {error}", id=env.id, host=hop.host, address=address,
                         error=str(last))
                if last is not None and not last.temporary:
                    break  # a 5xx greeting: this host refuses; the next MX may not
        raise last or MailError(codes.LOCAL_ERROR, codes.E_UNROUTABLE_NOW, f"no host for {domain} could be reached")

    @defer.inlineCallbacks
    def _attempt(self, env: Envelope, host: str, address: str, port: int, recipients: list[str], use_tls: bool):
        s = self.settings
        yield self.connections.acquire()
        try:
            if not env.attempt_started:
                # On disk (fsynced) before the first connection of this attempt: a crash from
                # here on may leave the remote with the message while we still think it pending.
                env.attempt_started = time.time()
                yield threads.deferToThread(self.queue.update, env)
            starttls, implicit, require = None, None, False
            username = password = None
            if s.smarthost:
                creator = ssl.optionsForClientTLS(
                    host, trustRoot=ssl.Certificate.loadPEM(open(s.smarthost_ca_file, "rb").read())
                    if s.smarthost_ca_file else ssl.platformTrust()) if s.smarthost_verify else self._mx_tls_creator()
                if s.smarthost_tls == "implicit":
                    implicit = creator
                else:
                    starttls, require = creator, True
                username, password = s.smarthost_username or None, s.smarthost_password or None
            elif use_tls and self._mx_tls is not None:
                starttls, require = self._mx_tls, s.tls == "required"
            result = yield client.attempt(
                self.reactor, host, address, port, s.hostname, env.sender, recipients,
                lambda: self.queue.open_message(env.id), starttls_context=starttls, implicit_tls_creator=implicit,
                require_tls=require, username=username, password=password,
                connect_timeout=s.connect_timeout, reply_timeout=s.reply_timeout)
            return result
        finally:
            self.connections.release()

    def _mx_tls_creator(self):
        return ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2)

    # -- after an attempt: bounces, warnings, the next try ----------------------------------------------

    @defer.inlineCallbacks
    def _after_attempt(self, env: Envelope, failed_before: set[str]):
        s = self.settings
        now = time.time()
        pending = env.pending()
        if pending and now - env.created > s.max_age:
            for r in pending:
                r.status = FAILED
                r.diagnostic = f"{codes.E_DELIVERY_EXPIRED} gave up after {env.attempts} attempts over {int((now - env.created) / 3600)} h; last: {r.diagnostic}"
                log_outcome(env, r)
            pending = []
        newly_failed = [r for r in env.recipients if r.status == FAILED and r.address not in failed_before]
        metrics.message("bounced", len(newly_failed))
        if newly_failed:
            yield self._bounce(env, newly_failed, "failed")
        elif pending and s.delay_warning and not env.warned and now - env.created > s.delay_warning:
            env.warned = True
            yield self._bounce(env, pending, "delayed")
        env.attempt_started = 0.0  # the attempt is over; release() below records that
        if not pending:
            yield threads.deferToThread(self.queue.finish, env)
            log.info("relay: {id} done after {n} attempts", id=env.id, n=env.attempts)
            return
        delay = s.retry_schedule[min(env.attempts - 1, len(s.retry_schedule) - 1)]
        env.next_attempt = now + delay
        yield threads.deferToThread(self.queue.release, env)
        log.info("relay: {id} deferred for {n} recipients, next attempt in {delay}s", id=env.id, n=len(pending), delay=delay)
        self.kick()

    @defer.inlineCallbacks
    def _bounce(self, env: Envelope, recipients, action: str):
        if not env.sender:
            log.info("relay: {id}: not bouncing a message from the null sender", id=env.id)
            return
        qid, report_id = yield threads.deferToThread(self.bounces.send_report, env, recipients, action)
        logcontext.mail(env.id, "dsn", message_id=env.message_id, sender=env.sender, action=action,
                        recipient=",".join(r.address for r in recipients), dsn_queue_id=qid or "",
                        dsn_message_id=report_id, relay=None if qid else "local")
        metrics.message("queued" if qid else "delivered")
        log.info("relay: {id}: {action} report to <{sender}>{via}", id=env.id, action=action, sender=env.sender,
                 via=f" queued as {qid}" if qid else " delivered locally")
        if qid:
            self.kick()


def log_outcome(env: Envelope, r) -> None:
    """The per-message line for one recipient after an attempt: sent, deferred or bounced."""
    status = {DELIVERED: "sent", FAILED: "bounced"}.get(r.status, "deferred")
    reply = f"{r.code} {r.diagnostic}" if r.code else r.diagnostic
    logcontext.mail(env.id, status, message_id=env.message_id, sender=env.sender, recipient=r.address,
                    size=env.size, relay=r.remote_mta, dsn=dsn.enhanced_of(r.code or codes.LOCAL_ERROR, r.diagnostic),
                    delay=round(time.time() - env.created, 1), reason=reply)


def build_relay(cfg, store, accounts, reactor) -> RelayService:
    """The relay as the configuration's ``[relay]`` and ``[dns]`` sections describe it."""
    r = cfg.relay
    settings = RelaySettings(
        hostname=cfg.hostname, port=r["port"], retry_schedule=r["retry_schedule"], max_age=r["max_age"],
        delay_warning=r["delay_warning"], connect_timeout=r["connect_timeout"], reply_timeout=r["reply_timeout"],
        max_connections=r["max_connections"], max_connections_per_domain=r["max_connections_per_domain"],
        tls=r["tls"], plaintext_fallback=r["plaintext_fallback"], scan_interval=r["scan_interval"],
        smarthost=r["smarthost"], smarthost_tls=r["smarthost_tls"], smarthost_username=r["smarthost_username"],
        smarthost_password=cfg.smarthost_password, smarthost_ca_file=r["smarthost_ca_file"],
        smarthost_verify=r["smarthost_verify"])
    router = MXRouter(cfg.dns["nameservers"], cfg.dns["port"], cfg.dns["timeout"], cfg.dns["cache_size"])
    queue = OutboundQueue(cfg.queue_dir, cfg.store_fsync)
    return RelayService(queue, router, settings, BounceSender(cfg.hostname, queue, accounts, store), reactor)
