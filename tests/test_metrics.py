"""The metrics listener (issue 17, 6): a real twistd is driven over SMTP, IMAP and POP3, then
``/metrics`` is scraped with a plain HTTP client, and every counter must have moved by exactly
what was sent.  The relay's counts use the fake MX of tests/test_relay.py."""

from __future__ import annotations

import base64
import http.client
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailstack import config
from mailstack.errors import ConfigError
from mailstack.metrics import queue_stats
from support.clients import ImapClient, Pop3Client, SmtpClient
from support.servers import PASSWORDS, MailServer
from support.waiting import wait_for
from test_relay import dns_server, relay_env, submit  # noqa: F401  (fixtures)

ALICE, BOB = "alice@example.test", "bob@example.test"
MESSAGE = b"From: someone@outside.test\r\nTo: bob@example.test\r\nSubject: metrics\r\n\r\nHello.\r\n"


def scrape(srv: MailServer) -> dict[tuple, float]:
    """{(sample name, sorted label pairs): value} from GET /metrics, summed over the ``worker``
    label of [server] workers (what ``sum without (worker)`` gives)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port("metrics"), timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/plain")
    text = response.read().decode()
    conn.close()
    totals: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            k = (s.name, tuple(sorted((n, v) for n, v in s.labels.items() if n != "worker")))
            totals[k] = totals.get(k, 0) + s.value
    return totals


def moved(before: dict, after: dict, name: str | None = None) -> dict[tuple, float]:
    """Every sample that changed (those named ``name...`` only, when given), by how much."""
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys
            if (name is None or k[0].startswith(name)) and after.get(k, 0) != before.get(k, 0)}


def key(name: str, **labels) -> tuple:
    return (name, tuple(sorted(labels.items())))


def smtp_traffic(srv: MailServer) -> None:
    """MX: one message to bob, one refused RCPT; submission under STARTTLS: alice to bob."""
    mx = SmtpClient(srv.port("smtp"))
    assert mx.cmd("EHLO client.outside.test")[0] == 250
    assert mx.cmd("MAIL FROM:<someone@outside.test>")[0] == 250
    assert mx.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert mx.cmd("RCPT TO:<someone@elsewhere.test>")[0] == 554  # not a relay
    assert mx.cmd("DATA")[0] == 354
    assert mx.cmd(MESSAGE + b".")[0] == 250
    assert mx.cmd("QUIT")[0] == 221
    mx.close()
    sub = SmtpClient(srv.port("submission"))
    sub.cmd("EHLO client.example.test")
    sub.starttls(srv.ssl_context())
    sub.cmd("EHLO client.example.test")
    plain = base64.b64encode(f"\0{ALICE}\0{PASSWORDS[ALICE]}".encode()).decode()
    assert sub.cmd(f"AUTH PLAIN {plain}")[0] == 235
    assert sub.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    assert sub.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    assert sub.cmd("DATA")[0] == 354
    assert sub.cmd(MESSAGE.replace(b"someone@outside.test", ALICE.encode()) + b".")[0] == 250
    assert sub.cmd("QUIT")[0] == 221
    sub.close()


def imap_traffic(srv: MailServer) -> None:
    """IMAP on loopback without TLS: a wrong password, then the right one and a few commands;
    IMAPS: one login."""
    c = ImapClient(srv.port("imap"))
    assert c.cmd(b"a1", f'LOGIN {BOB} "wrong"'.encode())[-1].startswith(b"a1 NO")
    assert c.cmd(b"a2", f'LOGIN {BOB} "{PASSWORDS[BOB]}"'.encode())[-1].startswith(b"a2 OK")
    assert c.cmd(b"a3", b"SELECT INBOX")[-1].startswith(b"a3 OK")
    assert c.cmd(b"a4", b"FETCH 1:* (FLAGS)")[-1].startswith(b"a4 OK")
    assert c.cmd(b"a5", b"UID FETCH 1:* (UID)")[-1].startswith(b"a5 OK")
    assert c.cmd(b"a6", b"NOOP")[-1].startswith(b"a6 OK")
    assert c.cmd(b"a7", b"FROBNICATE")[-1].startswith(b"a7 BAD")  # no command: not timed
    assert c.cmd(b"a8", b"LOGOUT")[-1].startswith(b"a8 OK")
    c.close()
    s = ImapClient(srv.port("imaps"), srv.ssl_context())
    assert s.cmd(b"b1", f'LOGIN {ALICE} "{PASSWORDS[ALICE]}"'.encode())[-1].startswith(b"b1 OK")
    assert s.cmd(b"b2", b"LOGOUT")[-1].startswith(b"b2 OK")
    s.close()


def pop3_traffic(srv: MailServer) -> None:
    """POP3 after STLS: bob reads his first message."""
    p = Pop3Client(srv.port("pop3"))
    assert p.cmd("STLS").startswith(b"+OK")
    p.sock = srv.ssl_context().wrap_socket(p.sock, server_hostname="localhost")
    p.file = p.sock.makefile("rb")
    assert p.cmd(f"USER {BOB}").startswith(b"+OK")
    assert p.cmd(f"PASS {PASSWORDS[BOB]}").startswith(b"+OK")
    assert p.cmd("STAT").startswith(b"+OK 2 ")
    assert p.cmd("RETR 1").startswith(b"+OK")
    p.multiline()
    assert p.cmd("QUIT").startswith(b"+OK")
    p.close()


def test_counters_move_by_exactly_the_traffic_sent(server_factory):
    listeners = ["smtp", "submission", "imap", "imaps", "pop3", "metrics"]
    srv = server_factory(listeners=listeners).start()
    before = scrape(srv)
    assert before[key("mailstack_sessions_total", listener="metrics")] == 1  # this scrape
    smtp_traffic(srv)
    imap_traffic(srv)
    pop3_traffic(srv)
    # Sessions end when the server has seen the close: wait for that, then compare.
    assert wait_for(lambda: all(scrape(srv).get(key("mailstack_sessions_open", listener=k)) == 0
                                for k in listeners if k != "metrics"))
    after = scrape(srv)

    sessions = {"smtp": 1, "submission": 1, "imap": 1, "imaps": 1, "pop3": 1}
    polls = after[key("mailstack_sessions_total", listener="metrics")] - before[key("mailstack_sessions_total", listener="metrics")]
    assert moved(before, after, "mailstack_sessions_total") == {
        **{key("mailstack_sessions_total", listener=k): n for k, n in sessions.items()},
        key("mailstack_sessions_total", listener="metrics"): polls}
    assert after[key("mailstack_sessions_open", listener="metrics")] == 1  # the scrape itself
    assert moved(before, after, "mailstack_tls_handshakes") == {
        key("mailstack_tls_handshakes_total", listener="submission", version="TLSv1.3"): 1,  # STARTTLS
        key("mailstack_tls_handshakes_total", listener="imaps", version="TLSv1.3"): 1,  # implicit
        key("mailstack_tls_handshakes_total", listener="pop3", version="TLSv1.3"): 1}  # STLS
    assert moved(before, after, "mailstack_smtp") == {
        key("mailstack_smtp_transactions_total", listener="smtp", **{"class": "2xx"}): 1,
        key("mailstack_smtp_transactions_total", listener="submission", **{"class": "2xx"}): 1,
        key("mailstack_smtp_recipients_total", listener="smtp", **{"class": "2xx"}): 1,
        key("mailstack_smtp_recipients_total", listener="smtp", **{"class": "5xx"}): 1,
        key("mailstack_smtp_recipients_total", listener="submission", **{"class": "2xx"}): 1}
    assert moved(before, after, "mailstack_messages") == {key("mailstack_messages_total", outcome="delivered"): 2}
    assert moved(before, after, "mailstack_auth") == {
        key("mailstack_auth_total", protocol="submission", result="success"): 1,
        key("mailstack_auth_total", protocol="imap", result="failure"): 1,
        key("mailstack_auth_total", protocol="imap", result="success"): 2,
        key("mailstack_auth_total", protocol="pop3", result="success"): 1}
    counts = {dict(k[1])["command"]: v for k, v in moved(before, after, "mailstack_command_duration_seconds_count").items()
              if dict(k[1])["protocol"] == "imap"}
    assert counts == {"LOGIN": 3, "SELECT": 1, "FETCH": 1, "UID FETCH": 1, "NOOP": 1, "LOGOUT": 2}
    counts = {dict(k[1])["command"]: v for k, v in moved(before, after, "mailstack_command_duration_seconds_count").items()
              if dict(k[1])["protocol"] == "pop3"}
    assert counts == {"STLS": 1, "USER": 1, "PASS": 1, "STAT": 1, "RETR": 1, "QUIT": 1}
    # The failed LOGIN waited out the failure delay ([auth] failure_delay, 0.5 s): in the sum.
    assert after[key("mailstack_command_duration_seconds_sum", protocol="imap", command="LOGIN")] >= 0.5
    assert after[key("mailstack_command_duration_seconds_bucket", protocol="imap", command="NOOP", le="+Inf")] == 1
    assert moved(before, after, "mailstack_store_errors") == {}
    assert after[key("mailstack_queue_messages")] == 0
    assert after[key("mailstack_queue_oldest_age_seconds")] == 0
    conn = http.client.HTTPConnection("127.0.0.1", srv.port("metrics"), timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().status == 404  # only /metrics
    conn.close()


def test_store_failures_are_counted(server_factory):
    srv = server_factory(listeners=["smtp", "imap", "metrics"]).start()
    tmp = srv.maildir(BOB) / "tmp"
    srv.maildir(BOB).mkdir(parents=True, exist_ok=True)
    for sub in ("cur", "new"):
        (srv.maildir(BOB) / sub).mkdir(exist_ok=True)
    tmp.write_text("not a directory")  # delivery cannot write its temporary file: ENOTDIR
    before = scrape(srv)
    mx = SmtpClient(srv.port("smtp"))
    mx.cmd("EHLO client.outside.test")
    mx.cmd("MAIL FROM:<someone@outside.test>")
    assert mx.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert mx.cmd("DATA")[0] == 354
    assert mx.cmd(MESSAGE + b".")[0] == 451
    mx.close()
    after = scrape(srv)
    assert moved(before, after, "mailstack_store_errors") == {key("mailstack_store_errors_total", protocol="smtp"): 1}
    assert moved(before, after, "mailstack_smtp_transactions") == {
        key("mailstack_smtp_transactions_total", listener="smtp", **{"class": "4xx"}): 1}
    assert moved(before, after, "mailstack_messages") == {}
    # IMAP: APPEND cannot write into alice's INBOX (its tmp/ is a file now); NO [SERVERBUG].
    c = ImapClient(srv.port("imap"))
    c.login(ALICE)
    (srv.maildir(ALICE) / "tmp").rmdir()
    (srv.maildir(ALICE) / "tmp").write_text("not a directory")
    c.send(b"a1 APPEND INBOX {%d}\r\n" % len(MESSAGE))
    assert c.line().startswith(b"+ ")
    c.send(MESSAGE + b"\r\n")
    assert c.until(b"a1")[-1].startswith(b"a1 NO")
    c.close()
    assert moved(after, scrape(srv), "mailstack_store_errors") == {key("mailstack_store_errors_total", protocol="imap"): 1}


def test_relay_outcomes_and_the_queue(relay_env):  # noqa: F811
    make, start_fake, _ = relay_env
    out = start_fake("127.0.0.2", "--tempfail", "1")
    srv = make(listeners=("smtp", "submission", "metrics"), retry="[600]").start()
    before = scrape(srv)
    submit(srv, "carol@remote.test", subject="first")  # 451 at the end of its data: waits 600 s
    assert wait_for(lambda: scrape(srv)[key("mailstack_messages_total", outcome="deferred")] == 1, timeout=20)
    submit(srv, "dave@remote.test", subject="second")  # accepted
    submit(srv, "erin@nullmx.test", subject="third")  # a null MX: bounced at once, the report is alice's
    assert wait_for(lambda: len(list(out.glob("*.eml"))) == 1, timeout=20)
    assert srv.wait_for_messages(ALICE, 1, timeout=20)
    assert wait_for(lambda: scrape(srv)[key("mailstack_queue_messages")] == 1, timeout=20)
    after = scrape(srv)
    assert moved(before, after, "mailstack_messages") == {
        key("mailstack_messages_total", outcome="queued"): 3,
        key("mailstack_messages_total", outcome="deferred"): 1,
        key("mailstack_messages_total", outcome="sent"): 1,
        key("mailstack_messages_total", outcome="bounced"): 1,
        key("mailstack_messages_total", outcome="delivered"): 1}  # the bounce report
    assert 0 <= after[key("mailstack_queue_oldest_age_seconds")] < 600


# -- in process: configuration and the queue reading -------------------------------------------


@pytest.fixture
def base(tmp_path) -> MailServer:
    return MailServer(tmp_path, listeners=["smtp"])


@pytest.mark.parametrize("endpoint, ok", [
    ("tcp:0:interface=127.0.0.1", True), ("tcp6:0:interface=\\:\\:1", True), ("unix:metrics.sock", True),
    ("tcp:0", False), ("tcp:0:interface=0.0.0.0", False), ("tcp:0:interface=192.0.2.1", False),
])
def test_the_metrics_listener_is_loopback_unless_allowed(base, endpoint, ok):
    text = base.config_path.read_text().replace("[tls]", f'metrics = "{endpoint.replace(chr(92), chr(92) * 2)}"\n[tls]')
    base.config_path.write_text(text)
    if ok:
        assert config.load(str(base.config_path)).listener("metrics").endpoint == endpoint
    else:
        with pytest.raises(ConfigError) as e:
            config.load(str(base.config_path))
        assert str(e.value).startswith(f"{base.config_path}: [listeners] metrics: ")
        assert "not a loopback address" in str(e.value) and "allow_remote" in str(e.value)
    base.config_path.write_text(text + "[metrics]\nallow_remote = true\n")
    assert config.load(str(base.config_path)).listener("metrics").endpoint == endpoint


def test_a_systemd_socket_cannot_be_checked_so_it_needs_allow_remote():
    assert not config.loopback_endpoint("systemd:domain=INET:index=0")
    assert config.loopback_endpoint("tcp:9909:interface=127.0.0.1:backlog=50")
    assert not config.loopback_endpoint("tcp:9909:interface=127.0.0.1:interface=0.0.0.0")  # Twisted takes the last


def test_queue_stats_read_only_directory_listings(tmp_path):
    now = time.time()
    env, active = tmp_path / "env", tmp_path / "active"
    env.mkdir()
    active.mkdir()
    (env / f"{int(now - 100):x}-aaaa.json").write_text("")
    (env / f"{int(now - 5):x}-bbbb.json").write_text("")
    (env / f"{int(now - 900):x}-cccc.json.x1.tmp").write_text("")  # atomic_write's: not a message
    (active / f"{int(now - 300):x}-dddd.host.123.json").write_text("")
    count, age = queue_stats([str(env), str(active)], now)
    assert count == 3 and 300 <= age < 302
    assert queue_stats([str(tmp_path / "absent")], now) == (0, 0.0)


def test_login_gate_counts_successes_failures_and_lockouts():
    from twisted.cred import error
    from twisted.cred.credentials import UsernamePassword
    from twisted.internet import defer, task

    from mailstack.metrics import REGISTRY
    from mailstack.throttle import LoginGate

    class Portal:
        def login(self, creds, mind, *interfaces):
            if creds.password == b"right":
                return defer.succeed((interfaces[0], object(), lambda: None))
            return defer.fail(error.UnauthorizedLogin())

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0

    names = [("mailstack_auth_total", dict(protocol="imap", result=r)) for r in ("success", "failure", "locked_out")]
    names.append(("mailstack_auth_lockouts_total", dict(protocol="imap")))
    before = [value(n, **labels) for n, labels in names]
    clock = task.Clock()
    gate = LoginGate(Portal(), clock, max_failures=3, lockout=60, delay=0.1, max_delay=0.1, window=900)

    def login(password: bytes, peer: str = "192.0.2.1", key: str = "imaps"):
        gate.login(UsernamePassword(b"bob@example.test", password), peer, key, object).addErrback(lambda f: None)
        clock.advance(1)

    for _ in range(5):
        login(b"wrong")  # 3 failures, the third locks the address; 2 refused unchecked
    login(b"right")  # refused too: the address is locked, whatever the password
    login(b"right", peer="192.0.2.2", key="imap")  # another address: in
    clock.advance(60)
    login(b"wrong")  # the lockout is over; a failure still over the limit locks it again
    after = [value(n, **labels) for n, labels in names]
    assert [a - b for a, b in zip(after, before)] == [1, 4, 3, 2]


def test_production_init_keeps_the_metrics_listener_on_loopback():
    import tomllib

    from mailstack import prodinit

    text = prodinit.production_config("mail.example.org", ["example.org"], "/etc/mailstack", "/var/lib/mailstack",
                                      config.STANDARD_PORTS, listen="192.0.2.10")
    listeners = tomllib.loads(text)["listeners"]
    assert listeners["imaps"] == "tcp:993:interface=192.0.2.10"
    assert listeners["metrics"] == "tcp:9909:interface=127.0.0.1"
