"""The one capability table of the IMAP server (RFC 3501 section 6.1.1, CAPABILITY).

Each entry says where it is defined and when it is listed.  Twisted's ``IMAP4Server``
advertises IDLE and NAMESPACE whatever the session can do; the server uses this table instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class SessionView:
    """What decides which capabilities a session lists."""

    can_starttls: bool  # the imap listener, not yet under TLS, not yet logged in
    login_allowed: bool  # LOGIN and AUTHENTICATE would be accepted now (TLS, or loopback if allowed)
    authenticated: bool
    compressed: bool = False  # COMPRESS is active


@dataclass(frozen=True)
class Capability:
    name: str
    rfc: str
    listed: Callable[[SessionView], bool] = lambda view: True


CAPABILITIES: tuple[Capability, ...] = (
    Capability("IMAP4rev1", "RFC 3501"),
    Capability("IMAP4rev2", "RFC 9051 (after ENABLE IMAP4rev2, RFC 9051 6.3.1)"),
    Capability("STARTTLS", "RFC 3501 6.2.1", lambda v: v.can_starttls),
    # RFC 3501 6.2.3 / RFC 2595 3.2: no clear-text password outside TLS.
    Capability("LOGINDISABLED", "RFC 3501 6.2.3", lambda v: not v.authenticated and not v.login_allowed),
    Capability("AUTH=PLAIN", "RFC 3501 6.2.2, RFC 4616", lambda v: not v.authenticated and v.login_allowed),
    Capability("SASL-IR", "RFC 4959", lambda v: not v.authenticated),
    Capability("LITERAL+", "RFC 7888"),
    Capability("ID", "RFC 2971"),
    Capability("ENABLE", "RFC 5161"),
    Capability("IDLE", "RFC 2177"),
    Capability("NAMESPACE", "RFC 2342"),
    Capability("UIDPLUS", "RFC 4315"),
    Capability("MULTIAPPEND", "RFC 3502"),
    Capability("MOVE", "RFC 6851"),
    Capability("UNSELECT", "RFC 3691"),
    Capability("CHILDREN", "RFC 3348"),
    Capability("SPECIAL-USE", "RFC 6154"),
    Capability("LIST-EXTENDED", "RFC 5258"),
    Capability("LIST-STATUS", "RFC 5819"),
    Capability("SORT", "RFC 5256 3"),
    Capability("SORT=DISPLAY", "RFC 5957"),
    Capability("THREAD=ORDEREDSUBJECT", "RFC 5256 3"),
    Capability("THREAD=REFERENCES", "RFC 5256 3"),
    Capability("ESEARCH", "RFC 4731"),
    Capability("SEARCHRES", "RFC 5182"),
    Capability("ESORT", "RFC 5267 3"),
    Capability("CONTEXT=SEARCH", "RFC 5267 4"),
    Capability("CONTEXT=SORT", "RFC 5267 4"),
    Capability("WITHIN", "RFC 5032"),
    Capability("STATUS=SIZE", "RFC 8438"),
    Capability("SAVEDATE", "RFC 8514"),
    Capability("CONDSTORE", "RFC 7162 3.1"),
    Capability("QRESYNC", "RFC 7162 3.2"),
    Capability("UTF8=ACCEPT", "RFC 6855 3"),
    # BINARY is in IMAP4rev2's base protocol too: the FETCH items and ~{n} work whatever is listed.
    Capability("BINARY", "RFC 3516"),
    Capability("CATENATE", "RFC 4469"),  # without URLAUTH: URLs to the user's own mailboxes here
    # RFC 9208 3.1: one quota root per user; SETQUOTA refused, so no QUOTASET.
    Capability("QUOTA", "RFC 9208"),
    Capability("QUOTA=RES-STORAGE", "RFC 9208 5.1"),
    Capability("QUOTA=RES-MESSAGE", "RFC 9208 5.2"),
    Capability("COMPRESS=DEFLATE", "RFC 4978", lambda v: v.authenticated and not v.compressed),
)


def capability_names(view: SessionView) -> list[bytes]:
    return [c.name.encode("ascii") for c in CAPABILITIES if c.listed(view)]
