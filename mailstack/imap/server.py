"""The IMAP listener: the factory of :class:`~mailstack.imap.session.ImapSession` and the
avatar a login hands it (see :mod:`mailstack.service`, which builds one factory per
``imap``/``imaps`` listener)."""

from __future__ import annotations

from twisted.internet import protocol
from zope.interface import Interface, implementer

from mailstack.imap.session import BUSY, ImapSession

__all__ = ["BUSY", "Account", "IImapAccount", "IMAPFactory", "build_factory"]


class IImapAccount(Interface):
    """The avatar an IMAP login asks the realm for: an :class:`Account`."""


@implementer(IImapAccount)
class Account:
    """A logged-in user's mailbox in the store."""

    def __init__(self, store, address: str):
        self.store, self.address = store, address

    def mailbox(self):
        """*Blocking.*  The user's mailbox, made with its special folders on first use."""
        return self.store.mailbox(self.address)

    def existing_mailbox(self):
        """The user's mailbox if it exists already (one ``stat``: the reactor may ask), else None."""
        if not self.store.exists(self.address):
            return None
        return self.store.mailbox(self.address, create=False)


class IMAPFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, context, listener):
        self.context, self.listener = context, listener

    def buildProtocol(self, addr):
        p = ImapSession(self.context, self.listener, IImapAccount)
        p.factory = self
        return p


def build_factory(context, listener) -> IMAPFactory:
    """The factory for one imap/imaps listener."""
    context.realm.register(IImapAccount, lambda address: (Account(context.store, address), lambda: None))
    return IMAPFactory(context, listener)
