"""Envelope address and parameter grammar of RFC 5321 section 4.1.2, with RFC 6531 UTF-8.

Twisted's ``smtp.Address`` accepts only ASCII atoms, so SMTPUTF8 local parts could not pass;
this parser follows the ABNF directly and raises :class:`MailError` with the reply the
session should give.
"""

from __future__ import annotations

import re

from mailstack.errors import MailError
from mailstack.mail import codes

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010FFFF]"
_DOT_STRING = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$")
_QUOTED = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010FFFF]|\\[\x20-\x7e])*"$')
_LABEL = r"(?:[A-Za-z0-9\u0080-\U0010FFFF](?:[A-Za-z0-9\-\u0080-\U0010FFFF]{0,61}[A-Za-z0-9\u0080-\U0010FFFF])?)"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_LITERAL = re.compile(r"^\[(?:IPv6:[0-9A-Fa-f:.]+|[0-9.]+)\]$")
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
#: SRS addresses (mailstack.srs) hold a whole address in their local part, so they often pass
#: 64 octets; RFC 5321 4.5.3.1 lets a server accept longer objects, and bounces to the ones we
#: made must come back in.
_SRS_TAG = re.compile(r"^SRS[01][=+-]", re.IGNORECASE)
SRS_LOCAL_MAX = 255

def _bad(text: str) -> MailError:
    return MailError(codes.SYNTAX_ERROR, codes.E_ADDRESS_SYNTAX, text)


def _syntax(text: str) -> MailError:
    return MailError(codes.SYNTAX_ERROR, codes.E_SYNTAX, text)


def non_ascii() -> MailError:
    """For a non-ASCII address in a transaction that did not ask for SMTPUTF8."""
    return MailError(codes.MAILBOX_NAME_INVALID, codes.E_NON_ASCII_ADDRESS,
                     "Non-ASCII address needs the SMTPUTF8 parameter (RFC 6531)")


def parse_address(text: str) -> str:
    """Validate ``local@domain`` (RFC 5321 Mailbox); return it with the domain lower-cased."""
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain:
        raise _bad("Bad address syntax: expected local-part@domain")
    if len(local.encode()) > (SRS_LOCAL_MAX if _SRS_TAG.match(local) else 64):
        raise _bad("Local part longer than 64 octets (RFC 5321 4.5.3.1.1)")
    if len(domain.encode()) > 255:
        raise _bad("Domain longer than 255 octets (RFC 5321 4.5.3.1.2)")
    if not (_DOT_STRING.fullmatch(local) or _QUOTED.fullmatch(local)):
        raise _bad("Bad local part syntax")
    if not (_DOMAIN.fullmatch(domain) or _LITERAL.fullmatch(domain)):
        raise _bad("Bad domain syntax")
    return f"{local}@{domain.lower()}"


def parse_path(argument: str, keyword: str, null_ok: bool) -> tuple[str, list[str]]:
    """Parse ``FROM:<path> params`` / ``TO:<path> params``; return (address, [params]).

    The null reverse-path ``<>`` gives ``""``.  A source route (``<@a,@b:user@d>``) is
    accepted and ignored, as RFC 5321 4.1.1.3 requires.  A path without angle brackets is
    accepted too, since many old clients send one.
    """
    head, sep, rest = argument.partition(":")
    if not sep or head.strip().upper() != keyword:
        raise _syntax(f"Syntax: {'MAIL FROM' if keyword == 'FROM' else 'RCPT TO'}:<address>")
    rest = rest.lstrip(" ")
    if rest.startswith("<"):
        end = _closing_bracket(rest)
        path, params = rest[1:end], rest[end + 1 :]
        if params and not params.startswith(" "):
            raise _syntax("Syntax error after the address")
    else:
        path, _, params = rest.partition(" ")
    if path.startswith("@"):
        route, colon, path = path.partition(":")
        if not colon:
            raise _bad("Bad source route")
    if not path:
        if null_ok:
            return "", params.split()
        raise _bad("The null address is not allowed here")
    return parse_address(path), params.split()


def _closing_bracket(text: str) -> int:
    in_quote = escaped = False
    for i, ch in enumerate(text[1:], 1):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            in_quote = not in_quote
        elif ch == ">" and not in_quote:
            return i
    raise _syntax("Missing '>' after the address")


def parse_params(params: list[str]) -> dict[str, str | None]:
    """``SIZE=123 BODY=8BITMIME SMTPUTF8`` -> {"SIZE": "123", "BODY": "8BITMIME", "SMTPUTF8": None}."""
    out: dict[str, str | None] = {}
    for p in params:
        key, eq, value = p.partition("=")
        if not _KEYWORD.fullmatch(key) or (eq and not value):
            raise _syntax(f"Bad parameter syntax: {p[:40]}")
        key = key.upper()
        if key in out:
            raise _syntax(f"Parameter {key} given twice")
        out[key] = value if eq else None
    return out


def valid_hello(text: str) -> bool:
    """An EHLO/HELO argument: a domain or an address literal (RFC 5321 4.1.1.1)."""
    return bool(text) and len(text) <= 255 and bool(_DOMAIN.fullmatch(text) or _LITERAL.fullmatch(text))


def is_ascii(text: str) -> bool:
    return all(ord(c) < 128 for c in text)
