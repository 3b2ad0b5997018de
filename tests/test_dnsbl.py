"""Client checks at connect on the MX port (issue 20 item 3): DNS block and allow lists
(RFC 5782) served by the test DNS server, the local allow/block list, iprev (RFC 8601 3),
early talkers.  In process: the real service, real sockets, exact replies."""

from __future__ import annotations

import ipaddress
import os
import smtplib
import socket
import time

import pytest
from twisted.internet import reactor

from support.clients import SmtpClient
from support.dns import serve_zones
from support.inprocess import in_reactor
from support.servers import PASSWORDS, free_port

from mailstack import config
from mailstack.antispam.dnslists import DnsList, client_address, parse_spec, reversed_name
from mailstack.errors import ConfigError

BOB, ALICE = "bob@example.test", "alice@example.test"
MSG = b"From: someone@sender.example\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
REFUSED = "5.7.1 Service unavailable; client [127.0.0.1] blocked using "

ZONES = {
    "bl.test": ["A('1.0.0.127.bl.test', '127.0.0.2', ttl=300)"],
    "second.test": ["A('1.0.0.127.second.test', '127.0.0.10')"],
    "codes.test": ["A('1.0.0.127.codes.test', '127.0.0.20')"],
    "refusing.test": ["A('1.0.0.127.refusing.test', '127.255.255.254')"],
    "hijack.test": ["A('1.0.0.127.hijack.test', '198.51.100.1')"],
    "wl.test": ["A('1.0.0.127.wl.test', '127.0.10.2')"],
    "clean.test": ["A('2.0.0.127.clean.test', '127.0.0.2')"],  # lists another address only
    "v6.test": [f"A('{reversed_name(ipaddress.ip_address('::1'))}.v6.test', '127.0.0.2')"],
    "127.in-addr.arpa": ["PTR('1.0.0.127.in-addr.arpa', 'client.good.test')"],
    "good.test": ["A('client.good.test', '127.0.0.1')"],
}


@pytest.fixture(scope="module")
def dns_port(tmp_path_factory):
    yield from serve_zones(tmp_path_factory.mktemp("dns"), ZONES)


def antispam(dns_port: int, **keys) -> str:
    lines = ["[dns]", 'nameservers = ["127.0.0.1"]', f"port = {dns_port}", "timeout = 2", "[antispam]"]
    for key, value in keys.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (str, os.PathLike)):
            value = f'"{value}"'
        elif isinstance(value, list):
            value = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def mx(srv):
    return SmtpClient(srv.port("smtp"))


def send(client: SmtpClient, sender: str = "someone@sender.example", rcpt: str = BOB):
    """EHLO, MAIL, RCPT: the RCPT reply."""
    assert client.cmd("EHLO client.example")[0] == 250
    assert client.cmd(f"MAIL FROM:<{sender}>") == (250, f"2.1.0 Sender <{sender}> OK")
    return client.cmd(f"RCPT TO:<{rcpt}>")


def deliver(client: SmtpClient, sender: str = "someone@sender.example") -> tuple[int, str]:
    assert send(client, sender)[0] == 250
    assert client.cmd("DATA")[0] == 354
    client.send(MSG + b".\r\n")
    return client.read()


# -- names, specifications, configuration ----------------------------------------------------------


def test_reversed_names_as_rfc_5782_gives_them():
    # RFC 5782 2.1 and 2.4, the examples of the RFC
    assert reversed_name(ipaddress.ip_address("192.168.42.23")) == "23.42.168.192"
    assert reversed_name(ipaddress.ip_address("2001:db8:1:2:3:4:567:89ab")) == \
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
    assert client_address("::ffff:192.0.2.1") == ipaddress.ip_address("192.0.2.1")  # a tcp6 listener's IPv4 client
    assert client_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert client_address("unix-socket") is None


def test_list_specifications():
    assert parse_spec("zen.spamhaus.org") == DnsList("zen.spamhaus.org", (), 1, "zen.spamhaus.org")
    spec = parse_spec("Zen.Spamhaus.Org.=127.0.0.2-127.0.0.11, 127.0.1.0/24*3")
    assert spec.zone == "zen.spamhaus.org" and spec.weight == 3
    assert [spec.counts(a) for a in ("127.0.0.2", "127.0.0.11", "127.0.0.12", "127.0.1.255", "127.0.0.1")] == \
        [True, True, False, True, False]
    default = parse_spec("bl.example")
    assert [default.counts(a) for a in ("127.0.0.2", "127.1.2.3", "127.255.255.254", "198.51.100.1")] == \
        [True, True, False, False]
    for bad in ("", "no_dot", "bl.example=", "bl.example=127.0.0.x", "bl.example*0", "bl.example*x",
                "bl.example=127.0.0.9-127.0.0.2"):
        with pytest.raises(ValueError):
            parse_spec(bad)


@pytest.mark.parametrize("extra, key, problem", [
    ('dnsbl = ["bl.example=127.0.0.300"]', "[antispam] dnsbl", "bad return code '127.0.0.300'"),
    ('dnswl = ["not a zone"]', "[antispam] dnswl", "is not a DNS zone name"),
    ("dnsbl_threshold = 0", "[antispam] dnsbl_threshold", "must be at least 1"),
    ('reject_at = "data"', "[antispam] reject_at", 'must be "rcpt" or "ehlo"'),
    ('iprev = "yes"', "[antispam] iprev", 'must be "off", "record" or "require"'),
    ("greet_wait = 31", "[antispam] greet_wait", "must be 0 to 30 seconds"),
    ('client_list = "nope"', "[antispam] client_list", "file not found"),
    ('client_list = "lists"', "[antispam] client_list", "line 2: must be 'allow' or 'block'"),
    ('client_list = "lists2"', "[antispam] client_list", "line 1: 'x_y' is not an address, network or domain"),
    ('client_list = "open"', "[antispam] client_list", "is world-writable (mode 646)"),
])
def test_config_errors_name_file_key_and_problem(inproc_server_factory, extra, key, problem):
    srv = inproc_server_factory(listeners=["smtp"], extra="[antispam]\n" + extra + "\n")
    (srv.base / "lists").write_text("allow 192.0.2.1\ndeny 192.0.2.2\n")
    (srv.base / "lists2").write_text("block x_y\n")
    (srv.base / "open").write_text("allow 192.0.2.1\n")
    (srv.base / "open").chmod(0o646)
    with pytest.raises(ConfigError) as e:
        config.load(str(srv.config_path))
    assert str(e.value).startswith(f"{srv.config_path}: {key}: ") and problem in str(e.value), str(e.value)


# -- DNS lists ------------------------------------------------------------------------------------


def test_listed_client_refused_at_rcpt_with_the_list_named(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=["clean.test", "bl.test"])).start()
    client = mx(srv)
    assert client.greeting[0] == 220
    assert send(client) == (554, REFUSED + "bl.test")
    assert client.cmd("QUIT")[0] == 221
    assert "score 1 (threshold 1): bl.test 127.0.0.2" in srv.log_text()
    assert srv.messages(BOB) == []


def test_a_client_no_list_names_is_accepted(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=["clean.test"])).start()
    assert deliver(mx(srv))[0] == 250
    assert len(srv.wait_for_messages(BOB, 1)) == 1


def test_refused_after_ehlo_when_configured(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=["bl.test"], reject_at="ehlo")).start()
    client = mx(srv)
    assert client.cmd("EHLO client.example") == (554, REFUSED + "bl.test")
    assert client.cmd("HELO client.example") == (554, REFUSED + "bl.test")
    assert client.cmd("MAIL FROM:<a@sender.example>")[0] == 503  # never greeted


def test_return_codes_weights_and_threshold(inproc_server_factory, dns_port):
    # codes.test answers 127.0.0.20: outside its filter, it does not count
    lists = ["codes.test=127.0.0.2-127.0.0.11", "second.test=127.0.0.10*2", "bl.test"]
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=lists, dnsbl_threshold=3)).start()
    assert send(mx(srv)) == (554, REFUSED + "second.test")  # 2 + 1 >= 3; named: the heaviest
    srv.stop()
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=lists, dnsbl_threshold=4)).start()
    assert send(mx(srv))[0] == 250  # 3 < 4


def test_an_allow_list_takes_its_weight_off(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(
        dns_port, dnsbl=["bl.test", "second.test"], dnswl=["wl.test=127.0.10.0/24*2"])).start()
    assert deliver(mx(srv))[0] == 250  # 1 + 1 - 2 < 1
    srv.stop()
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(
        dns_port, dnsbl=["bl.test", "second.test"], dnswl=["wl.test=127.0.0.0/24*2"])).start()
    assert send(mx(srv)) == (554, REFUSED + "bl.test")  # its answer is not among the codes given


def test_refusal_codes_and_foreign_answers_never_count(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=["refusing.test", "hijack.test"])).start()
    assert deliver(mx(srv))[0] == 250
    assert "DNS list refusing.test: no answer for 127.0.0.1 (the list refused the query (answer 127.255.255.254))" \
        in srv.log_text()


def test_a_dns_failure_refuses_nothing_and_is_logged(inproc_server_factory):
    dead = free_port()
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dead, dnsbl=["bl.test"]).replace(
        "timeout = 2", "timeout = 0.5")).start()
    started = time.monotonic()
    assert deliver(mx(srv))[0] == 250
    assert time.monotonic() - started < 5
    assert "DNS list bl.test: no answer for 127.0.0.1 (" in srv.log_text()
    assert "the list is skipped, nothing refused" in srv.log_text()


def test_answers_are_cached_for_their_ttl(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=["bl.test"])).start()
    assert send(mx(srv))[0] == 554
    resolver = srv.service.context.resolver
    resolver.port = free_port()  # nothing answers there: the next answer must come from the cache
    started = time.monotonic()
    assert send(mx(srv)) == (554, REFUSED + "bl.test")
    assert time.monotonic() - started < 1.5


def test_submission_is_never_checked(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp", "submission"], extra=antispam(dns_port, dnsbl=["bl.test"])).start()
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=10) as s:
        s.ehlo("laptop.example")
        s.login(ALICE, PASSWORDS[ALICE])
        assert s.sendmail(ALICE, [BOB], MSG.replace(b"someone@sender.example", ALICE.encode())) == {}
    assert send(mx(srv))[0] == 554


def test_trusted_networks_are_not_checked(inproc_server_factory, dns_port):
    extra = antispam(dns_port, dnsbl=["bl.test"]) + '[smtp]\ntrusted_networks = ["127.0.0.0/8"]\n'
    srv = inproc_server_factory(listeners=["smtp"], extra=extra).start()
    assert deliver(mx(srv))[0] == 250


def test_ipv6_client_looked_up_by_its_nibbles(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=["v6.test"]),
                                endpoints={"smtp": "tcp6:0:interface=\\\\:\\\\:1"}).start()
    sock = socket.create_connection(("::1", srv.port("smtp")), timeout=10)
    client = SmtpClient.__new__(SmtpClient)
    client.sock, client.buf = sock, b""
    assert client.read()[0] == 220
    assert send(client) == (554, "5.7.1 Service unavailable; client [::1] blocked using v6.test")


# -- the local list --------------------------------------------------------------------------------


def test_local_list_blocks_allows_and_is_reloaded_on_change(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=["bl.test"], client_list="clients"))
    lists = srv.base / "clients"
    lists.write_text("# ours\nallow 127.0.0.0/8\nblock 127.0.0.1\n")  # the longer one wins
    srv.start()
    assert send(mx(srv)) == (554, "5.7.1 Service unavailable; client [127.0.0.1] blocked by local policy")
    lists.write_text("block 127.0.0.0/8\nallow 127.0.0.1   # the DNS lists too are skipped\n")
    assert deliver(mx(srv))[0] == 250
    lists.write_text("allow partner.example\nblock spam.example\n")
    client = mx(srv)
    assert send(client, "x@spam.example") == (554, "5.7.1 Service unavailable; sender domain spam.example blocked by local policy")
    assert client.cmd("RSET")[0] == 250
    assert client.cmd("MAIL FROM:<x@mail.partner.example>")[0] == 250
    assert client.cmd(f"RCPT TO:<{BOB}>")[0] == 250  # an allowed sender domain skips the DNS lists
    assert client.cmd("RSET")[0] == 250
    assert client.cmd("MAIL FROM:<x@other.example>")[0] == 250
    assert client.cmd(f"RCPT TO:<{BOB}>") == (554, REFUSED + "bl.test")
    lists.write_text("allow 127.0.0.1\nthis line is broken\n")
    assert send(mx(srv), "x@spam.example")[0] == 554  # the last good list is kept
    assert "not reloading" in srv.log_text() and "line 2" in srv.log_text()


# -- iprev -----------------------------------------------------------------------------------------


def test_iprev_recorded_in_authentication_results(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, iprev="record")).start()
    assert deliver(mx(srv))[0] == 250
    [stored] = srv.wait_for_messages(BOB, 1)
    assert b"\r\nAuthentication-Results: mail.example.test; iprev=pass policy.iprev=127.0.0.1 (client.good.test)\r\n" in stored


def received_field(stored: bytes) -> bytes:
    [field] = [f for f in stored.split(b"\r\n\r\n")[0].replace(b"\r\n\t", b" ").split(b"\r\n")
               if f.startswith(b"Received:")]
    return field


def test_received_names_the_client_whose_reverse_dns_leads_back(inproc_server_factory, dns_port):
    # RFC 5321 4.4: TCP-info = address-literal / ( Domain FWS address-literal ), the name verified.
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, iprev="record")).start()
    assert deliver(mx(srv))[0] == 250
    [stored] = srv.wait_for_messages(BOB, 1)
    assert received_field(stored).startswith(b"Received: from ")
    assert b" (client.good.test [127.0.0.1]) by mail.example.test (mailstack) with " in received_field(stored)


def test_iprev_with_the_other_checks_in_one_field(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, iprev="record"), checks=True).start()
    assert deliver(mx(srv))[0] == 250
    [stored] = srv.wait_for_messages(BOB, 1)
    [field] = [f for f in stored.split(b"\r\n\r\n")[0].replace(b"\r\n ", b" ").split(b"\r\n")
               if f.startswith(b"Authentication-Results:")]
    assert field.startswith(b"Authentication-Results: mail.example.test; iprev=pass policy.iprev=127.0.0.1 (client.good.test);")
    assert b"spf=" in field and b"dmarc=" in field


@pytest.mark.parametrize("zones, result", [
    ({"127.in-addr.arpa": ["PTR('1.0.0.127.in-addr.arpa', 'liar.bad.test')"], "bad.test": ["A('liar.bad.test', '192.0.2.1')"]},
     b"iprev=fail"),
    ({"other.test": []}, b"iprev=permerror"),  # RFC 8601 2.7.3: no PTR data published
], ids=["fail", "permerror"])
def test_iprev_failures_recorded_or_refused(inproc_server_factory, tmp_path, zones, result):
    dns = serve_zones(tmp_path, zones)
    port = next(dns)
    try:
        srv = inproc_server_factory(listeners=["smtp"], extra=antispam(port, iprev="record")).start()
        assert deliver(mx(srv))[0] == 250
        [stored] = srv.wait_for_messages(BOB, 1)
        assert b"\r\nAuthentication-Results: mail.example.test; " + result + b" policy.iprev=127.0.0.1\r\n" in stored
        assert b" ([127.0.0.1]) by mail.example.test " in received_field(stored)  # no unverified name
        srv.stop()
        srv = inproc_server_factory(listeners=["smtp"], extra=antispam(port, iprev="require")).start()
        assert send(mx(srv)) == (550, "5.7.25 Reverse DNS validation failed for [127.0.0.1]")
    finally:
        next(dns, None)


def test_iprev_required_and_dns_down_is_a_temporary_refusal(inproc_server_factory):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(free_port(), iprev="require").replace(
        "timeout = 2", "timeout = 0.5")).start()
    assert send(mx(srv)) == (450, "4.7.25 Reverse DNS of [127.0.0.1] cannot be checked now; try again later")


# -- early talkers ---------------------------------------------------------------------------------


def _talk_early(srv, wait: float) -> bytes:
    """Connect and send EHLO and QUIT before the server could greet; everything it answers."""
    if wait == 0:  # hold the reactor so that the bytes are in before it accepts the connection
        reactor.callFromThread(time.sleep, 0.5)
        time.sleep(0.05)
    sock = socket.create_connection(("127.0.0.1", srv.port("smtp")), timeout=10)
    sock.sendall(b"EHLO early.example\r\nQUIT\r\n")
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    sock.close()
    return data


@pytest.mark.parametrize("wait", [0, 0.3])
def test_early_talker_is_refused(inproc_server_factory, dns_port, wait):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, early_talkers=True, greet_wait=wait)).start()
    assert _talk_early(srv, wait) == (b"554 5.5.1 Service unavailable; client [127.0.0.1] spoke before the greeting\r\n"
                                      b"503 5.5.1 Bad sequence of commands: no service here\r\n"
                                      b"221 2.0.0 mail.example.test closing connection\r\n")
    assert "spoke before the greeting" in srv.log_text()


def test_a_client_that_waits_is_greeted(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, early_talkers=True, greet_wait=0.2)).start()
    started = time.monotonic()
    client = mx(srv)
    assert client.greeting == (220, "mail.example.test ESMTP mailstack")
    assert time.monotonic() - started >= 0.2
    assert deliver(client)[0] == 250
    in_reactor(lambda: None)


def test_sighup_applies_antispam_to_new_sessions(inproc_server_factory, dns_port):
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port)).start()
    before = mx(srv)
    assert send(before)[0] == 250
    srv.config_path.write_text(srv.config_path.read_text().replace("[antispam]\n", '[antispam]\ndnsbl = ["bl.test"]\n'))
    in_reactor(srv.service.reload)
    assert "reload: applied [antispam] dnsbl" in srv.log_text()
    assert send(mx(srv)) == (554, REFUSED + "bl.test")
    assert before.cmd("RSET")[0] == 250  # a session open before keeps going


def test_refusals_and_list_failures_are_counted(inproc_server_factory, dns_port):
    from mailstack import metrics

    def value(name, **labels):
        return metrics.REGISTRY.get_sample_value(name, labels) or 0

    refused, failed = value("mailstack_client_refusals_total", reason="dnsbl"), \
        value("mailstack_dnslist_failures_total", zone="refusing.test")
    srv = inproc_server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=["bl.test", "refusing.test"])).start()
    client = mx(srv)
    assert send(client)[0] == 554
    assert client.cmd(f"RCPT TO:<{ALICE}>")[0] == 554
    assert value("mailstack_client_refusals_total", reason="dnsbl") == refused + 2
    assert value("mailstack_dnslist_failures_total", zone="refusing.test") == failed + 1


def test_in_a_twistd_process(server_factory, dns_port):
    # The same checks in the real process: a list, iprev, and an early talker during the wait.
    srv = server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=["clean.test"], iprev="record",
                                                            early_talkers=True, greet_wait=0.3)).start()
    assert _talk_early(srv, 0.3).startswith(b"554 5.5.1 Service unavailable; client [127.0.0.1] spoke before the greeting\r\n")
    assert deliver(mx(srv))[0] == 250
    [stored] = srv.wait_for_messages(BOB, 1)
    assert b"\r\nAuthentication-Results: mail.example.test; iprev=pass policy.iprev=127.0.0.1 (client.good.test)\r\n" in stored
    srv.stop()
    srv = server_factory(listeners=["smtp"], extra=antispam(dns_port, dnsbl=["bl.test"])).start()
    assert send(mx(srv)) == (554, REFUSED + "bl.test")
