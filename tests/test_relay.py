"""Outbound relay end to end, on loopback only: a twisted.names DNS server serves MX records,
scriptable SMTP receivers (tests/tools/fake_mx.py) play the remote hosts."""

from __future__ import annotations

import email
import email.policy
import os
import json
import smtplib
import subprocess
import sys
import time

import pytest

from support.dns import TOOLS, serve_zones
from support.servers import PASSWORDS, MailServer, Proc, env_with_tree, free_port
from support.waiting import wait_files, wait_for as _wait_for

ALICE = "alice@example.test"


@pytest.fixture
def dns_server(tmp_path):
    zones = {
        "remote.test": ["MX('remote.test', 10, 'mx.remote.test')", "A('mx.remote.test', '127.0.0.2')"],
        "nullmx.test": ["MX('nullmx.test', 0, b'')"],  # b'': the root name, a null MX,
        "implicit.test": ["A('implicit.test', '127.0.0.3')"],
        "localhost": ["A('localhost', '127.0.0.1')"],
        "multi.test": ["MX('multi.test', 20, 'b.multi.test')", "MX('multi.test', 10, 'a1.multi.test')",
                       "MX('multi.test', 10, 'a2.multi.test')", "MX('multi.test', 30, 'noaddress.multi.test')",
                       "A('a1.multi.test', '127.0.0.11')", "A('a2.multi.test', '127.0.0.12')",
                       "A('b.multi.test', '127.0.0.13')", "AAAA('b.multi.test', '::1')"],
    }
    yield from serve_zones(tmp_path, zones)


@pytest.fixture
def relay_env(tmp_path, dns_server, server_factory):
    """(mailstack server, MX port, start_fake(ip, *args) -> outdir)."""
    mx_port = free_port("127.0.0.2", also=("127.0.0.3",))
    fakes = []

    def start_fake(ip="127.0.0.2", *args, name="fake"):
        outdir = tmp_path / f"{name}{len(fakes)}"
        fakes.append(Proc([sys.executable, str(TOOLS / "fake_mx.py"), ip, str(mx_port), str(outdir), *args]))
        return outdir

    def make(extra: str = "", listeners=("smtp", "submission"), retry: str = "[1]"):
        relay = (f"[dns]\nnameservers = [\"127.0.0.1\"]\nport = {dns_server}\n[relay]\nport = {mx_port}\n"
                 f"retry_schedule = {retry}\nscan_interval = 0.5\nconnect_timeout = 15\n{extra}")
        return server_factory(listeners=list(listeners), extra=relay)

    yield make, start_fake, mx_port
    for f in fakes:
        f.stop()


def submit(srv: MailServer, to: str, subject: str = "hello", body: str = "Hi there.\r\n.dot line\r\n") -> bytes:
    msg = f"From: {ALICE}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\r\n{body}".encode()
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=20) as s:
        s.starttls(context=srv.ssl_context())
        s.login(ALICE, PASSWORDS[ALICE])
        s.sendmail(ALICE, [to], msg)
    return msg


def queue_files(srv: MailServer) -> list[str]:
    q = srv.base / "queue"
    return [str(p.relative_to(q)) for p in q.rglob("*") if p.is_file()] if q.exists() else []


def test_submitted_mail_reaches_the_remote_mx(relay_env):
    make, start_fake, _ = relay_env
    out = start_fake()
    srv = make().start()
    sent = submit(srv, "carol@remote.test")
    [eml] = wait_files(out, "*.eml", 1)
    data = eml.read_bytes()
    assert data.endswith(sent)  # byte-exact, dot line unstuffed again by the receiver
    assert b"by mail.example.test (mailstack)" in data.split(b"\r\n\r\n")[0]
    env = json.loads(eml.with_suffix(".json").read_text())
    assert env["sender"] == ALICE and env["recipients"] == ["carol@remote.test"]
    assert wait_for(lambda: queue_files(srv) == [])
    # The queue files go before the "done" line is logged: wait for the line, do not race it.
    assert wait_for(lambda: "done after 1 attempts" in srv.log_text())
    assert "relay: " in srv.log_text()


def wait_for(predicate, timeout=20.0):
    return _wait_for(predicate, timeout, interval=0.1)


def test_temporary_failures_are_retried(relay_env):
    make, start_fake, _ = relay_env
    out = start_fake("127.0.0.2", "--tempfail", "2")
    srv = make().start()
    submit(srv, "carol@remote.test", subject="retry")
    [eml] = wait_files(out, "*.eml", 1, timeout=30)
    assert b"Subject: retry" in eml.read_bytes()
    assert wait_for(lambda: "done after 3 attempts" in srv.log_text())
    assert srv.messages(ALICE) == []  # no bounce


def read_dsn(raw: bytes):
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    status = [p for p in parts if p.get_content_type() == "message/delivery-status"][0]
    blocks = status.get_payload()  # [per-message, per-recipient...]
    headers = [p for p in parts if p.get_content_type() == "text/rfc822-headers"][0]
    return msg, blocks, headers


def test_permanent_failure_bounces_to_the_sender(relay_env):
    make, start_fake, _ = relay_env
    start_fake("127.0.0.2", "--rcpt-code", "550")
    srv = make().start()
    submit(srv, "nobody@remote.test", subject="bounceme")
    [raw] = srv.wait_for_messages(ALICE, 1, timeout=20)
    msg, blocks, headers = read_dsn(raw)
    assert msg["From"].startswith("Mail Delivery System") and b"Return-Path: <>" in raw
    rcpt = blocks[1]
    assert rcpt["Final-Recipient"] == "rfc822; nobody@remote.test"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert "550" in rcpt["Diagnostic-Code"] and rcpt["Remote-MTA"] == "dns; mx.remote.test"
    assert "Subject: bounceme" in str(headers.get_payload())
    assert wait_for(lambda: queue_files(srv) == [])


@pytest.mark.parametrize("domain, status", [("nullmx.test", "5.1.10"), ("missing.remote.test", "5.1.2")])
def test_null_mx_and_nxdomain_bounce_at_once(relay_env, domain, status):
    make, _, _ = relay_env
    srv = make().start()
    submit(srv, f"someone@{domain}", subject="nowhere")
    [raw] = srv.wait_for_messages(ALICE, 1, timeout=20)
    _, blocks, _ = read_dsn(raw)
    assert blocks[1]["Status"] == status and blocks[1]["Action"] == "failed"


def test_implicit_mx_uses_the_address_record(relay_env):
    make, start_fake, _ = relay_env
    out = start_fake("127.0.0.3")
    srv = make().start()
    submit(srv, "dave@implicit.test", subject="implicit")
    assert wait_files(out, "*.eml", 1)


def test_no_bounce_to_the_null_sender(relay_env):
    make, start_fake, _ = relay_env
    start_fake("127.0.0.2", "--rcpt-code", "550")
    srv = make(listeners=("smtp",), extra="").start()
    # a bounce from elsewhere to a local alias forwarding outside: sender <>
    (srv.base / "aliases").write_text("fwd@example.test: carol@remote.test\n")
    time.sleep(0.3)
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.sendmail("<>", ["fwd@example.test"], b"Subject: a bounce\r\n\r\nx\r\n")
    assert wait_for(lambda: "not bouncing a message from the null sender" in srv.log_text())
    assert wait_for(lambda: queue_files(srv) == [])


def test_queue_survives_sigkill_and_delivers_each_message_once(relay_env):
    make, start_fake, _ = relay_env
    srv = make(retry="[3600]").start()  # remote down: everything waits
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=30) as s:
        s.starttls(context=srv.ssl_context())
        s.login(ALICE, PASSWORDS[ALICE])
        for i in range(200):
            s.sendmail(ALICE, ["carol@remote.test"], f"Subject: n{i}\r\nX-Seq: {i}\r\n\r\nbody {i}\r\n".encode())
    assert wait_for(lambda: len([f for f in queue_files(srv) if f.startswith("msg/")]) == 200)
    srv.kill()
    out = start_fake()
    # the next attempt is an hour away: flush the queue with the CLI, as an administrator would
    srv.start()
    flush = subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(srv.config_path), "queue", "flush"],
                           capture_output=True, text=True, env=env_with_tree())
    assert flush.returncode == 0, flush.stderr
    files = wait_files(out, "*.eml", 200, timeout=120)
    seqs = sorted(int(f.read_bytes().split(b"X-Seq: ")[1].split(b"\r\n")[0]) for f in files)
    assert seqs == list(range(200))  # all 200, each exactly once
    # Nothing is left to send.  (The kill may leave a message file whose envelope was never
    # written - never acknowledged - which a later start clears once it is an hour old.)
    assert wait_for(lambda: not [f for f in queue_files(srv) if f.startswith(("env/", "active/"))], timeout=60)


def test_queue_cli(relay_env):
    make, _, _ = relay_env
    srv = make(retry="[3600]").start()
    submit(srv, "carol@remote.test", subject="waiting")
    cli = lambda *a: subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(srv.config_path), "queue", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env_with_tree())
    assert wait_for(lambda: "carol@remote.test" in cli("list").stdout and "attempts 1" in cli("list").stdout)
    qid = cli("list").stdout.split()[0]
    shown = cli("show", qid)
    assert shown.returncode == 0 and "from <alice@example.test>" in shown.stdout and "carol@remote.test" in shown.stdout
    assert "Subject: waiting" in shown.stdout
    assert cli("retry", qid).returncode == 0
    assert cli("show", "nonexistent").returncode != 0
    assert wait_for(lambda: cli("delete", qid).returncode == 0)
    assert cli("list").stdout.strip() == "queue is empty"


def test_smarthost_with_starttls_auth_and_verified_certificate(relay_env, tmp_path):
    make, start_fake, mx_port = relay_env
    (tmp_path / "certs").mkdir()
    srv_tmp = MailServer(tmp_path / "certs", listeners=[])  # only for its CA and server certificate
    tls = srv_tmp.base / "tls"
    out = start_fake("127.0.0.1", "--tls", str(tls / "server.pem"), str(tls / "server-key.pem"), "--auth", "relay:s3cret",
                     name="smarthost")
    (tmp_path / "smarthost-password").write_text("s3cret\n")
    srv = make(extra=(f'smarthost = "localhost:{mx_port}"\nsmarthost_username = "relay"\n'
                      f'smarthost_password_file = "{tmp_path / "smarthost-password"}"\n'
                      f'smarthost_ca_file = "{tls / "ca.pem"}"\n')).start()
    submit(srv, "carol@anywhere.example", subject="via smarthost")
    [eml] = wait_files(out, "*.eml", 1)
    env = json.loads(eml.with_suffix(".json").read_text())
    assert env["tls"] and env["auth"] and env["recipients"] == ["carol@anywhere.example"]


def test_opportunistic_starttls_to_the_mx(relay_env, tmp_path):
    make, start_fake, _ = relay_env
    (tmp_path / "certs").mkdir()
    tls = MailServer(tmp_path / "certs", listeners=[]).base / "tls"
    out = start_fake("127.0.0.2", "--tls", str(tls / "server.pem"), str(tls / "server-key.pem"))
    srv = make().start()
    submit(srv, "carol@remote.test", subject="tls")
    [eml] = wait_files(out, "*.eml", 1)
    assert json.loads(eml.with_suffix(".json").read_text())["tls"] is True


def test_delay_warning_is_sent_once(relay_env):
    make, start_fake, _ = relay_env
    start_fake("127.0.0.2", "--tempfail", "1000")
    srv = make(extra="delay_warning = 1\n").start()
    submit(srv, "carol@remote.test", subject="slow")
    [raw] = srv.wait_for_messages(ALICE, 1, timeout=20)
    msg, blocks, _ = read_dsn(raw)
    assert msg["Subject"] == "Delivery delayed"
    assert blocks[1]["Action"] == "delayed" and blocks[1]["Status"].startswith("4.")
    time.sleep(3)  # more attempts fail, but the warning is not repeated
    assert len(srv.messages(ALICE)) == 1


def test_mx_routing_order_and_failures(dns_server):
    from mailstack.errors import MailError
    from mailstack.outbound.routing import MXRouter

    router = MXRouter(["127.0.0.1"], dns_server, timeout=2)
    seen_first = set()
    for _ in range(30):
        hops = router.route("multi.test")
        assert [h.host for h in hops][2:] == ["b.multi.test"]  # by preference; no address: skipped
        assert {h.host for h in hops[:2]} == {"a1.multi.test", "a2.multi.test"}
        seen_first.add(hops[0].host)
    assert seen_first == {"a1.multi.test", "a2.multi.test"}  # equal preferences in random order
    assert hops[2].addresses == ["::1", "127.0.0.13"]
    with pytest.raises(MailError) as e:
        router.route("nullmx.test")
    assert (e.value.code, e.value.enhanced) == (556, "5.1.10")
    with pytest.raises(MailError) as e:
        router.route("missing.remote.test")
    assert not e.value.temporary and e.value.enhanced == "5.1.2"
    dead = MXRouter(["127.0.0.1"], free_port(), timeout=0.5)  # nothing answers there
    with pytest.raises(MailError) as e:
        dead.route("remote.test")
    assert e.value.temporary


def test_two_processes_sharing_a_queue_send_each_message_once(relay_env, tmp_path, server_factory):
    make, start_fake, _ = relay_env
    shared = tmp_path / "shared-queue"
    a = make(retry="[3600]", extra=f'queue = "{shared}"\n').start()
    b = make(retry="[3600]", extra=f'queue = "{shared}"\n').start()
    with smtplib.SMTP("127.0.0.1", a.port("submission"), timeout=30) as s:
        s.starttls(context=a.ssl_context())
        s.login(ALICE, PASSWORDS[ALICE])
        for i in range(60):
            s.sendmail(ALICE, ["carol@remote.test"], f"Subject: n{i}\r\nX-Seq: {i}\r\n\r\nbody\r\n".encode())
    assert wait_for(lambda: len(list((shared / "env").glob("*.json"))) == 60)  # all tried once, waiting
    out = start_fake()
    for srv in (a, b):  # both processes race for every message
        flush = subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(srv.config_path), "queue", "flush"],
                               capture_output=True, text=True, env=env_with_tree())
        assert flush.returncode == 0, flush.stderr
    files = wait_files(out, "*.eml", 60, timeout=60)
    time.sleep(1)
    files = sorted(out.glob("*.eml"))
    seqs = sorted(int(f.read_bytes().split(b"X-Seq: ")[1].split(b"\r\n")[0]) for f in files)
    assert seqs == list(range(60))
    assert wait_for(lambda: len([l for srv in (a, b) for l in srv.log_text().splitlines() if " done after " in l]) == 60)
    done = [line for srv in (a, b) for line in srv.log_text().splitlines() if " done after " in line]
    assert len({line.split("relay: ")[1].split()[0] for line in done}) == len(done)  # each finished by one process


def test_recovery_clears_leftovers_of_dead_processes(tmp_path):
    from mailstack.outbound.queue import OutboundQueue

    q = OutboundQueue(str(tmp_path / "q"), fsync=False)
    kept = q.enqueue("a@example.test", ["b@remote.test"], b"Subject: x\r\n\r\nx\r\n")
    dead = 2 ** 22 + 12345  # beyond pid_max defaults: no such process
    (tmp_path / "q" / "msg" / f"zz.tmp{dead}-1").write_bytes(b"half")
    (tmp_path / "q" / "env" / f"zz.json.tmp{dead}-1-ab").write_bytes(b"{")
    old_orphan = tmp_path / "q" / "msg" / "old-orphan"
    old_orphan.write_bytes(b"never acknowledged")
    os.utime(old_orphan, (time.time() - 7200, time.time() - 7200))
    fresh_orphan = tmp_path / "q" / "msg" / "fresh-orphan"  # maybe a live process between two writes
    fresh_orphan.write_bytes(b"x")
    q.recover()
    left = sorted(p.name for p in (tmp_path / "q").rglob("*") if p.is_file())
    assert left == sorted([kept, kept + ".json", "fresh-orphan"])
