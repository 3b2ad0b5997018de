"""The one way the server builds a DNS resolver (dnspython): name servers, port, timeout, and
an answer cache.

The cache keeps each answer for its TTL, and the negative ones too (NXDOMAIN and "no such
record", for the SOA minimum as RFC 2308 5 says; dnspython does both): an MX checks SPF,
DKIM and DMARC for every message, mostly of the same few domains, and the relay looks up the
same MX hosts again and again.  It is thread-safe (lookups run in the reactor's pool) and
bounded (least recently used entries go first).
"""

from __future__ import annotations

import dns.resolver


def make_resolver(nameservers: list[str], port: int, timeout: float, cache_size: int) -> dns.resolver.Resolver:
    """``nameservers`` empty: the system's (/etc/resolv.conf); ``cache_size`` 0: no cache."""
    if nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = list(nameservers)
    else:
        resolver = dns.resolver.Resolver()
    resolver.port = port
    resolver.timeout = resolver.lifetime = timeout
    if cache_size > 0:
        resolver.cache = dns.resolver.LRUCache(cache_size)
    return resolver
