"""mailstack.workpool: the per-message thread hand-off (results, failures, the thread bound)."""

from __future__ import annotations

import threading
import time

import pytest
from twisted.internet import defer

from support.inprocess import in_reactor, start_reactor

from mailstack import workpool


@pytest.fixture(autouse=True, scope="module")
def reactor_running():
    start_reactor()


def _run(f, *args):
    """Call f through the pool from the reactor thread; the result (or the exception) back here."""
    done = threading.Event()
    out = {}

    def go():
        d = workpool.defer_to_thread(f, *args)
        d.addCallbacks(lambda r: out.update(result=r), lambda fail: out.update(failure=fail))
        d.addBoth(lambda _: done.set())

    in_reactor(go)
    assert done.wait(10)
    return out


def test_result_and_thread():
    out = _run(lambda a, b: (a + b, threading.current_thread().name), 2, 3)
    assert out["result"] == (5, "mailstack-work")


def test_an_exception_is_the_failure_with_its_traceback():
    def broken():
        raise ValueError("no")

    fail = _run(broken)["failure"]
    assert fail.check(ValueError) and "broken" in fail.getTraceback()


def test_calls_beyond_the_thread_bound_wait_and_all_complete():
    from twisted.internet import reactor

    pool = workpool.WorkPool(reactor, max_threads=3)
    running, most = [0], [0]
    lock = threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i

    results = []
    finished = threading.Event()

    def go():
        ds = [pool.run(work, i) for i in range(20)]
        defer.gatherResults(ds).addCallback(results.extend).addBoth(lambda _: finished.set())

    in_reactor(go)
    assert finished.wait(10)
    assert results == list(range(20)) and most[0] == 3
    pool.stop()  # joins: every thread has ended
    assert pool._threads == 0 and not pool._all
