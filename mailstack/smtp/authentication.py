"""Message authentication: DKIM signing of what our users send, and SPF, DKIM and DMARC
checks of what arrives on the MX port, recorded in one Authentication-Results header.

dkimpy signs, :mod:`mailstack.smtp.dkimverify` verifies, pyspf evaluates SPF,
:mod:`mailstack.smtp.dmarc` evaluates DMARC, and :func:`results_header` writes the header
(RFC 8601) as authres would; this module decides what the results mean for delivery:

* any DNS failure (a ``temperror``) -> ``451 4.7.0``: a verdict on missing data could be
  wrong, and the sender will simply try again;
* DMARC ``fail`` with ``p=reject`` -> ``550 5.7.1`` at the end of DATA;
  with ``p=quarantine`` -> delivered to the recipient's Junk folder;
* anything else is delivered, with the results in the header for the user's client to show.

All lookups go through one dnspython resolver (``[dns]`` in the configuration), so tests can
point them at a DNS server on loopback.  Everything here blocks: callers use threads.
"""

from __future__ import annotations

import base64
import email.utils
import os
import re
import time
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.resolver
from twisted.logger import Logger

from mailstack.resolver import make_resolver, with_expiry
from mailstack.smtp import dmarc as dmarc_evaluation

log = Logger()

DKIM_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to",
                b"references", b"mime-version", b"content-type", b"content-transfer-encoding"]


class DnsTemporaryError(dns.exception.DNSException):
    """A lookup that failed for now (timeout, SERVFAIL): never read as "no record"."""


def set_default_resolver(nameservers: list[str], port: int, timeout: float, cache_size: int = 0) -> dns.resolver.Resolver:
    """pyspf and dkimpy use dnspython's default resolver: make it ours (with
    its cache, :mod:`mailstack.resolver`)."""
    resolver = make_resolver(nameservers, port, timeout, cache_size)
    dns.resolver.default_resolver = resolver
    return resolver


def txt_record(resolver: dns.resolver.Resolver, name: str) -> list[bytes]:
    """The TXT records of ``name`` ([] when there are none); DnsTemporaryError on failure."""
    try:
        answer = resolver.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel):
        return []  # a name DNS cannot hold has no record (not a failure to retry: a 451 for ever)
    except dns.exception.DNSException as e:
        raise DnsTemporaryError(f"DNS lookup of {name} TXT failed: {e}") from None
    return [b"".join(r.strings) for r in answer]


# -- DKIM signing ---------------------------------------------------------------------------------


def ed25519_selector(selector: str) -> str:
    """The Ed25519 key is published under its own selector: verifiers take the first key
    record they find at a name, so RSA and Ed25519 keys cannot share one."""
    return f"{selector}-ed25519"


def key_paths(keys_dir: str, domain: str, selector: str) -> dict[str, str]:
    base = os.path.join(keys_dir, domain.lower(), selector)
    return {"rsa": base + ".rsa.pem", "ed25519": base + ".ed25519.key"}


def generate_keys(keys_dir: str, domain: str, selector: str, ed25519: bool) -> dict[str, str]:
    """Make the domain's signing key(s); return {algorithm: TXT record value}."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519 as ed, rsa

    paths = key_paths(keys_dir, domain, selector)
    os.makedirs(os.path.dirname(paths["rsa"]), mode=0o700, exist_ok=True)
    records = {}
    if not os.path.exists(paths["rsa"]):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        _write_private(paths["rsa"], pem)
    with open(paths["rsa"], "rb") as f:
        rsa_key = serialization.load_pem_private_key(f.read(), None)
    der = rsa_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    records["rsa"] = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    if ed25519:
        if not os.path.exists(paths["ed25519"]):
            seed = ed.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
            _write_private(paths["ed25519"], base64.b64encode(seed) + b"\n")  # dkimpy's format
        with open(paths["ed25519"], "rb") as f:
            seed = base64.b64decode(f.read().strip())
        pub = ed.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        records["ed25519"] = f"v=DKIM1; k=ed25519; p={base64.b64encode(pub).decode()}"
    return records


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class DkimSigner:
    """Signs with the keys found under ``keys_dir``; domains without a key are not signed."""

    def __init__(self, keys_dir: str, selector: str, domains: list[str]):
        self.keys_dir, self.selector, self.domains = keys_dir, selector, [d.lower() for d in domains]
        convert_dkim_integers_in_c()  # signing converts the same way

    def domain_for(self, header_from: str, envelope_from: str) -> str | None:
        """The From header's domain if it is ours, else the envelope sender's."""
        for address in (header_from, envelope_from):
            domain = address.rpartition("@")[2].lower().strip(">")
            if domain in self.domains and os.path.exists(key_paths(self.keys_dir, domain, self.selector)["rsa"]):
                return domain
        return None

    def sign(self, message: bytes, domain: str) -> bytes:
        """DKIM-Signature header field(s) to put on top of ``message`` (RSA, and Ed25519 if present)."""
        import dkim

        paths = key_paths(self.keys_dir, domain, self.selector)
        out = b""
        with open(paths["rsa"], "rb") as f:
            out += dkim.sign(message, self.selector.encode(), domain.encode(), f.read(), include_headers=DKIM_HEADERS,
                             canonicalize=(b"relaxed", b"relaxed"))
        if os.path.exists(paths["ed25519"]):
            with open(paths["ed25519"], "rb") as f:
                out = dkim.sign(message, ed25519_selector(self.selector).encode(), domain.encode(), f.read().strip(),
                                include_headers=DKIM_HEADERS, canonicalize=(b"relaxed", b"relaxed"),
                                signature_algorithm=b"ed25519-sha256") + out
        return out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def header_from(head: bytes) -> str:
    """The address in the (first) From field of a header block ("" if none)."""
    values = dmarc_evaluation.from_field_values(head)
    return email.utils.parseaddr(values[0])[1] if values else ""


# -- inbound checks -----------------------------------------------------------------------------------


@dataclass
class Verdict:
    action: str  # "deliver" | "junk" | "reject" | "tempfail"
    header: bytes  # the Authentication-Results field, CRLF-terminated
    reason: str = ""


def strip_own_results(message: bytes, hostname: str) -> bytes:
    """Remove every Authentication-Results field whose authserv-id is ours (RFC 8601 5),
    however it is written: folded, after a comment, quoted, in any case."""
    end = message.find(b"\r\n\r\n")
    head, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 2 :])
    fields = re.split(rb"\r\n(?![ \t])", head)  # one item per field, continuation lines included
    kept = [f for f in fields if not _ours(f, hostname)]
    return b"\r\n".join(kept) + body


def has_own_results(header: bytes, hostname: str) -> bool:
    return any(_ours(f, hostname) for f in re.split(rb"\r\n(?![ \t])", header))


_RESULTS_FIELD = re.compile(rb"authentication-results[ \t]*:", re.I)


def _ours(field: bytes, hostname: str) -> bool:
    m = _RESULTS_FIELD.match(field)
    if not m:
        return False
    value = re.sub(rb"\r\n(?=[ \t])", b"", field[m.end() :]).decode("utf-8", "replace")
    return authserv_id(value).rstrip(".").lower() == hostname.rstrip(".").lower()


def authserv_id(value: str) -> str:
    """The authserv-id that starts an Authentication-Results value (RFC 8601 2.2: ``[CFWS]
    authserv-id``, a token or quoted-string; comments nest, RFC 5322 3.2.2)."""
    i, n = 0, len(value)
    while i < n:
        if value[i] in " \t\r\n":
            i += 1
        elif value[i] == "(":
            depth = 0
            while i < n:
                if value[i] == "\\":
                    i += 1
                elif value[i] == "(":
                    depth += 1
                elif value[i] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            i += 1
        else:
            break
    if value[i : i + 1] == '"':
        out, i = [], i + 1
        while i < n and value[i] != '"':
            if value[i] == "\\":
                i += 1
            out.append(value[i : i + 1])
            i += 1
        return "".join(out)
    m = re.match(r"[^\s;()\"]*", value[i:])
    return m.group(0)


def convert_dkim_integers_in_c() -> None:
    """dkimpy turns RSA integers into bytes and back one octet at a time in Python (its
    ``crypto.int2str`` and ``str2int``): 0.2 ms of every DKIM verification under the GIL, more
    than the modular exponentiation itself.  Both are replaced by ``int.to_bytes`` and
    ``int.from_bytes``, with the same results: a bytearray, big-endian, of ``length`` octets
    (high octets dropped past it, as dkimpy does) or of as few as hold ``n`` (at least one);
    tests/test_authentication.py compares them on edge values."""
    from dkim import crypto

    if getattr(crypto.int2str, "in_c", False):
        return

    def int2str(n, length=-1):
        assert n >= 0
        if length < 0:
            return bytearray(n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"))
        return bytearray((n & ((1 << (8 * length)) - 1)).to_bytes(length, "big"))

    def str2int(s):
        return int.from_bytes(bytes(s), "big")

    int2str.in_c = str2int.in_c = True
    crypto.int2str, crypto.str2int = int2str, str2int


_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+\Z")  # RFC 2045 token
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*@[A-Za-z0-9.-]+\Z")  # [dot-atom local-part] "@" domain-name


def _value(value: str) -> str:
    """A property or reason value as authres writes it (RFC 8601 2.2 ``pvalue``, RFC 2045
    ``value``): as it is when it is an address or a token, else a quoted-string."""
    value = _UNPRINTABLE.sub("?", value)
    if _TOKEN.match(value) or _ADDRESS.match(value):
        return value
    return '"' + re.sub(r'(["\\])', r"\\\1", value) + '"'


def result_clause(method: str, result: str, comment: str | None = None, reason: str | None = None,
                  properties=()) -> str:
    """One ``resinfo`` of an Authentication-Results field (RFC 8601 2.2), as authres's
    result objects write it: ``method=result (comment) reason=... ptype.property=value``,
    properties without a value left out.  A comment's parentheses and backslashes are
    escaped (RFC 5322 3.2.2 quoted-pair) and anything unprintable becomes "?", so a reason
    taken from a message cannot end the comment or the field."""
    parts = [method, "=", result]
    if comment:
        parts.append(" (" + re.sub(r"([()\\])", r"\\\1", _UNPRINTABLE.sub("?", comment)) + ")")
    if reason:
        parts.append(" reason=" + _value(reason))
    for name, value in properties:
        if value:
            parts.append(f" {name}={_value(value)}")
    return "".join(parts)


def results_header(hostname: str, results: list) -> bytes:
    """An Authentication-Results field (RFC 8601) of ``results`` (clauses of
    :func:`result_clause`, or authres objects), CRLF-terminated; ``none`` when empty."""
    clauses = "; ".join(str(r) for r in results) or "none"
    return f"Authentication-Results: {hostname.lower()}; {clauses}\r\n".encode()


@dataclass(frozen=True)
class SpfVerdict:
    result: str  # RFC 7208 2.6: pass, fail, softfail, neutral, none, temperror, permerror
    reason: str = ""


class InboundChecker:
    def __init__(self, hostname: str, resolver: dns.resolver.Resolver, spf: bool = True, dkim: bool = True,
                 dmarc: bool = True, enforce: bool = True):
        if dmarc:
            dmarc_evaluation.suffix_list()  # parse now, at start-up, not in the first message's check
        from mailstack.smtp.dkimverify import Verifier

        self.dkim_verifier = Verifier(self._dkim_txt, temporary=DnsTemporaryError)
        self.hostname, self.resolver = hostname, resolver
        self.do_spf, self.do_dkim, self.do_dmarc, self.enforce = spf, dkim, dmarc, enforce
        self._spf_verdicts: dict = {}
        #: Is there a DNS cache to answer from (mailstack.resolver.from_cache_only)?
        self.has_cache = getattr(resolver, "cache", None) is not None

    #: SPF verdicts kept: (client IP, MAIL FROM, HELO) -> (until, SpfVerdict).
    SPF_KEPT = 4096
    SPF_MAX_AGE = 3600.0

    def _spf(self, ip: str, mail_from: str, helo: str) -> SpfVerdict:
        """pyspf's verdict, remembered while every DNS answer it used is (the earliest TTL, at
        most an hour; nothing kept after a negative answer or an error): a sender's next
        messages from the same client need no evaluation."""
        import spf

        key = (ip, mail_from, helo)
        now = time.time()
        hit = self._spf_verdicts.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        (res, reason), until = with_expiry(spf.check2, ip, mail_from, helo)
        verdict = SpfVerdict(res or "none", reason if res else "")
        if until > now and res not in ("temperror", None):
            if len(self._spf_verdicts) >= self.SPF_KEPT:
                self._spf_verdicts.clear()
            self._spf_verdicts[key] = (min(until, now + self.SPF_MAX_AGE), verdict)
        return verdict

    def _dkim_txt(self, name: str) -> bytes | None:
        records = txt_record(self.resolver, name.rstrip("."))
        return records[0] if records else None

    def _txt_records(self, name: str) -> list[bytes]:
        return txt_record(self.resolver, name)

    def check(self, message: bytes, ip: str, mail_from: str, helo: str, extra=()) -> Verdict:
        """``extra``: results found before the message (iprev, mailstack.antispam), put first."""
        results, temporary = list(extra), []
        spf_domain, dkim_domains = None, []
        if self.do_spf:
            identity = mail_from or f"postmaster@{helo}"
            spf_verdict = self._spf(ip, identity, helo)
            domain = identity.rpartition("@")[2]
            # smtp.mailfrom: the domain alone, as authheaders wrote it before (RFC 7601 2.7.2)
            results.append(result_clause("spf", spf_verdict.result, reason=spf_verdict.reason,
                                         properties=(("smtp.helo", helo), ("smtp.mailfrom", domain))))
            if spf_verdict.result == "temperror":
                temporary.append("SPF")
            elif spf_verdict.result == "pass":
                spf_domain = domain
        end = message.find(b"\r\n\r\n")
        head = message if end < 0 else message[: end + 4]
        if self.do_dkim:
            signatures = self.dkim_verifier.verify(message)
            results.extend([result_clause(
                "dkim", s.result, comment=None if s.result == "pass" else s.reason,
                properties=(("header.d", s.domain), ("header.i", s.identity), ("header.s", s.selector)))
                for s in signatures] or ["dkim=none"])
            if signatures and not any(s.result == "pass" for s in signatures) and any(
                    s.result == "temperror" for s in signatures):
                temporary.append("DKIM")
            dkim_domains = [s.domain for s in signatures if s.result == "pass"]
        outcome = None
        if self.do_dmarc:
            from_values = dmarc_evaluation.from_field_values(head)
            try:
                outcome = dmarc_evaluation.evaluate(from_values, spf_domain, dkim_domains, self._txt_records)
            except DnsTemporaryError:
                domains = dmarc_evaluation.from_domains(from_values) or ["none"]
                outcome = dmarc_evaluation.Outcome("temperror", domains[0])
                temporary.append("DMARC")
            except Exception:  # a flaw of ours must not make every such message wait (451) for ever
                log.failure("DMARC evaluation failed; recorded as permerror")
                outcome = dmarc_evaluation.Outcome("permerror", "none", "none", "evaluation failed")
            results.append(result_clause("dmarc", outcome.result, comment=outcome.comment, properties=(
                ("header.from", outcome.header_from), ("policy.dmarc", outcome.policy))))
        return decide(self.hostname, results, temporary, outcome, self.enforce)


def decide(hostname: str, results: list, temporary: list[str], dmarc_result, enforce: bool) -> Verdict:
    """The header of ``results`` and what they mean for delivery (the module docstring); the
    same for our own checks and for rspamd's (mailstack.antispam.rspamd.authentication_of)."""
    header = results_header(hostname, results)
    if temporary:
        return Verdict("tempfail", header, f"DNS failure during {', '.join(temporary)} checks")
    if dmarc_result is not None and dmarc_result.result == "fail" and enforce:
        policy = (getattr(dmarc_result, "policy", "") or "").lower()
        if policy == "reject":
            return Verdict("reject", header, f"DMARC policy of {dmarc_result.header_from} says reject")
        if policy == "quarantine":
            return Verdict("junk", header, f"DMARC policy of {dmarc_result.header_from} says quarantine")
    return Verdict("deliver", header)


def may_have_own_results(message: bytes) -> bool:
    """Whether the header has any Authentication-Results field (a cheap test before
    :func:`strip_own_results`)."""
    end = message.find(b"\r\n\r\n")
    return b"authentication-results" in (message if end < 0 else message[:end]).lower()
