"""Threads for the blocking steps of every message: a lighter hand-off than Twisted's pool.

``twisted.internet.threads.deferToThread`` passes each call through the pool's coordinator
(a team, a lock worker, a ``queue.Queue`` and its Python-level ``Condition``) and a logging
context: about a tenth of a millisecond of the reactor's time per call, which an MX pays
twice per message (the checks, then the store).  :func:`defer_to_thread` takes the same
arguments and gives the same Deferred, through ``queue.SimpleQueue`` (written in C) and
``reactor.callFromThread`` for the result.

Threads are started on demand up to :data:`MAX_THREADS` (what Twisted's pool allows by
default); a call made when none is free waits in the queue, as with Twisted's pool.  When
the reactor stops, the calls already queued still run, then the threads end, and the
shutdown waits for them.  Exceptions come back as the Deferred's failure, with their
traceback.
"""

from __future__ import annotations

import queue
import threading

from twisted.internet import defer
from twisted.python.failure import Failure

#: The most threads at once: Twisted's pool's default maximum.
MAX_THREADS = 10


class WorkPool:
    def __init__(self, reactor, max_threads: int = MAX_THREADS):
        self.reactor = reactor
        self.max_threads = max_threads
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for a call
        self._waiting = 0  # calls not yet taken by a thread
        self._stopping = False
        self._all: set[threading.Thread] = set()
        reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def run(self, f, *args, **kwargs) -> defer.Deferred:
        """``f(*args, **kwargs)`` in a thread; the Deferred fires with its result on the reactor."""
        d = defer.Deferred()
        if self._stopping:  # after shutdown began, as Twisted's pool does then: nothing runs
            return d
        with self._lock:
            self._waiting += 1
            start = self._waiting > self._idle and self._threads < self.max_threads
            if start:
                self._threads += 1
                thread = threading.Thread(target=self._work, name="mailstack-work", daemon=True)
                self._all.add(thread)
        self._queue.put((d, f, args, kwargs))
        if start:
            thread.start()
        return d

    def _work(self) -> None:
        call_from_thread, get, lock = self.reactor.callFromThread, self._queue.get, self._lock
        while True:
            with lock:
                self._idle += 1
            item = get()
            with lock:
                self._idle -= 1
                if item is None:
                    self._threads -= 1
                    self._all.discard(threading.current_thread())
                    return
                self._waiting -= 1
            d, f, args, kwargs = item
            try:
                result = f(*args, **kwargs)
            except BaseException:
                call_from_thread(d.errback, Failure())
            else:
                call_from_thread(d.callback, result)
            item = d = f = args = kwargs = result = None  # hold no message while waiting

    def stop(self) -> None:
        """Reactor shutdown: the calls queued before it run, then every thread ends, and is
        waited for (as Twisted's pool does): a message being stored is stored before the
        process ends."""
        with self._lock:
            self._stopping = True
            running = list(self._all)
        for _ in running:
            self._queue.put(None)
        for thread in running:
            thread.join()


_pools: dict[int, WorkPool] = {}


def pool_for(reactor) -> WorkPool:
    pool = _pools.get(id(reactor))
    if pool is None or pool.reactor is not reactor:
        pool = _pools[id(reactor)] = WorkPool(reactor)
    return pool


def defer_to_thread(f, *args, **kwargs) -> defer.Deferred:
    """``threads.deferToThread``'s drop-in for the per-message steps (the global reactor)."""
    from twisted.internet import reactor

    return pool_for(reactor).run(f, *args, **kwargs)
