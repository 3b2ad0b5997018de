"""Messages as IMAP sees them: MIME structure, FETCH sections, ENVELOPE and BODYSTRUCTURE.

Everything works on the stored bytes, never on a re-serialised ``email`` object: RFC 3501
section 6.4.5 wants ``BODY[...]`` sections byte-exact, and a message APPENDed by a client must
come back exactly as it was sent.  Python's ``email`` package is used only to read header
values (content type parameters, addresses), never to produce output.

Twisted's ``getEnvelope``/``getBodyStructure`` are not used: they encode header values as
ASCII (8-bit headers raise), lower-case parameter values (a MIME boundary is case-sensitive)
and fail on a parameter without ``=``.
"""

from __future__ import annotations

import email.header
import functools
import email.message
import email.parser
import email.utils
import re
from datetime import date, datetime, timezone

from mailstack.mail.headers import header_end

_FOLD = re.compile(rb"\r?\n(?=[ \t])")


class Entity:
    """One MIME entity: its header bytes (blank line included), body bytes and children."""

    def __init__(self, raw: bytes, default_type: str = "text/plain"):
        if raw.startswith(b"\r\n") or raw.startswith(b"\n"):
            split = 2 if raw.startswith(b"\r\n") else 1
            self.header, self.body = raw[:split], raw[split:]
        else:
            end = header_end(raw)
            if not end:  # header only (or no blank line): RFC 3501 treats it all as header
                self.header, self.body = raw, b""
            else:
                self.header, self.body = raw[:end], raw[end:]
        self.default_type = default_type

    # Parsed only when asked for: a FETCH of header fields needs none of this.

    @functools.cached_property
    def fields(self) -> list[tuple[str, bytes]]:
        return parse_fields(self.header)

    @functools.cached_property
    def parsed(self) -> email.message.Message:
        parsed = email.parser.HeaderParser().parsestr(self.header.decode("latin-1"))
        parsed.set_default_type(self.default_type)
        return parsed

    @functools.cached_property
    def content_type(self) -> str:
        return self.parsed.get_content_type()

    @property
    def maintype(self) -> str:
        return self.content_type.partition("/")[0]

    @property
    def subtype(self) -> str:
        return self.content_type.partition("/")[2]

    @functools.cached_property
    def children(self) -> list["Entity"]:
        if self.maintype != "multipart":
            return []
        boundary = self.parsed.get_param("boundary")
        if isinstance(boundary, tuple):
            boundary = email.utils.collapse_rfc2231_value(boundary)
        if not boundary:
            return []
        child_type = "message/rfc822" if self.subtype == "digest" else "text/plain"
        return [Entity(p, child_type) for p in split_multipart(self.body, boundary.encode("latin-1"))]

    @functools.cached_property
    def message(self) -> "Entity | None":
        """The encapsulated message of a message/rfc822 part."""
        return Entity(self.body) if self.content_type == "message/rfc822" else None

    # -- header fields -----------------------------------------------------------------------

    def get(self, name: str) -> bytes | None:
        """The first value of a header field, unfolded, without the name, or None."""
        name = name.lower()
        for n, v in self.fields:
            if n.lower() == name:
                return v
        return None

    def header_fields(self, names: list[str], negate: bool) -> bytes:
        """RFC 3501 HEADER.FIELDS (.NOT): the matching lines exactly as stored, then CRLF."""
        wanted = {n.lower() for n in names}
        out = []
        for line in raw_field_lines(self.header):
            name = line.split(b":", 1)[0].strip().decode("latin-1").lower()
            if (name in wanted) != negate:
                out.append(line)
        return b"".join(out) + b"\r\n"

    # -- navigation (RFC 3501 6.4.5 section numbers) -----------------------------------------

    def parts(self) -> list["Entity"]:
        """The numbered parts of this entity as a *message* (RFC 3501 6.4.5): a multipart's
        children; otherwise one part, the body itself, even when that body is an encapsulated
        message (``BODY[1]`` of a message/rfc822 message is the whole inner message, and
        ``BODY[1.MIME]`` the outer header, as Dovecot answers)."""
        if self.children:
            return self.children
        return [self]

    def subparts(self) -> list["Entity"] | None:
        """The numbered sub-parts of this entity as a *part*: a multipart's children or an
        encapsulated message's parts (RFC 3501 6.4.5's 3.1, 3.2); None for a leaf."""
        if self.children:
            return self.children
        if self.message is not None:
            return self.message.parts()
        return None

    def locate(self, path: tuple) -> "Entity":
        """The entity at a 1-based section path; KeyError if there is none.

        A leaf answers for its own ".1" once (``BODY[1.1]`` of a text part inside a
        multipart is ``BODY[1]``; ``BODY[1.1]`` of a one-part message is empty), which is
        what Dovecot answers and clients written against it send.
        """
        if not path:
            return self
        entity, reused = self, False
        for depth, n in enumerate(path):
            if depth == 0:
                parts = self.parts()
                reused = parts == [self] and self.message is None
            else:
                parts = entity.subparts()
                if parts is None:
                    if reused:
                        raise KeyError(".".join(map(str, path)))
                    parts, reused = [entity], True
                else:
                    reused = False
            if not 1 <= n <= len(parts):
                raise KeyError(".".join(map(str, path)))
            entity = parts[n - 1]
        return entity


def parse_fields(header: bytes) -> list[tuple[str, bytes]]:
    fields = []
    for line in raw_field_lines(header):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        fields.append((name.strip().decode("latin-1"), _FOLD.sub(b"", value).strip()))
    return fields


def raw_field_lines(header: bytes) -> list[bytes]:
    """Each header field with its continuation lines, exactly as stored (line ends included)."""
    lines = header.splitlines(keepends=True)
    out: list[bytes] = []
    for line in lines:
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += line
        else:
            out.append(line)
    return out


def split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts of a multipart body (RFC 2046 5.1.1): the CRLF before a delimiter belongs to it."""
    pattern = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    parts: list[bytes] = []
    start = None
    for m in pattern.finditer(body):
        if start is not None:
            parts.append(body[start : m.start()])
        if m.group(1):
            return parts
        start = m.end()
    if start is not None:
        parts.append(body[start:])  # no close delimiter: the rest is the last part
    return parts


# -- responses ---------------------------------------------------------------------------------

_SAFE_QUOTED = re.compile(rb'^[\x20-\x7e]*$')


def nstring(value) -> bytes:
    """An IMAP string: quoted when plain printable ASCII, a literal otherwise; NIL for None.
    NUL is dropped: neither form may carry it (RFC 3501 9, CHAR8), and a message from an
    older store may hold one in a header field."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8")
    value = value.replace(b"\x00", b"")
    if _SAFE_QUOTED.match(value) and len(value) < 1000:
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def sexp(items) -> bytes:
    """A parenthesised list; items are bytes/str (strings), None, int or nested lists/tuples."""
    out = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.append(sexp(item) if item else b"NIL")
        elif isinstance(item, int):
            out.append(b"%d" % item)
        elif isinstance(item, Atom):
            out.append(item.value)
        else:
            out.append(nstring(item))
    return b"(" + b" ".join(out) + b")"


class Atom:
    def __init__(self, value: bytes):
        self.value = value


def _addresses(value: bytes | None):
    """An address list as ENVELOPE wants it (RFC 3501 7.4.2), group syntax included: a group
    starts with (NIL NIL "name" NIL) and ends with (NIL NIL NIL NIL)."""
    if value is None:
        return None
    result = []
    for item in address_items(value.decode("latin-1")):
        if item[0] == "group":
            result.append(sexp([None, None, item[1].encode("latin-1") or None, None]))
        elif item[0] == "end":
            result.append(b"(NIL NIL NIL NIL)")
        else:
            name, addr = item[1], item[2]
            local, at, domain = addr.rpartition("@")
            if not at:
                local, domain = addr, None
            result.append(sexp([name.encode("latin-1") or None, None, local.encode("latin-1") or None,
                                domain.encode("latin-1") if domain else None]))
    # RFC 3501 9: "(" 1*address ")", no space between the addresses.
    return Atom(b"(" + b"".join(result) + b")") if result else None


def address_items(text: str) -> list[tuple]:
    """RFC 5322 3.4 address-list -> ``("group", name)``, ``("end",)`` and ``("mailbox", name,
    address)`` items.  Commas, colons and semicolons count only outside quotes, comments,
    angle brackets and domain literals."""
    items: list[tuple] = []
    current: list[str] = []
    quote = escape = False
    depth = 0  # comments nest
    bracket = ""  # "<" or "[" while inside one

    def flush():
        part = re.sub(r"<\s*@[^:>]*:", "<", "".join(current)).strip()  # an obsolete route (RFC 5322 4.4)
        current.clear()
        if part:
            items.extend(("mailbox", name, addr) for name, addr in email.utils.getaddresses([part]) if name or addr)

    for ch in text:
        if escape:
            escape = False
        elif ch == "\\" and (quote or depth):
            escape = True
        elif quote:
            quote = ch != '"'
        elif depth:
            depth += {"(": 1, ")": -1}.get(ch, 0)
        elif bracket:
            bracket = "" if ch == {"<": ">", "[": "]"}[bracket] else bracket
        elif ch == '"':
            quote = True
        elif ch == "(":
            depth = 1
        elif ch in "<[":
            bracket = ch
        elif ch == ":":
            name = email.utils.parseaddr("".join(current) + "<x@y>")[0] or "".join(current).strip()
            current.clear()
            items.append(("group", name))
            continue
        elif ch in ",;":
            flush()
            if ch == ";":
                items.append(("end",))
            continue
        current.append(ch)
    flush()
    return items


def envelope(entity: Entity) -> list:
    """RFC 3501 7.4.2 ENVELOPE."""
    from_ = _addresses(entity.get("from"))
    sender = _addresses(entity.get("sender")) or from_
    reply_to = _addresses(entity.get("reply-to")) or from_
    return [entity.get("date"), entity.get("subject"), from_, sender, reply_to, _addresses(entity.get("to")),
            _addresses(entity.get("cc")), _addresses(entity.get("bcc")), entity.get("in-reply-to"),
            entity.get("message-id")]


def _params(entity: Entity, header: str = "content-type"):
    params = entity.parsed.get_params(header=header)
    if not params:
        return None
    out = []
    for key, value in params[1:]:
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
        # upper() of a latin-1 name can leave latin-1 ("\xb5" -> "\u039c"): encode with replace
        out += [key.upper().encode("latin-1", "replace"), str(value).encode("latin-1", "replace")]
    return out or None


def _lines(body: bytes) -> int:
    """An encapsulated message's lines: a last line without its CRLF counts too (the CRLF
    before the next boundary belongs to the boundary, RFC 2046 5.1.1)."""
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def bodystructure(entity: Entity, extended: bool) -> list:
    """RFC 3501 7.4.2 BODY / BODYSTRUCTURE of one entity."""
    disposition = None
    if extended:
        disp = entity.parsed.get("content-disposition")
        if disp:
            disposition = [disp.split(";", 1)[0].strip().encode("latin-1"), _params(entity, "content-disposition")]
        language = entity.get("content-language")
        location = entity.get("content-location")
    if entity.children:
        # RFC 3501 9: body-type-mpart = 1*body SP media-subtype (no space between the bodies)
        out = [Atom(b"".join(sexp(bodystructure(c, extended)) for c in entity.children)), entity.subtype.upper()]
        if extended:
            out += [_params(entity), disposition, language, location]
        return out
    encoding = entity.get("content-transfer-encoding") or b"7BIT"
    ctype_params = _params(entity)
    if ctype_params is None and entity.maintype == "text":
        ctype_params = [b"CHARSET", b"US-ASCII"]
    out = [entity.maintype.upper(), entity.subtype.upper(), ctype_params, entity.get("content-id"),
           entity.get("content-description"), encoding.upper(), len(entity.body)]
    if entity.message is not None:
        out += [envelope(entity.message), bodystructure(entity.message, extended), _lines(entity.body)]
    elif entity.maintype == "text":
        out.append(entity.body.count(b"\n"))  # line ends, as Dovecot counts: "plain" is 0 lines
    if extended:
        out += [entity.get("content-md5"), disposition, language, location]
    return out


# -- SEARCH helpers ----------------------------------------------------------------------------


def decoded_header(entity: Entity, name: str) -> str:
    """All values of a header field, RFC 2047 words decoded, for case-insensitive matching."""
    values = [v for n, v in entity.fields if n.lower() == name.lower()]
    out = []
    for raw in values:
        text = raw.decode("utf-8", "replace")
        try:
            out.append(str(email.header.make_header(email.header.decode_header(text))))
        except Exception:
            out.append(text)
    return "\n".join(out)


def body_text(raw: bytes) -> str:
    """The message's text for BODY/TEXT search: every text part, transfer encoding undone."""
    msg = email.parser.BytesParser().parsebytes(raw)
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b""
        charset = part.get_content_charset() or "utf-8"
        try:
            out.append(payload.decode(charset, "replace"))
        except LookupError:
            out.append(payload.decode("utf-8", "replace"))
    return "\n".join(out)


_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


def parse_search_date(text: bytes) -> date:
    """RFC 3501 date: d-Mon-yyyy (ValueError if it is not one)."""
    day, mon, year = text.decode("ascii").split("-")
    return date(int(year), _MONTHS.index(mon.lower()) + 1, int(day))


def parse_date_time(text: bytes) -> int:
    """RFC 3501 date-time ("dd-Mon-yyyy hh:mm:ss +zzzz") -> epoch seconds; ValueError if bad."""
    m = re.fullmatch(rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", text)
    if not m:
        raise ValueError(text)
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    dt = datetime(int(year), _MONTHS.index(mon.decode().lower()) + 1, int(day), int(hh), int(mm), int(ss),
                  tzinfo=timezone.utc)
    offset = (int(zh) * 60 + int(zm)) * 60 * (1 if sign == b"+" else -1)
    return int(dt.timestamp()) - offset


def format_date_time(epoch: int) -> bytes:
    dt = datetime.fromtimestamp(epoch, timezone.utc)
    return f"{dt.day:02d}-{_MONTHS[dt.month - 1].title()}-{dt.year:04d} {dt:%H:%M:%S} +0000".encode()


def sent_date(entity: Entity) -> date | None:
    value = entity.get("date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value.decode("latin-1")).date()
    except (TypeError, ValueError, IndexError):
        return None
