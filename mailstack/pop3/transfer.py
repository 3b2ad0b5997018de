"""RETR and TOP: a message file, read in chunks from a thread, dot-stuffed and written under
flow control, so a large message neither blocks the reactor nor is held in memory.

Twisted's own ``POP3`` doubles the CR of CRLF-stored messages and misses dot-stuffing across
read boundaries; :class:`DotStuffer` carries its state from chunk to chunk instead.
"""

from __future__ import annotations

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailstack.errors import MessageGone
from mailstack.flow import Flow, send_now
from mailstack.pop3.errors import SYS_TEMP, Pop3Error

log = Logger()

READ_CHUNK = 128 * 1024
#: What one session reads ahead for its next RETRs, at most: messages, octets.
AHEAD_COUNT, AHEAD_BYTES = 32, 256 * 1024


class DotStuffer:
    """Turn a message file, chunk by chunk, into a POP3 multi-line response body.

    RFC 1939 section 3: lines end in CRLF and a line starting with "." gets one more.  A bare
    LF becomes CRLF; every other byte (8-bit, bare CR) passes unchanged.  State carried from
    chunk to chunk: whether the output is at a line start, and a CR at a chunk's end, held
    back until the next byte shows whether it starts a CRLF.  With ``top`` (TOP n m, RFC 1939
    section 7) the output stops after the header, the blank line and ``top`` body lines.
    """

    def __init__(self, top: int | None = None, crlf: bool = False):
        self._crlf = crlf  # the input is known to have no bare LF (the store's CRLF form)
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
        if not self._crlf and data.count(b"\n") != data.count(b"\r\n"):  # some bare LF (counting allocates nothing)
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
        self.ahead: dict[int, bytes] = {}  # index -> its whole RETR response, read ahead
        self.reading: tuple[range, defer.Deferred] | None = None  # the read-ahead in flight
        self.ahead_end = 0  # the index after the last one read ahead (or being read)

    def send(self, i: int, top: int | None) -> defer.Deferred | None:
        """RFC 1939 sections 5 (RETR, ``top`` None) and 7 (TOP msg n, ``top`` = n).  None
        when the response is written already (a message read ahead)."""
        if top is not None:
            d = threads.deferToThread(self.maildrop.open_start, self.maildrop.messages[i].uid, READ_CHUNK)
        else:
            for j in [j for j in self.ahead if j < i]:  # skipped: not wanted after all
                del self.ahead[j]
            response = self.ahead.pop(i, None)
            if response is not None:
                self.read_ahead(i + 1)
                self.write_whole(i, response)
                return None
            if self.reading is not None and i in self.reading[0]:
                d = defer.Deferred()
                self.reading[1].addBoth(self.ahead_ready, i, d)
                return d
            d = threads.deferToThread(self.maildrop.open_start, self.maildrop.messages[i].uid, READ_CHUNK)
            if self.reading is None:  # out of order (or the first): read ahead from here on
                self.ahead.clear()
                self.ahead_end = i + 1
            self.read_ahead(i + 1)
        d.addCallbacks(lambda opened: defer.ensureDeferred(self.stream(opened, i, top)),
                       self.open_failed, errbackArgs=(i,))
        return d

    def read_ahead(self, i: int) -> None:
        """Clients RETR one message after the other: read the next small ones meanwhile, in
        one thread call for several (each call costs more than reading a small file), so
        their RETRs are answered without waiting for a thread.  Only messages that fit in
        one chunk (no open file to keep), at most ``AHEAD_BYTES`` held, one batch at a time,
        the next once fewer than half of the last are left."""
        if self.reading is not None or sum(1 for j in self.ahead if j >= i) >= AHEAD_COUNT // 2:
            return
        maildrop, start = self.maildrop, max(i, self.ahead_end)
        end, budget, wanted = start, AHEAD_BYTES, []
        while end < len(maildrop.messages) and len(wanted) < AHEAD_COUNT:
            info = maildrop.messages[end]
            if info.size >= READ_CHUNK or info.size > budget:
                break
            if end not in maildrop.deleted:
                wanted.append((end, info.uid, info.size))
                budget -= info.size
            end += 1
        if not wanted:
            return
        d = threads.deferToThread(self.read_batch, wanted)
        self.reading, self.ahead_end = (range(start, end), d), end
        d.addBoth(self.batch_read)

    def read_batch(self, wanted: list[tuple[int, int, int]]) -> dict[int, bytes]:
        """*Blocking.*  index -> whole RETR response, for the (index, uid, size) up to the
        first that cannot be read whole (that one's RETR reads it, and says why)."""
        out: dict[int, bytes] = {}
        read = self.maildrop.read_small([uid for _, uid, _ in wanted])
        for i, uid, size in wanted:
            data = read.get(uid)
            if data is None:
                break
            encoder = DotStuffer(crlf=True)  # read_small gives the CRLF form
            out[i] = b"".join((b"+OK %d octets\r\n" % size, encoder.feed(data), encoder.finish()))
        return out

    def batch_read(self, result):
        self.reading = None
        if isinstance(result, dict):
            self.ahead.update(result)
        else:  # each RETR then reads its own message, and answers for it
            log.failure("pop3 read-ahead failed for {user}", result, user=self.maildrop.address)

    def ahead_ready(self, _, i: int, d: defer.Deferred):
        """A RETR that waited for the read-ahead holding its message."""
        response = self.ahead.pop(i, None)
        if response is None:  # not read ahead after all: read it now
            self.send(i, None).chainDeferred(d)
            return
        self.read_ahead(i + 1)
        self.write_whole(i, response)
        d.callback(None)

    def write_whole(self, i: int, response: bytes) -> None:
        session = self.session
        if session.lost:
            return
        session.transport.write(response)
        send_now(session.transport)  # the client waits for all of it
        info = self.maildrop.messages[i]
        if "\\Seen" not in info.flags:
            session.seen.add(info.uid)

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
