"""A message as the protocols serve it: its canonical form, with every line ending in CRLF.

RFC 5322 2.1 (and RFC 3501 2.3.4 for RFC822.SIZE, RFC 1939 3 for POP3) speak of the CRLF
form, but Dovecot, procmail and maildrop store lines ending in a bare LF.  The store serves
every file in the CRLF form: each LF not preceded by CR becomes CRLF; CRLF stays; a lone CR
is left as it is.  RFC 5322 2.3 forbids a lone CR, but it says nothing of what it meant
(a line end? a byte?), so it is passed on untouched, as Dovecot does: the sizes then agree
with Dovecot's ``,W=``.

Files already in the CRLF form (everything mailstack writes) are served as they are, by a
plain buffered file (:class:`MessageFile`); only a file whose CRLF size differs from its size
gets the converting reader (:class:`CrlfReader`), which streams, never holding the file.

The CRLF size comes from the name when it can: ``,W=`` (Dovecot's, and ours), or ``,S=`` of a
name mailstack made without ``,W=`` (its files were always CRLF); otherwise the file is read
once and the size kept in the folder's :class:`~mailstack.store.cache.MessageCache`.
"""

from __future__ import annotations

import io
import os
import re
from typing import Iterable

#: The cache kind holding the CRLF size (ASCII digits) of a file whose name does not say it.
SIZE_KIND = "store.crlf-size"
_CHUNK = 256 * 1024
#: A base name mailstack made (files.new_base): its ``,S=`` is the CRLF size even without ``,W=``.
_OURS = re.compile(r"^\d+\.M\d+P\d+Q\d+R[0-9a-f]+\.")


def _field(base: str, i: int) -> int | None:
    """The number after the ``,X=`` at ``i`` (up to the next comma)."""
    j = base.find(",", i + 3)
    digits = base[i + 3 :] if j < 0 else base[i + 3 : j]
    return int(digits) if digits.isdigit() else None


def size_from_name(base: str) -> int | None:
    """The CRLF size a base name states (``,W=``, or ``,S=`` in one of our names), or None.
    Called for every message of a cold snapshot: kept cheap."""
    i = base.find(",W=")
    if i >= 0:
        return _field(base, i)
    i = base.find(",S=")
    if i < 0 or not _OURS.match(base):
        return None
    return _field(base, i)


def bare_lfs(chunk: bytes, after_cr: bool) -> int:
    """How many LFs of ``chunk`` are not preceded by CR (``after_cr``: the byte before it was)."""
    return chunk.count(b"\n") - chunk.count(b"\r\n") - (after_cr and chunk[:1] == b"\n")


def to_crlf(chunk: bytes, after_cr: bool) -> bytes:
    """``chunk`` with each bare LF as CRLF (``after_cr``: the byte before it was a CR)."""
    if not bare_lfs(chunk, after_cr):
        return chunk
    out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return out[1:] if after_cr and chunk[:1] == b"\n" else out


class CrlfCounter:
    """The CRLF size of bytes seen chunk by chunk (what a writer names ``,W=``)."""

    def __init__(self):
        self.size, self.crlf_size, self._cr = 0, 0, False

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self.size += len(chunk)
            self.crlf_size += len(chunk) + bare_lfs(chunk, self._cr)
            self._cr = chunk[-1:] == b"\r"


def crlf_size_of_file(path: str) -> int:
    """*Blocking.*  Read a file once for its CRLF size."""
    counter = CrlfCounter()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            counter.feed(chunk)
    return counter.crlf_size


class MessageFile(io.BufferedReader):
    """A message file already in the CRLF form, read as it is.  ``size`` is what it serves
    (its size), ``raw_size`` its size on disk (the same)."""

    size: int
    raw_size: int


class CrlfReader:
    """A message file read in its CRLF form, streaming (a read-only binary file).

    ``size`` is the CRLF size, ``raw_size`` the file's, ``name`` its path.  A forward
    :meth:`seek` reads up to the offset, counting whole chunks and converting only the one it
    lands in (nothing is kept); a backward one starts again from the file's beginning.
    """

    def __init__(self, raw: io.BufferedReader, size: int, raw_size: int):
        self._raw, self.size, self.raw_size, self.name = raw, size, raw_size, raw.name
        self._pending = bytearray()  # converted, not yet returned
        self._pos = 0  # offset in the CRLF form of the next byte returned
        self._cr = False  # the last raw byte converted was CR

    def _convert_more(self) -> bytes:
        chunk = self._raw.read(_CHUNK)
        if not chunk:
            return b""
        out = to_crlf(chunk, self._cr)
        self._cr = chunk[-1:] == b"\r"
        return out

    def read(self, n: int | None = -1) -> bytes:
        """Up to ``n`` bytes (all the rest when negative); short only at the end."""
        if n is None or n < 0:
            parts = [bytes(self._pending)]
            while more := self._convert_more():
                parts.append(more)
            self._pending = bytearray()
            out = b"".join(parts)
        else:
            while len(self._pending) < n:
                more = self._convert_more()
                if not more:
                    break
                self._pending += more
            out = bytes(self._pending[:n])
            del self._pending[:n]
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += self.size
        if offset < 0:
            raise ValueError("negative seek position")
        if offset < self._pos:
            self._raw.seek(0)
            self._pending, self._pos, self._cr = bytearray(), 0, False
        if self._pending:  # what is converted already
            step = min(len(self._pending), offset - self._pos)
            del self._pending[:step]
            self._pos += step
        while self._pos < offset:
            # Whole chunks before the offset are only counted, not converted (a partial FETCH
            # deep into a big file is a count at C speed, not a conversion of all before it).
            chunk = self._raw.read(_CHUNK)
            if not chunk:
                break
            grown = len(chunk) + bare_lfs(chunk, self._cr)
            if self._pos + grown <= offset:
                self._pos += grown
                self._cr = chunk[-1:] == b"\r"
                continue
            self._pending = bytearray(to_crlf(chunk, self._cr))
            self._cr = chunk[-1:] == b"\r"
            step = offset - self._pos
            del self._pending[:step]
            self._pos += step
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "CrlfReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_served(path: str, size: int | None):
    """*Blocking.*  Open a message file in its CRLF form: a :class:`MessageFile` when the
    CRLF size (``size``; read from the file when None) is its size, else a
    :class:`CrlfReader`.  Raises FileNotFoundError."""
    f = MessageFile(io.FileIO(path, "rb"))
    try:
        raw_size = os.fstat(f.fileno()).st_size
        if size is None:
            size = crlf_size_of_file(path)
    except BaseException:
        f.close()
        raise
    if size == raw_size:
        f.size = f.raw_size = size
        return f
    return CrlfReader(f, size, raw_size)


def read_served(path: str, size: int | None) -> bytes:
    """*Blocking.*  A whole (small) message file in its CRLF form, read in one call; ``size``
    as for :func:`open_served`.  Raises FileNotFoundError."""
    with open(path, "rb", buffering=0) as f:
        data = f.readall()
    return data if len(data) == size else to_crlf(data, False)


def resolve_sizes(folder_path: str, cache, pending: Iterable[tuple[str, str]]) -> dict[str, int]:
    """*Blocking.*  base -> CRLF size for (base, relative filename) pairs whose names do not
    say it: from the cache, else by reading the file once (then cached).  A file gone
    meanwhile is left out."""
    pending = list(pending)
    cached = cache.get_many([base for base, _ in pending], SIZE_KIND)
    out: dict[str, int] = {}
    fresh: dict[str, bytes] = {}
    for base, rel in pending:
        value = cached.get(base)
        if value is not None and value.isdigit():
            out[base] = int(value)
            continue
        try:
            out[base] = crlf_size_of_file(os.path.join(folder_path, rel))
        except FileNotFoundError:
            continue
        fresh[base] = b"%d" % out[base]
    cache.put_many(SIZE_KIND, fresh)
    return out
