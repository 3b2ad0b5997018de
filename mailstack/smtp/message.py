"""Receiving a message body: the DATA terminator and dot-stuffing, and a bounded spool.

DATA is read in raw mode, not line by line: a message is scanned for ``CRLF.CRLF`` and
un-stuffed (RFC 5321 4.5.2) a chunk at a time, which keeps bytes exact, lines of any length
harmless, and the cost per message low.  The spool holds a message in memory up to 1 MiB
and in an unlinked temporary file beyond; past the size limit it stops storing and only
counts, so a client cannot make the server hold more than the limit.
"""

from __future__ import annotations

import re
import tempfile
from typing import Iterator

_CHUNK = 256 * 1024
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)


class DotDecoder:
    """Streaming decoder of an RFC 5321 DATA section."""

    def __init__(self):
        # Logically the stream starts with CRLF, so a terminator or a stuffed dot on the very
        # first line looks like one on any other line.
        self._pending = b"\r\n"
        self._at_start = True

    def feed(self, data: bytes) -> tuple[bytes, bool, bytes]:
        """Return (message bytes decoded so far, whether the terminator was seen, bytes after it)."""
        buf = self._pending + data
        end = buf.find(b"\r\n.\r\n")
        if end >= 0:
            out, rest, done = buf[: end + 2], buf[end + 5 :], True
            self._pending = b""
        else:
            cut = buf.rfind(b"\r\n")
            if cut < 0:
                cut = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
            out, self._pending, rest, done = buf[:cut], buf[cut:], b"", False
        out = out.replace(b"\r\n.", b"\r\n")
        if self._at_start and out:
            out, self._at_start = out[2:], False
        return out, done, rest


class MessageSpool:
    """The bytes of one incoming message, bounded by ``max_size``."""

    MEMORY = 1 << 20
    HEAD = 64 * 1024

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.size = 0
        self.too_big = False
        self.head = b""  # the first HEAD bytes, for header checks
        self._file = tempfile.SpooledTemporaryFile(max_size=self.MEMORY)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.max_size:
            self.too_big = True
        if self.too_big:
            return
        if len(self.head) < self.HEAD:
            self.head += data[: self.HEAD - len(self.head)]
        self._file.write(data)

    def header_names(self) -> set[str]:
        """Lower-cased names of the header fields (from the first 64 KiB)."""
        end = self.head.find(b"\r\n\r\n")
        block = self.head if end < 0 else self.head[: end + 2]
        if block.startswith(b"\r\n"):
            return set()
        return {m.group(1).decode("ascii", "replace").lower() for m in _HEADER_NAME.finditer(block)}

    def read_all(self) -> bytes:
        """The whole message in memory (for DKIM, which needs all of it); at most ``max_size``."""
        self._file.seek(0)
        return self._file.read()

    def chunks(self) -> Iterator[bytes]:
        self._file.seek(0)
        while True:
            chunk = self._file.read(_CHUNK)
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        self._file.close()
