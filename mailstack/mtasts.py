"""MTA-STS for the local domains (RFC 8461): the policy, its id, and the HTTPS listener.

Senders that support MTA-STS look up ``_mta-sts.<domain>`` (TXT ``v=STSv1; id=...``) and,
when the id is new to them, fetch ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
(section 3.3), which must come with a certificate valid for that name (the ACME one:
mailstack.acme puts ``mta-sts.<domain>`` in it).  The policy is the same for every local
domain: ``[mta_sts] mode``, ``max_age`` and the ``mx`` patterns.  Its ``id`` is a digest of
the policy text, so ``mailstack dns`` prints the same id until the policy changes, and a
changed policy gets a new id (section 3.1: senders refetch only when the id changes).

The ``https`` listener serves the policy and, for any other path, the autoconfiguration
resources of :mod:`mailstack.autoconfig` (Thunderbird tries ``https://autoconfig.<domain>``
first).  Enforcing other domains' policies when sending is not done here.
"""

from __future__ import annotations

import hashlib
import re

from twisted.web import resource, server

from mailstack.autoconfig import BUSY, ClientConfig
from mailstack.errors import ConfigError

__all__ = ["BUSY", "POLICY_PATH", "build_factory", "check_mta_sts_config", "policy_id", "policy_text"]

POLICY_PATH = "/.well-known/mta-sts.txt"
MODES = ("enforce", "testing", "none")
#: RFC 8461 section 3.2: max_age is at most 31557600 seconds (about a year).
MAX_AGE_LIMIT = 31557600
#: An ``mx`` pattern: a host name, or ``*.`` and a name (the wildcard only as the whole
#: leftmost label, section 3.2 and 4.1).
_MX = re.compile(r"^(\*\.)?(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")


def check_mta_sts_config(values: dict, hostname: str, path: str) -> dict:
    """[mta_sts]: mode, max_age, and the mx patterns (default: the server's host name)."""
    section = dict(values["mta_sts"])
    if section["mode"] not in MODES:
        raise ConfigError(path, "[mta_sts] mode", f"must be enforce, testing or none, not {section['mode']!r}")
    if not 1 <= section["max_age"] <= MAX_AGE_LIMIT:
        raise ConfigError(path, "[mta_sts] max_age", f"must be 1 to {MAX_AGE_LIMIT} seconds (RFC 8461 section 3.2)")
    mx = [m.strip().lower().rstrip(".") for m in section["mx"]]
    for pattern in mx:
        if not _MX.match(pattern):
            raise ConfigError(path, "[mta_sts] mx", f"not a host name or *.name pattern: {pattern!r}")
    section["mx"] = mx or [hostname.lower().rstrip(".")]  # as it is, even "localhost" on a dev set-up
    return section


def policy_text(cfg) -> str:
    """The policy file (RFC 8461 section 3.2: CRLF-separated key/value pairs)."""
    sts = cfg.mta_sts
    lines = ["version: STSv1", f"mode: {sts['mode']}", *(f"mx: {m}" for m in sts["mx"]), f"max_age: {sts['max_age']}"]
    return "".join(line + "\r\n" for line in lines)


def policy_id(cfg) -> str:
    """The TXT record's ``id``: 1 to 32 letters and digits (section 3.1), here the first 32 hex
    digits of the SHA-256 of the policy text, so it changes exactly when the policy does."""
    return hashlib.sha256(policy_text(cfg).encode("ascii")).hexdigest()[:32]


class HttpsRoot(resource.Resource):
    """The policy at :data:`POLICY_PATH` for ``Host: mta-sts.<local domain>``; everything else
    is autoconfiguration."""

    isLeaf = True

    def __init__(self, context):
        super().__init__()
        self.context = context
        self.autoconfig = ClientConfig(context)

    def render(self, request):
        if request.path.decode("ascii", "replace") != POLICY_PATH:
            return self.autoconfig.render(request)
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b"method not allowed\n"
        host = re.sub(r":[0-9]*$", "", (request.getHeader("host") or "").lower()).rstrip(".")
        domains = self.context.config.domains
        if not host.startswith("mta-sts.") or host[len("mta-sts."):] not in domains:
            request.setResponseCode(404)
            return b"no MTA-STS policy for this host name\n"
        # Section 3.3: the media type is text/plain; no redirects, and a 200 only.
        request.setHeader(b"content-type", b"text/plain; charset=us-ascii")
        request.setHeader(b"cache-control", b"max-age=300")
        return policy_text(self.context.config).encode("ascii")


def build_factory(context, listener):
    site = server.Site(HttpsRoot(context))
    site.noisy = False
    site.displayTracebacks = False
    return site
