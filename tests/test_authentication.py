"""DKIM signing, SPF/DKIM/DMARC checks and Authentication-Results, with a twisted.names DNS
server on loopback serving the records."""

from __future__ import annotations

import time
import base64
import smtplib
import subprocess
import sys

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from support.dns import TOOLS, serve_zones
from support.servers import PASSWORDS, Proc, env_with_tree, free_port
from support.waiting import wait_files

ALICE, BOB = "alice@example.test", "bob@example.test"


# Real top-level domains on purpose: DMARC alignment compares organisational domains found
# through the public suffix list, as on the internet.


def rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


SENDER_KEY, SENDER_TXT = rsa_key()


def txt(name: str, value: str) -> str:
    # twisted.names TXT strings are limited to 255 octets each: split long ones
    parts = [value[i:i + 250] for i in range(0, len(value), 250)]
    return f"TXT('{name}', " + ", ".join(repr(p.encode()) for p in parts) + ")"


@pytest.fixture
def dns_port(tmp_path):
    zones = {
        "sendercorp.com": [txt("sendercorp.com", "v=spf1 ip4:127.0.0.1 -all"),
                        txt("_dmarc.sendercorp.com", "v=DMARC1; p=reject"),
                        txt("sel._domainkey.sendercorp.com", SENDER_TXT)],
        "quarantinenews.org": [txt("quarantinenews.org", "v=spf1 -all"), txt("_dmarc.quarantinenews.org", "v=DMARC1; p=quarantine")],
        "evilcorp.net": [txt("evilcorp.net", "v=spf1 ip4:127.0.0.1 -all")],
        "remote.test": ["MX('remote.test', 10, 'mx.remote.test')", "A('mx.remote.test', '127.0.0.2')"],
    }
    yield from serve_zones(tmp_path, zones)


def mx_send(srv, sender: str, message: bytes, rcpt: str = BOB) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
        s.ehlo("client.sendercorp.com")
        s.mail(sender)
        s.rcpt(rcpt)
        return s.data(message)


#: Issue 14 item 6: Authentication-Results fields claiming our authserv-id (RFC 8601 5) in the
#: forms that survived a prefix match: each must be removed.
FORGED_FORMS = [
    b"Authentication-Results: mail.example.test (comment); dkim=pass (forged 1)\r\n",
    b"Authentication-Results:\r\n mail.example.test; dkim=pass (forged 2)\r\n",
    b"Authentication-Results: (a (nested) comment)\r\n\tmail.example.test; spf=pass (forged 3)\r\n",
    b'Authentication-Results: "mail.example.test"; dkim=pass (forged 4)\r\n',
    b"AUTHENTICATION-RESULTS: MAIL.Example.TEST.; dmarc=pass (forged 5)\r\n",
    b"Authentication-Results: mail.example.test 1; dkim=pass (forged 6)\r\n",
    b"authentication-results:mail.example.test;dkim=pass (forged 7)\r\n",
]


#: RFC 5322 4.5.3 obsolete syntax (blanks before the colon): dkimpy cannot parse the message.
OBSOLETE_FORM = b"Authentication-Results : mail.example.test; dkim=pass (forged 8)\r\n"


@pytest.mark.parametrize("form", FORGED_FORMS + [OBSOLETE_FORM], ids=range(len(FORGED_FORMS) + 1))
def test_every_form_of_our_authserv_id_is_stripped(form):
    from mailstack.smtp.authentication import strip_own_results

    message = b"From: a@b.example\r\n" + form + b"Authentication-Results: mail.example.test.evil; x=y\r\n\r\nbody\r\n"
    assert strip_own_results(message, "mail.example.test") == (
        b"From: a@b.example\r\nAuthentication-Results: mail.example.test.evil; x=y\r\n\r\nbody\r\n")


def test_authserv_id_grammar():
    from mailstack.smtp.authentication import authserv_id

    assert authserv_id(" (x \\) y) host.example; none") == "host.example"
    assert authserv_id('"quoted \\"id"; none') == 'quoted "id'
    assert authserv_id("(unterminated") == ""
    assert authserv_id("") == ""


@pytest.fixture
def checked(server_factory, dns_port):
    extra = f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\ntimeout = 3\n'
    return server_factory(listeners=["smtp"], extra=extra, checks=True).start()


def test_pass_fail_and_our_header_stripped(checked):
    body = (b"From: Boss <boss@sendercorp.com>\r\nTo: bob@example.test\r\nSubject: signed\r\n"
            b"Message-ID: <s1@sendercorp.com>\r\n\r\nAll good.\r\n")
    sig = dkim.sign(body, b"sel", b"sendercorp.com", SENDER_KEY, include_headers=[b"from", b"to", b"subject", b"message-id"])
    forged = (b"Authentication-Results: mail.example.test; dkim=pass header.d=sendercorp.com\r\n"
              + b"".join(FORGED_FORMS) +
              b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n")
    reply = mx_send(checked, "boss@sendercorp.com", forged + sig + body)
    assert reply[0] == 250, reply
    [stored] = checked.wait_for_messages(BOB, 1)
    head = stored.split(b"\r\n\r\n")[0].decode()
    ours = [line for line in head.split("\r\n") if line.startswith("Authentication-Results: mail.example.test")]
    assert len(ours) == 1  # the forged one claiming our name is gone, ours is there once
    assert "spf=pass" in ours[0] and "dkim=pass" in ours[0] and "dmarc=pass" in ours[0]
    assert "Authentication-Results: other.example; spf=pass" in head  # others' results are kept
    assert "forged" not in head.lower()
    assert stored.endswith(body)


def test_obsolete_header_syntax_is_read_and_a_broken_signature_is_a_permerror(checked):
    # dkimpy raised on obsolete header syntax, which answered 451 for ever (the sender retries);
    # RFC 5322 4.5.3 lets a reader take blanks before the colon, so the signature verifies.
    body = (b"From: Boss <boss@sendercorp.com>\r\nTo: bob@example.test\r\nSubject: signed\r\n"
            b"Message-ID: <s2@sendercorp.com>\r\n\r\nAll good.\r\n")
    sig = dkim.sign(body, b"sel", b"sendercorp.com", SENDER_KEY, include_headers=[b"from", b"to", b"subject"])
    assert mx_send(checked, "boss@sendercorp.com", OBSOLETE_FORM + sig + body)[0] == 250
    [stored] = checked.wait_for_messages(BOB, 1)
    head = stored.split(b"\r\n\r\n")[0]
    assert b"dkim=pass header.d=sendercorp.com" in head and b"forged" not in head
    # A signature whose tag list cannot be read is a permanent error, not a temporary one.
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=sendercorp.com; s=sel; h=from; bh; b=AAAA\r\n"
    assert mx_send(checked, "boss@sendercorp.com", broken + body.replace(b"<s2@", b"<s3@"))[0] == 250
    [_, stored] = checked.wait_for_messages(BOB, 2)
    head = stored.split(b"\r\n\r\n")[0]
    assert b"dkim=permerror (a tag without a value);" in head, head


def test_spoofed_from_with_dmarc_reject_is_refused(checked):
    spoof = b"From: boss@sendercorp.com\r\nTo: bob@example.test\r\nSubject: pay this invoice\r\n\r\nurgent\r\n"
    code, text = mx_send(checked, "evil@evilcorp.net", spoof)
    assert code == 550 and text.startswith(b"5.7.1 Message refused: DMARC policy of sendercorp.com says reject")
    assert checked.messages(BOB) == []


def test_dmarc_quarantine_goes_to_junk(checked):
    msg = b"From: news@quarantinenews.org\r\nTo: bob@example.test\r\nSubject: maybe spam\r\n\r\nhello\r\n"
    assert mx_send(checked, "news@quarantinenews.org", msg)[0] == 250
    [junk] = checked.wait_for_messages(BOB, 1, folder="Junk")
    assert b"dmarc=fail" in junk and b"spf=fail" in junk
    assert checked.messages(BOB) == []  # not in the INBOX


def test_checks_answered_from_the_dns_cache_give_the_same_results(checked):
    """The first message of a domain is checked in a thread (the DNS answers are not cached
    yet); the next ones on the reactor, from the cache (accept.INLINE_CHECK_SIZE); one larger
    than that in a thread again.  Every one gets the same results, and refusals stay."""
    def ours(stored: bytes) -> str:
        head = stored.split(b"\r\n\r\n")[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")
        [line] = [h for h in head.split("\r\n") if h.startswith("Authentication-Results: mail.example.test")]
        return line

    def signed(n: int, filler: int = 0) -> bytes:
        body = (b"From: Boss <boss@sendercorp.com>\r\nTo: bob@example.test\r\nSubject: again %d\r\n"
                b"Message-ID: <again%d@sendercorp.com>\r\n\r\nSame sender.\r\n" % (n, n))
        body += (b"y" * 998 + b"\r\n") * filler
        return dkim.sign(body, b"sel", b"sendercorp.com", SENDER_KEY,
                         include_headers=[b"from", b"to", b"subject", b"message-id"]) + body

    for n in range(3):
        assert mx_send(checked, "boss@sendercorp.com", signed(n))[0] == 250
    assert mx_send(checked, "boss@sendercorp.com", signed(3, filler=70))[0] == 250  # over 64 KiB
    stored = checked.wait_for_messages(BOB, 4)
    results = {ours(m) for m in stored}
    assert len(results) == 1, results
    [line] = results
    assert "spf=pass" in line and "dkim=pass header.d=sendercorp.com" in line and "dmarc=pass" in line
    for _ in range(2):  # refused the first time (thread) and the second (from the cache) alike
        spoof = b"From: boss@sendercorp.com\r\nTo: bob@example.test\r\nSubject: pay\r\n\r\nurgent\r\n"
        code, text = mx_send(checked, "evil@evilcorp.net", spoof)
        assert code == 550 and text.startswith(b"5.7.1 Message refused: DMARC policy of sendercorp.com says reject")
        msg = b"From: news@quarantinenews.org\r\nTo: bob@example.test\r\nSubject: maybe spam\r\n\r\nhello\r\n"
        assert mx_send(checked, "news@quarantinenews.org", msg)[0] == 250
    junk = checked.wait_for_messages(BOB, 2, folder="Junk")
    assert len({ours(m) for m in junk}) == 1 and b"dmarc=fail" in junk[0]


def test_dns_failure_gives_451_and_temperror(server_factory):
    dead = free_port()
    srv = server_factory(listeners=["smtp"], extra=f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dead}\ntimeout = 1\n',
                         checks=True).start()
    code, text = mx_send(srv, "boss@sendercorp.com", b"From: boss@sendercorp.com\r\nSubject: x\r\n\r\nx\r\n")
    assert code == 451 and text.startswith(b"4.7.0 Temporary failure: DNS failure during SPF")
    from mailstack.smtp.authentication import InboundChecker, set_default_resolver

    resolver = set_default_resolver(["127.0.0.1"], dead, 1)  # as the server does: pyspf uses the default
    verdict = InboundChecker("mail.example.test", resolver).check(
        b"From: boss@sendercorp.com\r\nSubject: x\r\n\r\nx\r\n", "127.0.0.1", "boss@sendercorp.com", "client.sendercorp.com")
    assert verdict.action == "tempfail"
    assert b"spf=temperror" in verdict.header and b"dmarc=temperror" in verdict.header


def test_submitted_mail_is_dkim_signed_and_verifies_after_the_relay(server_factory, dns_port, tmp_path):
    mx_port = free_port("127.0.0.2")
    out = tmp_path / "remote"
    fake = Proc([sys.executable, str(TOOLS / "fake_mx.py"), "127.0.0.2", str(mx_port), str(out)])
    try:
        srv = server_factory(listeners=["submission"], extra=(
            f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\n[relay]\nport = {mx_port}\nscan_interval = 0.5\n'))
        gen = subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(srv.config_path), "dkim", "genkey",
                              "example.test", "--ed25519"], capture_output=True, text=True, env=env_with_tree())
        assert gen.returncode == 0, gen.stderr
        published = dict(line.split(" TXT ", 1) for line in gen.stdout.splitlines() if " TXT " in line)
        records = {name.rstrip("."): value.split('"')[1] for name, value in published.items()}
        assert records["mail._domainkey.example.test"].startswith("v=DKIM1; k=rsa; p=")
        assert records["mail-ed25519._domainkey.example.test"].startswith("v=DKIM1; k=ed25519; p=")
        srv.start()
        msg = (b"From: Alice <alice@example.test>\r\nTo: carol@remote.test\r\nSubject: signed by us\r\n\r\n"
               b"Hello Carol.\r\n")
        with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=20) as s:
            s.starttls(context=srv.ssl_context())
            s.login(ALICE, PASSWORDS[ALICE])
            s.sendmail(ALICE, ["carol@remote.test"], msg)
        [eml] = wait_files(out, "*.eml", 1)
        data = eml.read_bytes()
        assert b"DKIM-Signature: v=1; a=rsa-sha256;" in data and b"d=example.test;" in data and b"s=mail;" in data
        assert b"a=ed25519-sha256;" in data and b"s=mail-ed25519;" in data

        def dnsfunc(name, timeout=5):
            name = (name.decode() if isinstance(name, bytes) else name).rstrip(".")
            return records[name].encode()

        signed = dkim.DKIM(data)
        assert signed.verify(idx=0, dnsfunc=dnsfunc) and signed.verify(idx=1, dnsfunc=dnsfunc)  # Ed25519 and RSA
        assert not dkim.verify(data.replace(b"Hello Carol.", b"Hello Eve."), dnsfunc=dnsfunc)
    finally:
        fake.stop()


def test_dns_command_prints_and_checks_records(server_factory, dns_port):
    srv = server_factory(listeners=["smtp", "submission"],
                         extra=f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\ntimeout = 2\n')
    cli = lambda *a: subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(srv.config_path), *a],  # noqa: E731
                                    capture_output=True, text=True, env=env_with_tree())
    assert cli("dkim", "genkey", "example.test").returncode == 0
    shown = cli("dns", "example.test")
    assert shown.returncode == 0
    for name in ("example.test.", "mail._domainkey.example.test.", "_dmarc.example.test.", "_mta-sts.example.test.",
                 "_smtp._tls.example.test.", "_submission._tcp.example.test.", "autoconfig.example.test."):
        assert name in shown.stdout
    assert "v=spf1 mx -all" in shown.stdout and "v=DKIM1; k=rsa; p=" in shown.stdout
    checked = cli("dns", "--check", "example.test")
    assert checked.returncode == 1  # nothing is published for example.test on the test DNS server
    assert "MISSING  example.test MX" in checked.stdout and "MISSING  _dmarc.example.test TXT" in checked.stdout


def test_dkim_integers_convert_in_c_to_what_dkimpy_gives():
    from dkim import crypto

    original_int2str, original_str2int = crypto.int2str, crypto.str2int
    from mailstack.smtp.authentication import convert_dkim_integers_in_c

    if getattr(original_int2str, "in_c", False):  # already replaced in this process: use dkimpy's source
        import importlib.util

        spec = importlib.util.find_spec("dkim.crypto")
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)
        original_int2str, original_str2int = fresh.int2str, fresh.str2int
    convert_dkim_integers_in_c()
    assert crypto.int2str.in_c
    for n in (0, 1, 255, 256, 65535, 2**2047 + 12345, 2**2048 - 1):
        for length in (-1, 1, 2, 256, 257):
            assert crypto.int2str(n, length) == original_int2str(n, length), (n, length)
            assert type(crypto.int2str(n, length)) is bytearray
        data = original_int2str(n)
        assert crypto.str2int(data) == original_str2int(data) == n
    assert crypto.str2int(b"") == original_str2int(b"") == 0


def test_spf_verdicts_are_kept_while_their_dns_answers_are(dns_port, monkeypatch):
    import spf

    from mailstack.smtp.authentication import InboundChecker, set_default_resolver

    resolver = set_default_resolver(["127.0.0.1"], dns_port, 3, 100)  # pyspf uses the default resolver
    checker = InboundChecker("mail.example.test", resolver)
    calls = []
    real = spf.check2
    monkeypatch.setattr(spf, "check2", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = checker._spf("127.0.0.1", "boss@sendercorp.com", "client.sendercorp.com")
    second = checker._spf("127.0.0.1", "boss@sendercorp.com", "client.sendercorp.com")
    assert first.result == second.result == "pass" and len(calls) == 1
    with pytest.raises(AttributeError):  # shared from the cache: nothing may change it
        first.result = "fail"
    assert checker._spf("127.0.0.2", "boss@sendercorp.com", "client.sendercorp.com").result == "fail"
    assert len(calls) == 2  # another client: evaluated
    [key] = [k for k in checker._spf_verdicts if k[0] == "127.0.0.1"]
    until = checker._spf_verdicts[key][0]
    assert time.time() < until <= time.time() + 3600  # the record's TTL, at most an hour
    checker._spf_verdicts[key] = (time.time() - 1,) + checker._spf_verdicts[key][1:]  # its TTL ended
    checker._spf("127.0.0.1", "boss@sendercorp.com", "client.sendercorp.com")
    assert len(calls) == 3
    for _ in range(2):  # no SPF record (a negative answer): evaluated each time
        assert checker._spf("127.0.0.1", "x@nospf.example.test", "client").result == "none"
    assert len(calls) == 5


def test_a_check_that_breaks_on_the_reactor_answers_451_as_in_a_thread(inproc_server_factory, dns_port):
    """The inline path (answers cached) and the thread path fail alike: 451, session goes on."""
    extra = f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\ntimeout = 3\n'
    srv = inproc_server_factory(listeners=["smtp"], extra=extra, checks=True).start()
    msg = b"From: boss@sendercorp.com\r\nTo: bob@example.test\r\nSubject: x\r\n\r\nx\r\n"
    assert mx_send(srv, "boss@sendercorp.com", msg)[0] == 250  # the thread path; the answers are cached now
    checker = srv.service.context.inbound_checker

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in a check")

    checker.check = broken
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
        s.ehlo("client.sendercorp.com")
        s.mail("boss@sendercorp.com")
        s.rcpt(BOB)
        code, _ = s.data(msg)
        assert code == 451
        assert s.noop()[0] == 250  # the session is still there
