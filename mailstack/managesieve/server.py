"""The ManageSieve listener: what :mod:`mailstack.service` asks of a protocol package.

``build_factory(context, listener)`` makes the factory for one ``managesieve`` listener
(RFC 5804 1.8: port 4190, STARTTLS) and ``BUSY`` is the line a client hears when a
connection limit turns it away.  The session is :mod:`mailstack.managesieve.session`.
"""

from __future__ import annotations

from functools import partial

from twisted.internet import protocol
from zope.interface import Interface, implementer

from mailstack.managesieve.session import ManageSieveSession

__all__ = ["BUSY", "ISieveAccount", "SieveAccount", "build_factory"]

#: RFC 5804 1.3: BYE with TRYLATER, "the server is busy, try again later".
BUSY = b'BYE (TRYLATER) "too many connections, try again later"\r\n'


class ISieveAccount(Interface):
    """The avatar a ManageSieve login asks the realm for: a :class:`SieveAccount`."""


@implementer(ISieveAccount)
class SieveAccount:
    """A logged-in user; their scripts live in their Maildir's directory."""

    def __init__(self, store, address: str):
        self.store, self.address = store, address

    def user_dir(self) -> str:
        """*Blocking.*  The user's directory (made on first use, as an IMAP login does)."""
        return self.store.mailbox(self.address).path


def build_factory(context, listener) -> protocol.ServerFactory:
    context.realm.register(ISieveAccount, lambda address: (SieveAccount(context.store, address), lambda: None))
    factory = protocol.ServerFactory.forProtocol(partial(ManageSieveSession, context, listener, ISieveAccount))
    factory.noisy = False
    return factory
