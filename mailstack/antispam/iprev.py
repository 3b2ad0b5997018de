"""Reverse DNS of the client, the "iprev" method of RFC 8601 section 3 (recorded as
``iprev=<result> policy.iprev=<address>``, section 2.7.3).

The address's PTR names are looked up; each name's A (or AAAA) records are looked up (all at once);
the first name whose records hold the address passes.  No name leading back: ``fail``; no
PTR at all: ``permerror``; a lookup that failed for now and no name passed: ``temperror``
(the results of RFC 8601 2.7.3).
At most :data:`MAX_NAMES` names are followed, so a hostile PTR set cannot make us ask
hundreds of questions.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.rdatatype
from twisted.internet import defer

from mailstack.antispam.dnslists import IPAddress, lookup

MAX_NAMES = 10


@dataclass
class Iprev:
    result: str  # "pass" | "fail" | "permerror" | "temperror"
    ip: str
    name: str = ""  # the name that passed
    reason: str = ""

    def auth_result(self):
        """The Authentication-Results entry (authres), the name that passed as its comment."""
        from authres import IPRevAuthenticationResult

        return IPRevAuthenticationResult(result=self.result, policy_iprev=self.ip,
                                         policy_iprev_comment=self.name or None)


@defer.inlineCallbacks
def check(resolver, ip: IPAddress):
    """Fires with an :class:`Iprev`; never fails.  The names' lookups run at once, so the
    whole check takes at most two lookups' time."""
    try:
        names = yield lookup(resolver, ip.reverse_pointer, dns.rdatatype.PTR)
    except Exception as e:
        return Iprev("temperror", str(ip), reason=f"PTR lookup failed: {e}")
    if not names:
        return Iprev("permerror", str(ip), reason="no PTR record")
    rdtype = dns.rdatatype.A if ip.version == 4 else dns.rdatatype.AAAA
    targets = [ptr.target.to_text(omit_final_dot=True) for ptr in names[:MAX_NAMES]]
    answers = yield defer.DeferredList([lookup(resolver, name, rdtype) for name in targets], consumeErrors=True)
    temporary = ""
    for name, (ok, records) in zip(targets, answers):
        if not ok:
            temporary = f"lookup of {name} failed: {records.value}"
        elif any(_same(r.address, ip) for r in records):
            return Iprev("pass", str(ip), name)
    if temporary:
        return Iprev("temperror", str(ip), reason=temporary)
    return Iprev("fail", str(ip), reason=f"no PTR name resolves back to the address ({', '.join(targets)})")


def _same(address: str, ip: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(address) == ip
    except ValueError:
        return False
