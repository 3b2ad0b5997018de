"""BINARY (RFC 3516; part of IMAP4rev2, RFC 9051 6.4.5): body parts with their
Content-Transfer-Encoding undone, and the binary side of APPEND.

FETCH ``BINARY[part]<partial>``, ``BINARY.PEEK[...]`` and ``BINARY.SIZE[part]`` answer on
the stored bytes (:class:`~mailstack.imap.message.Entity`):

* a leaf part is decoded: base64 and quoted-printable undone, 7bit/8bit/binary as they are;
  any other encoding fails the FETCH with ``NO [UNKNOWN-CTE]`` (RFC 3516 4.2).  A text part
  goes out with CRLF line ends whatever the stored ones (RFC 9051 7.5.2).
* ``BINARY[]``, or a multipart or message/rfc822 part, is sent with every encoded leaf in
  it decoded and that leaf's Content-Transfer-Encoding field saying ``binary``, the rest byte
  for byte, as Dovecot answers; an unknown encoding anywhere in it is ``UNKNOWN-CTE``, and so
  is a multipart or message/rfc822 that says it is encoded (RFC 2046 5.1.1, 5.2.1 allow only
  the identity encodings there).  A large one-part message with nothing to decode is
  streamed from its file.
* the value is a literal8 ``~{n}`` when what is sent holds a NUL octet (RFC 3516 4.3,
  RFC 9051 4.3.1), an ordinary literal otherwise (RFC 3516 4.3's SHOULD; Dovecot sends a
  literal8 for any 8-bit data); a partial answer is named ``BINARY[part]<origin>`` as BODY's
  is, as Dovecot does (RFC 3516 4.3 prose; the ABNF omits the origin).

APPEND accepts ``~{n}`` (literal8) messages, with or without LITERAL+, and CATENATE TEXT
parts likewise.  A literal8 or CATENATE message that holds a NUL octet is refused with
``NO [UNKNOWN-CTE]``, as RFC 3516 4.4 says for a mailbox that cannot store binary content
(SMTP refuses NUL too, and BODY[] could not carry one); 8-bit content without NUL is stored
as sent.  (An ordinary ``{n}`` literal, where RFC 3501 allows no NUL, is stored byte for
byte as it always was.)  A stored message with a NUL is sent by BINARY in a literal8.
"""

from __future__ import annotations

import binascii
import re

from mailstack.imap import message as msgmod
from mailstack.imap.errors import No, shown

IDENTITY = (b"7bit", b"8bit", b"binary")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_LINE_END = re.compile(rb"\r?\n")
_CTE_FIELD = re.compile(rb"(?im)^(content-transfer-encoding[ \t]*:)[^\n]*\n(?:[ \t][^\n]*\n)*")


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
        return converted(entity)
    try:
        target = entity.locate(tuple(p + 1 for p in part))
    except KeyError:
        return b""
    return _converted_body(target)


def converted(entity: msgmod.Entity) -> bytes:
    """An entity, header and body, with every encoded leaf in it decoded and its
    Content-Transfer-Encoding field saying ``binary`` (as Dovecot answers BINARY[] of a
    multipart); the rest byte for byte."""
    header = entity.header
    if not entity.children and entity.message is None and encoding(entity) not in IDENTITY:
        header = _CTE_FIELD.sub(lambda m: m.group(1) + b" binary" + (b"\r\n" if m.group(0).endswith(b"\r\n") else b"\n"),
                                header, count=1)
    return header + _converted_body(entity)


def _converted_body(entity: msgmod.Entity) -> bytes:
    if entity.children or entity.message is not None:
        if encoding(entity) not in IDENTITY:  # RFC 2046 5.1.1, 5.2.1: nothing else is allowed there
            raise No(f"a {entity.content_type} part cannot be {shown(encoding(entity))}-encoded", "UNKNOWN-CTE")
        if entity.message is not None:
            return converted(entity.message)
        out, pos, body = [], 0, entity.body
        for child in entity.children:  # each child is a slice of the body, in order
            raw = child.header + child.body
            at = body.find(raw, pos)
            out += [body[pos:at], converted(child)]
            pos = at + len(raw)
        return b"".join(out) + body[pos:]
    return decoded(entity)


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


def whole_message(folder, uid: int, item, raw: bytes | None, files: list) -> list:
    """*Blocking.*  BINARY[] / BINARY.SIZE[] when nothing else needs the parsed message.  A
    large one-part message with nothing to decode is streamed from its file (opened into
    ``files``) once a scan has found its size, whether a literal8 is needed, and that a text
    has no bare LF to turn into CRLF; any other is read and converted."""
    if raw is None:
        head = folder.headers([uid]).get(uid)
        whole = msgmod.Entity(head) if head is not None else None
        if whole is not None and whole.maintype not in ("multipart", "message") and encoding(whole) in IDENTITY:
            f = folder.open_message(uid)
            files.append(f)
            streamed = _scanned(f, item, whole.maintype == "text")
            if streamed is not None:
                return streamed
        raw = folder.read_message(uid)
    data = converted(msgmod.Entity(raw))
    if item.type == "binarysize":
        return [b"BINARY.SIZE[] %d" % len(data)]
    return [_answer(item, data)]


def _scanned(f, item, text: bool) -> list | None:
    """The answer streaming ``f`` as it is, or None when a text in it has a bare LF."""
    size = f.size  # of the CRLF form the store serves
    offset, length, name = 0, size, b"BINARY[]"
    if item.partial_begin is not None:
        offset = min(item.partial_begin, size)
        length = max(0, min(item.partial_length, size - offset))
        name += b"<%d>" % item.partial_begin
    nul, pos, last = False, 0, b""
    while chunk := f.read(1 << 20):
        if text and chunk.count(b"\n") > chunk.count(b"\r\n") + (last == b"\r" and chunk[:1] == b"\n"):
            return None
        nul = nul or b"\0" in chunk[max(0, offset - pos) : max(0, offset + length - pos)]
        pos, last = pos + len(chunk), chunk[-1:]
    f.seek(0)
    if item.type == "binarysize":
        return [b"BINARY.SIZE[] %d" % size]
    return [name + (b" ~{%d}\r\n" if nul else b" {%d}\r\n") % length, (f, offset, length)]
