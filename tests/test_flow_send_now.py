"""mailstack.flow.send_now on real sockets: a whole response leaves at once, and nothing is
done on a connection that is closing or gone."""

from __future__ import annotations

import socket
import threading

import pytest
from twisted.internet import protocol, reactor

from support.inprocess import in_reactor, start_reactor

from mailstack.flow import send_now


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    start_reactor()


class Replier(protocol.Protocol):
    """Answers each chunk with ``reply`` and records whether the reply was still waiting for
    the reactor (its descriptor among the reactor's writers) after send_now."""

    flush = True
    seen: list

    def dataReceived(self, data):
        self.transport.write(b"reply to " + data)
        if self.flush:
            send_now(self.transport)
        self.seen.append(self.transport in reactor.getWriters())

    def connectionLost(self, reason):
        self.seen.append("lost")
        send_now(self.transport)  # gone: nothing to do, and no error
        self.seen.append("after")


def _serve(flush: bool):
    seen: list = []

    class P(Replier):
        pass

    P.flush, P.seen = flush, seen
    factory = protocol.ServerFactory.forProtocol(P)
    port = in_reactor(reactor.listenTCP, 0, factory, interface="127.0.0.1")
    return port, seen


@pytest.mark.parametrize("flush", [True, False])
def test_a_response_leaves_without_waiting_for_the_reactor(flush):
    port, seen = _serve(flush)
    try:
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5) as c:
            c.sendall(b"one")
            assert c.recv(100) == b"reply to one"
        deadline = threading.Event()
        for _ in range(50):
            if "after" in seen:
                break
            deadline.wait(0.05)
        # with send_now the bytes went to the kernel at once (no writer left registered);
        # without it they waited for the reactor's next turn
        assert seen == [not flush, "lost", "after"]
    finally:
        in_reactor(port.stopListening)
