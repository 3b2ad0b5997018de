"""Issue 17's "done when": the install README's "Install on a server" describes, done for real.

Install from the wheel into a fresh venv; ``mailstack init`` (production, ACME, loopback ports
for the test); the service user; users, an alias and a DKIM key added as root; a certificate
from a local pebble; the server started as the service user (as systemd's unit does it); mail
sent signed and read over IMAPS verifying the chain to pebble's root; ``/metrics`` scraped
and its counts exactly what was done;
``mailstack config check`` on a broken configuration (exit 2, the key named).

The steps are the README's, in its order; where the test differs it says why (loopback ports
and directories of its own instead of /etc and /var/lib, a test CA instead of Let's Encrypt).
"""

from __future__ import annotations

import grp
import http.client
import imaplib
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.ci import on_ci
from support.dns import serve_zones
from support.install import SERVICE_USER, ensure_service_user, installed_venv, public_dir
from support.pebble import Pebble, pebble_binary
from support.servers import free_port

pytestmark = pytest.mark.slow

HOST, DOMAIN = "mail.example.test", "example.test"
YOU, FRIEND = f"you@{DOMAIN}", f"friend@{DOMAIN}"
PASSWORDS = {YOU: "you-password-1", FRIEND: "friend-password-2"}


@pytest.fixture
def dns_port(tmp_path):
    names = [HOST, f"mta-sts.{DOMAIN}", f"autoconfig.{DOMAIN}"]
    yield from serve_zones(tmp_path, {DOMAIN: [f"A('{name}', '127.0.0.1')" for name in names]})


class Admin:
    """Root at a shell on the new server, with mailstack installed in ``bin``."""

    def __init__(self, bin_dir: Path, config: Path):
        self.bin, self.config = bin_dir, config

    def mailstack(self, *args: str, stdin: str = "", ok: bool = True, config: Path | None = None):
        got = subprocess.run([str(self.bin / "mailstack"), "--config", str(config or self.config), *args],
                             input=stdin, capture_output=True, text=True, timeout=120,
                             env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"})
        if ok:
            assert got.returncode == 0, got.stdout + got.stderr
        return got


def wait_for_ports(ports_file: Path, proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ports_file.exists():
            return json.loads(ports_file.read_text())["listeners"]
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(log.read_text())


def wait_for_acme_certificate(port: int, trusting: ssl.SSLContext, proc, log: Path) -> None:
    deadline, last = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with trusting.wrap_socket(raw, server_hostname=HOST):
                    return
        except ssl.SSLCertVerificationError as e:
            last = e  # the placeholder, until pebble has issued
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"no certificate from pebble: {last}\n{log.read_text()}")


class SubmissionsTo127(smtplib.SMTP_SSL):
    """SMTPS to loopback, checking the certificate for ``HOST`` (which only the test's DNS knows)."""

    def _get_socket(self, host, port, timeout):
        raw = socket.create_connection(("127.0.0.1", port), timeout)
        return self.context.wrap_socket(raw, server_hostname=HOST)


class ImapsTo127(imaplib.IMAP4_SSL):
    """IMAPS to loopback, checking the certificate for ``HOST``."""

    def _create_socket(self, timeout):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout)
        return self.ssl_context.wrap_socket(raw, server_hostname=HOST)


def test_install_on_a_server_as_the_readme_says(tmp_path, dns_port):
    if pebble_binary() is None:
        if on_ci():
            pytest.fail("pebble is not installed (apt-get install pebble)", pytrace=False)
        pytest.skip("pebble is not installed (apt-get install pebble)")
    # 1. The service user, and mailstack from its wheel in a venv of its own.
    user = ensure_service_user()
    gid = grp.getgrnam(SERVICE_USER).gr_gid
    bin_dir = installed_venv()
    base = public_dir("mailstack-server-")
    etc, lib = base / "etc" / "mailstack", base / "var" / "lib" / "mailstack"
    http_port = free_port()  # the test's "port 80", where pebble validates HTTP-01
    pebble = Pebble(public_dir("mailstack-pebble-"), dns_port, http_port).start()
    proc = None
    try:
        # 2. mailstack init: production, certificate by ACME.  (Test: its own directories,
        #    loopback and free ports, the test's service user; pebble instead of Let's Encrypt.)
        got = subprocess.run([str(bin_dir / "mailstack"), "init", "--hostname", HOST, "--domain", DOMAIN,
                              "--acme", f"postmaster@{DOMAIN}", "--dir", str(etc), "--data-dir", str(lib),
                              "--ports", "any", "--listen", "127.0.0.1", "--user", SERVICE_USER],
                             capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert "user add you@example.test" in got.stdout and "acme status" in got.stdout
        config = etc / "mailstack.toml"
        assert (config.stat().st_uid, config.stat().st_gid, config.stat().st_mode & 0o777) == (0, gid, 0o640)
        assert (lib.stat().st_uid, lib.stat().st_mode & 0o777) == (user.pw_uid, 0o700)
        shutil.copy(pebble.ca_file, etc / "acme-ca.pem")  # the test CA's directory certificate
        os.chown(etc / "acme-ca.pem", 0, gid)
        os.chmod(etc / "acme-ca.pem", 0o640)
        text = config.read_text().replace('autoconfig = "tcp:0:interface=127.0.0.1"',
                                          f'autoconfig = "tcp:{http_port}:interface=127.0.0.1"')
        text += f'directory = "{pebble.directory}"\nca_file = "{etc / "acme-ca.pem"}"\n'
        config.write_text(text)
        admin = Admin(bin_dir, config)

        # 3. Users, the postmaster alias, the DKIM key: as root.
        for address, password in PASSWORDS.items():
            admin.mailstack("user", "add", address, "--password-file", "-", stdin=password + "\n")
        admin.mailstack("alias", "add", f"postmaster@{DOMAIN}", YOU)
        records = admin.mailstack("dkim", "genkey", DOMAIN).stdout
        assert f"mail._domainkey.{DOMAIN}. TXT" in records
        assert "v=DKIM1" in admin.mailstack("dns").stdout

        # 4. The check, then the server as the service user (what the systemd unit does).
        assert f"checked as user {SERVICE_USER}" in admin.mailstack("config", "check").stdout
        log = base / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups",
                                     str(bin_dir / "twistd"), "--nodaemon", "--pidfile=", "mailstack", "--config",
                                     str(config)], stdout=out, stderr=subprocess.STDOUT, cwd="/",
                                    env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"})
        ports = wait_for_ports(lib / "ports.json", proc, log)

        # 5. The certificate from the CA, and a client that trusts only the CA's root.
        trusting = ssl.create_default_context(cadata=pebble.root_pem())
        wait_for_acme_certificate(ports["imaps"]["port"], trusting, proc, log)
        assert "issued" in admin.mailstack("acme", "status").stdout

        # 6. Mail: submitted over implicit TLS, DKIM-signed, read over IMAPS.
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = YOU, FRIEND, "the first mail"
        msg["Message-ID"] = f"<first.{time.time_ns()}@{DOMAIN}>"
        msg.set_content("It works.\n")
        with SubmissionsTo127(HOST, ports["submissions"]["port"], context=trusting, timeout=30) as s:
            s.login(YOU, PASSWORDS[YOU])
            s.send_message(msg)
        imap = ImapsTo127(HOST, ports["imaps"]["port"], ssl_context=trusting, timeout=30)
        imap.login(FRIEND, PASSWORDS[FRIEND])
        deadline = time.monotonic() + 20
        while int(imap.select("INBOX")[1][0]) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        stored = imap.fetch("1", "(BODY.PEEK[])")[1][0][1]
        imap.logout()
        head = stored.split(b"\r\n\r\n", 1)[0]
        assert b"DKIM-Signature:" in head and f"d={DOMAIN}".encode() in head
        assert b"It works." in stored
        assert f"status=sent".encode() in log.read_bytes()

        # 7. Metrics: the loopback listener's /metrics counts exactly what happened.
        conn = http.client.HTTPConnection("127.0.0.1", ports["metrics"]["port"], timeout=10)
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        assert answer.status == 200
        samples: dict = {}  # summed over the processes' worker label, as README's Metrics says
        for f in text_string_to_metric_families(answer.read().decode()):
            for s in f.samples:
                k = (s.name, tuple(sorted((n, v) for n, v in s.labels.items() if n != "worker")))
                samples[k] = samples.get(k, 0) + s.value
        conn.close()
        assert samples[("mailstack_messages_total", (("outcome", "delivered"),))] == 1
        assert samples[("mailstack_auth_total", (("protocol", "submission"), ("result", "success")))] == 1
        assert samples[("mailstack_auth_total", (("protocol", "imap"), ("result", "success")))] == 1
        assert samples[("mailstack_smtp_transactions_total", (("class", "2xx"), ("listener", "submissions")))] == 1

        # 8. config check of a broken configuration: exit 2, the file and the key named.
        broken = base / "broken.toml"
        broken.write_text(config.read_text() + "[smtp]\ntimeout = 0\n")
        os.chmod(broken, 0o640)
        got = admin.mailstack("config", "check", ok=False, config=broken)
        assert got.returncode == 2
        assert got.stderr.strip() == f"mailstack: {broken}: [smtp] timeout: must be at least 1 (seconds)"
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        pebble.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(pebble.base, ignore_errors=True)
