"""Who may send what to whom: the SMTP decisions, kept out of the protocol code.

Policy raises :class:`~mailstack.errors.MailError` carrying the exact reply; the session
sends it.  The rules:

* MX port (``smtp``): mail for local domains only; anything else is ``554 5.7.1`` relay
  denied, whoever asks, unless the client is in ``[smtp] trusted_networks``.
* Submission ports: AUTH first (``530 5.7.0``); the MAIL FROM must be one of the user's own
  addresses, plus-variants, aliases or send-as identities (``553 5.7.1``), and so must every
  address of the header From and Sender fields (``550 5.7.1``: else the server would DKIM-sign
  a forged From); any recipient domain is allowed.
* A non-ASCII (SMTPUTF8) address on mail that would only leave the server: ``553 5.6.7`` at
  RCPT (the outbound side cannot send SMTPUTF8).
* An SRS address of our SRS domain (mailstack.srs) is reversed and accepted for the address
  it stands for, from any sender: the one way mail from outside may leave again (a bounce to
  mail we forwarded).  A forged, expired or malformed one is ``550 5.1.1``, so no one can use
  it to relay.
* Unknown local recipient ``550 5.1.1``; too many recipients ``452 4.5.3`` (RFC 5321 4.5.3.1.8
  says 452 for this, so the client sends the rest in another transaction).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from twisted.logger import Logger

from mailstack import metrics
from mailstack.errors import MailError
from mailstack.mail import codes
from mailstack.smtp.message import header_addresses
from mailstack.srs import SRSError

log = Logger()


@dataclass
class SessionFacts:
    """What policy may know of a session."""

    peer: str
    submission: bool
    user: str | None = None  # the authenticated account
    tls: bool = False
    client: object = None  # the MX port's client checks (mailstack.antispam.screen.SessionScreen)


@dataclass
class Recipient:
    address: str  # as the client gave it (domain lower-cased)
    local: list[str] = field(default_factory=list)  # accounts it reaches here
    remote: list[str] = field(default_factory=list)  # outside addresses (relay or alias forwarding)
    forward: bool = False  # remote reached by forwarding (alias, SRS reversal): the sender gets SRS


class SmtpPolicy:
    def __init__(self, accounts, domains: list[str], max_recipients: int, trusted_networks: list[str], srs=None):
        self.accounts = accounts
        self.srs = srs  # mailstack.srs.SRS, or None ([srs] enabled = false)
        self.domains = domains
        self.max_recipients = max_recipients
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]

    def trusted_peer(self, peer: str) -> bool:
        try:
            ip = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def may_relay(self, facts: SessionFacts) -> bool:
        return (facts.submission and facts.user is not None) or self.trusted_peer(facts.peer)

    def check_sender(self, facts: SessionFacts, sender: str) -> None:
        if facts.submission:
            if facts.user is None:
                raise MailError(codes.AUTH_REQUIRED, codes.E_SECURITY, "Authentication required")
            if sender and not self.accounts.owns(facts.user, sender):
                raise MailError(codes.MAILBOX_NAME_INVALID, codes.E_NOT_AUTHORIZED,
                                f"Sender address <{sender}> is not owned by {facts.user}")

    def check_header_senders(self, facts: SessionFacts, header: bytes) -> None:
        """Submission: From and Sender name only addresses the user may send as."""
        if not facts.submission or facts.user is None:
            return
        for name in ("From", "Sender"):
            for address in header_addresses(header, name):
                if not self.accounts.owns(facts.user, address):
                    shown = address[:100] or "(none)"
                    raise MailError(codes.MAILBOX_UNAVAILABLE, codes.E_NOT_AUTHORIZED,
                                    f"{name} address <{shown}> is not one {facts.user} may send as")

    def check_recipient(self, facts: SessionFacts, address: str, accepted: int, sender: str = "") -> Recipient:
        recipient = self._recipient(facts, address, accepted, sender)
        if not recipient.local and recipient.remote and not (sender.isascii() and all(a.isascii() for a in recipient.remote)):
            # The outbound client speaks no SMTPUTF8 (RFC 6531), so say so now rather than
            # bounce later (a bounce to a non-ASCII sender could not leave either).
            raise MailError(codes.MAILBOX_NAME_INVALID, codes.E_NON_ASCII_ADDRESS,
                            f"<{address}>: this server cannot relay mail with non-ASCII addresses")
        return recipient

    def _recipient(self, facts: SessionFacts, address: str, accepted: int, sender: str = "") -> Recipient:
        if accepted >= self.max_recipients:
            raise MailError(codes.INSUFFICIENT_STORAGE, codes.E_TOO_MANY_RECIPIENTS,
                            f"Too many recipients (at most {self.max_recipients} per message)")
        if "@" not in address and address.lower() == "postmaster":
            address = f"postmaster@{self.domains[0]}"  # RFC 5321 4.1.1.3: bare <Postmaster>
        domain = address.rpartition("@")[2]
        if self.srs is not None and self.srs.is_ours(address):  # before aliases: a catch-all must not take it
            return self._reversed(facts, address, sender)
        if self.accounts.is_local_domain(domain):
            resolution = self.accounts.resolve(address)
            if resolution is None:
                raise MailError(codes.MAILBOX_UNAVAILABLE, codes.E_NO_SUCH_MAILBOX, f"<{address}>: no such user here")
            return Recipient(address, resolution.local, resolution.remote, forward=True)
        if not self.may_relay(facts):
            raise MailError(codes.TRANSACTION_FAILED, codes.E_NOT_AUTHORIZED, f"<{address}>: relay access denied")
        return Recipient(address, [], [address])

    def _reversed(self, facts: SessionFacts, address: str, sender: str) -> Recipient:
        """RCPT to one of our SRS addresses: the original sender (a local user's mailboxes, or
        the outside address, queued), or 550 5.1.1 for a forged, expired or malformed one."""
        try:
            original = self.srs.reverse(address)
        except SRSError as e:
            metrics.srs("refused")
            log.info("srs: refused <{address}> from <{sender}> ({peer}): {reason}", address=address, sender=sender,
                     peer=facts.peer, reason=str(e))
            raise MailError(codes.MAILBOX_UNAVAILABLE, codes.E_NO_SUCH_MAILBOX,
                            f"<{address}>: not a valid address here") from None
        metrics.srs("reversed")
        log.info("srs: <{address}> from <{sender}> ({peer}) reversed to <{original}>", address=address, sender=sender,
                 peer=facts.peer, original=original)
        if self.accounts.is_local_domain(original.rpartition("@")[2]):
            resolution = self.accounts.resolve(original)
            if resolution is None:
                raise MailError(codes.MAILBOX_UNAVAILABLE, codes.E_NO_SUCH_MAILBOX, f"<{address}>: no such user here")
            return Recipient(address, resolution.local, resolution.remote, forward=True)
        return Recipient(address, [], [original], forward=True)
