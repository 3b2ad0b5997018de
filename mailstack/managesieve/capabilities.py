"""What a ManageSieve server announces (RFC 5804 1.7), in one table.

The same list is the greeting, the answer to CAPABILITY and what follows a successful
STARTTLS (RFC 5804 1.7, 2.2, 2.4); which entries appear depends on the session
(:class:`SessionView`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailstack.managesieve.wire import string
from mailstack.sieve.scripts import sieve_extensions

IMPLEMENTATION = "mailstack"


@dataclass(frozen=True)
class SessionView:
    can_starttls: bool
    login_allowed: bool  # a password may be sent now (TLS, or loopback where allowed)
    owner: str | None  # the logged-in user, None before AUTHENTICATE
    max_redirects: int | None = None  # [sieve] max_redirects where delivery configures one


@dataclass(frozen=True)
class Capability:
    name: str
    value: Callable[[SessionView], str | None]  # None: not announced in this session
    rfc: str


def _max_redirects(view) -> str | None:
    """The limit delivery applies: ``[sieve] max_redirects`` if configured, else the interpreter's."""
    import mailstack.sieve as sieve

    limit = view.max_redirects if view.max_redirects is not None else getattr(sieve, "MAX_REDIRECTS", None)
    return None if limit is None else str(limit)


#: In the order sent.  A value of "" is sent as a name alone (STARTTLS, UNAUTHENTICATE).
CAPABILITIES: list[Capability] = [
    Capability("IMPLEMENTATION", lambda v: IMPLEMENTATION, "RFC 5804 1.7: the server's name and version"),
    # RFC 5804 1.7: SASL lists the mechanisms usable now; an empty list before STARTTLS where
    # passwords need TLS (as the other protocols do: mailstack.sasl.login_allowed).
    Capability("SASL", lambda v: "PLAIN" if v.login_allowed else "", "RFC 5804 1.7, RFC 4616"),
    Capability("SIEVE", lambda v: " ".join(sieve_extensions()), "RFC 5804 1.7: the interpreter's extensions"),
    Capability("STARTTLS", lambda v: "" if v.can_starttls else None, "RFC 5804 1.7, 2.2"),
    Capability("MAXREDIRECTS", _max_redirects, "RFC 5804 1.7: redirects one script run may do"),
    Capability("OWNER", lambda v: v.owner, "RFC 5804 1.7: only once authenticated"),
    Capability("UNAUTHENTICATE", lambda v: "", "RFC 5804 2.14.1"),
    Capability("VERSION", lambda v: "1.0", "RFC 5804 1.7: this protocol's version"),
]


def capability_lines(view: SessionView) -> list[bytes]:
    """One line per capability: ``"NAME"`` or ``"NAME" SP string`` (RFC 5804 4, capability)."""
    lines = []
    for cap in CAPABILITIES:
        value = cap.value(view)
        if value is None:
            continue
        if value == "" and cap.name in ("STARTTLS", "UNAUTHENTICATE"):
            lines.append(string(cap.name))
        else:
            lines.append(string(cap.name) + b" " + string(value))
    return lines
