"""SPF, DKIM and DMARC done once when rspamd is configured (issue 20, item 1: "avoid doing
every check twice"): with ``[rspamd] checks = "rspamd"`` (the default) mailstack reads the
results from rspamd's answer and acts on them as on its own; with ``"mailstack"`` it checks
and rspamd skips.  Against a real rspamd that asks the tests' DNS server
(tests/support/rspamd.py with ``dns_port``); the same zones as tests/test_authentication.py.

Skipped without rspamd (apt-get install rspamd redis-server), failed on CI."""

from __future__ import annotations

import smtplib

import dkim
import pytest
from support import rspamd as rspamd_support
from support.dns import serve_zones
from support.inprocess import InProcessServer
from support.servers import free_port
from test_authentication import SENDER_KEY, SENDER_TXT, txt

from mailstack import metrics
from mailstack.antispam.rspamd import Result, authentication_of
from mailstack.smtp import authentication

BOB = "bob@example.test"
ZONES = {
    "sendercorp.com": [txt("sendercorp.com", "v=spf1 ip4:127.0.0.1 -all"),
                       txt("_dmarc.sendercorp.com", "v=DMARC1; p=reject"),
                       txt("sel._domainkey.sendercorp.com", SENDER_TXT)],
    "quarantinenews.org": [txt("quarantinenews.org", "v=spf1 -all"),
                           txt("_dmarc.quarantinenews.org", "v=DMARC1; p=quarantine")],
    "evilcorp.net": [txt("evilcorp.net", "v=spf1 ip4:127.0.0.1 -all")],
}
SIGNED_BODY = (b"From: Boss <boss@sendercorp.com>\r\nTo: bob@example.test\r\nSubject: signed\r\n"
               b"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <s1@sendercorp.com>\r\n\r\nAll good.\r\n")
#: What mailstack writes from rspamd's symbols for SIGNED_BODY (authheaders' own checks write
#: reason="..." and header.i=, so this line also tells who checked).
RSPAMD_RESULTS = ("Authentication-Results: mail.example.test; spf=pass smtp.helo=client.sendercorp.com "
                  "smtp.mailfrom=sendercorp.com; dkim=pass header.d=sendercorp.com header.s=sel; "
                  "dmarc=pass header.from=sendercorp.com policy.dmarc=reject")


@pytest.fixture(scope="module")
def dns_port(tmp_path_factory):
    yield from serve_zones(tmp_path_factory.mktemp("zones"), ZONES)


@pytest.fixture(scope="module")
def checking_rspamd(tmp_path_factory, dns_port):
    server = rspamd_support.start_or_skip(tmp_path_factory.mktemp("rspamd"), dns_port=dns_port)
    yield server
    server.stop()


@pytest.fixture
def make_server(tmp_path, dns_port):
    servers = []

    def make(url: str, **options) -> InProcessServer:
        extra = (f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\ntimeout = 3\n[rspamd]\nurl = "{url}"\n'
                 + "".join(f'{k} = "{v}"\n' for k, v in options.items()))
        srv = InProcessServer(tmp_path / f"srv{len(servers)}", listeners=["smtp"], extra=extra, checks=True).start()
        servers.append(srv)
        return srv
    yield make
    for srv in servers:
        srv.stop()


def mx_send(srv, sender: str, message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
        s.ehlo("client.sendercorp.com")
        s.mail(sender)
        s.rcpt(BOB)
        return s.data(message)


def signed() -> bytes:
    return dkim.sign(SIGNED_BODY, b"sel", b"sendercorp.com", SENDER_KEY,
                     include_headers=[b"from", b"to", b"subject", b"message-id"]) + SIGNED_BODY


def our_results(stored: bytes) -> list[str]:
    head = stored.split(b"\r\n\r\n")[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")
    return [line for line in head.split("\r\n") if line.startswith("Authentication-Results: mail.example.test")]


@pytest.mark.slow
def test_rspamd_checks_and_mailstack_writes_the_header(checking_rspamd, make_server):
    srv = make_server(checking_rspamd.url)
    forged = b"Authentication-Results: mail.example.test; dkim=pass header.d=sendercorp.com (forged)\r\n"
    code, text = mx_send(srv, "boss@sendercorp.com", forged + signed())
    assert code == 250, text
    [stored] = srv.wait_for_messages(BOB, 1)
    assert our_results(stored) == [RSPAMD_RESULTS]  # once: the forged one claiming our name is gone
    assert b"forged" not in stored and stored.endswith(SIGNED_BODY)


@pytest.mark.slow
def test_dmarc_reject_from_rspamd_is_refused_for_its_reason(checking_rspamd, make_server):
    srv = make_server(checking_rspamd.url)
    spoof = b"From: boss@sendercorp.com\r\nTo: bob@example.test\r\nSubject: pay this invoice\r\n\r\nurgent\r\n"
    before = scans()
    code, text = mx_send(srv, "evil@evilcorp.net", spoof)
    assert code == 550 and text.startswith(b"5.7.1 Message refused: DMARC policy of sendercorp.com says reject"), text
    assert srv.messages(BOB) == []
    assert scans() == before + 1  # the scan is counted, though DMARC's refusal came first


def scans() -> float:
    """mailstack_rspamd_scans_total over every action (the in-process server's registry)."""
    return sum(s.value for m in metrics.RSPAMD_SCANS.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.mark.slow
def test_dmarc_quarantine_from_rspamd_goes_to_junk(checking_rspamd, make_server):
    srv = make_server(checking_rspamd.url)
    msg = b"From: news@quarantinenews.org\r\nTo: bob@example.test\r\nSubject: maybe spam\r\n\r\nhello\r\n"
    assert mx_send(srv, "news@quarantinenews.org", msg)[0] == 250
    [junk] = srv.wait_for_messages(BOB, 1, folder="Junk")
    [results] = our_results(junk)
    assert "spf=fail" in results and "dmarc=fail header.from=quarantinenews.org policy.dmarc=quarantine" in results
    assert srv.messages(BOB) == []


@pytest.mark.slow
def test_checks_mailstack_checks_itself_and_rspamd_skips(checking_rspamd, make_server):
    srv = make_server(checking_rspamd.url, checks="mailstack")
    assert mx_send(srv, "boss@sendercorp.com", signed())[0] == 250
    [stored] = srv.wait_for_messages(BOB, 1)
    [results] = our_results(stored)
    assert results != RSPAMD_RESULTS and 'spf=pass reason="sender SPF authorized"' in results  # authheaders'
    assert "dkim=pass header.d=sendercorp.com header.i=@sendercorp.com" in results


@pytest.mark.slow
def test_without_rspamd_answer_and_accept_mailstack_checks(make_server):
    srv = make_server(f"http://127.0.0.1:{free_port()}", on_failure="accept")
    spoof = b"From: boss@sendercorp.com\r\nTo: bob@example.test\r\nSubject: pay this invoice\r\n\r\nurgent\r\n"
    code, text = mx_send(srv, "evil@evilcorp.net", spoof)  # DMARC still enforced, by mailstack
    assert code == 550 and b"DMARC policy of sendercorp.com says reject" in text
    assert mx_send(srv, "boss@sendercorp.com", signed())[0] == 250
    [stored] = srv.wait_for_messages(BOB, 1)
    assert 'spf=pass reason="sender SPF authorized"' in our_results(stored)[0]


@pytest.fixture(scope="module")
def rspamd_not_checking(tmp_path_factory):
    """rspamd with SPF, DKIM and DMARC off: its answers have none of their symbols (as for a
    client in its local_addrs)."""
    server = rspamd_support.start_or_skip(tmp_path_factory.mktemp("rspamd-plain"))
    yield server
    server.stop()


@pytest.mark.slow
def test_what_rspamd_did_not_check_mailstack_checks(rspamd_not_checking, make_server):
    srv = make_server(rspamd_not_checking.url)
    assert mx_send(srv, "boss@sendercorp.com", signed())[0] == 250
    [stored] = srv.wait_for_messages(BOB, 1)
    assert 'spf=pass reason="sender SPF authorized"' in our_results(stored)[0]
    spoof = b"From: boss@sendercorp.com\r\nTo: bob@example.test\r\nSubject: pay this invoice\r\n\r\nurgent\r\n"
    assert mx_send(srv, "evil@evilcorp.net", spoof)[0] == 550


# -- the mapping, in process: rspamd's symbols (rspamd 3.4's names and options) -> results ---------


def _result(symbols: dict) -> Result:
    return Result("no action", 0.0, 15.0, {name: 0.0 for name in symbols},
                  {name: options for name, options in symbols.items() if options is not None})


def _header(symbols: dict, spf=True, dkim_=True, dmarc=True, sender="a@sender.example", helo="mx.sender.example"):
    found = authentication_of(_result(symbols), spf, dkim_, dmarc, sender, helo)
    if found is None:
        return None
    verdict = authentication.decide("mx.example.test", found.results, found.temporary, found.dmarc, True)
    return verdict.action, verdict.header.decode().rstrip("\r\n"), verdict.reason


def test_symbols_become_results_and_a_verdict():
    passing = {"R_SPF_ALLOW": ["+ip4:192.0.2.1:c"], "R_DKIM_ALLOW": ["sender.example:s=k1", "esp.example:s=k2"],
               "DMARC_POLICY_ALLOW": ["sender.example", "reject"]}
    assert _header(passing) == ("deliver", "Authentication-Results: mx.example.test; spf=pass "
                                "smtp.helo=mx.sender.example smtp.mailfrom=sender.example; dkim=pass "
                                "header.d=sender.example header.s=k1; dkim=pass header.d=esp.example header.s=k2; "
                                "dmarc=pass header.from=sender.example policy.dmarc=reject", "")
    rejected = {"R_SPF_FAIL": ["-all"], "R_DKIM_NA": None,
                "DMARC_POLICY_REJECT": ["sender.example : No valid SPF, No valid DKIM", "reject"]}
    action, header, reason = _header(rejected)
    assert action == "reject" and reason == "DMARC policy of sender.example says reject"
    assert header.endswith("spf=fail smtp.helo=mx.sender.example smtp.mailfrom=sender.example; dkim=none; "
                           "dmarc=fail header.from=sender.example policy.dmarc=reject")
    assert _header({"R_SPF_SOFTFAIL": None, "R_DKIM_REJECT": ["sender.example:s=k1"],
                    "DMARC_POLICY_QUARANTINE": ["sender.example : x", "quarantine"]})[0] == "junk"
    assert _header({"R_SPF_NA": None, "R_DKIM_NA": None, "DMARC_POLICY_SOFTFAIL": ["sender.example : x", "none"]})[0] == "deliver"


def test_a_dns_failure_in_rspamd_is_a_temporary_failure():
    for symbols, which in [({"R_SPF_DNSFAIL": None, "R_DKIM_NA": None, "DMARC_NA": ["s.example"]}, "SPF"),
                           ({"R_SPF_NA": None, "R_DKIM_TEMPFAIL": ["s.example:s=k"], "DMARC_NA": ["s.example"]}, "DKIM"),
                           ({"R_SPF_NA": None, "R_DKIM_NA": None, "DMARC_DNSFAIL": ["s.example"]}, "DMARC")]:
        action, header, reason = _header(symbols)
        assert action == "tempfail" and reason == f"DNS failure during {which} checks" and "temperror" in header
    # a signature that passes decides DKIM, whatever another could not check
    assert _header({"R_SPF_NA": None, "R_DKIM_ALLOW": ["a.example:s=k"], "R_DKIM_TEMPFAIL": ["b.example:s=k"],
                    "DMARC_NA": ["a.example"]})[0] == "deliver"


def test_a_check_rspamd_did_not_run_is_none_and_checks_turned_off_are_left_out():
    assert _header({"R_DKIM_NA": None, "DMARC_NA": ["s.example"]}) is None  # no SPF symbol
    assert _header({"R_SPF_NA": None, "DMARC_NA": ["s.example"]}) is None
    assert _header({"R_SPF_NA": None, "R_DKIM_NA": None}) is None
    assert _header({"R_SPF_ALLOW": None}, dkim_=False, dmarc=False)[1] == (
        "Authentication-Results: mx.example.test; spf=pass smtp.helo=mx.sender.example smtp.mailfrom=sender.example")


def test_what_a_stranger_wrote_in_an_option_does_not_reach_the_header():
    symbols = {"R_SPF_ALLOW": None, "R_DKIM_ALLOW": ["evil; dkim=pass:s=x y"],
               "DMARC_POLICY_ALLOW": ["a.example; spf=pass", "reject"]}
    header = _header(symbols, sender="")[1]
    assert "evil" not in header and "a.example; spf" not in header
    assert "smtp.helo" not in _header({"R_SPF_ALLOW": None}, dkim_=False, dmarc=False, helo="x; dkim=pass")[1]
    assert "smtp.mailfrom=mx.sender.example" in header  # the null sender: the HELO's domain (RFC 7208 2.4)
