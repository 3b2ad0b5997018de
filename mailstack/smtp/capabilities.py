"""The one capability table of the SMTP server: the EHLO keywords (RFC 5321 4.1.1.1).

Each entry says where it is defined and when it is listed.  Twisted's ``ESMTP`` lists only
AUTH and STARTTLS; the session uses this table instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: The SASL mechanisms AUTH accepts, in the order EHLO lists them.
MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True)
class SessionView:
    """What decides which keywords a session lists."""

    max_size: int  # the SIZE limit
    can_starttls: bool  # TLS is configured and not yet in use
    login_allowed: bool  # AUTH would be accepted now (submission, TLS or loopback if allowed)


@dataclass(frozen=True)
class Capability:
    keyword: str  # may name a SessionView field in braces: the keyword's parameter
    rfc: str
    listed: Callable[[SessionView], bool] = lambda view: True


CAPABILITIES: tuple[Capability, ...] = (
    Capability("PIPELINING", "RFC 2920"),
    Capability("SIZE {max_size}", "RFC 1870"),
    Capability("8BITMIME", "RFC 6152"),
    Capability("SMTPUTF8", "RFC 6531"),
    Capability("ENHANCEDSTATUSCODES", "RFC 2034"),
    Capability("CHUNKING", "RFC 3030"),
    Capability("STARTTLS", "RFC 3207", lambda v: v.can_starttls),
    # RFC 4954 4 / RFC 8314: no AUTH with a clear-text password outside TLS.
    Capability("AUTH " + " ".join(MECHANISMS), "RFC 4954, RFC 4616", lambda v: v.login_allowed),
)


def ehlo_keywords(view: SessionView) -> list[str]:
    """The EHLO response lines after the greeting, for a session in ``view``."""
    return [c.keyword.format(max_size=view.max_size) for c in CAPABILITIES if c.listed(view)]
