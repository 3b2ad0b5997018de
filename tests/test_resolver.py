"""The DNS answer cache (issue 16 item 1): answers, and negative answers, for their TTL."""

from __future__ import annotations

import dns.resolver
import pytest

from support.dns import serve_zones
from mailstack.resolver import make_resolver
from mailstack.smtp.authentication import txt_record


@pytest.fixture
def dns_port(tmp_path):
    yield from serve_zones(tmp_path, {"sender.test": ["TXT('sender.test', b'v=spf1 -all', ttl=300)"]})


def test_answers_and_negative_answers_are_cached_for_their_ttl(dns_port, tmp_path):
    # RFC 2308 5: NXDOMAIN and NODATA are cached for the SOA minimum (60 s in the test zone).
    resolver = make_resolver(["127.0.0.1"], dns_port, 5.0, 100)
    assert txt_record(resolver, "sender.test") == [b"v=spf1 -all"]
    assert txt_record(resolver, "_dmarc.sender.test") == []  # NXDOMAIN
    assert list(resolver.resolve("sender.test", "MX", raise_on_no_answer=False)) == []  # NODATA
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = 9  # the discard port: nothing answers there any more
    resolver.timeout = resolver.lifetime = 0.5
    assert txt_record(resolver, "sender.test") == [b"v=spf1 -all"]  # all three from the cache
    assert txt_record(resolver, "_dmarc.sender.test") == []
    assert list(resolver.resolve("sender.test", "MX", raise_on_no_answer=False)) == []
    with pytest.raises(dns.exception.DNSException):  # a name never asked is not
        resolver.resolve("other.sender.test", "TXT")


def test_cache_size_zero_asks_every_time(dns_port):
    resolver = make_resolver(["127.0.0.1"], dns_port, 5.0, 0)
    assert resolver.cache is None
    assert txt_record(resolver, "sender.test") == [b"v=spf1 -all"]


def test_the_answer_cache_keeps_answers_for_their_ttl_and_stays_bounded(monkeypatch):
    import time as time_mod

    from mailstack.resolver import AnswerCache

    class Answer:
        def __init__(self, expiration):
            self.expiration = expiration

    now = [1000.0]
    monkeypatch.setattr(time_mod, "time", lambda: now[0])
    cache = AnswerCache(2)
    cache.put("a", Answer(1010))
    cache.put("b", Answer(1005))
    assert cache.get("a").expiration == 1010 and cache.hits() == 1
    now[0] = 1006
    assert cache.get("b") is None and "b" not in cache.data  # expired: gone
    cache.put("c", Answer(2000))
    cache.put("d", Answer(2000))  # full: the oldest ("a") goes
    assert sorted(cache.data) == ["c", "d"]
    cache.flush("c")
    assert sorted(cache.data) == ["d"]
    cache.flush()
    assert cache.data == {}


def test_the_front_lookup_ends_with_the_ttl_too(dns_port):
    import time

    resolver = make_resolver(["127.0.0.1"], dns_port, 5.0, 100)
    assert txt_record(resolver, "sender.test") == [b"v=spf1 -all"]
    assert ("sender.test", "TXT", dns.rdataclass.IN, False, True) in resolver.front
    resolver.port = 9  # nothing answers any more
    resolver.timeout = resolver.lifetime = 0.5
    assert txt_record(resolver, "sender.test") == [b"v=spf1 -all"]  # from the front, within the TTL
    answer = resolver.front[("sender.test", "TXT", dns.rdataclass.IN, False, True)]
    answer.expiration = time.time() - 1  # its TTL is over (the cache behind holds the same answer)
    with pytest.raises(dns.exception.DNSException):  # asked again, and nobody answers
        txt_record(resolver, "sender.test")


def test_from_cache_only_answers_from_the_cache_and_says_when_it_could_not(dns_port):
    from mailstack.resolver import from_cache_only

    resolver = make_resolver(["127.0.0.1"], dns_port, 5.0, 100)

    def lookups(*names):
        return [txt_record(resolver, name) for name in names]

    assert from_cache_only(lookups, "sender.test") == (False, None)  # not asked yet: the network
    assert lookups("sender.test", "_dmarc.sender.test") == [[b"v=spf1 -all"], []]  # now cached, NXDOMAIN too
    assert from_cache_only(lookups, "sender.test", "_dmarc.sender.test") == (True, [[b"v=spf1 -all"], []])

    def swallowing():  # a library that makes its own result of a DNS failure
        try:
            txt_record(resolver, "other.sender.test")
        except Exception:
            return "temperror"

    assert from_cache_only(swallowing) == (False, None)
    assert swallowing() is None  # outside, the look-up goes to the network (NXDOMAIN: [] and no error)
    assert from_cache_only(swallowing) == (True, None)  # and is cached now
    with pytest.raises(ZeroDivisionError):  # an error of fn's own is fn's
        from_cache_only(lambda: 1 / 0)
    assert txt_record(resolver, "sender.test") == [b"v=spf1 -all"]  # the mode ended with the call


def test_from_cache_only_without_a_cache_never_answers(dns_port):
    from mailstack.resolver import from_cache_only

    resolver = make_resolver(["127.0.0.1"], dns_port, 5.0, 0)
    assert txt_record(resolver, "sender.test") == [b"v=spf1 -all"]
    assert from_cache_only(txt_record, resolver, "sender.test") == (False, None)
