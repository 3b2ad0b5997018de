"""What a Sieve run decides: the contract between the interpreter and delivery.

The interpreter (:func:`mailstack.sieve.run`) only decides; :mod:`mailstack.sieve.delivery`
carries the decisions out (stores, queues, replies).  Keeping them apart lets the
interpreter stay pure (no disk, no network: testable from RFC examples alone) and lets
delivery bound the run (a thread, a deadline) without knowing the language.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Envelope:
    """The SMTP envelope of the message being delivered (RFC 5228 5.4 ``envelope``)."""

    sender: str  # MAIL FROM, "" for the null sender <>
    recipient: str  # the address this delivery is for, as resolved to the account (RCPT TO)
    original_recipient: str = ""  # RCPT TO as the client wrote it (before alias expansion), "" if the same
    auth: str = ""  # the authenticated submitter, "" when none


@dataclass(frozen=True)
class Keep:
    """Store in INBOX (RFC 5228 4.3), explicit or implicit; ``flags`` from imap4flags (RFC 5232)."""

    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileInto:
    """Store in ``mailbox`` (Unicode folder name with ``/`` between levels; RFC 5228 4.1);
    ``create``: make it if missing (RFC 5490 3.2 ``:create``), else a missing folder means keep."""

    mailbox: str
    flags: tuple[str, ...] = ()
    create: bool = False


@dataclass(frozen=True)
class Redirect:
    """Forward to ``address`` (RFC 5228 4.2); delivery rewrites the sender with SRS."""

    address: str


@dataclass(frozen=True)
class Reject:
    """Refuse the message (RFC 5429): ``ereject`` prefers refusing at SMTP time (2.1)."""

    reason: str
    ereject: bool = False


@dataclass(frozen=True)
class Vacation:
    """Reply once per sender per period (RFC 5230).  Delivery decides whether to send
    (4.2 list and auto-submitted mail, 4.5 own address in the header, 4.6 once per period)."""

    reason: str  # the body, or a whole MIME part when ``mime`` (4.8)
    seconds: int = 7 * 86400  # :days (or :seconds, RFC 6131) as seconds, already clamped
    subject: str | None = None
    from_addr: str | None = None
    addresses: tuple[str, ...] = ()
    handle: str = ""  # :handle, or the interpreter's stand-in built from the arguments (4.2)
    mime: bool = False


@dataclass
class Outcome:
    """The result of one run.  ``actions`` in execution order, implicit keep already added as a
    :class:`Keep` when it applies (RFC 5228 2.10.2), so delivery only executes them.  A
    ``Discard`` is the absence of any storing action.  ``header`` is the header section after
    editheader (RFC 5293), None when unchanged; it replaces the message's own header in every
    stored and redirected copy.  ``errors`` is non-empty when the run failed: then the actions
    are ``[Keep()]`` (implicit keep on error, RFC 5228 2.10.6) and the errors are logged."""

    actions: list = field(default_factory=list)
    header: bytes | None = None
    errors: list[str] = field(default_factory=list)
