"""DNS block and allow lists (RFC 5782): the list specifications of ``[antispam] dnsbl`` and
``dnswl``, the reversed names, and lookups that never block the reactor.

A specification is ``zone[=codes][*weight]``: ``"zen.spamhaus.org=127.0.0.2-127.0.0.11*2"``.
``codes`` is a comma-separated list of addresses, ranges ``a-b`` and networks ``a/n``; an
answer counts only when one of its A records is among them.  Without ``codes`` any address in
127.0.0.0/8 counts except 127.255.255.0/24, which Spamhaus (and others) answer when they
refuse a query (a public resolver, over quota): counting those would block every client.
Answers outside 127.0.0.0/8 never count (a resolver that rewrites NXDOMAIN answers with its
own address must not block the world).

Lookups go through the server's cached dnspython resolver (:mod:`mailstack.resolver`, so
answers and NXDOMAINs are kept for their TTL): an answer in its cache is taken in the
reactor, anything else is asked in a small thread pool of its own, so that slow list servers
never hold the threads the store and the message checks use.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
from twisted.internet import defer, reactor, threads
from twisted.python.threadpool import ThreadPool

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_ZONE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{1,63}$")
_REFUSED = ipaddress.ip_network("127.255.255.0/24")
_LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")

#: Threads for list lookups (each waits at most [dns] timeout).
POOL_SIZE = 20
_pool: ThreadPool | None = None


@dataclass(frozen=True)
class DnsList:
    """One list of ``[antispam] dnsbl`` or ``dnswl``."""

    zone: str
    codes: tuple = ()  # ((first, last), ...) integer ranges of IPv4 addresses; () = the default
    weight: int = 1
    spec: str = ""

    def counts(self, address: str) -> bool:
        """Does the A record ``address`` mean "listed" for this list?"""
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        if not self.codes:
            return ip in _LOOPBACK_NET and ip not in _REFUSED
        return any(first <= int(ip) <= last for first, last in self.codes)


def parse_spec(spec: str) -> DnsList:
    """``zone[=codes][*weight]``; ValueError saying what is wrong."""
    text, weight = spec.strip(), 1
    if "*" in text:
        text, _, w = text.rpartition("*")
        if not re.fullmatch(r"[0-9]{1,4}", w.strip()) or int(w) < 1:
            raise ValueError(f"{spec!r}: the weight after * must be a whole number from 1 to 9999")
        weight = int(w)
    zone, has_codes, codes_text = text.partition("=")
    zone = zone.strip().rstrip(".").lower()
    if not _ZONE.match(zone):
        raise ValueError(f"{spec!r}: {zone!r} is not a DNS zone name")
    codes = []
    for item in filter(None, (i.strip() for i in codes_text.split(","))) if codes_text else ():
        try:
            if "/" in item:
                net = ipaddress.IPv4Network(item, strict=False)
                codes.append((int(net.network_address), int(net.broadcast_address)))
            else:
                first, _, last = item.partition("-")
                a, b = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address((last or first).strip())
                if int(b) < int(a):
                    raise ValueError("the range ends before it starts")
                codes.append((int(a), int(b)))
        except ValueError as e:
            raise ValueError(f"{spec!r}: bad return code {item!r} (an IPv4 address, a-b or a/n): {e}") from None
    if has_codes and not codes:
        raise ValueError(f"{spec!r}: nothing after =")
    return DnsList(zone, tuple(codes), weight, spec.strip())


def client_address(peer: str) -> IPAddress | None:
    """The client's address as a list sees it: a zone index dropped, an IPv4-mapped IPv6
    address (a tcp6 listener's IPv4 clients) as the IPv4 address it is."""
    try:
        ip = ipaddress.ip_address(str(peer).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def reversed_name(ip: IPAddress) -> str:
    """RFC 5782 2.1 (IPv4: the four octets reversed) and 2.4 (IPv6: the 32 nibbles reversed),
    the way in-addr.arpa and ip6.arpa names are made, without their suffix."""
    return ip.reverse_pointer.rsplit(".", 2)[0]


# -- lookups ---------------------------------------------------------------------------------------


def _threads() -> ThreadPool:
    global _pool
    if _pool is None:
        _pool = ThreadPool(0, POOL_SIZE, name="mailstack-dnslists")
        _pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _stop_pool)
    return _pool


def _stop_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.stop()
        _pool = None


def from_cache(resolver: dns.resolver.Resolver, qname: str, rdtype) -> list | None:
    """The records of ``qname`` if the resolver's cache knows them ([] for NXDOMAIN or no
    data), else None.  The same two keys dnspython's own resolve() looks at."""
    cache = resolver.cache
    if not cache:
        return None
    name = dns.name.from_text(qname)
    answer = cache.get((name, rdtype, dns.rdataclass.IN))
    if answer is not None:
        return [] if answer.rrset is None else list(answer.rrset)
    answer = cache.get((name, dns.rdatatype.ANY, dns.rdataclass.IN))
    if answer is not None and answer.response.rcode() == dns.rcode.NXDOMAIN:
        return []
    return None


def _resolve(resolver: dns.resolver.Resolver, qname: str, rdtype) -> list:
    try:
        return list(resolver.resolve(qname, rdtype, search=False))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []


def lookup(resolver: dns.resolver.Resolver, qname: str, rdtype) -> defer.Deferred:
    """Fires with the records ([] when there are none), or fails with a DNSException."""
    try:
        cached = from_cache(resolver, qname, rdtype)
    except dns.exception.DNSException:
        cached = None
    if cached is not None:
        return defer.succeed(cached)
    return threads.deferToThreadPool(reactor, _threads(), _resolve, resolver, qname, rdtype)


@dataclass
class ListAnswer:
    dnslist: DnsList
    listed: bool
    error: str = ""  # the list could not be asked (it is skipped)
    codes: tuple = ()  # the A records it answered


def ask(resolver: dns.resolver.Resolver, dnslist: DnsList, ip: IPAddress) -> defer.Deferred:
    """Fires with a :class:`ListAnswer`; never fails (a failure is an answer with ``error``)."""
    d = lookup(resolver, f"{reversed_name(ip)}.{dnslist.zone}", dns.rdatatype.A)

    def answered(records):
        codes = tuple(r.address for r in records)
        refused = [a for a in codes if _is_refusal(a)]
        if refused and not dnslist.codes:
            return ListAnswer(dnslist, False, f"the list refused the query (answer {refused[0]})", codes)
        return ListAnswer(dnslist, any(dnslist.counts(a) for a in codes), "", codes)

    def failed(failure):
        return ListAnswer(dnslist, False, f"{failure.value.__class__.__name__}: {failure.value}")

    return d.addCallbacks(answered, failed)


def _is_refusal(address: str) -> bool:
    try:
        return ipaddress.IPv4Address(address) in _REFUSED
    except ValueError:
        return False
