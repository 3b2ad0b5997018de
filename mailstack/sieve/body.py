"""The ``body`` test's text (RFC 5173): the raw body, or the decoded MIME parts selected by
content type.  Only here is the message given to :mod:`email`'s parser, fed in chunks so
the run's deadline is checked while a large message is parsed; only the first
``max_body`` bytes of each part are decoded and searched.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from email.parser import BytesFeedParser
from email.policy import compat32

from .message import split_message

_CHUNK = 1 << 20
_TAG = re.compile(r"<[^>]*>")


def body_texts(raw: bytes, transform: str, types: tuple, max_body: int, tick) -> list[str]:
    if transform == ":raw":  # RFC 5173 5.1: the body as it is, no decoding
        return [split_message(raw)[1][:max_body].decode("utf-8", "replace")]
    parser = BytesFeedParser(policy=compat32)
    for start in range(0, len(raw), _CHUNK):
        tick()
        parser.feed(raw[start:start + _CHUNK])
    root = parser.close()
    wanted = ("text",) if transform == ":text" else types
    out = []
    for part in root.walk():
        tick()
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if not _selected(ctype, wanted):
            continue
        text = _decoded(part, max_body)
        if transform == ":text" and ctype == "text/html":  # 5.3: text without the markup
            text = _TAG.sub(" ", text)
        out.append(text)
    return out


def _selected(ctype: str, wanted) -> bool:
    """RFC 5173 5.2: "" selects every part, "type" a whole type, "type/subtype" one."""
    main = ctype.partition("/")[0]
    for want in wanted:
        want = want.lower()
        if want == "" or want == ctype or ("/" not in want and want == main):
            return True
    return False


def _decoded(part, max_body: int) -> str:
    payload = part.get_payload()
    if not isinstance(payload, str):
        return ""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte == "base64":
        encoded = payload[: (max_body * 4) // 3 + 1024]
        cleaned = re.sub(r"[^A-Za-z0-9+/]", "", encoded)
        cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
        try:
            data = base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            data = b""
    elif cte == "quoted-printable":
        data = quopri.decodestring(payload[: max_body * 3].encode("ascii", "replace"))
    else:
        data = payload[:max_body].encode("utf-8", "surrogateescape")
    data = data[:max_body]
    charset = part.get_content_charset() or "us-ascii"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")
