"""Connection counts shared by the processes of ``[server] workers``, so that ``[limits]
connections`` and ``connections_per_address`` stay one limit whichever process accepts.

One file mapped into every process (``run/connections`` beside the store): a row of 32-bit
counters per process, which only that process writes (no locks: each process has one reactor
thread), and which every process reads and sums.  A row holds a counter per listener (its
sessions) and :data:`SLOTS` counters that a hash of (listener, client address) picks; two
addresses sharing a slot count together, which with 65,536 slots costs a busy server at most
a connection or two of some address's allowance.  When a worker dies the main process clears
its row before starting it again, so the connections that died with it stop counting; a
process clears its own row when it starts.  Dovecot's and Postfix's ``anvil`` do this job with
a process answering queries; a mapped table answers without a round trip.
"""

from __future__ import annotations

import mmap
import os
import zlib

SLOTS = 65536
LISTENER_SLOTS = 64  # counters for whole listeners, after the address slots
ROW = SLOTS + LISTENER_SLOTS  # 32-bit counters per process


class SharedConnectionCounts:
    def __init__(self, path: str, processes: int, index: int, listener_keys: list[str]):
        self.processes, self.index = processes, index
        self.listener_index = {key: SLOTS + i for i, key in enumerate(sorted(listener_keys))}
        if len(self.listener_index) > LISTENER_SLOTS:
            raise ValueError("too many listeners")
        size = processes * ROW * 4
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size != size:
                if index:  # only the main process sizes it: a mapping past a file's end faults
                    raise ValueError(f"{path} is not the size {processes} processes need")
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.counts = memoryview(self.map).cast("i")
        for row in range(processes) if index == 0 else (index,):  # the main process: what a crash left, too
            self.clear(row)

    def clear(self, index: int) -> None:
        """Row ``index`` to zero: that process's connections are gone (it ended, or starts)."""
        start = index * ROW
        self.counts[start:start + ROW] = memoryview(bytes(ROW * 4)).cast("i")

    def _slot(self, key: str, host: str) -> int:
        return zlib.crc32(f"{key} {host}".encode()) % SLOTS

    def _sum(self, offset: int) -> int:
        counts = self.counts
        return sum(counts[row * ROW + offset] for row in range(self.processes))

    def sessions(self, key: str) -> int:
        return self._sum(self.listener_index[key])

    def of_address(self, key: str, host: str) -> int:
        return self._sum(self._slot(key, host))

    def add(self, key: str, host: str | None, delta: int) -> None:
        base = self.index * ROW
        self.counts[base + self.listener_index[key]] += delta
        if host:
            self.counts[base + self._slot(key, host)] += delta

    def close(self) -> None:
        self.counts.release()
        self.map.close()
