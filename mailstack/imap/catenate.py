"""CATENATE (RFC 4469) without URLAUTH: APPEND of a message made of literal TEXT parts and
URL parts, the URLs naming messages (or sections of them) in the logged-in user's own
mailboxes on this server.

URLs are relative IMAP URLs (RFC 5092 7.1, as RFC 4469 5 allows): ``/mailbox[;UIDVALIDITY=v]
/;UID=u[/;SECTION=s][/;PARTIAL=o[.n]]``, the mailbox percent-encoded UTF-8 (RFC 5092 3.2),
the section an RFC 3501 section-spec.  An ``imap://`` URL, or one with URLAUTH, is refused:
there is no other server and no other user here to reach.  A URL that does not parse, names
no mailbox, a stale UIDVALIDITY, an expunged message or a missing part answers ``NO
[BADURL url]``; an assembled message over the size limit ``NO [TOOBIG]`` (RFC 4469 5).

The message is assembled in a temporary file as its parts are read (a part is read whole
only when it is a section: the sections of a message under the size limit), then stored
by the folder's ``append``, which fsyncs before APPEND's OK like any APPEND.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from mailstack.errors import FolderNotFound, InvalidFolderName, MessageGone
from mailstack.imap import binary
from mailstack.imap import message as msgmod
from mailstack.imap.errors import No, shown
from mailstack.imap.fetch import section_bytes
from mailstack.imap.parser import Atom, ParseError, String, fetch_att
from mailstack.imap.reader import Spool
from mailstack.store import normalise

CHUNK = 64 * 1024
_URL_RE = re.compile(rb"/(?P<mailbox>[^;?#]+?)/?(?:;UIDVALIDITY=(?P<uidvalidity>[1-9]\d{0,9}))?/;UID=(?P<uid>[1-9]\d{0,9})"
                     rb"(?:/;SECTION=(?P<section>[^/;?#]+))?(?:/;PARTIAL=(?P<offset>\d{1,19})(?:\.(?P<length>[1-9]\d{0,18}))?)?",
                     re.IGNORECASE)


@dataclass
class Catenate:
    """RFC 4469 5: a message to be made of ``parts``, each ("TEXT", Spool) or ("URL", bytes)."""

    parts: list

    def close(self) -> None:
        for kind, value in self.parts:
            if kind == "TEXT":
                value.close()


def catenate_parts(items: list) -> Catenate:
    """``cat-part *(SP cat-part)``: ``TEXT literal`` / ``URL astring`` (RFC 4469 5)."""
    parts = []
    for i in range(0, len(items), 2):
        word, value = items[i], items[i + 1] if i + 1 < len(items) else None
        kind = word.upper() if isinstance(word, Atom) else None
        if kind == b"TEXT" and isinstance(value, Spool):
            parts.append(("TEXT", value))
        elif kind == b"URL" and isinstance(value, (Atom, String)):
            parts.append(("URL", bytes(value)))
        else:  # the session closes the command's spools
            raise ParseError("CATENATE takes TEXT literal and URL string parts")
    if not parts:
        raise ParseError("CATENATE needs at least one part")
    return Catenate(parts)


def announces_text(command) -> bool:
    """Is the literal announced at the end of the command read so far a CATENATE ``TEXT``
    part?  Then it is message data, spooled under the message limit like APPEND's message."""
    before = command.texts[-1].rstrip(b" ")
    return (before[-4:].upper() == b"TEXT" and before[-5:-4] in (b" ", b"(")
            and any(b"CATENATE" in text.upper() for text in command.texts))


def bad_url(url: bytes, why: str) -> No:
    """RFC 4469 6: ``BADURL`` carries the URL (url-resp-text: no "]", CR or LF)."""
    return No(why, "BADURL " + shown(url, 500).replace("]", "?"))


def message_source(mailbox, message, limit: int):
    """*Blocking.*  What ``folder.append`` stores for one APPEND message: the spool itself, or
    a CATENATE assembled (the caller closes what is not the message it gave)."""
    if isinstance(message, Catenate):
        return assemble(mailbox, message.parts, limit)
    if message.literal8 and message.nul:
        raise binary.refuse_nul()
    return message


def assemble(mailbox, parts: list, limit: int):
    """*Blocking.*  The message of a CATENATE, in an unnamed temporary file read from its
    start; raises No [BADURL], [TOOBIG] or [UNKNOWN-CTE] (a NUL octet, see :mod:`binary`)."""
    out = tempfile.TemporaryFile()
    try:
        size = 0
        for kind, value in parts:
            for chunk in (_spooled(value) if kind == "TEXT" else _url_part(mailbox, value)):
                size += len(chunk)
                if size > limit:
                    raise No(f"the message would be larger than {limit} octets", "TOOBIG")
                if b"\0" in chunk:
                    raise binary.refuse_nul()
                out.write(chunk)
        out.flush()
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise


def _spooled(spool):
    spool.finish()  # from its start (it was read to its end once already if named twice)
    while chunk := spool.read(CHUNK):
        yield chunk


def _url_part(mailbox, url: bytes):
    """The octets a URL names, in chunks (a whole message streamed from its file)."""
    m = _URL_RE.fullmatch(url)
    if m is None:
        raise bad_url(url, "only relative IMAP URLs /mailbox;UIDVALIDITY=n/;UID=m[/;SECTION=s] to this account")
    try:
        name = normalise(unquote_to_bytes(m["mailbox"]).decode("utf-8"))
        folder = mailbox.folder(name)
    except (UnicodeDecodeError, FolderNotFound, InvalidFolderName):
        raise bad_url(url, "no such mailbox") from None
    snapshot = folder.snapshot()
    uid = int(m["uid"])
    if m["uidvalidity"] is not None and int(m["uidvalidity"]) != snapshot.uidvalidity:
        raise bad_url(url, "the mailbox's UIDVALIDITY has changed")
    if uid not in snapshot.by_uid():
        raise bad_url(url, "no such message")
    try:
        if m["section"] is None and m["offset"] is None:
            with folder.open_message(uid) as f:
                while chunk := f.read(CHUNK):
                    yield chunk
            return
        data = folder.read_message(uid)
    except MessageGone:
        raise bad_url(url, "the message has been expunged") from None
    if m["section"] is not None:
        data = _section(url, msgmod.Entity(data), unquote_to_bytes(m["section"]))
    if m["offset"] is not None:  # RFC 5092 3.2: ;PARTIAL=offset[.length]
        start = int(m["offset"])
        data = data[start : start + int(m["length"])] if m["length"] else data[start:]
    yield data


def _section(url: bytes, entity: msgmod.Entity, section: bytes) -> bytes:
    try:
        item = fetch_att(b"BODY.PEEK[" + section + b"]")
    except ParseError:
        raise bad_url(url, "invalid SECTION") from None
    if item.part:
        try:
            entity.locate(tuple(p + 1 for p in item.part))
        except KeyError:
            raise bad_url(url, "no such part") from None
    return section_bytes(item, entity)
