"""Where the SMTP session asks greylisting and the outbound limits (a few lines in
mailstack/smtp/server.py call these).  ``settings`` is the listener's
:class:`~mailstack.smtp.accept.SMTPSettings`: ``greylist`` is set on the MX listener only,
``limits`` on submission listeners only (None when off)."""

from __future__ import annotations


def at_mail(settings, facts) -> None:
    """MAIL FROM on submission: raises the 451 when the user is over a messages limit."""
    limits = getattr(settings, "limits", None)
    if limits is not None and facts.user is not None:
        limits.check_message(facts.user)


def at_rcpt(settings, facts, sender: str, recipient, accepted: int, helo: str):
    """RCPT, after policy accepted the address: raises the outbound-limit 451, or returns a
    Deferred when greylisting must be asked (it fails with the 451), or None."""
    limits = getattr(settings, "limits", None)
    if limits is not None and facts.user is not None:
        limits.check_recipient(facts.user, accepted)
    greylist = getattr(settings, "greylist", None)
    if (greylist is None or facts.submission or facts.user is not None or not recipient.local
            or settings.policy.trusted_peer(facts.peer)):
        return None
    return greylist.check(facts.peer, sender, recipient.address, helo)


def accepted(settings, facts, recipients: list) -> None:
    """A message is in (after the 250): it counts against the user's limits."""
    limits = getattr(settings, "limits", None)
    if limits is not None and facts.user is not None:
        limits.record(facts.user, len(recipients))
