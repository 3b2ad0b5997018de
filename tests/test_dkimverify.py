"""mailstack.smtp.dkimverify: canonicalization with RFC 6376's own example (3.4.5), and
verdicts compared with dkimpy's (the reference the MX used before) on messages dkimpy signs
every way it can, unchanged and altered."""

from __future__ import annotations

import base64
import random

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailstack.smtp.dkimverify import (Verifier, header_fields, parse_tags, relaxed_body, relaxed_header,
                                       simple_body)


def _rsa(bits=2048):
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs1 = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return pem, der, pkcs1


RSA_PEM, RSA_DER, RSA_PKCS1 = _rsa()
_ED = ed25519.Ed25519PrivateKey.generate()
ED_SEED = base64.b64encode(_ED.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption()))
ED_PUB = _ED.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

RECORDS = {
    "rsa._domainkey.example.org": b"v=DKIM1; k=rsa; p=" + base64.b64encode(RSA_DER),
    "pkcs1._domainkey.example.org": b"v=DKIM1; p=" + base64.b64encode(RSA_PKCS1),
    "ed._domainkey.example.org": b"v=DKIM1; k=ed25519; p=" + base64.b64encode(ED_PUB),
    "revoked._domainkey.example.org": b"v=DKIM1; k=rsa; p=",
    "strict._domainkey.example.org": b"v=DKIM1; k=rsa; t=s; p=" + base64.b64encode(RSA_DER),
    "web._domainkey.example.org": b"v=DKIM1; k=rsa; s=web; p=" + base64.b64encode(RSA_DER),
}


class Temporary(Exception):
    pass


def lookup(name: str):
    if name.startswith("down."):
        raise Temporary("SERVFAIL")
    return RECORDS.get(name)


def dkimpy_dns(name, timeout=5):
    return RECORDS.get(name.decode().rstrip("."))


def ours(message: bytes) -> list[str]:
    return [r.result for r in Verifier(lookup, temporary=Temporary).verify(message)]


def dkimpy_says(message: bytes) -> str:
    return "pass" if dkim.verify(message, dnsfunc=dkimpy_dns) else "fail"


MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.test,\r\n\tcarol@example.test\r\n"
           b"Subject:   hello   there  \r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n"
           b"Message-ID: <m1@example.org>\r\nX-Unsigned: yes\r\n\r\n"
           b"Hello Bob,  \r\n\r\nsee  you\ttomorrow.\r\n\r\n\r\n")


def sign(message=MESSAGE, selector=b"rsa", canonicalize=(b"relaxed", b"relaxed"), headers=None, key=RSA_PEM,
         algorithm=b"rsa-sha256", **kw) -> bytes:
    headers = headers or [b"from", b"to", b"subject", b"date", b"message-id"]
    return dkim.sign(message, selector, b"example.org", key, include_headers=headers, canonicalize=canonicalize,
                     signature_algorithm=algorithm, **kw) + message


# -- canonicalization: RFC 6376 3.4.5's example, byte for byte --------------------------------

EXAMPLE_HEAD = b"A: X\r\nB : Y\t\r\n\tZ  "
EXAMPLE_BODY = b" C \r\nD \t E\r\n\r\n\r\n"


def test_rfc6376_example_relaxed():
    fields = header_fields(EXAMPLE_HEAD)
    assert [name for name, _ in fields] == [b"a", b"b"]
    assert b"".join(relaxed_header(f) for _, f in fields) == b"a:X\r\nb:Y Z\r\n"
    assert relaxed_body(EXAMPLE_BODY) == b" C\r\nD E\r\n"


def test_rfc6376_example_simple():
    assert [f for _, f in header_fields(EXAMPLE_HEAD)] == [b"A: X", b"B : Y\t\r\n\tZ  "]
    assert simple_body(EXAMPLE_BODY) == b" C \r\nD \t E\r\n"


def test_empty_bodies_and_missing_last_crlf():
    assert simple_body(b"") == b"\r\n" and simple_body(b"\r\n\r\n") == b"\r\n"  # 3.4.3
    assert relaxed_body(b"") == b"" and relaxed_body(b"\r\n \r\n") == b""  # 3.4.4, erratum 1384
    assert relaxed_body(b"last line  ") == b"last line \r\n"  # as dkimpy; SMTP cannot send it
    assert simple_body(b"last line") == b"last line\r\n"


def test_tag_lists():
    assert parse_tags(b" v = 1 ;a=rsa-sha256; b=ab\r\n cd ;") == {b"v": b"1", b"a": b"rsa-sha256", b"b": b"ab\r\n cd"}
    for bad in (b"v=1; v=1", b"v=1; novalue", b"1v=x"):
        with pytest.raises(Exception):
            parse_tags(bad)


# -- verdicts compared with dkimpy ------------------------------------------------------------------


@pytest.mark.parametrize("canon", [(b"simple", b"simple"), (b"relaxed", b"relaxed"), (b"relaxed", b"simple"),
                                   (b"simple", b"relaxed")], ids=lambda c: b"/".join(c).decode())
def test_every_canonicalization_passes_as_dkimpy_says(canon):
    signed = sign(canonicalize=canon)
    assert ours(signed) == ["pass"] == [dkimpy_says(signed)]


@pytest.mark.parametrize("change", [
    (b"see  you", b"see you"),  # the body: whitespace counts in simple, not relaxed
    (b"tomorrow", b"today"),  # the body's words
    (b"Subject:   hello", b"Subject: hullo"),  # a signed field
    (b"X-Unsigned: yes", b"X-Unsigned: no"),  # an unsigned field: still passes
    (b"To: bob@example.test,\r\n\tcarol", b"To: bob@example.test, carol"),  # refolded
    (b"\r\n\r\nHello", b"\r\nTo: eve@example.test\r\n\r\nHello"),  # a second To, below: it is the one signed
    (b"\r\n\r\n\r\n", b"\r\n\r\n\r\n\r\n\r\n"),  # more empty lines at the end
], ids=["body-blanks", "body-words", "signed-field", "unsigned-field", "refolded", "added-to", "trailing-lines"])
@pytest.mark.parametrize("canon", [(b"simple", b"simple"), (b"relaxed", b"relaxed")], ids=["simple", "relaxed"])
def test_alterations_give_dkimpys_verdict(change, canon):
    altered = sign(canonicalize=canon).replace(*change)
    assert ours(altered) == [dkimpy_says(altered)]


def test_random_messages_agree_with_dkimpy():
    rng = random.Random(6376)
    words = [b"a", b"bb", b"  ", b"\t", b"word", b"x y", b"\r\n", b"\r\n\r\n", b" \r\n", b"=", b";", b"\xc3\xa9"]
    for i in range(150):
        body = b"".join(rng.choice(words) for _ in range(rng.randrange(0, 40)))
        subject = b"".join(rng.choice([b"s", b" ", b"\t", b"t"]) for _ in range(rng.randrange(1, 12)))
        message = (b"From: a@example.org\r\nSubject: " + subject + b"\r\nTo: b@example.test\r\n\r\n" + body)
        canon = (rng.choice([b"simple", b"relaxed"]), rng.choice([b"simple", b"relaxed"]))
        signed = sign(message, canonicalize=canon, headers=[b"from", b"subject", b"to", b"to", b"cc"],
                      length=rng.random() < 0.3)
        if rng.random() < 0.5:  # change the body, or the signed Subject
            head, _, body = signed.partition(b"\r\n\r\n")
            if rng.random() < 0.3:
                head = head.replace(b"Subject: ", b"Subject: \t", 1)
            signed = head + b"\r\n\r\n" + (body.replace(b"a", b"b", 1) if rng.random() < 0.5 else body + rng.choice(words))
        assert ours(signed) == [dkimpy_says(signed)], (i, signed)


def test_body_length_limit():
    signed = sign(length=True)
    assert ours(signed + b"appended after the signed length\r\n") == ["pass"]
    shortened = signed[: signed.rindex(b"tomorrow")] + b"\r\n"
    assert ours(shortened) == ["fail"] == [dkimpy_says(shortened)]


def test_ed25519_and_pkcs1_keys():
    assert ours(sign(selector=b"ed", key=ED_SEED, algorithm=b"ed25519-sha256")) == ["pass"]
    assert ours(sign(selector=b"pkcs1")) == ["pass"]
    wrong_type = sign(selector=b"ed")  # an RSA signature pointing at an Ed25519 key
    assert ours(wrong_type) == ["permerror"]


def test_lf_line_ends_are_read_as_crlf():
    signed = sign()
    assert ours(signed.replace(b"\r\n", b"\n")) == ["pass"] == [dkimpy_says(signed.replace(b"\r\n", b"\n"))]


def test_every_signature_gets_a_result():
    good = sign()
    bad = sign(good.replace(b"Hello Bob", b"Hello Eve"), selector=b"pkcs1")  # signs the altered text
    both = bad.replace(b"Hello Eve", b"Hello Bob")  # the top one is now broken, the lower one intact
    assert ours(both) == ["fail", "pass"]
    results = Verifier(lookup, temporary=Temporary).verify(both)
    assert [(r.domain, r.selector, r.identity) for r in results] == [("example.org", "pkcs1", "@example.org"),
                                                                      ("example.org", "rsa", "@example.org")]
    assert results[0].reason == "body hash mismatch"


# -- what RFC 6376 and RFC 8301 refuse ------------------------------------------------------------


def _edited(old: bytes, new: bytes, **kw) -> bytes:
    """A good signature with one tag changed: dkimpy will not sign these, and each refusal
    comes before the signature is checked."""
    signed = sign(**kw)
    assert old in signed
    return signed.replace(old, new, 1)


@pytest.mark.parametrize("name, message, result, reason", [
    ("no key", sign(selector=b"absent"), "permerror", "no key"),
    ("revoked", sign(selector=b"revoked"), "permerror", "key revoked"),
    ("temporary", sign(selector=b"down"), "temperror", "key lookup failed: SERVFAIL"),
    ("rsa-sha1", sign(algorithm=b"rsa-sha1"), "permerror", "rsa-sha1 is not accepted (RFC 8301)"),
    ("from unsigned", _edited(b"h=from : to", b"h=to"), "permerror", "From is not signed"),
    ("foreign i=", _edited(b"i=@example.org", b"i=@other.example", identity=b"@example.org"), "permerror",
     "i= is not within d="),
    ("strict key, subdomain i=", sign(selector=b"strict", identity=b"@sub.example.org"), "permerror",
     "key requires i= to be d= (t=s)"),
    ("key not for email", sign(selector=b"web"), "permerror", "key is not for email"),
    ("expired", _edited(b"t=17", b"x=1500000000; t=10"), "fail", "signature expired"),
    ("x= before t=", _edited(b"v=1;", b"v=1; x=1000;"), "permerror", "x= before t="),
    ("version", _edited(b"v=1;", b"v=2;"), "permerror", "version is not 1"),
])
def test_refusals(name, message, result, reason):
    [r] = Verifier(lookup, temporary=Temporary).verify(message)
    assert (r.result, r.reason) == (result, reason)


def test_short_rsa_key_is_refused():
    n = (1 << 511) | 0xF1  # cryptography makes no key under 1024 bits; the refusal comes before any use
    der = rsa.RSAPublicNumbers(65537, n).public_key().public_bytes(serialization.Encoding.DER,
                                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    RECORDS["short._domainkey.example.org"] = b"v=DKIM1; p=" + base64.b64encode(der)
    try:
        [r] = Verifier(lookup, temporary=Temporary).verify(sign(selector=b"short"))
    finally:
        del RECORDS["short._domainkey.example.org"]
    assert (r.result, r.reason) == ("permerror", "RSA key of 512 bits is too short (RFC 8301)")


def test_hostile_input_gives_results_not_exceptions():
    verifier = Verifier(lookup, temporary=Temporary)
    for message in [b"", b"\r\n", b"DKIM-Signature:\r\n\r\n", b"DKIM-Signature: ;;;;\r\nFrom: a\r\n\r\n",
                    b"DKIM-Signature: v=1; a=rsa-sha256; d=\xff; s=x; h=from; bh=@@; b=@@\r\nFrom: a\r\n\r\n",
                    b"DKIM-Signature: v=1; a=rsa-sha256; d=e.org; s=../../x; h=from; bh=; b=\r\n\r\n",
                    b"DKIM-Signature: v=1; a=rsa-sha256; d=e.org; s=rsa; h=from; l=99999999999999999999999; bh=; b=\r\n",
                    b"no colon line\r\nDKIM-Signature: v=1\r\n\r\nbody"]:
        for r in verifier.verify(message):
            assert r.result == "permerror", (message, r)
    many = b"".join(b"DKIM-Signature: v=1\r\n" for _ in range(50)) + b"From: a\r\n\r\n"
    assert len(verifier.verify(many)) == 5
