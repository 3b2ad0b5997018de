"""The ``body`` test's text (RFC 5173): the raw body, or the decoded MIME parts selected by
content type.  Only here is the message given to :mod:`email`'s parser, fed in chunks so
the run's deadline is checked while a large message is parsed; only the first
``max_body`` bytes of each part are decoded and searched.
"""

from __future__ import annotations

import base64
import binascii
import html
import quopri
import re
from email.parser import BytesFeedParser
from email.policy import compat32

from .message import header_bounds

_CHUNK = 1 << 20
_BLOCK_TAG = re.compile(r"<\s*/?\s*(?:p|br|div|li|tr|td|th|h[1-6]|table|ul|ol|blockquote|hr)\b[^>]*>", re.I)
_TAG = re.compile(r"<[^>]*>")
_HIDDEN = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)


def body_texts(raw: bytes, transform: str, types: tuple, max_body: int, tick) -> list[str]:
    head_end, start = header_bounds(raw)
    if head_end == len(raw):  # RFC 5173 4: a header with no empty line after it: no body at all
        return []
    if transform == ":raw":  # RFC 5173 5.1: the body as it is, no decoding
        return [raw[start:start + max_body].decode("utf-8", "replace")]
    parser = BytesFeedParser(policy=compat32)
    for start in range(0, len(raw), _CHUNK):
        tick()
        parser.feed(raw[start:start + _CHUNK])
    root = parser.close()
    wanted = ("text",) if transform == ":text" else types
    out = []
    for part in root.walk():
        tick()
        ctype = part.get_content_type()
        if part.is_multipart():  # RFC 5173 5.2: a container's own text, its parts by their types
            if transform == ":content" and _selected(ctype, wanted):
                out.extend(_container_texts(part, ctype, max_body))
            continue
        if not _selected(ctype, wanted):
            continue
        text = _decoded(part, max_body)
        if transform == ":text" and ctype == "text/html":  # 5.3: text without the markup
            text = html_text(text)
        out.append(text)
    return out


def _container_texts(part, ctype: str, max_body: int) -> list[str]:
    """A multipart's prologue and epilogue (two strings); a message/rfc822's nested header."""
    if ctype.startswith("multipart/"):
        return [(part.preamble or "")[:max_body], (part.epilogue or "")[:max_body]]
    nested = part.get_payload()
    if isinstance(nested, list) and nested:
        return ["".join(f"{name}: {value}\r\n" for name, value in nested[0].items())[:max_body]]
    return []


def html_text(markup: str) -> str:
    """Block elements become line breaks, other tags vanish, entities are decoded."""
    markup = _HIDDEN.sub("", markup)
    return html.unescape(_TAG.sub("", _BLOCK_TAG.sub("\n", markup)))


def _selected(ctype: str, wanted) -> bool:
    """RFC 5173 5.2: "" selects every part, "type" a whole type, "type/subtype" one."""
    main = ctype.partition("/")[0]
    for want in wanted:
        want = want.lower()
        if want == "" or want == ctype or ("/" not in want and want == main):
            return True
    return False


def _decoded(part, max_body: int) -> str:
    """The part's text: transfer decoding on at most what ``max_body`` needs, then its charset."""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    encoded = None
    if cte in ("base64", "quoted-printable"):
        try:
            encoded = part.get_payload()  # str: the encoded text, to cut before decoding
        except LookupError:  # 8-bit bytes in it and an unknown charset
            encoded = None
    if isinstance(encoded, str) and cte == "base64":
        data = _base64(encoded[: (max_body * 4) // 3 + 1024])
    elif isinstance(encoded, str):
        data = quopri.decodestring(encoded[: max_body * 3].encode("ascii", "replace"))
    else:
        data = part.get_payload(decode=True)  # 7bit, 8bit, binary: the part's own bytes
        if not isinstance(data, bytes):
            return ""
    data = data[:max_body]
    charset = part.get_content_charset() or "us-ascii"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _base64(encoded: str) -> bytes:
    cleaned = re.sub(r"[^A-Za-z0-9+/]", "", encoded)
    rest = len(cleaned) % 4  # padding went with the line breaks: put it back
    cleaned = cleaned[:-1] if rest == 1 else cleaned + "=" * ((4 - rest) % 4)
    try:
        return base64.b64decode(cleaned)
    except (binascii.Error, ValueError):
        return b""
