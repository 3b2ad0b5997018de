"""Where mail for a domain goes: MX lookup with dnspython (RFC 5321 section 5.1).

* MX records sorted by preference, equal preferences in random order;
* no MX record: the domain itself is the implicit MX (its A/AAAA records);
* a null MX (a single ``0 .`` record, RFC 7505) or a domain that does not exist: permanent
  failure, bounced at once;
* SERVFAIL, timeouts, unreachable name servers: temporary, retried later.

dnspython's resolver blocks, so callers run :meth:`MXRouter.route` in a worker thread; it
never runs on the reactor.  The name servers (and port) are configurable so that tests can
point the relay at a DNS server on loopback.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from mailstack.errors import MailError
from mailstack.mail import codes
from mailstack.resolver import make_resolver


@dataclass
class Hop:
    host: str  # the MX host name (for logs, TLS SNI and DSN Remote-MTA)
    addresses: list[str]  # its IP addresses, IPv6 and IPv4


class MXRouter:
    def __init__(self, nameservers: list[str] | None = None, port: int = 53, timeout: float = 10.0, cache_size: int = 0):
        self.resolver = make_resolver(nameservers or [], port, timeout, cache_size)

    def _query(self, name: str, rdtype: str):
        """Answer records, [] when the name exists without such records; MailError otherwise."""
        try:
            return list(self.resolver.resolve(name, rdtype, search=False))
        except dns.resolver.NXDOMAIN:
            raise MailError(codes.MAILBOX_UNAVAILABLE, codes.E_NO_SUCH_DOMAIN, f"domain {name} does not exist") from None
        except dns.resolver.NoAnswer:
            return []
        except dns.resolver.NoNameservers as e:
            raise MailError(codes.LOCAL_ERROR, codes.E_ROUTING_TEMPORARY, f"DNS failure looking up {name} {rdtype}: {e}") from None
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            raise MailError(codes.LOCAL_ERROR, codes.E_ROUTING_TEMPORARY, f"DNS timeout looking up {name} {rdtype}") from None
        except dns.exception.DNSException as e:
            raise MailError(codes.LOCAL_ERROR, codes.E_ROUTING_TEMPORARY, f"DNS error looking up {name} {rdtype}: {e}") from None

    def addresses(self, host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]  # an address literal
        except ValueError:
            pass
        found = []
        for rdtype in ("AAAA", "A"):
            try:
                found += [r.address for r in self._query(host, rdtype)]
            except MailError as e:
                if not e.temporary and rdtype == "A" and not found:
                    raise
        return found

    def route(self, domain: str) -> list[Hop]:
        """The hops to try for ``domain``, in order.  Blocks: run in a thread."""
        domain = domain.rstrip(".").lower()
        records = self._query(domain, "MX")
        if not records:
            addresses = self.addresses(domain)
            if not addresses:
                raise MailError(codes.MAILBOX_UNAVAILABLE, codes.E_NO_SUCH_DOMAIN,
                                f"domain {domain} has neither MX nor address records")
            return [Hop(domain, addresses)]
        if len(records) == 1 and records[0].exchange == dns.name.root:
            raise MailError(codes.DOMAIN_ACCEPTS_NO_MAIL, codes.E_NULL_MX, f"domain {domain} accepts no mail (null MX, RFC 7505)")
        by_pref: dict[int, list[str]] = {}
        for r in records:
            if r.exchange != dns.name.root:
                by_pref.setdefault(r.preference, []).append(r.exchange.to_text(omit_final_dot=True).lower())
        hops = []
        temporary: MailError | None = None
        for pref in sorted(by_pref):
            hosts = by_pref[pref]
            random.shuffle(hosts)  # RFC 5321 5.1: spread the load among equal preferences
            for host in hosts:
                try:
                    addresses = self.addresses(host)
                except MailError as e:
                    temporary = temporary or (e if e.temporary else None)
                    continue
                if addresses:
                    hops.append(Hop(host, addresses))
        if not hops:
            raise temporary or MailError(codes.LOCAL_ERROR, codes.E_UNROUTABLE_NOW, f"no MX host of {domain} has an address")
        return hops
