"""TLS hygiene on every TLS listener: TLS 1.0 and 1.1 refused, 1.2 and 1.3 accepted
(checked with openssl s_client, its own security level lowered so that only the server
can be the one saying no)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def handshake(port: int, version: str, ca: str, starttls: str | None = None) -> bool:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", f"-{version}", "-CAfile", ca,
            "-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "localhost"]
    if starttls:
        argv += ["-starttls", starttls]
    out = subprocess.run(argv, input="", capture_output=True, text=True, timeout=30)
    return "Cipher is (NONE)" not in out.stdout and out.returncode == 0 and "Verify return code: 0" in out.stdout


def test_old_tls_versions_are_refused_everywhere(inproc_server_factory):
    srv = inproc_server_factory(listeners=["smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps"]).start()
    cases = [("submissions", None), ("pop3s", None), ("imaps", None), ("submission", "smtp"), ("smtp", "smtp"),
             ("pop3", "pop3"), ("imap", "imap")]
    for key, starttls in cases:
        port = srv.port(key)
        assert handshake(port, "tls1_2", srv.ca_file, starttls), f"{key}: TLS 1.2 should work"
        assert handshake(port, "tls1_3", srv.ca_file, starttls), f"{key}: TLS 1.3 should work"
        assert not handshake(port, "tls1_1", srv.ca_file, starttls), f"{key}: TLS 1.1 must be refused"
        assert not handshake(port, "tls1", srv.ca_file, starttls), f"{key}: TLS 1.0 must be refused"


def test_only_forward_secret_aead_suites_and_server_preference(inproc_server_factory):
    srv = inproc_server_factory(listeners=["submissions"]).start()
    port = srv.port("submissions")

    def negotiate(ciphers: str) -> str:
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-cipher", ciphers,
                              "-CAfile", srv.ca_file, "-servername", "localhost"],
                             input="", capture_output=True, text=True, timeout=30)
        for line in out.stdout.splitlines():
            if "Cipher is" in line:
                return line.split("Cipher is")[1].strip()
        return "(NONE)"

    assert negotiate("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384") == "(NONE)"  # CBC suites: refused
    # the client lists CBC first, the server picks its own (AEAD) preference
    chosen = negotiate("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305")
    assert "GCM" in chosen or "CHACHA20" in chosen, chosen


def test_clients_that_offer_alpn_get_a_handshake_on_every_implicit_tls_listener(inproc_server_factory):
    """curl, browsers and MTA-STS policy fetchers offer ALPN (h2, http/1.1), some mail apps
    "imap" or "smtp": the handshake must complete, with the listener's own protocol chosen,
    or none when it is not offered (RFC 7301 3.2 lets a server ignore the extension), never
    an "internal error" alert."""
    import socket
    import ssl

    srv = inproc_server_factory(listeners=["submissions", "imaps", "pop3s", "https"]).start()
    for key, offered, chosen, first in (("imaps", ["imap"], "imap", b"* OK"), ("imaps", ["h2"], None, b"* OK"),
                                        ("submissions", ["smtp"], "smtp", b"220"), ("pop3s", ["pop3"], "pop3", b"+OK"),
                                        ("https", ["h2", "http/1.1"], "http/1.1", None)):
        context = ssl.create_default_context(cafile=srv.ca_file)
        context.set_alpn_protocols(offered)
        with socket.create_connection(("127.0.0.1", srv.port(key)), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.selected_alpn_protocol() == chosen, key
                if first is None:
                    tls.sendall(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n"
                                b"Connection: close\r\n\r\n")
                    assert tls.recv(100).startswith(b"HTTP/1.1 200"), key
                else:
                    assert tls.recv(100).startswith(first), key


def test_alpn_offered_after_starttls_does_not_break_the_handshake(inproc_server_factory):
    srv = inproc_server_factory(listeners=["submission", "imap"]).start()
    for key, starttls in (("submission", "smtp"), ("imap", "imap")):
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{srv.port(key)}", "-starttls", starttls,
                              "-alpn", f"{starttls},h2", "-CAfile", srv.ca_file, "-servername", "localhost"],
                             input="", capture_output=True, text=True, timeout=30)
        assert "Verify return code: 0" in out.stdout and "alert" not in out.stderr, (key, out.stderr[-500:])
