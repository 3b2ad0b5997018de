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

:func:`from_cache_only` runs a function whose look-ups may use the cache and nothing
else, and says whether one of them needed the network: the MX checks a small message on the
reactor that way, and in a thread only when an answer is not in the cache.
"""

from __future__ import annotations

import threading
import time

import dns.resolver

#: Per thread: are look-ups limited to the cache now, and did one need more?
_mode = threading.local()


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


class Resolver(dns.resolver.Resolver):
    """dnspython's resolver with a look-up in front of its cache: a cached answer is found
    by the name as the caller wrote it, without building a ``dns.name.Name`` and the query
    plan first (70 us of CPU per look-up, three look-ups for every message the MX checks).
    Only plain look-ups that found records are kept there, each until its TTL ends, as in
    the cache behind it; anything else takes dnspython's path."""

    def __init__(self, *args, front_size: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.front: dict = {}
        self.front_size = front_size

    def resolve(self, qname, rdtype=dns.rdatatype.A, rdclass=dns.rdataclass.IN, tcp=False, source=None,
                raise_on_no_answer=True, source_port=0, lifetime=None, search=None):
        key = None
        if self.front_size and isinstance(qname, str) and not tcp and source is None and not source_port:
            key = (qname, rdtype, rdclass, search, raise_on_no_answer)
            answer = self.front.get(key)
            if answer is not None and answer.expiration > time.time():
                expiries = getattr(_mode, "expiries", None)
                if expiries is not None:
                    expiries.append(answer.expiration)
                return answer
        expiries = getattr(_mode, "expiries", None)
        if expiries is not None:
            slot = len(expiries)
            expiries.append(0.0)  # until this look-up gives an answer to time: not to be kept
        if getattr(_mode, "cache_only", False):
            try:  # a lifetime of 0 ends the look-up before its first query: the cache answers, or nothing
                answer = super().resolve(qname, rdtype, rdclass, tcp, source, raise_on_no_answer, source_port, 0,
                                         search)
            except dns.resolver.LifetimeTimeout:
                _mode.missed = True
                raise
        else:
            answer = super().resolve(qname, rdtype, rdclass, tcp, source, raise_on_no_answer, source_port,
                                     lifetime, search)
        if expiries is not None and answer.rrset is not None:
            expiries[slot] = answer.expiration
        if key is not None and answer.rrset is not None:
            if len(self.front) >= self.front_size:
                self.front.clear()  # the cache behind keeps the rest
            self.front[key] = answer
        return answer


def from_cache_only(fn, *args, **kwargs) -> tuple[bool, object]:
    """``fn(*args, **kwargs)`` with this thread's look-ups (through :class:`Resolver`) answered
    from the cache alone, positive and negative answers alike.  (True, its result) when every
    look-up was answered there; (False, None) when one was not, whatever ``fn`` made of the
    failure (libraries turn a DNS error into a result of their own), so that the caller runs
    it again where it may wait for the network."""
    _mode.cache_only, _mode.missed = True, False
    try:
        result = fn(*args, **kwargs)
    except Exception:
        if _mode.missed:
            return False, None
        raise
    finally:
        _mode.cache_only = False
    return (False, None) if _mode.missed else (True, result)


def with_expiry(fn, *args, **kwargs) -> tuple[object, float]:
    """``fn(*args, **kwargs)`` and the time until which what it computed from DNS holds: the
    earliest end of the TTLs of the answers its look-ups (through :class:`Resolver`) got; 0
    when one got no answer with a TTL (a negative answer or an error: not to be kept)."""
    outer = getattr(_mode, "expiries", None)
    _mode.expiries = []
    try:
        result = fn(*args, **kwargs)
        expiries = _mode.expiries
    finally:
        _mode.expiries = outer
    if outer is not None:
        outer.extend(expiries)
    return result, min(expiries, default=float("inf"))


def make_resolver(nameservers: list[str], port: int, timeout: float, cache_size: int) -> dns.resolver.Resolver:
    """``nameservers`` empty: the system's (/etc/resolv.conf); ``cache_size`` 0: no cache."""
    if nameservers:
        resolver = Resolver(configure=False, front_size=cache_size)
        resolver.nameservers = list(nameservers)
    else:
        resolver = Resolver(front_size=cache_size)
    resolver.port = port
    resolver.timeout = resolver.lifetime = timeout
    if cache_size > 0:
        resolver.cache = AnswerCache(cache_size)
    return resolver
