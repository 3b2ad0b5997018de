"""Flow control for protocols that stream message files to a client (POP3 RETR, IMAP FETCH).

Registered with the transport as a streaming producer: the transport pauses it when its
write buffer is full and resumes it once drained; the streaming loop awaits :meth:`ready`
before reading the next chunk, so a slow client never makes the server hold a large message
in memory.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
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
