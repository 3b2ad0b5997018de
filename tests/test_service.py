"""The service as a whole: banner, ports file, logging, SIGHUP reload, and `make run`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from support.servers import ROOT, PASSWORDS
from support.waiting import wait_for
from mailstack.devinit import make_dev_ca


def test_banner_ports_file_and_session_log(server_factory):
    srv = server_factory(listeners=["smtp", "submissions"]).start()
    data = json.loads(srv.ports_file.read_text())
    assert data["pid"] == srv.proc.pid
    assert set(data["listeners"]) == {"smtp", "submissions"}
    assert data["listeners"]["submissions"]["tls"] == "implicit"
    log = srv.log_text()
    assert re.search(rf"smtp\s+127\.0\.0\.1:{srv.port('smtp')}\s+STARTTLS optional", log)
    assert re.search(rf"submissions\s+127\.0\.0\.1:{srv.port('submissions')}\s+TLS", log)
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.sendmail("x@remote.test", ["bob@example.test"], b"Subject: log\r\n\r\nx\r\n")
    assert wait_for(lambda: "session end smtp from 127.0.0.1" in srv.log_text())
    log = srv.log_text()
    assert "session start smtp from 127.0.0.1" in log
    assert re.search(r"[\w.]+: status=accepted from=<x@remote.test> to=<bob@example.test> size=\d+ nrcpt=1 "
                     r"listener=smtp\n", log)
    assert re.search(r"[\w.]+: status=sent from=<x@remote.test> to=<bob@example.test> size=\d+ relay=local "
                     r"dsn=2.0.0 folder=INBOX\n", log)
    srv.stop()
    assert not srv.ports_file.exists()


def _fingerprint(port: int, cafile: str) -> bytes:
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def test_sighup_reloads_certificate_without_dropping_sessions(server_factory, tmp_path):
    srv = server_factory(listeners=["submissions"]).start()
    port = srv.port("submissions")
    old_cert = _fingerprint(port, srv.ca_file)
    session = smtplib.SMTP_SSL("127.0.0.1", port, context=srv.ssl_context(), timeout=20)
    session.ehlo()
    new_tls = tmp_path / "newtls"
    make_dev_ca(str(new_tls))
    for name in ("server.pem", "server-key.pem"):
        shutil.copy(new_tls / name, srv.base / "tls" / name)
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded users, aliases and certificate" in srv.log_text())
    new_cert = _fingerprint(port, str(new_tls / "ca.pem"))
    assert new_cert != old_cert
    with pytest.raises(ssl.SSLCertVerificationError):
        _fingerprint(port, srv.ca_file)  # the old CA no longer vouches for what is served
    assert session.noop()[0] == 250  # the session from before the reload goes on
    session.login("alice@example.test", PASSWORDS["alice@example.test"])
    session.quit()


def test_sighup_with_a_broken_certificate_keeps_the_old_one(server_factory):
    srv = server_factory(listeners=["submissions"]).start()
    port = srv.port("submissions")
    before = _fingerprint(port, srv.ca_file)
    (srv.base / "tls" / "server.pem").write_text("garbage")
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "no PEM certificate" in srv.log_text())
    assert _fingerprint(port, srv.ca_file) == before
    assert srv.proc.poll() is None


@pytest.mark.skipif(not (ROOT / ".venv" / ".installed").exists(), reason="needs the .venv that 'make test' builds")
def test_make_run_starts_the_stack_and_its_ports_answer(tmp_path):
    """`make run` from a copy of the tree: dev set-up made, banner printed, every port answers."""
    from mailstack.config import DEV_PORTS

    for port in DEV_PORTS.values():
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"dev port {port} is taken by another process on this machine")
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns(".venv", "var", ".git", "__pycache__", ".pytest_cache", ".hypothesis")
    shutil.copytree(ROOT, tree, ignore=ignore)
    os.symlink(ROOT / ".venv", tree / ".venv")
    os.utime(ROOT / ".venv" / ".installed")  # the copy's sources must not look newer than the install
    proc = subprocess.Popen(["make", "run"], cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out = b""
    try:
        deadline = time.monotonic() + 120
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < deadline and b"Thunderbird" not in out:
            chunk = proc.stdout.read()
            if chunk:
                out += chunk
            elif proc.poll() is not None:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        out += proc.stdout.read() or b""
        text = out.decode(errors="replace")
        assert "mailstack is running" in text, text
        assert (tree / "var" / "mailstack.toml").exists() and (tree / "var" / "tls" / "ca.pem").exists()
        creds = (tree / "var" / "dev-credentials.txt").read_text()
        assert "alice@example.test" in creds and "bob@example.test" in creds
        assert "alice@example.test  password:" in text
        assert re.search(r"incoming: IMAP, server 127\.0\.0\.1, port \d+, SSL/TLS", text), text
        assert re.search(r"mailnews\.auto_config_url to http://127\.0\.0\.1:\d+/v1\.1/", text), text
        listeners = re.findall(r"^\S*\s+(\w+)\s+127\.0\.0\.1:(\d+)\s", text, re.M)
        assert len(listeners) >= 3, text
        for key, port in listeners:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
                if key == "autoconfig":
                    s.sendall(b"GET /mail/config-v1.1.xml HTTP/1.0\r\n\r\n")
                    assert s.recv(100).startswith(b"HTTP/1.")
                elif key == "https":  # HTTP over TLS: the client speaks first
                    ctx = ssl.create_default_context(cafile=str(tree / "var" / "tls" / "ca.pem"))
                    s2 = ctx.wrap_socket(s, server_hostname="localhost")
                    s2.sendall(b"GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: mta-sts.example.test\r\n\r\n")
                    assert s2.recv(100).startswith(b"HTTP/1.")
                elif key == "metrics":  # HTTP, though its key ends in "s"
                    s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                    assert s.recv(100).split(b"\r\n")[0].endswith(b" 200 OK")
                elif key == "managesieve":  # RFC 5804 1.7: the greeting is the capability list
                    assert s.recv(100).startswith(b'"IMPLEMENTATION" "mailstack')
                elif key.endswith("s"):
                    ctx = ssl.create_default_context(cafile=str(tree / "var" / "tls" / "ca.pem"))
                    s2 = ctx.wrap_socket(s, server_hostname="localhost")
                    assert s2.recv(100)[:1] in (b"2", b"+", b"*")
                else:
                    assert s.recv(100)[:1] in (b"2", b"+", b"*")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def test_a_login_makes_an_old_hash_again_with_the_configured_argon2_parameters(server_factory):
    # Issue 16 item 2: [auth] argon2_* set the parameters; the users file written by
    # `mailstack user add` (the defaults) gets the configured ones at the next login.
    import imaplib

    srv = server_factory(listeners=["imap"], extra="[auth]\nargon2_time_cost = 1\nargon2_memory_kib = 64\n"
                                                  "argon2_parallelism = 1\n").start()
    users = srv.base / "users"
    assert "$m=65536,t=3,p=4$" in users.read_text()
    m = imaplib.IMAP4("127.0.0.1", srv.port("imap"), timeout=20)
    m.login("bob@example.test", PASSWORDS["bob@example.test"])
    m.logout()
    bob = [line for line in users.read_text().splitlines() if line.startswith("bob@")]
    assert len(bob) == 1 and "$m=64,t=1,p=1$" in bob[0], bob
    assert "made again with the configured Argon2 parameters" in srv.log_text()
    m = imaplib.IMAP4("127.0.0.1", srv.port("imap"), timeout=20)
    assert m.login("bob@example.test", PASSWORDS["bob@example.test"])[0] == "OK"  # the new hash verifies
    m.logout()


def test_objects_made_at_start_up_are_out_of_the_collectors_reach(inproc_server_factory, monkeypatch):
    # Issue 16: every full collection walked the start-up objects (modules, configuration, the
    # public suffix list) again; gc.freeze() once the reactor runs keeps them out of it.
    import gc

    from mailstack.service import MailstackService

    monkeypatch.setattr(MailstackService, "freeze_at_start", True)  # as twistd runs it
    gc.unfreeze()
    srv = inproc_server_factory(listeners=["imap"]).start()
    assert wait_for(lambda: gc.get_freeze_count() > 10_000), gc.get_freeze_count()
    srv.stop()
    gc.unfreeze()
