"""BINARY (RFC 3516; part of IMAP4rev2, RFC 9051 6.4.5): body parts with their
Content-Transfer-Encoding undone, and the binary side of APPEND.

FETCH ``BINARY[part]<partial>``, ``BINARY.PEEK[...]`` and ``BINARY.SIZE[part]`` answer on
the stored bytes (:class:`~mailstack.imap.message.Entity`):

* a leaf part is decoded: base64 and quoted-printable undone, 7bit/8bit/binary as they are;
  any other encoding fails the FETCH with ``NO [UNKNOWN-CTE]`` (RFC 3516 4.2).  A text part
  goes out with CRLF line ends whatever the stored ones (RFC 9051 7.5.2).
* ``BINARY[]`` is the whole message and a multipart or message/rfc822 part is sent as
  ``BODY[part]`` would send it: RFC 2046 5.1.1 and 5.2.1 allow only the identity encodings
  there, so there is nothing to decode (and a header saying otherwise is ``UNKNOWN-CTE``).
* the value is a literal8 ``~{n}`` when what is sent holds a NUL octet (RFC 3516 4.3,
  RFC 9051 4.3.1), an ordinary literal otherwise; a partial answer is named
  ``BINARY[part]<origin>`` as BODY's is (RFC 3516 4.3 prose; the ABNF omits the origin).

APPEND accepts ``~{n}`` (literal8) messages, with or without LITERAL+, and CATENATE TEXT
parts likewise.  The store keeps no NUL octet (SMTP refuses them too, and BODY[] could not
carry one): a message that would hold one is refused with ``NO [UNKNOWN-CTE]``, as RFC 3516
4.4 says for a mailbox that cannot store binary content; 8-bit content without NUL is
stored as sent.  A message with a NUL from an older store is still sent whole by BINARY,
in a literal8.
"""

from __future__ import annotations

import binascii
import os
import re

from mailstack.imap import message as msgmod
from mailstack.imap.errors import No, shown

IDENTITY = (b"7bit", b"8bit", b"binary")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_LINE_END = re.compile(rb"\r?\n")


def refuse_nul() -> No:
    """RFC 3516 4.4: the store cannot hold binary content (a NUL octet)."""
    return No("this server stores no NUL octets: send binary parts base64-encoded", "UNKNOWN-CTE")


def encoding(entity: msgmod.Entity) -> bytes:
    """The entity's Content-Transfer-Encoding, lower case (RFC 2045 6.1: default 7bit)."""
    value = entity.get("content-transfer-encoding") or b"7bit"
    return re.split(rb"[\s;(]", value.strip(), maxsplit=1)[0].lower() or b"7bit"


def decode_base64(data: bytes) -> bytes:
    """RFC 2045 6.8, leniently: characters outside the alphabet are ignored (6.8 says so),
    and a last group cut short decodes to what it holds."""
    text = _NOT_BASE64.sub(b"", data.split(b"=", 1)[0])
    if len(text) % 4 == 1:  # one sextet alone is no octet
        text = text[:-1]
    return binascii.a2b_base64(text + b"=" * (-len(text) % 4))


def decoded(entity: msgmod.Entity) -> bytes:
    """A leaf part's body with its Content-Transfer-Encoding undone; No [UNKNOWN-CTE]."""
    cte = encoding(entity)
    if cte in IDENTITY:
        data = entity.body
    elif cte == b"base64":
        data = decode_base64(entity.body)
    elif cte == b"quoted-printable":
        data = binascii.a2b_qp(entity.body)
    else:
        raise No(f"cannot decode Content-Transfer-Encoding {shown(cte)}", "UNKNOWN-CTE")
    if entity.maintype == "text":
        data = _LINE_END.sub(b"\r\n", data)
    return data


def section(part: tuple[int, ...], entity: msgmod.Entity) -> bytes:
    """What BINARY[part] sends (``part`` 0-based, as in FetchItem); b"" for no such part."""
    if not part:
        return entity.header + entity.body
    try:
        target = entity.locate(tuple(p + 1 for p in part))
    except KeyError:
        return b""
    if target.children or target.message is not None:
        if encoding(target) not in IDENTITY:  # RFC 2046 5.1.1, 5.2.1
            raise No(f"a {target.content_type} part cannot be {shown(encoding(target))}-encoded", "UNKNOWN-CTE")
        return target.body
    return decoded(target)


def fetch_item(item, entity: msgmod.Entity) -> bytes:
    """``BINARY[part]<origin> {n}`` / ``~{n}``, or ``BINARY.SIZE[part] n`` (RFC 3516 4.3)."""
    spec = ".".join(str(p + 1) for p in item.part).encode()
    data = section(item.part, entity)
    if item.type == "binarysize":
        return b"BINARY.SIZE[%s] %d" % (spec, len(data))
    return _answer(item, data)


def _answer(item, data: bytes) -> bytes:
    name = b"BINARY[%s]" % ".".join(str(p + 1) for p in item.part).encode()
    if item.partial_begin is not None:
        data = data[item.partial_begin : item.partial_begin + item.partial_length]
        name += b"<%d>" % item.partial_begin
    return name + (b" ~{%d}\r\n" if b"\0" in data else b" {%d}\r\n") % len(data) + data


def whole_message(folder, uid: int, size: int, item, raw: bytes | None, files: list) -> list:
    """*Blocking.*  BINARY[] / BINARY.SIZE[] when nothing else needs the parsed message: the
    size is the stored one; a large message is streamed from its file (opened into ``files``)
    once a scan has told whether the literal must be a literal8."""
    if item.type == "binarysize":
        return [b"BINARY.SIZE[] %d" % size]
    if raw is not None:
        return [_answer(item, raw)]
    f = folder.open_message(uid)
    files.append(f)
    size = os.fstat(f.fileno()).st_size
    offset, length, name = 0, size, b"BINARY[]"
    if item.partial_begin is not None:
        offset = min(item.partial_begin, size)
        length = max(0, min(item.partial_length, size - offset))
        name += b"<%d>" % item.partial_begin
    f.seek(offset)
    nul, left = False, length
    while left > 0 and not nul:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            break
        nul, left = b"\0" in chunk, left - len(chunk)
    f.seek(0)
    return [name + (b" ~{%d}\r\n" if nul else b" {%d}\r\n") % length, (f, offset, length)]
