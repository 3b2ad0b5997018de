"""Bounces: the RFC 3464 report (:mod:`dsn`) for recipients that failed or are delayed, sent to
the original sender from the null reverse-path.

A sender of ours gets the report straight into their mailbox (with the same delivery header
fields an SMTP delivery gets, :func:`mailstack.mail.headers.delivery_fields`); anyone else's
goes back into the outbound queue.  Everything here blocks: the relay calls it in a thread.
"""

from __future__ import annotations

import time

from mailstack.mail import codes
from mailstack.mail.headers import delivery_fields, message_id
from mailstack.outbound import dsn
from mailstack.outbound.queue import Envelope, OutboundQueue, RecipientState
from mailstack.srs import SRSError

#: How much of the original message the report quotes (its header, ``text/rfc822-headers``).
QUOTED_HEAD = 64 * 1024


class BounceSender:
    def __init__(self, hostname: str, queue: OutboundQueue, accounts, store):
        self.hostname, self.queue, self.accounts, self.store = hostname, queue, accounts, store
        #: ``(account, sender, message)``, blocking: how a report reaches a local sender's
        #: mailbox (service.py sets Sieve's, so the sender's filters see it); None: straight in.
        self.local_delivery = None
        self.srs = None  # mailstack.srs.SRS (set by the service): reports to our SRS senders are reversed

    def send(self, env: Envelope, recipients: list[RecipientState], action: str) -> str | None:
        """Report ``action`` ("failed" | "delayed") for ``recipients`` of ``env`` to its sender.

        Returns the queue id of the report, or None when it was delivered locally.
        """
        return self.send_report(env, recipients, action)[0]

    def send_report(self, env: Envelope, recipients: list[RecipientState], action: str) -> tuple[str | None, str]:
        """:meth:`send`, returning also the report's Message-ID (for the log)."""
        reports = [dsn.RecipientReport(r.address, action, dsn.enhanced_of(r.code or codes.LOCAL_ERROR, r.diagnostic),
                                       f"{r.code} {r.diagnostic}" if r.code else r.diagnostic, r.remote_mta)
                   for r in recipients]
        with self.queue.open_message(env.id) as f:
            head = f.read(QUOTED_HEAD)
        to = self.report_address(env.sender)
        report = dsn.build(self.hostname, to, reports, head, env.id, env.created)
        report_id = message_id(report)
        if self.deliver_locally(to, report):
            return None, report_id
        return self.queue.enqueue("", [to], report), report_id

    def report_address(self, sender: str) -> str:
        """Where the report goes: for a copy we forwarded (its sender one of our SRS addresses)
        the original sender, as the MX port would send it on (mailstack.srs)."""
        if self.srs is not None and self.srs.is_ours(sender):
            try:
                return self.srs.reverse(sender)
            except SRSError:
                pass  # expired: it goes to the SRS address, which refuses it (no loop: the report's sender is <>)
        return sender

    def deliver_locally(self, address: str, report: bytes) -> bool:
        """Store the report for a local ``address``; False when the address is not local.
        A report is stored past the user's quota (grace): it tells them their own mail did not
        arrive, and there is no one to tell if it is refused."""
        if self.srs is not None and self.srs.is_ours(address):
            return False  # one report_address could not reverse: not a catch-all's (policy.py)
        resolution = self.accounts.resolve(address)
        if resolution is None or not resolution.local:
            return False
        for account in resolution.local:
            if self.local_delivery is not None:
                self.local_delivery(account, "", report, grace=True)
            else:
                errors = self.store.deliver_batch([(account, delivery_fields("", account) + report, "INBOX", (), True)])
                if errors[0] is not None:
                    raise errors[0]
        return True


def refusal_report(hostname: str, sender: str, recipient: str, reason: str, original_head: bytes,
                   status: str = codes.E_NOT_AUTHORIZED, code: int = codes.MAILBOX_UNAVAILABLE) -> bytes:
    """The DSN for a message a recipient's Sieve script rejected after the SMTP session
    (RFC 5429 2.1: several recipients, or no session to answer): failed, 5.7.1, the reason;
    or (``status``, ``code``) for a local redirect target that refused it (a full mailbox)."""
    report = dsn.RecipientReport(recipient, "failed", status, f"{code} {status} {reason}")
    return dsn.build(hostname, sender, [report], original_head[:QUOTED_HEAD], "sieve", time.time())
