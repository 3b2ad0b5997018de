"""What the server does with a message once its data is in: sign it (submission) or check it
(MX), then store the local copies and queue the rest for the relay.

:class:`SMTPSettings` is what every session of one listener shares; its methods run the
steps, the session orders them and replies.  Signing and checking read the whole message and
run in worker threads (checking a small message whose DNS answers are all cached runs at once,
:data:`INLINE_CHECK_SIZE`); local delivery goes through the shared :class:`DeliveryBatcher`.
"""

from __future__ import annotations

import datetime
import email.utils
import secrets
import time
from dataclasses import dataclass

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailstack import config as config_mod
from mailstack import metrics, resolver, workpool
from mailstack.errors import MailError
from mailstack.mail import codes
from mailstack.mail.headers import delivery_fields
from mailstack.smtp import authentication, quota
from mailstack.smtp.delivery import DeliveryBatcher
from mailstack.smtp.message import MessageSpool
from mailstack.smtp.policy import SessionFacts, SmtpPolicy

log = Logger()

#: Messages up to this size (all in memory) are checked on the reactor when every DNS answer
#: the checks need is in the resolver's cache (mailstack.resolver.from_cache_only): 0.2 to
#: 0.4 ms of CPU for 4 KB, about what the two thread hand-offs would cost, and the message's
#: latency without them.  Larger ones, and any whose answers are not cached, go to a thread.
INLINE_CHECK_SIZE = MessageSpool.HEAD

#: Received fields at which a message is refused as looping: RFC 5321 6.3 asks for a large
#: threshold, "normally at least 100".
MAX_HOPS = 100


@dataclass
class Prepared:
    """What signing or checking made of a message before it is stored or queued."""

    header: bytes = b""  # header fields to put above the message (DKIM-Signature, Authentication-Results)
    body: bytes | None = None  # the message to use instead of the spool (None: the spool as it is)
    action: str = "deliver"  # "deliver" | "junk" | "reject" | "tempfail"
    reason: str = ""


class SMTPSettings:
    """What every session of one listener shares."""

    def __init__(self, context, listener: config_mod.Listener):
        self.listener = listener
        self.hostname = context.config.hostname
        self.login_gate = context.login_gate
        self.tls = context.tls
        self.store = context.store
        self.relay = context.relay
        self.signer = context.dkim_signer
        if context.delivery_batcher is None:  # one for all SMTP listeners, so they batch together
            context.delivery_batcher = DeliveryBatcher(context.store)
        self.batcher = context.delivery_batcher
        self.sieve = getattr(context, "sieve", None)  # mailstack.sieve.delivery.SieveDelivery; None: off
        self.configure(context)

    def configure(self, context) -> None:
        """Take the limits, networks and checks from ``context.config``: at start, and again when
        SIGHUP changed them (mailstack.reconfigure); sessions see the new values at once."""
        cfg = context.config
        self.max_size = cfg.max_message_size
        self.max_commands = cfg.max_commands
        self.command_rate, self.command_burst = cfg.command_rate, cfg.command_burst
        self.timeout = cfg.smtp_timeout
        self.plaintext_on_loopback = cfg.plaintext_on_loopback
        self.srs = getattr(context, "srs", None)  # mailstack.srs.SRS: forwarded copies' senders
        self.policy = SmtpPolicy(context.accounts, cfg.domains, cfg.max_recipients, cfg.trusted_networks, self.srs)
        self.checker = context.inbound_checker if self.listener.protocol == "smtp" else None
        from mailstack.antispam.screen import ClientScreen

        self.screen = ClientScreen.build(context, self.listener, self.policy)
        # antispam: greylisting on the MX port, outbound limits per user on submission (None: off)
        self.greylist = getattr(context, "greylist", None) if self.listener.protocol == "smtp" else None
        self.limits = getattr(context, "outbound_limits", None) if self.listener.protocol == "submission" else None
        self.content_filter = context.rspamd  # mailstack.antispam.rspamd, beside the checks

    def prepare(self, spool: MessageSpool, added: bytes, facts: SessionFacts, sender: str, helo: str,
                recipients: list[str] = (), queue_id: str = "") -> defer.Deferred:
        """Submission: check From/Sender, DKIM-sign if the domain has a key; MX: check; then
        the content filter when there is one; fires with :class:`Prepared` (or fails with MailError)."""
        hops = spool.received_count()
        if hops >= MAX_HOPS:  # RFC 5321 6.3: a loop, counted by Received fields
            return defer.fail(MailError(codes.TRANSACTION_FAILED, codes.E_ROUTING_LOOP,
                                        "Too many hops: the message is in a mail loop",
                                        cause=f"{hops} Received fields, the limit is {MAX_HOPS}"))
        cf = self.content_filter
        if (cf is not None and cf.authenticates and self.checker is not None and not facts.submission
                and cf.wanted(Prepared(), False, spool.size)):
            return cf.examine(spool, facts, helo, sender, list(recipients), queue_id).addCallback(
                self._checked_by_rspamd, spool, added, facts, sender, helo, queue_id)
        early = None
        if self.content_filter is not None:  # before the checks, which then run while rspamd scans
            early = self.content_filter.begin(spool, facts, helo, sender, list(recipients), queue_id)
        if early is not None:
            sent, started = early
            d = sent.addCallback(lambda _: self._prepare(spool, added, facts, sender, helo))
            return d.addCallback(self.content_filter.finish, started, queue_id)
        d = self._prepare(spool, added, facts, sender, helo)
        if self.content_filter is not None:
            d.addCallback(self.content_filter.scan, spool, facts, helo, sender, list(recipients), queue_id)
        return d

    def _checked_by_rspamd(self, scanned, spool: MessageSpool, added: bytes, facts: SessionFacts, sender: str,
                           helo: str, queue_id: str):
        """MX with ``[rspamd] checks = "rspamd"``: SPF, DKIM and DMARC from rspamd's answer
        (mailstack.antispam.rspamd.authentication_of), judged as our own checks' results are
        (authentication.decide), then rspamd's spam verdict.  Without an answer (``on_failure =
        "accept"``), or when rspamd did not run a check, our own checks run instead."""
        from mailstack.antispam.rspamd import Result, authentication_of

        message, outcome = scanned
        cf, checker = self.content_filter, self.checker
        if not isinstance(outcome, Result):
            cf.failed(outcome, None, queue_id)  # raises MailError unless on_failure is "accept"
            return self._prepare(spool, added, facts, sender, helo)
        found = authentication_of(outcome, checker.do_spf, checker.do_dkim, checker.do_dmarc, sender, helo)
        if found is None:
            log.debug("rspamd did not check SPF/DKIM/DMARC of {id}: checking it here", id=queue_id)
            return self._prepare(spool, added, facts, sender, helo).addCallback(self._then_spam_verdict, outcome)
        extra = facts.client.auth_results() if facts.client is not None else []  # iprev
        verdict = authentication.decide(self.hostname, list(extra) + found.results, found.temporary, found.dmarc,
                                        checker.enforce)
        prepared = Prepared(header=verdict.header, action=verdict.action, reason=verdict.reason)
        if authentication.may_have_own_results(message):  # a forged header claiming to be ours (RFC 8601 5)
            d = threads.deferToThread(authentication.strip_own_results, message, self.hostname)
            d.addCallback(lambda stripped: setattr(prepared, "body", stripped if stripped != message else None))
            d.addCallback(lambda _: prepared)
        else:
            d = defer.succeed(prepared)
        return d.addCallback(self._then_spam_verdict, outcome)

    def _then_spam_verdict(self, prepared: Prepared, result) -> Prepared:
        """rspamd's verdict on what the checks let through; what they refuse is refused for
        their reason (the scan still counted in the metrics)."""
        if prepared.action in ("reject", "tempfail"):
            metrics.rspamd_scan(result.action)
            return prepared
        return self.content_filter.verdict(result, prepared, False)

    def _prepare(self, spool: MessageSpool, added: bytes, facts: SessionFacts, sender: str,
                 helo: str) -> defer.Deferred:
        if facts.submission:
            if spool.header_in_head():
                return defer.maybeDeferred(self.submit, spool, added, facts, sender, spool.header_block())
            d = threads.deferToThread(spool.header_block)  # a header beyond 64 KiB: read from the spool
            return d.addCallback(lambda header: self.submit(spool, added, facts, sender, header))
        extra = facts.client.auth_results() if facts.client is not None else []  # iprev
        if self.checker is not None:
            if spool.size <= INLINE_CHECK_SIZE and self.checker.has_cache:  # here, if the cache has every answer
                try:
                    done, prepared = resolver.from_cache_only(self.check, spool, facts.peer, sender, helo, extra)
                except Exception:
                    return defer.fail()  # the session answers 451, as for a failure in the thread
                if done:
                    return defer.succeed(prepared)
            return workpool.defer_to_thread(self.check, spool, facts.peer, sender, helo, extra)
        return defer.succeed(Prepared(header=authentication.results_header(self.hostname, extra) if extra else b""))

    def submit(self, spool: MessageSpool, added: bytes, facts: SessionFacts, sender: str, header: bytes):
        """Refuse a From or Sender the user may not send as; remove Authentication-Results
        claiming to be ours (RFC 8601 5); sign for the From's domain (now known to be the
        user's) or the envelope sender's.  A Deferred, or a Prepared when nothing changes."""
        self.policy.check_header_senders(facts, header)
        domain = self.signer.domain_for(authentication.header_from(header), sender) if self.signer else None
        forged = authentication.has_own_results(header, self.hostname)
        if domain or forged:
            return threads.deferToThread(self.rewrite, spool, added, domain, forged)
        return Prepared(header=added)

    def rewrite(self, spool: MessageSpool, added: bytes, domain: str | None, forged: bool) -> Prepared:
        """Submission (worker thread): strip our forged results, DKIM-sign (RFC 6376) with
        ``domain``'s key."""
        message = added + spool.read_all()
        if forged:
            message = authentication.strip_own_results(message, self.hostname)
        return Prepared(header=self.signer.sign(message, domain) if domain else b"", body=message)

    def check(self, spool: MessageSpool, peer: str, sender: str, helo: str, extra: list = ()) -> Prepared:
        """MX (worker thread): SPF, DKIM, DMARC; our own Authentication-Results header on top."""
        message = spool.read_all()
        verdict = self.checker.check(message, peer, sender, helo, extra)
        stripped = (authentication.strip_own_results(message, self.hostname)
                    if authentication.may_have_own_results(message) else message)
        return Prepared(header=verdict.header, body=stripped if stripped != message else None,
                        action=verdict.action, reason=verdict.reason)

    def deliver(self, prepared: Prepared, received: bytes, spool: MessageSpool, sender: str,
                accounts: list[str], remote: list[str], user: str | None = None,
                forwarded: list[str] = (), recipients=()) -> defer.Deferred:
        """Store the local copies, then queue for the outside; fires with (queue id or None,
        {account: the folder(s) its copy went to}).

        Local copies go first (both read the one spool, in turn): a local failure then answers
        451 before anything is left for elsewhere.  ``user`` (the authenticated sender) goes
        with the queued copy, for 'mailstack queue hold USER'.  ``forwarded``: outside
        addresses reached by forwarding (aliases, SRS reversal), queued with the sender
        rewritten by SRS when it is not ours (a second queue entry then; the ids joined by ",").
        """
        if prepared.action == "reject":
            raise MailError(codes.MAILBOX_UNAVAILABLE, codes.E_NOT_AUTHORIZED, f"Message refused: {prepared.reason}")
        if prepared.action == "tempfail":
            raise MailError(codes.LOCAL_ERROR, codes.E_SECURITY_TEMPORARY,
                            f"Temporary failure: {prepared.reason}; try again later")
        head = received + prepared.header
        body = prepared.body if prepared.body is not None else spool
        folder = "Junk" if prepared.action == "junk" else "INBOX"
        d = self.deliver_local(accounts, sender, head, body, folder, recipients, user or "",
                               not remote and not forwarded)
        placed = {account: folder for account in accounts}  # Sieve may have filed them elsewhere
        d.addCallback(lambda where: placed.update(where or {}))
        queued = []
        for envelope_sender, targets in self.outgoing(sender, remote, forwarded):
            d.addCallback(lambda _, s=envelope_sender, t=targets: self.relay.enqueue(s, t, compose(head, body), user or ""))
            d.addCallback(queued.append)
        return d.addCallback(lambda _: (",".join(queued) or None, placed))

    def outgoing(self, sender: str, remote: list[str], forwarded: list[str]) -> list[tuple[str, list[str]]]:
        """(envelope sender, recipients) of each queue entry: one, or two when SRS rewrote the
        sender of the forwarded copies."""
        rewritten = self.srs.forward(sender) if self.srs is not None and forwarded else sender
        if rewritten == sender:
            both = list(remote) + [a for a in forwarded if a not in remote]
            return [(sender, both)] if both else []
        metrics.srs("forwarded")
        extra = [a for a in forwarded if a not in remote]
        return ([(sender, list(remote))] if remote else []) + ([(rewritten, extra)] if extra else [])

    def deliver_local(self, accounts: list[str], sender: str, head: bytes, body, folder: str = "INBOX",
                      recipients=(), user: str = "", only_local: bool = True):
        """One copy per account, each with its own Return-Path and Delivered-To; a Deferred.
        Quotas first, when an account has one (mailstack.smtp.quota): past that check the
        copies are stored with grace.  With Sieve on, each account's scripts decide next (RFC
        5228); a reject answers 550 5.7.1 here when the message has one recipient (RFC 5429
        2.1), else it bounces."""
        size = len(head) + (len(body) if isinstance(body, bytes) else body.size)
        checked = quota.at_data(self.store, accounts, size) if only_local else None
        if checked is None:  # not only local: a copy leaves as well, so no refusal (grace for all)
            return self._store_local(accounts, sender, head, body, folder, recipients, user, only_local,
                                     not only_local)
        return checked.addCallback(lambda _: self._store_local(accounts, sender, head, body, folder, recipients,
                                                               user, only_local, True))

    def _store_local(self, accounts, sender, head, body, folder, recipients, user, only_local, grace: bool):
        def store_items(items):  # (account, source, folder[, flags]) -> the batcher's full items
            if grace:
                items = [(item + ((),) if len(item) == 3 else item[:4]) + (True,) for item in items]
            return self.batcher.deliver(items)

        if self.sieve is not None and accounts:
            rcpt_of: dict[str, str] = {}
            for r in recipients:
                for account in r.local:
                    rcpt_of.setdefault(account, r.address)
            single = only_local and len(recipients) == 1 and len(accounts) == 1
            return self.sieve.deliver([(a, rcpt_of.get(a, a)) for a in accounts], sender, head, body, folder,
                                      store_items, user, single)
        return store_items([(account, compose(delivery_fields(sender, account) + head, body), folder)
                            for account in accounts])

_date_text = (0, "")  # (whole second, its RFC 5322 date): one formatting a second


def date_now() -> str:
    """The current time as an RFC 5322 3.3 date-time in local time (Received, Date)."""
    global _date_text
    second = int(time.time())
    if _date_text[0] != second:
        local = email.utils.localtime(datetime.datetime.fromtimestamp(second))
        _date_text = (second, email.utils.format_datetime(local))
    return _date_text[1]


def compose(head: bytes, body):
    """Header lines, then the message (the spool, read in the worker thread, or bytes)."""
    yield head
    if isinstance(body, bytes):
        yield body
    else:
        yield from body.chunks()


@dataclass
class TraceFacts:
    """What the Received field says about the session a message came in on."""

    hostname: str
    session_id: str
    helo: str
    peer: str
    esmtp: bool
    smtputf8: bool
    tls: tuple | None  # (protocol version, cipher) under TLS
    user: str | None  # the authenticated account
    peer_name: str = ""  # the client's reverse DNS name, only when iprev passed


def trace_fields(t: TraceFacts, recipients, spool: MessageSpool, submission: bool) -> tuple[bytes, bytes]:
    """(Received (RFC 5321 4.4), Message-ID and Date on submission when missing (RFC 6409 8))."""
    proto = ("ESMTP" if t.esmtp else "SMTP") + ("S" if t.tls else "") + ("A" if t.user else "")
    if t.smtputf8 and t.esmtp:
        proto = "UTF8" + proto
    # RFC 5321 4.4 TCP-info: the verified name, then the address literal (IPv6 with its tag).
    literal = f"[IPv6:{t.peer}]" if ":" in t.peer else f"[{t.peer}]"
    tcp_info = f"{t.peer_name} {literal}" if t.peer_name else literal
    lines = [f"Received: from {t.helo} ({tcp_info})",
             f"\tby {t.hostname} (mailstack) with {proto} id {t.session_id}"]
    if t.tls:
        lines.append(f"\t(using {t.tls[0]} with cipher {t.tls[1]})")
    if t.user:
        lines.append(f"\t(authenticated as {t.user})")
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0].address}>")
    lines[-1] += f"; {date_now()}"
    added = []
    if submission:
        present = spool.header_names()
        if "message-id" not in present:
            added.append(f"Message-ID: <{time.strftime('%Y%m%d%H%M%S')}.{secrets.token_hex(8)}@{t.hostname}>")
        if "date" not in present:
            added.append(f"Date: {date_now()}")
    return _encode(lines), _encode(added)


def _encode(lines: list[str]) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("utf-8")
