"""DKIM verification of arriving mail (RFC 6376 section 6, RFC 8301, RFC 8463).

dkimpy, which still signs what our users send, verifies in Python: it splits the message
into lines twice, canonicalizes line by line and computes RSA with Python integers, 0.6 ms of
CPU for a 4 KB message under the GIL; every MX message pays it (issue 16).  This verifier
works on whole blocks with regular expressions (C), hashes with hashlib and checks the
signature with ``cryptography`` (OpenSSL).  tests/test_dkimverify.py compares its verdicts with
dkimpy's on messages signed every way dkimpy can sign, altered and not.

Every signature is checked (up to :data:`MAX_SIGNATURES`), each giving one result, as RFC
8601 2.7.1 has it: a message forwarded through a list often carries the author's broken
signature and the list's good one.

Results (RFC 8601 2.7.1):

* ``pass``: the signature verifies;
* ``fail``: it does not (body hash, signature, expiry, ``l=`` past the body);
* ``permerror``: it cannot be checked for good: a broken tag list, a missing required tag, no
  key or a revoked key, a key too short (RFC 8301 3.2), ``rsa-sha1`` (RFC 8301 3.1);
* ``temperror``: the key lookup failed for now (the caller answers 451).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

MAX_SIGNATURES = 5
MIN_RSA_BITS = 1024  # RFC 8301 3.2
_KEY_CACHE_SIZE = 1000


class KeyLookupTemporaryError(Exception):
    """The key's DNS lookup failed for now (the caller's lookup function raises a subclass or
    passes its own exception type to :class:`Verifier`)."""


@dataclass
class SignatureResult:
    result: str  # pass | fail | permerror | temperror
    domain: str = ""  # d=
    identity: str = ""  # i= (default "@" + d=)
    selector: str = ""  # s=
    reason: str = ""  # why not pass, for the header's comment and the log


class _Invalid(Exception):
    """A signature that is a ``permerror`` (the message says why)."""


class _Failed(Exception):
    """A signature that is a ``fail``."""


_FIELD_SPLIT = re.compile(rb"\r\n(?![ \t])")
_WSP_RUN = re.compile(rb"[ \t]+")
_FWS = re.compile(rb"[ \t\r\n]+")
_TAG_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]*\Z")
_B_VALUE = re.compile(rb"(^|;)([ \t\r\n]*b[ \t\r\n]*=)[^;]*")


def header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, whole field with its line breaks, without the last CRLF) of a header
    block that ends before its blank line.  Blanks before the colon (RFC 5322 4.5 obsolete
    syntax) are not part of the name."""
    fields = []
    for field in _FIELD_SPLIT.split(head):
        if not field:
            continue
        name, colon, _ = field.partition(b":")
        fields.append(((name.rstrip(b" \t").lower() if colon else b""), field))
    return fields


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 3.4.2: lower-case name, unfolded, runs of blanks one space, none at the ends
    or around the colon; with its CRLF."""
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def simple_body(body: bytes) -> bytes:
    """RFC 6376 3.4.3: no empty lines at the end, one CRLF after the last line (also for an
    empty body)."""
    end = len(body)
    while end >= 2 and body[end - 2:end] == b"\r\n":
        end -= 2
    return body[:end] + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: runs of blanks one space, none at line ends, no empty lines at the end;
    an empty body stays empty (erratum 1384), a last line without CRLF gets one, its blanks
    kept, as dkimpy does (SMTP cannot carry such a body: DATA ends with CRLF)."""
    body = _WSP_RUN.sub(b" ", body).replace(b" \r\n", b"\r\n")
    end = len(body)
    while end >= 2 and body[end - 2:end] == b"\r\n":
        end -= 2
    if end == 0:
        return b""
    if end == len(body):  # the last line had no CRLF
        return body + b"\r\n"
    return body[:end] + b"\r\n"


def parse_tags(value: bytes) -> dict[bytes, bytes]:
    """A tag list (RFC 6376 3.2): {name: value with its outer blanks removed}.  A duplicate
    name, a bad name or a spec without "=" makes the whole list invalid."""
    tags: dict[bytes, bytes] = {}
    for spec in value.split(b";"):
        name, equals, tag_value = spec.partition(b"=")
        name = name.strip(b" \t\r\n")
        if not equals:
            if name:
                raise _Invalid("a tag without a value")
            continue  # empty spec: the list may end with ";"
        if not _TAG_NAME.match(name) or name in tags:
            raise _Invalid(f"bad or repeated tag {name[:20]!r}")
        tags[name] = tag_value.strip(b" \t\r\n")
    return tags


def _base64(value: bytes, what: str) -> bytes:
    try:
        return base64.b64decode(_FWS.sub(b"", value), validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"{what} is not base64") from None


def _domain(value: bytes) -> str:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise _Invalid("a domain that is not ASCII") from None
    return text.rstrip(".").lower()


class Verifier:
    """Checks the DKIM signatures of messages; ``txt_lookup(name)`` returns a TXT record's
    value (bytes, strings joined) or None when there is none, and raises ``temporary`` when the
    lookup failed for now.  Keys are kept parsed by their record text, so a sender's key is
    decoded once, whatever the DNS cache does."""

    def __init__(self, txt_lookup: Callable[[str], bytes | None], temporary: type[BaseException] = KeyLookupTemporaryError,
                 clock: Callable[[], float] = time.time):
        self.txt_lookup, self.temporary, self.clock = txt_lookup, temporary, clock
        self._keys: dict[bytes, tuple[str, object]] = {}
        self._keys_lock = threading.Lock()

    def verify(self, message: bytes) -> list[SignatureResult]:
        """One result per DKIM-Signature field, top first, at most MAX_SIGNATURES; [] when the
        message has none."""
        if message.count(b"\n") != message.count(b"\r\n"):  # bare LF: read it as a line break
            message = re.sub(rb"\r?\n", b"\r\n", message)
        end = message.find(b"\r\n\r\n")
        if end < 0:
            head, body = (message[:-2] if message.endswith(b"\r\n") else message), b""
        else:
            head, body = message[:end], message[end + 4:]
        fields = header_fields(head)
        signatures = [field for name, field in fields if name == b"dkim-signature"][:MAX_SIGNATURES]
        results, body_hashes = [], {}
        for field in signatures:
            result = SignatureResult("permerror")
            try:
                self._verify_one(field, fields, body, body_hashes, result)
                result.result = "pass"
            except _Invalid as e:
                result.result, result.reason = "permerror", str(e)
            except _Failed as e:
                result.result, result.reason = "fail", str(e)
            except self.temporary as e:
                result.result, result.reason = "temperror", f"key lookup failed: {e}"[:200]
            results.append(result)
        return results

    def _verify_one(self, field: bytes, fields, body: bytes, body_hashes: dict, result: SignatureResult) -> None:
        tags = parse_tags(field.partition(b":")[2].replace(b"\r\n", b""))
        if b"d" in tags:
            result.domain = _domain(tags[b"d"])
        if b"s" in tags:
            result.selector = tags[b"s"].decode("ascii", "replace")
        for required in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s"):
            if required not in tags:
                raise _Invalid(f"no {required.decode()}= tag")
        if tags[b"v"] != b"1":
            raise _Invalid("version is not 1")
        algorithm = tags[b"a"].lower()
        if algorithm == b"rsa-sha1":
            raise _Invalid("rsa-sha1 is not accepted (RFC 8301)")
        if algorithm not in (b"rsa-sha256", b"ed25519-sha256"):
            raise _Invalid("unknown algorithm")
        if not result.domain or not result.selector:
            raise _Invalid("empty d= or s=")
        identity = tags.get(b"i")
        if identity is not None:
            result.identity = identity.decode("ascii", "replace")
            i_domain = result.identity.rpartition("@")[2].rstrip(".").lower()
            if i_domain != result.domain and not i_domain.endswith("." + result.domain):
                raise _Invalid("i= is not within d=")
        else:
            result.identity, i_domain = "@" + result.domain, result.domain
        canon = tags.get(b"c", b"simple/simple").lower()
        header_canon, _, body_canon = canon.partition(b"/")
        body_canon = body_canon or b"simple"
        if header_canon not in (b"simple", b"relaxed") or body_canon not in (b"simple", b"relaxed"):
            raise _Invalid("unknown canonicalization")
        if b"q" in tags and b"dns/txt" not in [q.strip(b" \t").lower() for q in tags[b"q"].split(b":")]:
            raise _Invalid("unknown query method")
        signed = [name.strip(b" \t").lower() for name in _FWS.sub(b"", tags[b"h"]).split(b":")]
        if b"from" not in signed:
            raise _Invalid("From is not signed")
        length = None
        if b"l" in tags:
            if not tags[b"l"].isdigit() or len(tags[b"l"]) > 76:
                raise _Invalid("bad l=")
            length = int(tags[b"l"])
        timestamps = {}
        for name in (b"t", b"x"):
            if name in tags:
                if not tags[name].isdigit() or len(tags[name]) > 12:
                    raise _Invalid(f"bad {name.decode()}=")
                timestamps[name] = int(tags[name])
        if b"x" in timestamps:
            if b"t" in timestamps and timestamps[b"x"] < timestamps[b"t"]:
                raise _Invalid("x= before t=")
            if timestamps[b"x"] < self.clock():
                raise _Failed("signature expired")
        signature = _base64(tags[b"b"], "b=")
        expected_body_hash = _base64(tags[b"bh"], "bh=")

        key_type, key = self._key(result.selector, result.domain)
        if key_type.encode() != algorithm.partition(b"-")[0]:
            raise _Invalid("key type does not match a=")
        flags = getattr(key, "dkim_flags", ())
        if "s" in flags and i_domain != result.domain:
            raise _Invalid("key requires i= to be d= (t=s)")

        canonical_body = body_hashes.get(body_canon)
        if canonical_body is None:
            canonical_body = body_hashes[body_canon] = (relaxed_body if body_canon == b"relaxed" else simple_body)(body)
        if length is not None:
            if length > len(canonical_body):
                raise _Failed("l= is longer than the body")
            canonical_body = canonical_body[:length]
        if hashlib.sha256(canonical_body).digest() != expected_body_hash:
            raise _Failed("body hash mismatch")

        data = self._signed_data(field, fields, signed, header_canon == b"relaxed")
        self._check_signature(key_type, key, signature, data)

    @staticmethod
    def _signed_data(field: bytes, fields, signed: list[bytes], relaxed: bool) -> bytes:
        """RFC 6376 5.4.2 / 3.7: the fields named in h=, each instance taken from the bottom
        up (a name listed more often than present adds nothing), then this signature field
        with b= empty and without its CRLF."""
        by_name: dict[bytes, list[bytes]] = {}
        for name, f in fields:
            by_name.setdefault(name, []).append(f)
        parts = []
        for name in signed:
            instances = by_name.get(name)
            if instances:
                f = instances.pop()
                parts.append(relaxed_header(f) if relaxed else f + b"\r\n")
        name, _, value = field.partition(b":")
        own = name + b":" + _B_VALUE.sub(rb"\1\2", value, count=1)
        parts.append(relaxed_header(own)[:-2] if relaxed else own)
        return b"".join(parts)

    def _key(self, selector: str, domain: str) -> tuple[str, object]:
        """The public key at ``selector._domainkey.domain`` (RFC 6376 3.6.2.2)."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", selector):
            raise _Invalid("bad selector")
        record = self.txt_lookup(f"{selector}._domainkey.{domain}")
        if record is None:
            raise _Invalid("no key")
        cached = self._keys.get(record)
        if cached is not None:
            return cached
        parsed = _parse_key(record)
        with self._keys_lock:
            if len(self._keys) >= _KEY_CACHE_SIZE:
                self._keys.clear()
            self._keys[record] = parsed
        return parsed

    @staticmethod
    def _check_signature(key_type: str, key, signature: bytes, data: bytes) -> None:
        try:
            if key_type == "rsa":
                key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            else:  # RFC 8463 3: Ed25519 signs the SHA-256 hash
                key.verify(signature, hashlib.sha256(data).digest())
        except InvalidSignature:
            raise _Failed("signature did not verify") from None


class _Key:
    """A public key with the record's t= flags."""

    def __init__(self, key, flags):
        self.key, self.dkim_flags = key, flags

    def verify(self, *args):
        return self.key.verify(*args)


def _parse_key(record: bytes) -> tuple[str, _Key]:
    """A key record (RFC 6376 3.6.1): ("rsa" | "ed25519", key); _Invalid when it cannot be used."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    tags = parse_tags(record)
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise _Invalid("key record version is not DKIM1")
    if b"h" in tags and b"sha256" not in [h.strip(b" \t").lower() for h in tags[b"h"].split(b":")]:
        raise _Invalid("key does not allow sha256")
    if b"s" in tags and not {b"*", b"email"} & {s.strip(b" \t").lower() for s in tags[b"s"].split(b":")}:
        raise _Invalid("key is not for email")
    flags = {f.strip(b" \t").decode("ascii", "replace") for f in tags.get(b"t", b"").split(b":")}
    key_type = tags.get(b"k", b"rsa").lower()
    if b"p" not in tags:
        raise _Invalid("key record has no p=")
    data = _base64(tags[b"p"], "p=")
    if not data:
        raise _Invalid("key revoked")
    if key_type == b"ed25519":
        if len(data) != 32:
            raise _Invalid("bad Ed25519 key")
        return "ed25519", _Key(ed25519.Ed25519PublicKey.from_public_bytes(data), flags)
    if key_type != b"rsa":
        raise _Invalid("unknown key type")
    try:
        key = serialization.load_der_public_key(data)
    except ValueError:
        try:  # a bare PKCS#1 RSAPublicKey, which some publish (dkimpy reads it too)
            pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(data) + b"-----END RSA PUBLIC KEY-----\n"
            key = serialization.load_pem_public_key(pem)
        except ValueError:
            raise _Invalid("key does not parse") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise _Invalid("key is not RSA")
    if key.key_size < MIN_RSA_BITS:
        raise _Invalid(f"RSA key of {key.key_size} bits is too short (RFC 8301)")
    return "rsa", _Key(key, flags)
