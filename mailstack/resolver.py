"""The one way the server builds a DNS resolver (dnspython): name servers, port, timeout, and
an answer cache.

The cache keeps each answer for its TTL, and the negative ones too (NXDOMAIN and "no such
record", for the SOA minimum as RFC 2308 5 says; dnspython does both): an MX checks SPF,
DKIM and DMARC for every message, mostly of the same few domains, and the relay looks up the
same MX hosts again and again.  It is thread-safe (lookups run in the reactor's pool) and
bounded (the oldest entries go first).  dnspython's LRUCache takes a lock for every look-up;
under 50 concurrent messages a third of the pool threads' samples were waiting on it (a
holder loses the GIL at its switch interval), which left fewer threads for other work,
though the MX rate did not change measurably.  :class:`AnswerCache` reads without a lock,
since one dict look-up is atomic under the GIL.
"""

from __future__ import annotations

import time

import dns.resolver


class AnswerCache(dns.resolver.CacheBase):
    """dnspython's cache interface; look-ups take no lock, changes take the cache's."""

    def __init__(self, max_size: int):
        super().__init__()
        self.data: dict = {}
        self.max_size = max(1, max_size)

    def get(self, key):
        answer = self.data.get(key)
        if answer is not None and answer.expiration > time.time():
            self.statistics.hits += 1  # counted without the lock: statistics only
            return answer
        if answer is not None:
            with self.lock:
                if self.data.get(key) is answer:
                    del self.data[key]
        self.statistics.misses += 1
        return None

    def put(self, key, value) -> None:
        with self.lock:
            self.data.pop(key, None)  # to the end: the newest
            if len(self.data) >= self.max_size:
                now = time.time()
                for old in [k for k, v in self.data.items() if v.expiration <= now]:
                    del self.data[old]
                while len(self.data) >= self.max_size:
                    del self.data[next(iter(self.data))]
            self.data[key] = value

    def flush(self, key=None) -> None:
        with self.lock:
            if key is None:
                self.data.clear()
            else:
                self.data.pop(key, None)


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
        resolver.cache = AnswerCache(cache_size)
    return resolver
