"""The rspamd content filter and learning from Junk (issue 20, items 1 and 2), against a real
rspamd (tests/support/rspamd.py: Debian's rspamd and a redis on loopback, no network
lookups) and the real service in the test process (tests/support/inprocess.py).

Skipped without rspamd (apt-get install rspamd redis-server), failed on CI."""

from __future__ import annotations

import imaplib
import json
import smtplib
import socket
import time

import pytest
from support import rspamd as rspamd_support
from support.inprocess import InProcessServer
from support.servers import PASSWORDS, MailServer, free_port
from twisted.internet import defer, task

from mailstack import metrics
from mailstack.antispam import learning
from mailstack.antispam.rspamd import Result, parse_result
from mailstack.config import load
from mailstack.errors import ConfigError

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
ALICE, BOB = "alice@example.test", "bob@example.test"


def message(subject: str = "lunch tomorrow", body: bytes = b"Hi Bob, shall we meet at noon? Alice",
            mid: str = "1@sender.example") -> bytes:
    return (f"From: Alice Sender <alice@sender.example>\r\nTo: {BOB}\r\nSubject: {subject}\r\n"
            f"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{mid}>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode() + body + b"\r\n"


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory):
    server = rspamd_support.start_or_skip(tmp_path_factory.mktemp("rspamd"))
    yield server
    server.stop()


def rspamd_config(url: str, **options) -> str:
    lines = ["[rspamd]", f'url = "{url}"'] + [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(url: str, **options) -> InProcessServer:
        srv = InProcessServer(tmp_path / f"srv{len(servers)}", listeners=["smtp", "submission", "imap"],
                              extra=rspamd_config(url, **options)).start()
        servers.append(srv)
        return srv
    yield make
    for srv in servers:
        srv.stop()


def mx_send(srv, data: bytes, sender: str = "alice@sender.example") -> tuple[int, bytes]:
    """One message over the MX port; (code, text) of the reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
        s.ehlo("mail.sender.example")
        s.mail(sender)
        s.rcpt(BOB)
        return s.data(data)


# -- item 1: the content filter ----------------------------------------------------------------


@pytest.mark.slow
def test_gtube_is_refused_with_550(rspamd, make_server):
    srv = make_server(rspamd.url)
    rejects = metrics.RSPAMD_SCANS.labels("reject")
    before = rejects._value.get()
    assert mx_send(srv, message(body=GTUBE)) == (550, b"5.7.1 Message refused: it looks like spam")
    assert srv.messages(BOB) == [] and srv.messages(BOB, "Junk") == []
    assert rejects._value.get() == before + 1
    assert "Message refused: it looks like spam: rspamd: reject (score 15.00/15.00)" in srv.log_text()


@pytest.mark.slow
def test_add_header_goes_to_junk_with_the_headers(rspamd, make_server):
    srv = make_server(rspamd.url)
    code, _ = mx_send(srv, message(subject=f"offer {rspamd_support.ADD_HEADER_SUBJECT}"))
    assert code == 250
    assert srv.messages(BOB) == []
    [stored] = srv.messages(BOB, "Junk")
    head = stored.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nX-Spam: Yes\r\n" in head
    assert b"\r\nX-Spamd-Result: default: True [" in head and b"\tMAILSTACK_TEST_ADD_HEADER(8.00)" in head
    assert b"\r\nX-Spam-Score: " in head


@pytest.mark.slow
def test_add_header_with_junk_off_goes_to_inbox(rspamd, make_server):
    srv = make_server(rspamd.url, junk=False)
    assert mx_send(srv, message(subject=rspamd_support.ADD_HEADER_SUBJECT))[0] == 250
    [stored] = srv.messages(BOB)
    assert b"\r\nX-Spam: Yes\r\n" in stored.split(b"\r\n\r\n", 1)[0]


@pytest.mark.slow
def test_clean_mail_reaches_inbox_unmarked(rspamd, make_server):
    srv = make_server(rspamd.url)
    code, text = mx_send(srv, message())
    assert code == 250 and text.startswith(b"2.0.0 OK id=")
    [stored] = srv.messages(BOB)
    assert b"X-Spam" not in stored and srv.messages(BOB, "Junk") == []
    assert stored.endswith(message())
    # a scan writes no log lines of its own (twisted's connectProtocol wrote two per scan)
    assert "Starting factory" not in srv.log_text() and "Stopping factory" not in srv.log_text()


@pytest.mark.slow
def test_submission_is_scanned_in_user_mode(rspamd, make_server):
    srv = make_server(rspamd.url)
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=30) as s:
        s.starttls(context=srv.ssl_context())
        s.login(ALICE, PASSWORDS[ALICE])
        s.mail(ALICE)
        s.rcpt(BOB)
        body = message(body=GTUBE).replace(b"alice@sender.example", ALICE.encode())
        assert s.data(body) == (550, b"5.7.1 Message refused: it looks like spam")
    assert srv.messages(BOB) == []


@pytest.mark.slow
def test_rspamd_stopped_gives_451_by_default(make_server):
    srv = make_server(f"http://127.0.0.1:{free_port()}")  # nothing listens there: rspamd is down
    assert mx_send(srv, message()) == (451, b"4.7.1 Content filter unavailable; try again later")
    assert srv.messages(BOB) == []
    assert "rspamd scan of" in srv.log_text() and "(tempfail)" in srv.log_text()


@pytest.mark.slow
def test_rspamd_stopped_while_running_gives_451(tmp_path, make_server):
    own = rspamd_support.start_or_skip(tmp_path / "own-rspamd")
    try:
        srv = make_server(own.url)
        assert mx_send(srv, message())[0] == 250
    finally:
        own.stop()
    assert mx_send(srv, message()) == (451, b"4.7.1 Content filter unavailable; try again later")
    assert len(srv.messages(BOB)) == 1


@pytest.mark.slow
def test_rspamd_too_slow_gives_451_after_the_timeout(make_server):
    with socket.socket() as hang:  # accepts, never answers
        hang.bind(("127.0.0.1", 0))
        hang.listen(16)
        srv = make_server(f"http://127.0.0.1:{hang.getsockname()[1]}", timeout=1.0)
        started = time.monotonic()
        assert mx_send(srv, message()) == (451, b"4.7.1 Content filter unavailable; try again later")
        assert 0.9 < time.monotonic() - started < 10


@pytest.mark.slow
def test_rspamd_stopped_with_accept_delivers(make_server):
    srv = make_server(f"http://127.0.0.1:{free_port()}", on_failure="accept")
    assert mx_send(srv, message())[0] == 250
    assert len(srv.messages(BOB)) == 1


# -- item 2: learning from Junk ------------------------------------------------------------------


def spam_text(i: int) -> bytes:
    words = " ".join(f"cheap{i}x pills{i}y winner{i}z offer{j} casino{(i * 7 + j) % 31}" for j in range(12))
    return message(subject=f"amazing offer number {i}", body=words.encode(), mid=f"spam{i}@sender.example")


def learned(rspamd) -> int:
    """Messages rspamd's controller has learned (spam and ham), from its /stat."""
    return int(rspamd.stat()["learned"])


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.slow
def test_moving_to_junk_learns_spam_and_out_of_junk_learns_ham(rspamd, make_server):
    srv = make_server(rspamd.url, controller_url=rspamd.controller_url, password=rspamd_support.PASSWORD)
    n = 4
    before = learned(rspamd)
    spam = metrics.RSPAMD_LEARNS.labels("spam", "learned")
    ham = metrics.RSPAMD_LEARNS.labels("ham", "learned")
    spam_before, ham_before = spam._value.get(), ham._value.get()
    srv.deliver(*[spam_text(i) for i in range(n)], user=BOB)
    with imaplib.IMAP4("127.0.0.1", srv.port("imap")) as imap:
        imap.starttls(ssl_context=srv.ssl_context())
        imap.login(BOB, PASSWORDS[BOB])
        imap.select("INBOX")
        started = time.monotonic()
        typ, _ = imap.uid("MOVE", f"1:{n - 1}", "Junk")
        assert typ == "OK" and time.monotonic() - started < 2  # the reply did not wait for rspamd
        assert imap.append("Junk", None, None, spam_text(n - 1))[0] == "OK"  # APPEND into Junk counts too
        assert wait_until(lambda: learned(rspamd) >= before + n), (rspamd.stat(), srv.log_text()[-3000:])
        assert spam._value.get() == spam_before + n
        imap.select("Junk")
        assert imap.uid("COPY", "1", "Trash")[0] == "OK"  # to Trash: nothing learned
        assert imap.uid("MOVE", "2", "INBOX")[0] == "OK"  # out of Junk: ham
        assert wait_until(lambda: learned(rspamd) >= before + n + 1), rspamd.stat()
        time.sleep(0.5)
        assert learned(rspamd) == before + n + 1
        assert ham._value.get() == ham_before + 1 and spam._value.get() == spam_before + n


# -- the pieces, without rspamd ----------------------------------------------------------------------


@pytest.mark.parametrize("source, dest, kind", [
    ("\\Junk", "\\Junk", None), (None, "\\Junk", "spam"), ("\\Sent", "\\Junk", "spam"), (None, None, None),
    ("\\Junk", None, "ham"), ("\\Junk", "\\Archive", "ham"), ("\\Junk", "\\Trash", None), (None, "\\Trash", None),
])
def test_what_is_learned(source, dest, kind):
    assert learning.learn_kind(source, dest) == kind


class FakeFolder:
    name = "Junk"

    def read_message(self, uid):
        return b"Subject: x\r\n\r\nbody\r\n"


class FakeClient:
    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    def learn(self, kind, message):
        self.calls += 1
        if self.calls <= self.failures:
            return defer.fail(ConnectionRefusedError("down"))
        return defer.succeed(True)


def _run_learner(failures: int, retries: int):
    clock = task.Clock()
    client = FakeClient(failures)
    learner = learning.JunkLearner(client, clock, retries=retries, retry_delay=10.0)
    from twisted.internet import threads
    original = threads.deferToThread
    threads.deferToThread = lambda f, *a: defer.maybeDeferred(f, *a)  # no thread pool in a unit test
    try:
        learner.filed("bob@example.test", None, "\\Junk", FakeFolder(), [7])
    finally:
        threads.deferToThread = original
    for _ in range(10):
        clock.advance(10.0 * 2 ** 10)
    return client, learner


def test_a_failed_learn_is_retried_then_counted():
    retried = metrics.RSPAMD_LEARNS.labels("spam", "retried")
    before = retried._value.get()
    client, learner = _run_learner(failures=2, retries=5)
    assert client.calls == 3 and retried._value.get() == before + 2 and learner.pending == 0
    failed = metrics.RSPAMD_LEARNS.labels("spam", "failed")
    before_failed = failed._value.get()
    client, learner = _run_learner(failures=10, retries=2)
    assert client.calls == 3 and failed._value.get() == before_failed + 1 and learner.pending == 0


def test_result_headers():
    result = parse_result(json.dumps({"action": "add header", "score": 7.9, "required_score": 15,
                                      "symbols": {"A_RULE": {"score": 8.0}, "B": {"score": -0.1}}}).encode())
    assert result.headers() == (b"X-Spam: Yes\r\nX-Spamd-Result: default: True [7.90 / 15.00];\r\n"
                                b"\tA_RULE(8.00);\r\n\tB(-0.10)\r\nX-Spam-Score: 7.90\r\n")
    assert Result("no action").headers().startswith(b"X-Spam: No\r\n")
    with pytest.raises(ValueError):
        parse_result(b"[1]")


@pytest.mark.parametrize("options, key, problem", [
    ('url = "127.0.0.1:11333"', "[rspamd] url", "must be an http:// or https:// URL"),
    ('url = "http://127.0.0.1:11333"\non_failure = "drop"', "[rspamd] on_failure", 'must be "tempfail" or "accept"'),
    ('url = "http://127.0.0.1:11333"\nchecks = "both"', "[rspamd] checks", 'must be "rspamd" or "mailstack"'),
    ("timeout = 0", "[rspamd] timeout", "must be above 0"),
    ("learn_retries = -1", "[rspamd] learn_retries", "must be 0 or more"),
    ('controller_url = "ftp://x"', "[rspamd] controller_url", "must be an http:// or https:// URL"),
    ('password = "a"\npassword_file = "users"', "[rspamd] password_file", "not both"),
])
def test_bad_rspamd_settings_stop_start_up(tmp_path, options, key, problem):
    base = MailServer(tmp_path, listeners=["smtp"], extra="[rspamd]\n" + options + "\n")
    with pytest.raises(ConfigError) as e:
        load(str(base.config_path))
    assert f"mailstack.toml: {key}: " in str(e.value) and problem in str(e.value)


def test_rspamd_is_off_by_default_and_reads_its_password_file(tmp_path):
    base = MailServer(tmp_path, listeners=["smtp"])
    cfg = load(str(base.config_path))
    assert cfg.rspamd["url"] == "" and cfg.rspamd["on_failure"] == "tempfail" and cfg.rspamd["junk"] is True
    assert cfg.rspamd["checks"] == "rspamd"
    (tmp_path / "rspamd-password").write_text("s3cret\n")
    base = MailServer(tmp_path, listeners=["smtp"], extra='[rspamd]\npassword_file = "rspamd-password"\n')
    assert load(str(base.config_path)).rspamd["password"] == "s3cret"


def _filter(checks: dict, who: str = "rspamd"):
    from mailstack.antispam.rspamd import RspamdFilter

    settings = {"on_failure": "tempfail", "junk": True, "scan_outbound": True, "max_size": 1000, "checks": who}
    return RspamdFilter(None, settings, checks)


def test_the_envelope_and_what_rspamd_is_told_to_skip():
    # [rspamd] checks = "mailstack": rspamd skips what mailstack checks
    f = _filter({"spf": True, "dkim": True, "dmarc": False}, "mailstack")
    env = f.envelope("192.0.2.7", "mx.sender.example", "a@sender.example", ["b@example.test", "c@example.test"],
                     "abc.1", None)
    assert env == {"IP": "192.0.2.7", "Helo": "mx.sender.example", "From": b"a@sender.example",
                   "Rcpt": [b"b@example.test", b"c@example.test"], "Queue-Id": "abc.1",
                   "Settings": '{"groups_disabled": ["spf", "dkim"]}'}
    user = _filter({"spf": False, "dkim": False, "dmarc": False}, "mailstack").envelope(
        "::1", "", "", ["x@y.test"], "q", "alice@example.test")
    assert user["User"] == b"alice@example.test" and "Settings" not in user and user["Helo"] == "unknown"
    # checks = "rspamd" (the default): rspamd checks for mailstack, and skips only what [checks] turns off
    both = _filter({"spf": True, "dkim": True, "dmarc": False})
    assert both.authenticates and both.envelope("192.0.2.7", "h", "", ["b@example.test"], "q", None)["Settings"] == (
        '{"groups_disabled": ["dmarc"]}')
    assert "Settings" not in _filter({"spf": True, "dkim": True, "dmarc": True}).envelope("::1", "", "", [], "q", None)


def test_what_is_not_sent_to_rspamd():
    from mailstack.smtp.accept import Prepared

    f = _filter({})
    assert f.wanted(Prepared(), submission=False, size=1000)
    assert not f.wanted(Prepared(), submission=False, size=1001)  # over max_size
    assert not f.wanted(Prepared(action="reject"), submission=False, size=10)  # DMARC p=reject already said no
    assert not f.wanted(Prepared(action="tempfail"), submission=False, size=10)
    f.outbound = False
    assert not f.wanted(Prepared(), submission=True, size=10) and f.wanted(Prepared(), submission=False, size=10)


# -- the lean HTTP/1.0 exchange for scans (in memory, exact bytes) ----------------------------------

def _exchange(answer_parts: list[bytes], close: bool = True):
    from twisted.internet import defer
    from twisted.internet.testing import StringTransport

    from mailstack.antispam.rspamd import _Exchange

    done, results = defer.Deferred(), []
    done.addBoth(results.append)
    proto = _Exchange(b"POST /checkv2 HTTP/1.0\r\n\r\n", done)
    transport = StringTransport()
    proto.makeConnection(transport)
    for part in answer_parts:
        proto.dataReceived(part)
    if close and not done.called:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        proto.connectionLost(Failure(ConnectionDone()))
    return transport, results


def test_the_scan_request_goes_in_one_write_and_ends_at_content_length():
    transport, results = _exchange([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nab", b"cde"],
                                   close=False)
    assert transport.value() == b"POST /checkv2 HTTP/1.0\r\n\r\n"
    assert results == [(200, b"abcde")] and transport.disconnecting  # done without waiting for the close


def test_an_answer_without_content_length_ends_at_the_close():
    _, results = _exchange([b"HTTP/1.0 500 Internal\r\n\r\n{", b"}"])
    assert results == [(500, b"{}")]


@pytest.mark.parametrize("answer, problem", [
    ([], "closed the connection without an answer"),
    ([b"HTTP/1.1 200 OK\r\nContent-Le"], "closed the connection without an answer"),
    ([b"SSH-2.0-OpenSSH\r\n\r\n"], "not an HTTP answer"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"], "transfer coding"),
    ([b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (4 * 1024 * 1024 + 1)], "over 4194304 octets"),
])
def test_what_is_not_an_answer_fails_the_scan(answer, problem):
    _, results = _exchange(answer)
    assert len(results) == 1 and problem in results[0].getErrorMessage()


def test_envelope_values_cannot_split_the_request():
    from mailstack.antispam.rspamd import _field

    assert _field("a@b.test\r\nX-Injected: 1") == b"a@b.testX-Injected: 1" and _field(b"x\ny") == b"xy"


def test_what_the_checks_refuse_is_refused_for_their_reason_whatever_rspamd_said():
    """The scan starts beside the checks (issue 20's speed); a DMARC reject still wins."""
    from twisted.internet import defer

    from mailstack.antispam.rspamd import Result
    from mailstack.smtp.accept import Prepared

    f = _filter({})
    refused = Prepared(action="reject", reason="DMARC policy")
    out = []
    f.finish(refused, defer.succeed(Result("no action")), "q").addCallback(out.append)
    assert out == [refused]
    f.finish(Prepared(), defer.succeed(Result("add header", 9.0, 6.0)), "q").addCallback(out.append)
    assert out[1].action == "junk" and b"X-Spam: Yes" in out[1].header
    from twisted.python.failure import Failure

    failed = []
    f.finish(Prepared(), defer.succeed([Failure(ConnectionError("down"))]), "q").addErrback(failed.append)
    assert failed and failed[0].value.code == 451


@pytest.mark.slow
def test_sighup_applies_a_changed_rspamd_section(rspamd, server_factory):
    # Started pointing at nothing (451); after SIGHUP pointing at the real rspamd: scanned.
    import signal

    from support.waiting import wait_for

    down = f"http://127.0.0.1:{free_port()}"
    srv = server_factory(listeners=["smtp"], extra=rspamd_config(down)).start()
    assert mx_send(srv, message()) == (451, b"4.7.1 Content filter unavailable; try again later")
    srv.config_path.write_text(srv.config_path.read_text().replace(down, rspamd.url))
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload: applied [rspamd] url" in srv.log_text(), timeout=20), srv.log_text()[-2000:]
    assert mx_send(srv, message(body=GTUBE)) == (550, b"5.7.1 Message refused: it looks like spam")
    assert mx_send(srv, message())[0] == 250
