"""MTA-STS (RFC 8461) for the local domains, and the configuration of [acme] and [mta_sts]:
the policy text, its stable id, what the https listener serves, and the errors that stop
start-up.  In process: the ACME conversation itself is tested against pebble in test_acme.py."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import stat
import time

import pytest
from cryptography import x509

from mailstack import cli, config, dnsrecords, mtasts
from mailstack.acmecert import AcmeService, retry_delay
from mailstack.errors import ConfigError
from support.servers import MailServer


@pytest.fixture
def base(tmp_path) -> MailServer:
    return MailServer(tmp_path, listeners=["smtp", "submission", "autoconfig"])


def load(base: MailServer, extra: str = "") -> config.Config:
    base.config_path.write_text(base.config_path.read_text() + extra)
    return config.load(str(base.config_path))


def test_policy_text_and_stable_id(base):
    cfg = load(base, '[mta_sts]\nmode = "enforce"\nmax_age = 86400\nmx = ["mail.example.test", "*.backup.example.test"]\n')
    assert mtasts.policy_text(cfg) == ("version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\n"
                                       "mx: *.backup.example.test\r\nmax_age: 86400\r\n")
    first = mtasts.policy_id(cfg)
    assert re.fullmatch(r"[0-9a-f]{32}", first)  # 1*32 ALPHA/DIGIT (section 3.1)
    assert mtasts.policy_id(config.load(str(base.config_path))) == first  # same policy, same id, any run
    cfg.mta_sts["mode"] = "testing"
    assert mtasts.policy_id(cfg) != first  # a changed policy gets a new id
    [txt] = [r for r in dnsrecords.records_for(cfg, "example.test") if r.name == "_mta-sts.example.test"]
    assert txt.value == f"v=STSv1; id={mtasts.policy_id(cfg)}"


def test_defaults_and_the_dns_command(base, capsys):
    cfg = load(base)
    assert mtasts.policy_text(cfg) == "version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\nmax_age: 604800\r\n"
    for _ in range(2):
        assert cli.main(["--config", str(base.config_path), "dns", "example.test"]) == 0
    out = capsys.readouterr().out
    ids = re.findall(r'_mta-sts\.example\.test\.\s+TXT\s+"v=STSv1; id=([0-9a-f]+)"', out)
    assert ids == [mtasts.policy_id(cfg)] * 2
    assert re.search(r"^mta-sts\.example\.test\.\s+CNAME\s+mail\.example\.test\.", out, re.M)
    assert "; mode: testing" in out and "; mx: mail.example.test" in out
    # [acme] names default: the host name, and mta-sts. and autoconfig. of every domain.
    assert cfg.acme["names"] == ["mail.example.test", "mta-sts.example.test", "autoconfig.example.test"]
    assert cfg.acme["state"] == str(base.base / "acme")  # beside the store root


@pytest.mark.parametrize("extra, key, problem", [
    ('[mta_sts]\nmode = "strict"\n', "[mta_sts] mode", "must be enforce, testing or none"),
    ("[mta_sts]\nmax_age = 0\n", "[mta_sts] max_age", "must be 1 to 31557600"),
    ("[mta_sts]\nmax_age = 40000000\n", "[mta_sts] max_age", "must be 1 to 31557600"),
    ('[mta_sts]\nmx = ["mail.*.example.test"]\n', "[mta_sts] mx", "not a host name or *.name pattern"),
    ('[mta_sts]\nmx = ["bad host"]\n', "[mta_sts] mx", "not a host name"),
    ('[acme]\nenabled = true\ndirectory = "http://ca.example/dir"\n', "[acme] directory", "must be an https:// URL"),
    ('[acme]\nenabled = true\nnames = ["*.example.test"]\n', "[acme] names", "wildcards need DNS-01"),
    ('[acme]\nenabled = true\nnames = ["no_underscores.example.test"]\n', "[acme] names", "not a host name"),
    ('[acme]\nenabled = true\ncontact = "not an address"\n', "[acme] contact", "must be one email address"),
    ('[acme]\nenabled = true\nca_file = "nope.pem"\n', "[acme] ca_file", "file not found"),
    ("[acme]\nenabled = true\nrenew_days = 0\n", "[acme] renew_days", "must be 1 to 365"),
    ("[acme]\nenabled = true\nretry_delay = 600.0\nmax_retry_delay = 60.0\n", "[acme] max_retry_delay", "at least"),
    ("[acme]\nenabled = true\ncheck_interval = 0\n", "[acme] check_interval", "must be above 0"),
    ('[acme]\nenabled = true\nstate = "users"\n', "[acme] state", "not a directory"),
])
def test_config_errors(base, extra, key, problem):
    with pytest.raises(ConfigError) as e:
        load(base, extra)
    assert f"{base.config_path}: {key}: " in str(e.value) and problem in str(e.value), str(e.value)


def test_acme_needs_the_http_listener_and_replaces_tls_files(tmp_path):
    srv = MailServer(tmp_path, listeners=["imaps"])
    text = srv.config_path.read_text().replace('certificate = "tls/server.pem"', "").replace('key = "tls/server-key.pem"', "")
    srv.config_path.write_text(text + "[acme]\nenabled = true\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(srv.config_path))
    assert "[acme] enabled: HTTP-01 challenges are answered by the HTTP listener" in str(e.value)
    # With the HTTP listener, [tls] may be left out: the ACME certificate (or its placeholder) serves.
    srv.config_path.write_text(text.replace('imaps = "tcp:0:interface=127.0.0.1"',
                                            'imaps = "tcp:0:interface=127.0.0.1"\nautoconfig = "tcp:0:interface=127.0.0.1"')
                               + "[acme]\nenabled = true\n")
    cfg = config.load(str(srv.config_path))
    assert cfg.has_tls and cfg.tls_certificate == ""
    # Until the CA issues one, a self-signed placeholder for the names serves; its key is private.
    acme = AcmeService(cfg, reactor=None)
    assert acme.tls.cert_path == acme.state.placeholder_cert
    assert stat.S_IMODE(os.stat(acme.state.placeholder_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(acme.state.dir).st_mode) == 0o700
    with open(acme.state.placeholder_cert, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == \
        ["mail.example.test", "mta-sts.example.test", "autoconfig.example.test"]


def _get(port: int, context, host: str, path: str = mtasts.POLICY_PATH):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
    conn.request("GET", path, headers={"Host": host})
    answer = conn.getresponse()
    body = answer.read()
    conn.close()
    return answer.status, answer.getheader("content-type"), body


def test_https_listener_serves_the_policy_and_autoconfig(inproc_server_factory):
    srv = inproc_server_factory(listeners=["https", "autoconfig", "imaps"],
                                extra='[mta_sts]\nmode = "enforce"\n').start()
    port, context = srv.port("https"), srv.ssl_context()
    status, ctype, body = _get(port, context, "mta-sts.example.test")
    assert (status, ctype) == (200, "text/plain; charset=us-ascii")
    assert body == b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmax_age: 604800\r\n"
    assert _get(port, context, "MTA-STS.example.test.:443")[0] == 200
    assert _get(port, context, "mta-sts.other.example")[0] == 404  # not one of our domains
    assert _get(port, context, "mail.example.test")[0] == 404
    status, ctype, body = _get(port, context, "autoconfig.example.test", "/mail/config-v1.1.xml")
    assert status == 200 and b"<clientConfig" in body
    # No [acme]: the HTTP listener has no challenges to answer.
    conn = http.client.HTTPConnection("127.0.0.1", srv.port("autoconfig"), timeout=10)
    conn.request("GET", "/.well-known/acme-challenge/abc")
    assert conn.getresponse().status == 404
    conn.close()


def test_when_a_certificate_is_due(base):
    """[acme] scheduling: none yet, expiry within renew_days, names changed, back-off after a
    failure, and a forced renewal that does not wait for the back-off."""
    cfg = load(base, "[acme]\nenabled = true\nrenew_days = 30\n")
    acme = AcmeService(cfg, reactor=None)  # not started: nothing is ordered
    state = acme.state
    # Before any issuance: the [tls] files are served (they are set), and a certificate is due.
    assert acme.tls.cert_path == cfg.tls_certificate
    assert acme.due() == "no certificate yet"
    with open(cfg.tls_key, "rb") as k, open(cfg.tls_certificate, "rb") as c:
        state.install(k.read(), c.read(), "1")
    assert os.readlink(state.current) == os.path.join("certs", "1")
    now = time.time()
    issued = {"issued": now, "names": cfg.acme["names"], "directory": cfg.acme["directory"], "not_after": now + 60 * 86400}
    state.write_status(issued)
    assert acme.due(now) is None
    assert acme.due(now + 31 * 86400).startswith("it expires")  # 29 days left
    state.write_status(dict(issued, names=["mail.example.test"]))
    assert acme.due(now) == "the names changed"
    state.write_status(dict(issued, not_after=now + 86400, failures=2, next_attempt=now + 600))
    assert acme.due(now) is None  # backing off
    assert acme.due(now + 601).startswith("it expires")
    state.request_renewal()
    assert acme.due(now) == "renewal asked for (mailstack acme renew)"
    assert [retry_delay(n, 600, 3600) for n in (1, 2, 3, 4, 5, 1000)] == [600, 1200, 2400, 3600, 3600, 3600]
    # A restart serves the stored ACME certificate, not [tls].
    assert AcmeService(cfg, reactor=None).tls.cert_path == state.cert


@pytest.mark.slow
def test_dns_check_tells_an_old_policy_id(base, tmp_path):
    """`mailstack dns --check`: the published _mta-sts id must be the current one, since
    senders refetch the policy only when the id changes (RFC 8461 section 3.1)."""
    from support.dns import serve_zones

    cfg = load(base)
    current = mtasts.policy_id(cfg)
    zones = {"example.test": ["TXT('_mta-sts.example.test', b'v=STSv1; id=20240101000000')"],
             "other.test": [f"TXT('_mta-sts.other.test', b'v=STSv1;id={current}')"]}
    servers = serve_zones(tmp_path, zones)
    port = next(servers)
    try:
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = ["127.0.0.1"], port
        [record] = [r for r in dnsrecords.records_for(cfg, "example.test") if r.name == "_mta-sts.example.test"]
        [(_, status, found)] = dnsrecords.check([record], resolver)
        assert (status, found) == ("wrong", "v=STSv1; id=20240101000000")
        record.name = "_mta-sts.other.test"  # published without the optional blank: still the same
        [(_, status, _)] = dnsrecords.check([record], resolver)
        assert status == "ok"
    finally:
        next(servers, None)
