"""Learning from users (issue 20, item 2): what a user files into Junk is spam, what a user
takes out of Junk (to anything but Trash) is ham; rspamd's controller learns it.

The hook is one callback, :meth:`JunkLearner.filed`, that the service puts on the context
(``context.filed``) when ``[rspamd]`` has a controller, and that the IMAP session calls after
a COPY, MOVE or APPEND succeeded, with the special use (RFC 6154) of the source and the
destination folder.  That keeps both sides clean: the store knows nothing of rspamd or of
protocols (it only hands out the messages, through FolderAPI), and the IMAP code knows
nothing of rspamd (it reports what a user did to which kind of folder).  Sieve's fileinto
is a delivery, not a user's judgement, and does not come this way.

Learning never delays the IMAP reply: ``filed`` only schedules it.  Messages are read in
worker threads and sent a few at a time (a user moving thousands of messages must not
flood rspamd or memory); a failed request is retried with a doubling delay; every outcome
is counted (``mailstack_rspamd_learns``).
"""

from __future__ import annotations

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailstack import metrics

log = Logger()

JUNK, TRASH = "\\Junk", "\\Trash"
#: Messages waiting to be learned, at most; more are dropped (and counted) rather than held.
MAX_PENDING = 10000


def learn_kind(source_use: str | None, dest_use: str | None) -> str | None:
    """"spam", "ham" or None for a message filed from a folder of ``source_use`` (None:
    APPEND) into one of ``dest_use``."""
    if dest_use == JUNK and source_use != JUNK:
        return "spam"
    if source_use == JUNK and dest_use not in (JUNK, TRASH):
        return "ham"
    return None


class JunkLearner:
    def __init__(self, client, reactor, retries: int = 5, retry_delay: float = 30.0,
                 max_size: int = 20 * 1024 * 1024, concurrency: int = 4):
        self.client, self.reactor = client, reactor
        self.retries, self.retry_delay, self.max_size = retries, retry_delay, max_size
        self.semaphore = defer.DeferredSemaphore(concurrency)
        self.pending = 0
        self._timers = []

    def filed(self, user: str, source_use: str | None, dest_use: str | None, folder, uids: list[int]) -> None:
        """The IMAP session's callback (reactor thread): ``uids`` are in ``folder`` now."""
        kind = learn_kind(source_use, dest_use)
        if kind is None or not uids:
            return
        for uid in uids:
            if self.pending >= MAX_PENDING:
                metrics.rspamd_learn(kind, "dropped")
                continue
            self.pending += 1
            log.info("learning {kind} from {user}: {folder} uid {uid}", kind=kind, user=user, folder=folder.name, uid=uid)
            self.semaphore.run(self._learn, kind, folder, uid).addBoth(self._done)

    def _done(self, _):
        self.pending -= 1

    def _learn(self, kind: str, folder, uid: int) -> defer.Deferred:
        d = threads.deferToThread(folder.read_message, uid)
        d.addCallback(lambda message: self._send(kind, message, 0) if len(message) <= self.max_size else None)
        d.addErrback(lambda f: log.info("not learning {folder} uid {uid}: {e}", folder=folder.name, uid=uid,
                                        e=f.getErrorMessage()))
        return d

    def _send(self, kind: str, message: bytes, attempt: int) -> defer.Deferred:
        d = self.client.learn(kind, message)
        d.addCallback(lambda _: metrics.rspamd_learn(kind, "learned"))
        d.addErrback(self._retry, kind, message, attempt)
        return d

    def _retry(self, failure, kind: str, message: bytes, attempt: int):
        error = failure.getErrorMessage() or failure.type.__name__
        if attempt >= self.retries:
            metrics.rspamd_learn(kind, "failed")
            log.warn("rspamd learn{kind} failed after {n} attempts: {error}", kind=kind, n=attempt + 1, error=error)
            return None
        metrics.rspamd_learn(kind, "retried")
        delay = self.retry_delay * (2 ** attempt)
        log.info("rspamd learn{kind} failed ({error}); again in {delay}s", kind=kind, error=error, delay=delay)
        d = defer.Deferred()
        timer = self.reactor.callLater(delay, d.callback, None)
        self._timers.append(timer)
        d.addCallback(lambda _: self._timers.remove(timer))
        return d.addCallback(lambda _: self._send(kind, message, attempt + 1))

    def stop(self) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers.clear()
