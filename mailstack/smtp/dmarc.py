"""DMARC evaluation of arriving mail (RFC 7489 sections 3, 6.3, 6.6).

authheaders did this before, and on the MX path it was the largest part of the checks after
DKIM (0.1 ms a message: it parses the whole header again and every From address with the
email package's parser).  It also read the From domain with a pattern without "-", so mail
from ``user@my-company.example`` was looked up at ``_dmarc.my``, and it took the
organisational domain of a name under a suffix the list does not know (``mail.example.test``)
to be the top-level label alone.  This module works on the From fields the caller found and
on verdicts already made:

* the Author Domain: the domain of each address of the From field(s) (6.6.1); several
  domains are each evaluated and the strictest failing policy applies;
* policy discovery (6.6.3): ``_dmarc.<author domain>``, then ``_dmarc.<organisational
  domain>``; TXT records that do not begin with ``v=DMARC1`` are discarded, and more than one
  left means no DMARC processing;
* the organisational domain (3.2): the public suffix (the list's rules, its ``*`` default
  for a suffix it does not know) plus one label;
* identifier alignment (3.1): a passing SPF identity or DKIM ``d=`` equal to the author
  domain (``s``) or with the same organisational domain (``r``, the default);
* the policy: ``p``, or ``sp`` when the record is the organisational domain's; ``pct``
  below 100 applies the next milder policy to the messages outside the sample (6.6.4).

Results (RFC 8601 2.7.1): ``pass``, ``fail``, ``none`` (no record, or no DMARC processing),
``permerror`` (no usable From domain, a record that does not parse), ``temperror`` (the DNS
failed for now: the caller answers 451).
"""

from __future__ import annotations

import email.utils
import functools
import os
import random
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: Where the public suffix list may be read from: Debian's ``publicsuffix`` package (kept
#: current by apt), the copy authheaders ships, publicsuffix2's; the newest of those present.
PUBLIC_SUFFIX_LISTS = ("/usr/share/publicsuffix/public_suffix_list.dat",)

POLICIES = ("none", "quarantine", "reject")
#: RFC 7489 6.6.4: outside the pct sample, the next policy down.
_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


class RecordSyntaxError(Exception):
    """A DMARC record whose tag list does not parse (``permerror``)."""


@dataclass
class Outcome:
    result: str  # pass | fail | none | permerror | temperror
    header_from: str = ""  # the author domain evaluated ("none" when there is none)
    policy: str = ""  # the policy that applies to this message (after pct), "" when no record
    comment: str = ""  # for the header: which record was used, or why there is no result


# -- the public suffix list ------------------------------------------------------------------------

_suffix_list = None
_suffix_list_lock = threading.Lock()


def _list_paths() -> list[str]:
    paths = list(PUBLIC_SUFFIX_LISTS)
    for module, name in (("authheaders", "public_suffix_list.txt"), ("publicsuffix2", "public_suffix_list.dat")):
        try:
            spec = __import__(module).__file__
        except ImportError:
            continue
        paths.append(os.path.join(os.path.dirname(spec), name))
    return paths


def suffix_list():
    """The parsed public suffix list, parsed once per process (about 40 ms)."""
    global _suffix_list
    if _suffix_list is None:
        with _suffix_list_lock:  # one parse, not one a session when a burst of mail comes at start-up
            if _suffix_list is None:
                from publicsuffix2 import PublicSuffixList

                present = [p for p in _list_paths() if os.path.exists(p)]
                if present:  # the newest copy: Debian's is kept current, but may be older on an old release
                    with open(max(present, key=os.path.getmtime), encoding="utf-8") as f:
                        _suffix_list = PublicSuffixList(f)
                else:
                    _suffix_list = PublicSuffixList()
    return _suffix_list


@functools.lru_cache(maxsize=10_000)
def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix of ``domain`` (lower-case, no final dot) and one label
    more; the domain itself when it is a public suffix.  A suffix the list does not know is
    its last label (the list's default rule ``*``)."""
    domain = domain.lower().rstrip(".")
    labels = domain.split(".")
    suffix = suffix_list().get_tld(domain, wildcard=True, strict=False) or labels[-1]
    keep = suffix.count(".") + 2
    return ".".join(labels[-keep:]) if len(labels) >= keep else domain


# -- the From domain --------------------------------------------------------------------------------

# The common shapes, read without the email package: "Name <a@b>", "\"Quoted\" <a@b>", "a@b".
_SIMPLE_ANGLE = re.compile(r'\s*(?:"(?:[^"\\\r\n]|\\[^\r\n])*"|[^"<>()\[\],;:@\\]*)\s*<([^<>()\[\]\s,;:"\\@]+)@([A-Za-z0-9.-]+)>\s*\Z')
_SIMPLE_BARE = re.compile(r'\s*([^<>()\[\]\s,;:"\\@]+)@([A-Za-z0-9.-]+)\s*\Z')


def from_domains(values: Iterable[str]) -> list[str] | None:
    """The distinct domains of the addresses in the From field values (unfolded text), in
    order, lower-case, without a final dot; an address without a usable domain (no "@", a
    domain literal, a name DNS cannot hold) is passed over, so that a junk address beside a
    real one cannot switch DMARC off; None when no address has one.  Non-ASCII domains come
    back as A-labels (IDNA 2008, UTS 46: ``faß.de`` is not ``fass.de``)."""
    domains: list[str] = []
    for value in values:
        m = _SIMPLE_ANGLE.match(value) or _SIMPLE_BARE.match(value)
        addresses = [m.group(1) + "@" + m.group(2)] if m else [a for _, a in email.utils.getaddresses([value]) if a]
        for address in addresses:
            domain = _usable_domain(address)
            if domain is not None and domain not in domains:
                domains.append(domain)
    return domains or None


_DOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\Z")


def _usable_domain(address: str) -> str | None:
    _, at, domain = address.rpartition("@")
    domain = domain.strip().rstrip(".")
    if not at or not domain or domain.startswith("["):
        return None
    if domain.isascii():
        domain = domain.lower()
    else:
        try:
            import idna

            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError
            return None
    return domain if _DOMAIN.match(domain) else None


# -- records ---------------------------------------------------------------------------------------

_VERSION = re.compile(r"[vV][ \t]*=[ \t]*DMARC1[ \t]*(;|\Z)")


@dataclass
class Record:
    policy: str  # p=
    subdomain_policy: str  # sp= (p= when absent)
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


def parse_record(text: str) -> Record | None:
    """A DMARC record (RFC 7489 6.3); None when it asks for no DMARC processing (no valid
    ``p=`` and no ``rua=``, 6.6.3 step 6).  Unknown tags are ignored; a tag without "=" is a
    RecordSyntaxError."""
    tags: dict[str, str] = {}
    for spec in text.split(";"):
        name, equals, value = spec.partition("=")
        name = name.strip(" \t").lower()
        if not equals:
            if name:
                raise RecordSyntaxError(f"a tag without a value: {spec.strip()[:40]!r}")
            continue
        tags.setdefault(name, value.strip(" \t"))
    policy = tags.get("p", "").lower()
    subdomain = tags.get("sp", "").lower()
    if policy not in POLICIES or (subdomain and subdomain not in POLICIES):
        if not tags.get("rua"):
            return None
        policy = policy if policy in POLICIES else "none"  # 6.6.3 step 6: as if p=none
        subdomain = subdomain if subdomain in POLICIES else ""
    record = Record(policy, subdomain or policy)
    if tags.get("adkim", "").lower() == "s":
        record.adkim = "s"
    if tags.get("aspf", "").lower() == "s":
        record.aspf = "s"
    pct = tags.get("pct", "")
    if pct.isdigit() and int(pct) <= 100:
        record.pct = int(pct)
    return record


def dmarc_records(txt_records: list[bytes]) -> list[str]:
    """The TXT records (strings joined) that are DMARC records (6.6.3 step 3)."""
    texts = [r.decode("utf-8", "replace") for r in txt_records]
    return [t for t in texts if _VERSION.match(t)]


# -- evaluation -------------------------------------------------------------------------------------


def _aligned(mode: str, author: str, identifier: str) -> bool:
    identifier = identifier.lower().rstrip(".")
    if mode == "s":
        return identifier == author
    return organizational_domain(identifier) == organizational_domain(author)


def evaluate_domain(author: str, spf_domain: str | None, dkim_domains: list[str],
                    txt_lookup: Callable[[str], list[bytes]], sample: Callable[[], float] = random.random) -> Outcome:
    """The DMARC outcome for one author domain.  ``spf_domain``: the SPF identity's domain when
    SPF passed, else None; ``dkim_domains``: the ``d=`` of every signature that passed;
    ``txt_lookup(name)``: the TXT records at a name ([] for none; raises on a DNS failure)."""
    comment = "Used From Domain Record"
    found = dmarc_records(txt_lookup(f"_dmarc.{author}"))
    organisation = organizational_domain(author)
    at_organisation = False
    if not found and organisation != author:
        found = dmarc_records(txt_lookup(f"_dmarc.{organisation}"))
        comment, at_organisation = "Used Org Domain Record", True
    if len(found) != 1:
        return Outcome("none", author, "", "" if not found else "more than one DMARC record")
    try:
        record = parse_record(found[0])
    except RecordSyntaxError as e:
        return Outcome("permerror", author, "none", str(e))
    if record is None:
        return Outcome("none", author, "", "the record has no valid policy")
    policy = record.subdomain_policy if at_organisation else record.policy
    passed = (spf_domain is not None and _aligned(record.aspf, author, spf_domain)) or any(
        _aligned(record.adkim, author, d) for d in dkim_domains)
    if passed:
        return Outcome("pass", author, policy, comment)
    if record.pct < 100 and sample() * 100 >= record.pct:
        policy = _MILDER[policy]
        comment += f", outside pct={record.pct}"
    return Outcome("fail", author, policy, comment)


_STRICTNESS = {"reject": 2, "quarantine": 1, "none": 0, "": 0}


def evaluate(from_values: list[str], spf_domain: str | None, dkim_domains: list[str],
             txt_lookup: Callable[[str], list[bytes]], sample: Callable[[], float] = random.random) -> Outcome:
    """The DMARC outcome of a message from its From field values (RFC 7489 6.6.1): each
    author domain is evaluated; a failure with the strictest policy wins, then a pass, then
    none.  The lookup's exception on a DNS failure propagates (the caller's temperror)."""
    if not from_values:
        return Outcome("permerror", "none", "none", "no From field")
    domains = from_domains(from_values)
    if domains is None:
        return Outcome("permerror", "none", "none", "no usable domain in the From field")
    outcomes = [evaluate_domain(d, spf_domain, dkim_domains, txt_lookup, sample) for d in domains]
    failed = [o for o in outcomes if o.result in ("fail", "permerror")]
    if failed:
        return max(failed, key=lambda o: (o.result == "fail", _STRICTNESS[o.policy]))
    passed = [o for o in outcomes if o.result == "pass"]
    return passed[0] if passed else outcomes[0]


_FROM_FIELD = re.compile(rb"^From[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)


def from_field_values(head: bytes) -> list[str]:
    """The unfolded values of every From field of a header block."""
    return [re.sub(r"\r?\n(?=[ \t])", "", m.group(1).decode("utf-8", "replace")).strip()
            for m in _FROM_FIELD.finditer(head)]
