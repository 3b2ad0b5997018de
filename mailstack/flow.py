"""Flow control for protocols that stream message files to a client (POP3 RETR, IMAP FETCH).

Registered with the transport as a streaming producer: the transport pauses it when its
write buffer is full and resumes it once drained; the streaming loop awaits :meth:`ready`
before reading the next chunk, so a slow client never makes the server hold a large message
in memory.
"""

from __future__ import annotations

from twisted.internet import abstract, defer
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from zope.interface import implementer


@implementer(IPushProducer)
class Flow:
    def __init__(self):
        self.paused = False
        self.stopped = False
        self._waiting: defer.Deferred | None = None

    def ready(self) -> defer.Deferred:
        """Fires when the transport wants more (at once unless paused)."""
        if not self.paused or self.stopped:
            return defer.succeed(None)
        self._waiting = defer.Deferred()
        return self._waiting

    def _wake(self):
        d, self._waiting = self._waiting, None
        if d is not None:
            d.callback(None)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._wake()

    def stopProducing(self):
        self.stopped = True
        self._wake()


def send_now(transport) -> None:
    """Hand what was just written to the kernel now, not at the reactor's next turn.

    A transport's ``write`` only queues the bytes and asks the reactor to say when the socket
    is writable; a client waiting for the end of a response then waits for one more turn of
    the reactor (an ``epoll_wait`` and its dispatch, tens of microseconds per reply, the
    better part of a small RETR's or SMTP reply's cost).  Where a protocol has written a whole
    response and waits for the client, this writes it at once: ``doWrite``
    (``IWriteDescriptor``), which the reactor would call next, of the socket's own descriptor
    under the session's wrappers (listener).  Left to the reactor, as before: TLS (its layer
    holds the bytes until the reactor's next turn anyway), a descriptor with a producer (a
    streamed message under flow control), one closing or closed, and whatever a call leaves
    unwritten (a full socket buffer); an error the call meets is the reactor's too, at its
    next turn, as if it had met it.
    """
    t = transport
    for _ in range(6):  # the wrappers copy the interfaces of what they wrap: find the socket's own
        if t is None or ISSLTransport.providedBy(t):
            return
        if isinstance(t, abstract.FileDescriptor):
            break
        t = getattr(t, "transport", None)
    else:
        return
    if t.producer is not None or t.disconnecting or t.disconnected or not t.connected:
        return
    if t.doWrite() is not None:  # lost meanwhile: the reactor finds it at its next doWrite
        t.startWriting()
