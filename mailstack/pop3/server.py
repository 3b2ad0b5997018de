"""The POP3 listener: what :mod:`mailstack.service` asks of a protocol package.

``build_factory(context, listener)`` makes the factory for one pop3/pop3s listener and
``BUSY`` is the line a client hears when a connection limit turns it away.  The session is
:mod:`mailstack.pop3.session`; the maildrop over the store :mod:`mailstack.pop3.maildrop`;
RETR/TOP streaming :mod:`mailstack.pop3.transfer`.
"""

from __future__ import annotations

from functools import partial

from twisted.internet import protocol

from mailstack.pop3.maildrop import IMaildrop, make_avatar_factory
from mailstack.pop3.session import POP3Session
from mailstack.pop3.uidl import UidlFormat

#: Sent by the listener when a connection limit turns a client away (RFC 3206 section 4).
BUSY = b"-ERR [SYS/TEMP] too many connections, try again later\r\n"


def build_factory(context, listener) -> protocol.ServerFactory:
    """The factory for one pop3/pop3s listener; the realm hands POP3 logins a Maildrop."""
    uidl_format = UidlFormat(context.config.pop3_uidl_format)  # [pop3] applies at a restart (not on SIGHUP)
    context.realm.register(IMaildrop, make_avatar_factory(context.store, uidl_format))
    factory = protocol.ServerFactory.forProtocol(partial(POP3Session, context, listener))
    factory.noisy = False
    return factory
