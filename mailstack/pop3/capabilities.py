"""The one capability table of the POP3 server (RFC 2449 section 5, CAPA).

Each entry says where it is defined and when it is listed.  Twisted's ``POP3.listCapabilities``
advertises names that no RFC defines (PIPELINE, CELERITY, AUSPEX, POTENCE); the server uses
this table instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class SessionView:
    """What decides which capabilities a session lists."""

    can_stls: bool  # the pop3 listener, not yet under TLS, still in AUTHORIZATION state
    login_allowed: bool  # USER/PASS and AUTH would be accepted now (TLS, or loopback if allowed)


@dataclass(frozen=True)
class Capability:
    line: str
    rfc: str
    listed: Callable[[SessionView], bool] = lambda view: True


CAPABILITIES: tuple[Capability, ...] = (
    Capability("TOP", "RFC 2449 6.1"),
    Capability("UIDL", "RFC 2449 6.8"),
    # RFC 2595 section 4: a server may hide the plaintext mechanisms until TLS is in place.
    Capability("USER", "RFC 2449 6.2", lambda v: v.login_allowed),
    Capability("SASL PLAIN", "RFC 2449 6.3, RFC 5034, RFC 4616", lambda v: v.login_allowed),
    Capability("STLS", "RFC 2595 4", lambda v: v.can_stls),
    Capability("RESP-CODES", "RFC 2449 6.4"),
    Capability("AUTH-RESP-CODE", "RFC 3206 6"),
    Capability("PIPELINING", "RFC 2449 6.6"),
    Capability("IMPLEMENTATION mailstack", "RFC 2449 6.9"),
)


def capability_lines(view: SessionView) -> list[bytes]:
    """The CAPA response body for a session in ``view``."""
    return [c.line.encode("ascii") for c in CAPABILITIES if c.listed(view)]
