"""Local delivery from SMTP sessions: batched into the store from worker threads.

Each accepted message becomes one item per local account.  Items from all sessions queue
here and a worker thread hands them to ``MaildirStore.deliver_batch`` together, so fifty
clients finishing DATA at once cost about one journal commit instead of a hundred fsyncs.
Each session's Deferred fires (and its ``250`` is sent) only after its own items are durable.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from mailstack import metrics, workpool

log = Logger()


class DeliveryBatcher:
    def __init__(self, store, workers: int = 2, max_batch: int = 256):
        self.store = store
        self.workers = workers
        self.max_batch = max_batch
        self._pending: list[tuple[list, defer.Deferred]] = []
        self._running = 0

    def deliver(self, items: list[tuple[str, object]]) -> defer.Deferred:
        """Deliver (account, source) items; the Deferred fails if any item failed."""
        d = defer.Deferred()
        if not items:
            d.callback(None)
            return d
        self._pending.append((items, d))
        self._start_workers()
        return d

    def _start_workers(self) -> None:
        while self._running < self.workers and self._pending:
            batch, count = [], 0
            while self._pending and (not batch or count + len(self._pending[0][0]) <= self.max_batch):
                items, d = self._pending.pop(0)
                batch.append((items, d))
                count += len(items)
            self._running += 1
            flat = [item for items, _ in batch for item in items]
            workpool.defer_to_thread(self.store.deliver_batch, flat).addBoth(self._finished, batch)

    def _finished(self, results, batch) -> None:
        self._running -= 1
        offset = 0
        for items, d in batch:
            if isinstance(results, list):
                errors = [r for r in results[offset : offset + len(items)] if r is not None]
            else:  # the whole batch failed
                errors = [results.value]
            offset += len(items)
            if errors:
                metrics.store_error("smtp")
                d.errback(errors[0])
            else:
                metrics.message("delivered", len(items))
                d.callback(None)
        self._start_workers()
