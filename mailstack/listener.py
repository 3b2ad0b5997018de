"""What every listener does before a protocol sees a byte: connection limits, session logging,
and implicit TLS (RFC 8314) on the ``*s`` ports.
"""

from __future__ import annotations

import time
from collections import Counter

from twisted.internet import protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from mailstack import metrics

from mailstack import logcontext

log = Logger()

#: Octets one send() on a session's socket may offer (Twisted's default is 128 KB): a FETCH
#: of many bodies then takes fewer reactor rounds (each an epoll_wait and a send).
SEND_LIMIT = 1024 * 1024


def no_delay(transport) -> None:
    """TCP_NODELAY and :data:`SEND_LIMIT` on the socket under ``transport`` (through any TLS
    wrappers).  A response is often written in two parts with a thread call between them
    (IMAP's untagged and tagged lines): with Nagle's algorithm the second part waits for the
    client's delayed ACK, up to 40 ms a command."""
    for _ in range(5):
        setter = getattr(transport, "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(True)
            except OSError:
                pass
            transport.SEND_LIMIT = SEND_LIMIT
            return
        transport = getattr(transport, "transport", None)


@implementer(IHandshakeListener)
class _CountsHandshakes:
    """TLS tells the protocol it wraps when its handshake is done: count it under the
    listener's key, then tell the protocol inside, if it listens too."""

    def handshakeCompleted(self):
        metrics.tls_handshake(self.factory.key, self.transport)
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()


class SessionProtocol(_CountsHandshakes, policies.ProtocolWrapper):
    """A session as the listener sees it.  STARTTLS puts the TLS layer under this wrapper, so
    its handshake is reported here; an implicit-TLS listener's goes to :class:`HandshakeWatch`,
    inside the TLS layer."""

    def connectionMade(self):
        factory: ListenerFactory = self.factory
        self.started = time.monotonic()
        factory.sessions += 1
        metrics.session_started(factory.key)
        log.info("session start {listener} from {peer}", listener=factory.key, peer=self.peer_host)
        no_delay(self.transport)
        super().connectionMade()

    def connectionLost(self, reason):
        factory: ListenerFactory = self.factory
        factory.sessions -= 1
        metrics.session_ended(factory.key)
        log.info("session end {listener} from {peer} after {seconds:.1f}s", listener=factory.key,
                 peer=self.peer_host, seconds=time.monotonic() - self.started)
        super().connectionLost(reason)


class HandshakeWatch(_CountsHandshakes, policies.ProtocolWrapper):
    """Between an implicit-TLS layer and the protocol: counts the handshake, and passes
    everything else through."""


class _HandshakeWatchFactory(policies.WrappingFactory):
    protocol = HandshakeWatch
    noisy = False

    def __init__(self, key: str, wrapped, alpn_ids: tuple = ()):
        super().__init__(wrapped)
        self.key = key
        self.alpn_ids = alpn_ids  # what mailstack.tls.select_alpn may choose for this listener


class _Refuse(protocol.Protocol):
    def __init__(self, message: bytes):
        self.message = message

    def connectionMade(self):
        self.transport.write(self.message)
        self.transport.loseConnection()


class ListenerFactory(policies.WrappingFactory):
    """Wraps a protocol factory with per-listener connection limits and session logging.

    Over a limit the client hears the protocol's own "busy" line (``busy_message``, e.g.
    ``421 4.7.0 ...`` for SMTP) and is disconnected; nothing is parsed.
    """

    protocol = SessionProtocol
    noisy = False

    def __init__(self, key: str, wrapped, busy_message: bytes, max_total: int, max_per_address: int):
        super().__init__(wrapped)
        self.key = key
        self.busy_message = busy_message
        self.max_total, self.max_per_address = max_total, max_per_address
        self.per_address: Counter = Counter()
        self.sessions = 0
        #: With [server] workers: the counts of every process (mailstack.connectioncounts), so
        #: that the limits hold for the listener, not for each process.
        self.shared = None
        metrics.listener_ready(key)

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        shared = self.shared
        if shared is not None:
            over = (shared.sessions(self.key) >= self.max_total
                    or bool(host) and shared.of_address(self.key, host) >= self.max_per_address)
        else:
            over = len(self.protocols) >= self.max_total or bool(host) and self.per_address[host] >= self.max_per_address
        if over:
            log.warn("refused {listener} connection from {peer}: connection limit", listener=self.key, peer=host)
            return _Refuse(self.busy_message)
        p = super().buildProtocol(addr)
        p.peer_host = logcontext.new_session(self.key, host or str(addr))  # its lines carry the session id
        if host:
            self.per_address[host] += 1
        if shared is not None:
            shared.add(self.key, host, 1)
            p.shared_count = (shared, host)
        return p

    def unregisterProtocol(self, p):
        super().unregisterProtocol(p)
        counted = getattr(p, "shared_count", None)
        if counted is not None:
            p.shared_count = None
            counted[0].add(self.key, counted[1], -1)
        host = getattr(p, "peer_host", None)
        if host and self.per_address[host] > 0:
            self.per_address[host] -= 1
            if not self.per_address[host]:
                del self.per_address[host]


def wrap(key: str, factory, tls_mode: str, tls_creator, busy_message: bytes, max_total: int, max_per_address: int):
    """The factory to listen with: limits outside, TLS (when implicit) next, protocol inside."""
    inner = factory
    if tls_mode == "implicit":
        from mailstack.config import LISTENERS
        from mailstack.tls import ALPN_IDS

        alpn = ALPN_IDS.get(key, ALPN_IDS.get(LISTENERS.get(key, ("",))[0], ()))
        inner = TLSMemoryBIOFactory(tls_creator, False, _HandshakeWatchFactory(key, factory, alpn))
    return ListenerFactory(key, inner, busy_message, max_total, max_per_address)
