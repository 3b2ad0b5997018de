"""Receiving a message body: the DATA terminator and dot-stuffing, and a bounded spool.

DATA is read in raw mode, not line by line: a message is scanned for ``CRLF.CRLF`` and
un-stuffed (RFC 5321 4.5.2) a chunk at a time, which keeps bytes exact, lines of any length
harmless, and the cost per message low.  The spool holds a message in memory up to 1 MiB
and in an unlinked temporary file beyond; past the size limit it stops storing and only
counts, so a client cannot make the server hold more than the limit.
"""

from __future__ import annotations

import email.utils
import re
import tempfile
from typing import Iterator

_CHUNK = 256 * 1024
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)
_RECEIVED = re.compile(rb"\nreceived[ \t]*:", re.I)


class DotDecoder:
    """Streaming decoder of an RFC 5321 DATA section."""

    def __init__(self):
        # Logically the stream starts with CRLF, so a terminator or a stuffed dot on the very
        # first line looks like one on any other line.
        self._pending = b"\r\n"
        self._at_start = True
        #: a bare CR or LF was seen: refused, since a next hop may read it as end of data
        #: ("SMTP smuggling")
        self.bare_newline = False

    def feed(self, data: bytes) -> tuple[bytes, bool, bytes]:
        """Return (message bytes decoded so far, whether the terminator was seen, bytes after it).

        At most a few bytes are held back between calls, whatever the client sends (a
        message with no line break at all included): only what could still turn out to be
        part of ``CRLF.CRLF`` or of a stuffed dot.
        """
        buf = self._pending + data
        end = buf.find(b"\r\n.\r\n")
        if end >= 0:
            out, rest, done = buf[: end + 2], buf[end + 5 :], True
            self._pending = b""
        else:
            cut = _safe_cut(buf)
            out, self._pending, rest, done = buf[:cut], buf[cut:], b"", False
        self.bare_newline = self.bare_newline or _has_bare_newline(out)
        out = out.replace(b"\r\n.", b"\r\n")
        if self._at_start and out:
            out, self._at_start = out[2:], False
        return out, done, rest


_TERMINATOR = b"\r\n.\r\n"


def _safe_cut(buf: bytes) -> int:
    """Where ``buf`` may be cut: before its longest suffix that could begin ``CRLF.CRLF``.

    Only a proper prefix of the terminator (``CR``, ``CRLF``, ``CRLF.``, ``CRLF.CR``) can
    change meaning with the bytes still to come; both the terminator and a stuffed dot
    (``CRLF.``) start with CRLF, so no cut elsewhere splits one.  At most four bytes stay
    behind, so a run of dots or of lines without end costs linear time (issue 14).
    """
    for size in (4, 3, 2, 1):
        if buf.endswith(_TERMINATOR[:size]):
            return len(buf) - size
    return len(buf)


def _has_bare_newline(data: bytes) -> bool:
    """A CR or LF that is not part of CRLF (RFC 5321 2.3.8)."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


class MessageSpool:
    """The bytes of one incoming message, bounded by ``max_size``."""

    MEMORY = 1 << 20
    HEAD = 64 * 1024

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.size = 0
        self.too_big = False
        self.head = b""  # the first HEAD bytes, for header checks
        self.bare_newline = False
        self.nul = False  # a NUL octet was seen (refused: RFC 5322 and RFC 3501 have no place for it)
        self._last = b""
        self._file = tempfile.SpooledTemporaryFile(max_size=self.MEMORY)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.nul = self.nul or b"\x00" in data
        self.size += len(data)
        if self.size > self.max_size:
            self.too_big = True
        if self.too_big:
            return
        if len(self.head) < self.HEAD:
            self.head += data[: self.HEAD - len(self.head)]
        self._file.write(data)

    def note_raw(self, data: bytes) -> None:
        """Track bare CR/LF in BDAT chunks (not dot-decoded), across chunk boundaries."""
        if data:
            joined = self._last + data
            self.bare_newline = self.bare_newline or _has_bare_newline(joined[:-1] if joined.endswith(b"\r") else joined)
            self._last = b"\r" if joined.endswith(b"\r") else b""

    def header_names(self) -> set[str]:
        """Lower-cased names of the header fields (from the first 64 KiB)."""
        end = self.head.find(b"\r\n\r\n")
        block = self.head if end < 0 else self.head[: end + 2]
        if block.startswith(b"\r\n"):
            return set()
        return {m.group(1).decode("ascii", "replace").lower() for m in _HEADER_NAME.finditer(block)}

    def received_count(self) -> int:
        """Received fields in the first 64 KiB of the header: the newest hops, prepended."""
        end = self.head.find(b"\r\n\r\n")
        block = self.head if end < 0 else self.head[: end + 2]
        return len(_RECEIVED.findall(b"\n" + block))

    def header_block(self) -> bytes:
        """The header section, up to and including the CRLF before the blank line.  Within
        the first 64 KiB it is there at once; beyond, it is read from the spool (blocks: run
        it in a worker thread then, see :meth:`header_in_head`)."""
        head = self.head if self.header_in_head() else self.read_all()
        end = head.find(b"\r\n\r\n")
        if head.startswith(b"\r\n"):
            return b""
        return head if end < 0 else head[: end + 2]

    def header_in_head(self) -> bool:
        return b"\r\n\r\n" in self.head or self.head.startswith(b"\r\n") or len(self.head) == self.size

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


def header_addresses(header: bytes, name: str) -> list[str]:
    """Every address in every ``name`` field of a header section (folded lines joined;
    RFC 5322 3.6.2 allows several mailboxes in From, and a client may repeat the field)."""
    pattern = re.compile(rb"^" + re.escape(name.encode()) + rb"[ \t]*:(.*(?:\r\n[ \t].*)*)", re.I | re.M)
    values = [re.sub(rb"\r\n[ \t]", b" ", m.group(1)).decode("utf-8", "replace") for m in pattern.finditer(header)]
    return [address for _name, address in email.utils.getaddresses(values)]
