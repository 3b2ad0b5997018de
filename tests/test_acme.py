"""Certificates by ACME against a real CA: Debian's pebble on loopback, with a real twistd.

pebble resolves the names with the test's DNS server (every name -> 127.0.0.1) and validates
HTTP-01 against mailstack's autoconfig listener.  A TLS client that trusts only pebble's root
and checks the host name must then see the issued certificate on IMAPS and SMTPS (and the
MTA-STS policy over HTTPS), and a new one after a forced renewal, while an IMAP session opened
before the renewal goes on working.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time

import pytest
from cryptography import x509

from support.ci import on_ci
from support.dns import serve_zones
from support.pebble import Pebble, pebble_binary
from support.servers import PASSWORDS, env_with_tree, free_port

pytestmark = pytest.mark.slow

HOST = "mail.example.test"
NAMES = [HOST, "mta-sts.example.test", "autoconfig.example.test"]
ALICE = "alice@example.test"


@pytest.fixture
def pebble_bin():
    found = pebble_binary()
    if found is None:
        if on_ci():
            pytest.fail("pebble is not installed (apt-get install pebble)")
        pytest.skip("pebble is not installed (apt-get install pebble)")
    return found


@pytest.fixture
def dns_port(tmp_path):
    yield from serve_zones(tmp_path, {"example.test": [f"A('{name}', '127.0.0.1')" for name in NAMES]})


def _acme_server(server_factory, tmp_path, dns_port, extra: str = "", names=None):
    http_port = free_port()
    pebble = Pebble(tmp_path / "pebble", dns_port, http_port).start()
    acme = [
        "[acme]", "enabled = true", f'directory = "{pebble.directory}"', f'ca_file = "{pebble.ca_file}"',
        'contact = "postmaster@example.test"', "check_interval = 3600", "retry_delay = 3600",
    ]
    if names:
        acme.append(f"names = {json.dumps(names)}")
    srv = server_factory(listeners=["imaps", "submissions", "autoconfig", "https"],
                         endpoints={"autoconfig": f"tcp:{http_port}:interface=127.0.0.1"},
                         extra="\n".join(acme) + "\n" + extra)
    return pebble, srv


def _trusting(root_pem: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=root_pem)  # pebble's root, and nothing else (host names checked)


def _serial(port: int, context: ssl.SSLContext, name: str = HOST) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def _wait_for_certificate(port: int, context: ssl.SSLContext, srv, not_serial: int | None = None,
                          timeout: float = 90.0) -> int:
    """The serial of the certificate ``port`` presents once it verifies (and differs from
    ``not_serial``)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            serial = _serial(port, context)
            if serial != not_serial:
                return serial
            last = f"still serial {serial:x}"
        except ssl.SSLCertVerificationError as e:
            last = e
        assert srv.proc.poll() is None, srv.log_text()
        time.sleep(0.2)
    raise AssertionError(f"no new verified certificate on port {port}: {last}\n{srv.log_text()}")


def _policy(port: int, context: ssl.SSLContext) -> bytes:
    """GET https://mta-sts.example.test/.well-known/mta-sts.txt (the name checked on the certificate)."""
    https = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    https.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                     server_hostname="mta-sts.example.test")
    https.request("GET", "/.well-known/mta-sts.txt", headers={"Host": "mta-sts.example.test"})
    answer = https.getresponse()
    assert answer.status == 200 and answer.getheader("content-type").startswith("text/plain")
    body = answer.read()
    https.close()
    return body


def _cli(srv, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(srv.config_path), *args],
                          capture_output=True, text=True, env=env_with_tree(), timeout=60)


def test_certificate_issued_served_and_renewed_without_dropping_sessions(pebble_bin, server_factory, tmp_path, dns_port):
    pebble, srv = _acme_server(server_factory, tmp_path, dns_port)
    try:
        srv.start()
        root = pebble.root_pem()
        context = _trusting(root)
        imaps, smtps = srv.port("imaps"), srv.port("submissions")

        first = _wait_for_certificate(imaps, context, srv)
        assert _serial(smtps, context) == first
        leaf = x509.load_der_x509_certificate(ssl.PEM_cert_to_DER_cert(
            (srv.base / "acme" / "current" / "cert.pem").read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"))
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        assert sorted(sans) == sorted(NAMES)

        # The state: private files 0600 in a 0700 directory.
        state = srv.base / "acme"
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        for name in ("current/key.pem", "account.json", "status.json"):
            assert stat.S_IMODE(os.stat(state / name).st_mode) == 0o600, name
        # The key and its chain: one directory, made current by one rename of a symlink.
        assert os.readlink(state / "current") == f"certs/{first:x}"
        status = _cli(srv, "acme", "status")
        assert status.returncode == 0 and format(first, "x") in status.stdout, status.stdout + status.stderr

        # The MTA-STS policy over HTTPS, with the same certificate, for mta-sts.<domain>.
        assert _policy(srv.port("https"), context) == \
            b"version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\nmax_age: 604800\r\n"

        # A session opened on the first certificate...
        tls = context.wrap_socket(socket.create_connection(("127.0.0.1", imaps), timeout=30), server_hostname=HOST)
        session = _Imap(tls)
        assert session.command("LOGIN", ALICE, PASSWORDS[ALICE]).startswith("OK")
        assert session.command("SELECT", "INBOX").startswith("OK")

        # ... a forced renewal: the CLI asks, SIGHUP starts it now.
        renew = _cli(srv, "acme", "renew")
        assert renew.returncode == 0, renew.stderr
        srv.proc.send_signal(signal.SIGHUP)
        second = _wait_for_certificate(imaps, context, srv, not_serial=first)
        assert _serial(smtps, context) == second
        assert "acme: new certificate for" in srv.log_text()

        # ... and the old session goes on, on its old certificate.
        assert session.command("NOOP").startswith("OK")
        assert session.command("SELECT", "INBOX").startswith("OK")
        assert x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number == first
        assert session.command("LOGOUT").startswith("OK")
        tls.close()

        # [mta_sts] applies at SIGHUP; the policy served changes with it, on the ACME certificate.
        srv.config_path.write_text(srv.config_path.read_text() + '[mta_sts]\nmode = "enforce"\n')
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload: applied [mta_sts] mode" not in srv.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reload: applied [mta_sts] mode" in srv.log_text(), srv.log_text()[-3000:]
        assert b"mode: enforce\r\n" in _policy(srv.port("https"), context)
    finally:
        pebble.stop()


def test_a_failed_order_is_logged_clearly_and_backs_off(pebble_bin, server_factory, tmp_path, dns_port):
    """A name that does not resolve: the CA's reason is in the log, status.json counts the
    failure and sets the next try retry_delay later, and the placeholder [tls] files stay."""
    pebble, srv = _acme_server(server_factory, tmp_path, dns_port, names=[HOST, "nowhere.example.test"])
    try:
        srv.start()
        deadline = time.monotonic() + 60
        while "failed (1 in a row)" not in srv.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = srv.log_text()
        assert "acme: ordering a certificate for mail.example.test, nowhere.example.test failed (1 in a row)" in log, log
        assert "nowhere.example.test" in log.split("failed (1 in a row)")[1].splitlines()[0]
        status = json.loads((srv.base / "acme" / "status.json").read_text())
        assert status["failures"] == 1 and status["next_attempt"] - time.time() > 3000
        # Still served: the [tls] files (the dev CA), since ACME has issued nothing.
        assert _serial(srv.port("imaps"), srv.ssl_context(), "localhost")
        srv.proc.send_signal(signal.SIGHUP)  # a check during the back-off asks nothing
        deadline = time.monotonic() + 30
        while "reloaded users, aliases and certificate" not in srv.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reloaded users, aliases and certificate" in srv.log_text()  # the check ran right after it
        assert srv.log_text().count("acme: ordering a certificate from") == 1
    finally:
        pebble.stop()


class _Imap:
    """A minimal IMAP client over a socket the test wrapped itself (host name checked)."""

    def __init__(self, sock):
        self.sock, self.file, self.n = sock, sock.makefile("rb"), 0
        assert self.file.readline().startswith(b"* OK")

    def command(self, *words: str) -> str:
        self.n += 1
        tag = f"a{self.n}"
        args = " ".join(f'"{w}"' if i else w for i, w in enumerate(words))
        self.sock.sendall(f"{tag} {args}\r\n".encode())
        while True:
            line = self.file.readline().decode()
            assert line, "connection closed"
            if line.startswith(tag + " "):
                return line[len(tag) + 1:]
