"""Quotas on SMTP (mailstack.store.quota does the counting): RCPT and DATA.

* RCPT TO a recipient whose every mailbox here is full (or would be with the SIZE declared in
  MAIL FROM, RFC 1870 6) is refused for that recipient alone: ``452 4.2.2`` (RFC 3463 X.2.2
  "mailbox full", temporary: the sender tries again, RFC 5321 4.2.5 lets 452 stand for it) or
  ``552 5.2.2`` with ``[quota] smtp_reply = "permanent"``.  A recipient that also forwards
  outside, or reaches several accounts one of which has room, is accepted.
* After DATA, RFC 5321 has one reply for the whole message.  If the message fits none of the
  local mailboxes, and goes nowhere else, it is refused with the same code.  Otherwise it is delivered to every
  accepted recipient, those it takes past their limit included (a grace of one message, much
  as Dovecot's LDA allows with ``quota_grace``, without its bound): 250 promises delivery to all of them (RFC 5321
  6.1), and a bounce for some would need the outbound queue this package cannot reach.  Their
  next RCPT is refused.
Users without limits cost nothing here: no thread, no file read.
"""

from __future__ import annotations

from twisted.internet import defer, threads

from mailstack.errors import MailError, OverQuota


def limited(store, accounts: list[str]) -> bool:
    """Does any of these accounts have a limit?  (In memory: no I/O.)"""
    policy = store.quota
    return policy is not None and any(not policy.limits(a).unlimited for a in accounts)


def full_accounts(store, accounts: list[str], size: int) -> list[OverQuota]:
    """*Blocking.*  The refusal of each account that cannot take ``size`` more bytes."""
    out = []
    for account in accounts:
        try:
            store.check_quota(account, size)
        except OverQuota as e:
            out.append(e)
    return out


def _refusal(first: OverQuota, address: str) -> MailError:
    return MailError(first.code, first.enhanced, f"<{address}>: mailbox is full", first.cause)


def at_rcpt(store, recipient, size: int) -> defer.Deferred | None:
    """RCPT: a Deferred failing with the refusal, or None when there is nothing to check."""
    if recipient.remote or not recipient.local or not limited(store, recipient.local):
        return None

    def check():
        full = full_accounts(store, recipient.local, size)
        if len(full) == len(recipient.local):
            raise _refusal(full[0], recipient.address)

    return threads.deferToThread(check)


def at_data(store, accounts: list[str], size: int) -> defer.Deferred | None:
    """After DATA: a Deferred firing with True (deliver, past the limits if need be) or
    failing with the refusal when no local mailbox has room; None when nothing is limited."""
    if not accounts or not limited(store, accounts):
        return None

    def check():
        full = full_accounts(store, accounts, size)
        if len(full) == len(accounts):
            raise _refusal(full[0], accounts[0] if len(accounts) == 1 else "every recipient")
        return True

    return threads.deferToThread(check)
