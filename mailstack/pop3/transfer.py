"""RETR and TOP: a message file, read in chunks from a thread, dot-stuffed and written under
flow control, so a large message neither blocks the reactor nor is held in memory.

Twisted's own ``POP3`` doubles the CR of CRLF-stored messages and misses dot-stuffing across
read boundaries; :class:`DotStuffer` carries its state from chunk to chunk instead.
"""

from __future__ import annotations

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailstack.errors import MessageGone
from mailstack.flow import Flow
from mailstack.pop3.errors import SYS_TEMP, Pop3Error

log = Logger()

READ_CHUNK = 128 * 1024


class DotStuffer:
    """Turn a message file, chunk by chunk, into a POP3 multi-line response body.

    RFC 1939 section 3: lines end in CRLF and a line starting with "." gets one more.  A bare
    LF becomes CRLF; every other byte (8-bit, bare CR) passes unchanged.  State carried from
    chunk to chunk: whether the output is at a line start, and a CR at a chunk's end, held
    back until the next byte shows whether it starts a CRLF.  With ``top`` (TOP n m, RFC 1939
    section 7) the output stops after the header, the blank line and ``top`` body lines.
    """

    def __init__(self, top: int | None = None):
        self._carry = b""
        self._bol = True
        self._top = top
        self._in_headers = True
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        data = self._carry + chunk if self._carry else chunk
        if data.endswith(b"\r"):
            self._carry, data = b"\r", data[:-1]
        else:
            self._carry = b""
        return self._emit(data)

    def finish(self) -> bytes:
        """The rest, and the terminating ".": the last line is closed first if it is open."""
        out = b""
        if self._carry and not self.done:
            out, self._carry = self._emit(self._carry), b""
        return out + (b".\r\n" if self._bol else b"\r\n.\r\n")

    def _emit(self, data: bytes) -> bytes:
        if not data:
            return b""
        if data.count(b"\n") != data.count(b"\r\n"):  # some bare LF (counting allocates nothing)
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._top is not None:
            data = self._cut(data)
            if not data:
                return b""
        out = data.replace(b"\r\n.", b"\r\n..") if b"\r\n." in data else data
        if self._bol and data[:1] == b".":
            out = b"." + out
        self._bol = data.endswith(b"\n")
        return out

    def _cut(self, data: bytes) -> bytes:
        """TOP: ``data`` (CRLF-normalised) up to where the response ends."""
        pos, n, bol = 0, len(data), self._bol
        while pos < n:
            if self._in_headers and bol and data.startswith(b"\r\n", pos):
                self._in_headers = False
                pos += 2
                if self._top == 0:
                    self.done = True
                    return data[:pos]
                continue
            j = data.find(b"\n", pos)
            if j < 0:
                return data
            pos, bol = j + 1, True
            if not self._in_headers:
                self._top -= 1
                if self._top == 0:
                    self.done = True
                    return data[:pos]
        return data


class Retriever:
    """Sends messages of one session's maildrop: RETR (whole, then \\Seen) and TOP.

    ``session`` provides ``transport``, ``lost``, ``ok(text)``, ``resetTimeout()`` and
    ``seen`` (the :class:`~mailstack.pop3.maildrop.SeenQueue`).
    """

    def __init__(self, session, maildrop):
        self.session, self.maildrop = session, maildrop
        self.flow: Flow | None = None
        self.streaming = False  # between a RETR/TOP's "+OK" and its final "."
        self.prefetched: tuple[int, defer.Deferred] | None = None

    def send(self, i: int, top: int | None) -> defer.Deferred:
        """RFC 1939 sections 5 (RETR, ``top`` None) and 7 (TOP msg n, ``top`` = n)."""
        if self.prefetched is not None and self.prefetched[0] == i:
            d = self.prefetched[1].addCallback(lambda box: box[0])  # a Failure in the box errs
        else:
            d = threads.deferToThread(self.maildrop.open_start, self.maildrop.messages[i].uid, READ_CHUNK)
        self.prefetched = None
        if top is None:
            self.prefetch(i + 1)
        d.addCallbacks(lambda opened: defer.ensureDeferred(self.stream(opened, i, top)),
                       self.open_failed, errbackArgs=(i,))
        return d

    def prefetch(self, i: int) -> None:
        """Clients RETR one message after the other: read the next small one meanwhile, so
        its RETR is answered without waiting for a thread.  Only messages that fit in one
        chunk (no open file to keep), and only one at a time."""
        maildrop = self.maildrop
        if i >= len(maildrop.messages) or i in maildrop.deleted or maildrop.messages[i].size >= READ_CHUNK:
            return
        d = threads.deferToThread(maildrop.open_start, maildrop.messages[i].uid, READ_CHUNK)
        d.addBoth(lambda result: [result])  # kept as a value: an unused failure is no error
        self.prefetched = (i, d)

    def open_failed(self, failure, i: int):
        if failure.check(MessageGone):
            raise Pop3Error(f"message {i + 1} was removed by another session")
        if failure.check(OSError):
            log.failure("pop3 cannot read message {n} for {user}", failure, n=i + 1, user=self.maildrop.address)
            raise Pop3Error(f"cannot read message {i + 1} now", SYS_TEMP)
        return failure

    async def stream(self, opened, i: int, top: int | None) -> None:
        f, chunk = opened
        info = self.maildrop.messages[i]
        session = self.session
        if session.lost:
            if f is not None:
                f.close()
            return
        encoder = DotStuffer(top)
        session.ok(f"{info.size} octets" if top is None else "top of message follows")
        transport = session.transport
        if f is None:  # the whole message is in hand: no reading, no flow control to wait on
            transport.write(encoder.feed(chunk) + encoder.finish())
        elif not await self._stream_file(f, chunk, encoder):
            return
        if top is None and "\\Seen" not in info.flags:
            session.seen.add(info.uid)

    async def _stream_file(self, f, chunk: bytes, encoder: DotStuffer) -> bool:
        """Write ``f`` from ``chunk`` on; False if the client went away first."""
        session, transport = self.session, self.session.transport
        self.flow = flow = Flow()
        transport.registerProducer(flow, True)
        self.streaming = True
        try:
            while True:
                out = encoder.feed(chunk)
                if out:
                    transport.write(out)
                if not chunk or encoder.done:
                    break
                await flow.ready()
                if flow.stopped:
                    return False
                session.resetTimeout()
                chunk = await threads.deferToThread(f.read, READ_CHUNK)
            if not session.lost:
                transport.write(encoder.finish())
            self.streaming = False
        finally:
            self.flow = None
            f.close()
            if not session.lost:
                transport.unregisterProducer()
        return True

    def stop(self) -> None:
        """The connection is gone: a stream in progress ends at its next chunk."""
        if self.flow is not None:
            self.flow.stopProducing()
