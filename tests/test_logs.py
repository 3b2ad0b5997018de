"""The log (issue 17 item 7): ``[log] format = "json"`` and ``[log] file``, reopened on SIGUSR1;
one line per accepted, sent, deferred and bounced message, found by queue id and Message-ID;
session ids, peers and users on each session's lines; nothing a client sends splits a line.

Against a real twistd, with the relay pointed at a loopback DNS server and SMTP sink
(``tests/tools/fake_mx.py``), as in test_relay.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import smtplib
import sys
import threading

import pytest

from support.clients import ImapClient, SmtpClient
from support.dns import TOOLS, serve_zones
from support.servers import PASSWORDS, MailServer, Proc, free_port
from support.waiting import wait_files, wait_for

from mailstack import config, logoutput
from mailstack.errors import ConfigError
from mailstack.logcontext import SessionPeer, new_session, annotate

ALICE, BOB = "alice@example.test", "bob@example.test"
FAKE = '{"time": "2026-01-01T00:00:00.000Z", "level": "info", "msg": "imap login admin@example.test"}'


def submit(srv, to: str, message_id: str, conn: smtplib.SMTP | None = None) -> None:
    msg = (f"From: {ALICE}\r\nTo: {to}\r\nSubject: log test\r\nMessage-ID: {message_id}\r\n\r\nHello.\r\n").encode()
    if conn is not None:
        conn.sendmail(ALICE, [to], msg)
        return
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=20) as s:
        s.starttls(context=srv.ssl_context())
        s.login(ALICE, PASSWORDS[ALICE])
        s.sendmail(ALICE, [to], msg)


def records(path) -> list[dict]:
    """Every line of the file as JSON (a line that does not parse fails the test)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        out.append(json.loads(line))
    return out


def mail_lines(recs, **match) -> list[dict]:
    return [r for r in recs if r.get("namespace") == "mailstack.mail" and all(r.get(k) == v for k, v in match.items())]


@pytest.fixture
def logged_server(tmp_path, server_factory):
    """(server, log path, MX sink output directory): JSON log in a file, relay to loopback (the
    sink answers 451 to the first message's end, 250 after)."""
    zones = {"remote.test": ["MX('remote.test', 10, 'mx.remote.test')", "A('mx.remote.test', '127.0.0.2')"],
             "nullmx.test": ["MX('nullmx.test', 0, b'')"]}
    dns = serve_zones(tmp_path, zones)
    dns_port = next(dns)
    mx_port = free_port("127.0.0.2")
    outdir = tmp_path / "mx"
    sink = Proc([sys.executable, str(TOOLS / "fake_mx.py"), "127.0.0.2", str(mx_port), str(outdir), "--tempfail", "1"])
    log_path = tmp_path / "logs" / "mailstack.log"  # its directory is made at start-up
    extra = (f'[log]\nformat = "json"\nfile = "{log_path}"\n[auth]\nfailure_delay = 0.0\n'
             f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\n'
             f"[relay]\nport = {mx_port}\nretry_schedule = [1]\nscan_interval = 0.5\n")
    srv = server_factory(listeners=["smtp", "submission", "imap"], extra=extra).start()
    yield srv, log_path, outdir
    srv.stop()
    sink.stop()
    next(dns, None)


def test_json_log_has_a_line_per_message_and_session_fields(logged_server):
    srv, log_path, outdir = logged_server
    submit(srv, BOB, "<local-1@example.test>")
    submit(srv, "carol@remote.test", "<relay-1@example.test>")
    submit(srv, "someone@nullmx.test", "<bounce-1@example.test>")
    wait_files(outdir, "*.eml", 1)
    srv.wait_for_messages(ALICE, 1, timeout=20)  # the bounce report
    assert wait_for(lambda: mail_lines(records(log_path), status="dsn"), timeout=20), log_path.read_text()
    assert wait_for(lambda: mail_lines(records(log_path), status="sent", message_id="<relay-1@example.test>"))
    recs = records(log_path)
    assert len(recs) > 10 and all({"time", "level", "namespace", "msg"} <= set(r) for r in recs)

    # Local delivery: accepted by SMTP (its queue id is the id of the 250), then stored.
    [acc] = mail_lines(recs, status="accepted", message_id="<local-1@example.test>")
    assert acc["sender"] == ALICE and acc["recipient"] == BOB and acc["size"] > 0 and acc["listener"] == "submission"
    assert acc["user"] == ALICE and acc["peer"] == "127.0.0.1" and acc["session"]
    assert acc["msg"].startswith(f"{acc['queue_id']}: status=accepted message-id=<local-1@example.test> from=<{ALICE}>")
    [stored] = mail_lines(recs, status="sent", message_id="<local-1@example.test>")
    assert stored["queue_id"] == acc["queue_id"] and stored["relay"] == "local" and stored["recipient"] == BOB
    assert stored["folder"] == "INBOX" and stored["dsn"] == "2.0.0"
    # The session's own lines carry the same session id, and the user once logged in.
    session = [r for r in recs if r.get("session") == acc["session"]]
    assert any(r["msg"].startswith("session start submission") for r in session)
    assert any(r["msg"].startswith("auth ok submission") and r["user"] == ALICE for r in session)

    # Relayed: accepted with the outbound queue id, deferred once (451), then sent, by that queue id.
    [acc] = mail_lines(recs, status="accepted", message_id="<relay-1@example.test>")
    qid = acc["queued_as"]
    [deferred] = mail_lines(recs, status="deferred", queue_id=qid)
    assert deferred["reason"].startswith("451") and deferred["dsn"].startswith("4.")
    assert deferred["message_id"] == "<relay-1@example.test>" and deferred["relay"] == "mx.remote.test"
    [sent] = mail_lines(recs, status="sent", queue_id=qid)
    assert sent["message_id"] == "<relay-1@example.test>" and sent["recipient"] == "carol@remote.test"
    assert sent["relay"] == "mx.remote.test" and sent["dsn"].startswith("2.") and float(sent["delay"]) >= 0
    assert sent["sender"] == ALICE and sent["size"] > 0
    assert f"{qid}: status=sent" in sent["msg"] and "to=<carol@remote.test>" in sent["msg"]

    # Bounced at once (null MX), and the report made for it.
    [acc] = mail_lines(recs, status="accepted", message_id="<bounce-1@example.test>")
    [bounced] = mail_lines(recs, status="bounced", queue_id=acc["queued_as"])
    assert bounced["recipient"] == "someone@nullmx.test" and bounced["dsn"] == "5.1.10"
    assert bounced["message_id"] == "<bounce-1@example.test>" and bounced["reason"]
    [report] = mail_lines(recs, status="dsn", queue_id=acc["queued_as"])
    assert report["action"] == "failed" and report["recipient"] == "someone@nullmx.test"
    assert report["relay"] == "local" and report["dsn_message_id"].startswith("<")
    [dsn_file] = srv.messages(ALICE)
    assert f"Message-ID: {report['dsn_message_id']}".encode() in dsn_file
    assert srv.log_text().count("\n") < 5  # twistd's own output is not written as well


def test_forged_line_breaks_do_not_split_json_lines(logged_server):
    srv, log_path, _ = logged_server
    c = SmtpClient(srv.port("submission"))
    c.cmd(b"EHLO client\n" + FAKE.encode())
    c.cmd("EHLO client.example")
    c.cmd("AUTH PLAIN " + base64.b64encode(f"\0x\r\n{FAKE}\0pw".encode()).decode())
    c.close()
    i = ImapClient(srv.port("imap"))
    user = f"y\r\n{FAKE}\u2028\x00".encode()
    i.send(b"a LOGIN {%d+}\r\n" % len(user) + user + b" pw\r\n")
    i.until(b"a")
    i.close()
    assert wait_for(lambda: any("imap authentication failed" in r["msg"] for r in records(log_path)))
    raw = log_path.read_text(encoding="utf-8")
    recs = records(log_path)  # every line parses
    assert not [r for r in recs if r.get("level") == "info" and r["msg"] == "imap login admin@example.test"]
    assert "\u2028" not in raw and "\x00" not in raw
    failed = next(r for r in recs if "imap authentication failed" in r["msg"])
    assert failed["user"].startswith("y\\") and not {"\r", "\n", "\u2028"} & set(failed["user"])  # written out
    assert failed["session"] and failed["peer"] == "127.0.0.1"


def test_sigusr1_reopens_the_file_without_losing_lines(logged_server):
    srv, log_path, _ = logged_server
    rotated = log_path.with_name("mailstack.log.1")
    total = 30
    done = threading.Event()

    def send_all():
        with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=20) as s:
            s.starttls(context=srv.ssl_context())
            s.login(ALICE, PASSWORDS[ALICE])
            for n in range(total):
                submit(srv, BOB, f"<rotate-{n}@example.test>", conn=s)
        done.set()

    sender = threading.Thread(target=send_all)
    sender.start()
    try:
        assert wait_for(lambda: len(mail_lines(records(log_path), status="accepted")) >= 5, timeout=30)
        os.rename(log_path, rotated)  # what logrotate does, then its postrotate sends SIGUSR1
        srv.proc.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: log_path.exists(), timeout=20)
    finally:
        sender.join(60)
    assert done.is_set()
    submit(srv, BOB, "<after-rotate@example.test>")
    assert wait_for(lambda: mail_lines(records(log_path), status="accepted", message_id="<after-rotate@example.test>"))
    old, new = records(rotated), records(log_path)
    assert any(r["msg"] == "log file reopened" for r in new)
    ids = [r["message_id"] for r in mail_lines(old + new, status="accepted")]
    assert sorted(ids) == sorted([f"<rotate-{n}@example.test>" for n in range(total)] + ["<after-rotate@example.test>"])
    assert mail_lines(old, status="accepted") and mail_lines(new, status="accepted")
    assert oct(os.stat(log_path).st_mode & 0o777) == "0o640"
    assert srv.proc.poll() is None


def test_the_default_human_log_has_session_ids_and_message_lines(server_factory):
    srv = server_factory(listeners=["submission"]).start()
    submit(srv, BOB, "<human-1@example.test>")
    pattern = re.compile(r"\[mailstack\.mail#info (\w+) alice@example\.test\] (\1\.1): status=accepted "
                         r"message-id=<human-1@example\.test> from=<alice@example\.test> "
                         r"to=<bob@example\.test> size=\d+")
    assert wait_for(lambda: pattern.search(srv.log_text())), srv.log_text()
    session, queue_id = pattern.search(srv.log_text()).groups()
    log = srv.log_text()
    assert f"[mailstack.listener#info {session}] session start submission from 127.0.0.1" in log
    assert f"[mailstack.smtp.server#info {session} alice@example.test] auth ok submission" in log
    assert re.search(rf"{re.escape(queue_id)}: status=sent .* to=<bob@example\.test> .*relay=local dsn=2\.0\.0", log)


# -- in process: the pieces ----------------------------------------------------------------------


def test_json_line_escapes_what_could_split_a_line():
    peer = new_session("smtp", "192.0.2.1")
    event = {"log_format": "x {peer} {name}", "log_namespace": "t", "log_time": 0.0, "peer": peer,
             "name": "a\u2028b\u0085c\nd", "items": ["e\nf"], "log_level": None}
    annotate(event)
    line = logoutput.json_line(event)
    assert line.count("\n") == 1 and line.endswith("\n") and "\u2028" not in line and "\u0085" not in line
    record = json.loads(line)
    assert record["session"] == peer.session.id and record["peer"] == "192.0.2.1" and record["items"] == ["e\nf"]
    assert record["time"] == "1970-01-01T00:00:00.000Z" and record["name"] == "a\u2028b\u0085c\nd"
    assert event["log_system"].endswith(" " + peer.session.id)  # the human line shows the id too
    assert isinstance(peer, SessionPeer) and peer == "192.0.2.1" and hash(peer) == hash("192.0.2.1")


def test_reopen_keeps_every_line(tmp_path):
    path = tmp_path / "m.log"
    out = logoutput.LogOutput("text", str(path))
    out({"log_format": "one", "log_time": 0.0})
    os.rename(path, tmp_path / "m.log.1")
    out.reopen()
    out({"log_format": "two", "log_time": 0.0})
    out.close()
    assert (tmp_path / "m.log.1").read_text().endswith("one\n")
    assert path.read_text().endswith("two\n") and "one" not in path.read_text()


@pytest.mark.parametrize("section, key, problem", [
    ('format = "xml"', "[log] format", 'must be "text" or "json"'),
    ('file = "users/m.log"', "[log] file", "not a directory"),
    ('file = "logs"', "[log] file", "is a directory"),
])
def test_bad_log_settings_name_the_key(tmp_path, section, key, problem):
    base = MailServer(tmp_path, listeners=["smtp"])
    (tmp_path / "logs").mkdir()
    base.config_path.write_text(base.config_path.read_text() + f"[log]\n{section}\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(base.config_path))
    assert str(e.value).startswith(f"{base.config_path}: {key}: ") and problem in str(e.value)


def test_a_log_file_that_cannot_be_opened_stops_start_up(tmp_path):
    base = MailServer(tmp_path, listeners=["smtp"])
    (tmp_path / "m.log").symlink_to(tmp_path / "gone" / "m.log")  # a dangling link: nothing to open
    base.config_path.write_text(base.config_path.read_text() + '[log]\nfile = "m.log"\n')
    with pytest.raises(ConfigError) as e:
        logoutput.build(config.load(str(base.config_path)))
    assert str(e.value).startswith(f"{base.config_path}: [log] file: cannot open ")


def test_a_message_id_cannot_add_fields_to_a_message_line():
    """The header's text after the msg-id would read as key=value fields of the line."""
    from mailstack.mail.headers import message_id

    forged = b"Message-ID: <a@b> status=sent to=<ceo@corp> relay=local\r\n\r\nbody\r\n"
    assert message_id(forged) == "<a@b>"
    assert message_id(b"Message-ID: no-brackets status=sent\r\n\r\n") == "no-brackets"


def _events():
    """Events of the kinds the server logs, and the odd ones Twisted's formatter handles."""
    from twisted.logger import LogLevel

    peer = new_session("smtp", "192.0.2.1")
    yield {"log_format": "{queue_id}: status={status} from=<{sender}> size={size}", "queue_id": "k3.1",
           "status": "sent", "sender": "a@b", "size": 12, "log_namespace": "mailstack.mail",
           "log_level": LogLevel.info, "log_time": 1_700_000_000.25}
    yield {"log_format": "x {peer} {n:>5} {n!r} {f:.2f} {{literal}} {s!s} {s!a}", "peer": peer, "n": 7,
           "f": 2.0 / 3, "s": "é", "log_system": "sys", "log_time": 1_700_000_000.999}
    yield {"log_format": "line one\nline two {v}", "v": "a\nb", "log_time": 1_700_000_001.0}
    yield {"log_format": "missing {nothere}", "log_time": 5.5}  # Twisted's "Unable to format" text
    yield {"log_format": "call {f()} dotted {o.real} index {l[0]}", "f": lambda: "called", "o": 3,
           "l": ["first"], "log_time": 5.5}
    yield {"log_format": "positional {}", "log_time": 5.5}
    yield {"log_format": b"bytes {v}", "v": 1, "log_time": 5.5}
    yield {"log_format": "nested {v:{w}}", "v": 1, "w": 4, "log_time": 5.5}
    yield {"log_format": "bad conversion {v!x}", "v": 1, "log_time": 5.5}
    yield {"log_format": "unclosed {v", "v": 1, "log_time": 5.5}
    yield {"log_format": "", "log_time": 5.5}
    yield {"log_time": 5.5}
    yield {"log_format": "no time"}
    yield {"log_format": "{log_text}", "log_text": "from a worker", "log_system": 42, "log_time": 9.0}
    yield {"log_format": "{v}", "v": object.__new__(type("Odd", (), {"__format__": lambda s, spec: 1 / 0})),
           "log_time": 9.0}
    try:
        1 / 0
    except ZeroDivisionError:
        from twisted.python.failure import Failure

        yield {"log_format": "it failed: {why}", "why": "because", "log_failure": Failure(), "log_time": 9.0}


def test_log_lines_are_twisteds_own():
    """Where twistd would write text, mailstack writes it (faster): the very same lines."""
    from twisted.logger import formatEvent, formatEventAsClassicLogText

    for event in _events():
        assert logoutput.message_text(dict(event)) == formatEvent(dict(event)), event
        assert logoutput.classic_line(dict(event)) == formatEventAsClassicLogText(dict(event)), event
    for when in (0.0, 1_700_000_000.0, 1_700_000_000.4, 1_700_000_000.9999999, 1_700_000_001.0, 86399.5):
        event = {"log_format": "t", "log_time": when}
        assert logoutput.classic_line(dict(event)) == formatEventAsClassicLogText(dict(event)), when


@pytest.mark.parametrize("options, ours", [
    ({"nodaemon": True, "logfile": None, "syslog": False, "logger": None}, True),
    ({"nodaemon": True, "logfile": "-", "syslog": False, "logger": None}, True),
    ({"nodaemon": True, "logfile": "/var/log/x.log", "syslog": False, "logger": None}, False),
    ({"nodaemon": True, "logfile": None, "syslog": True, "logger": None}, False),
    ({"nodaemon": True, "logfile": None, "syslog": False, "logger": "my.observer"}, False),
    ({"nodaemon": False, "logfile": None, "syslog": False, "logger": None}, False),
    (None, False),
])
def test_the_text_log_is_ours_only_where_twistd_would_write_standard_output(tmp_path, options, ours):
    cfg = config.load(str(MailServer(tmp_path, listeners=["smtp"]).config_path))
    out = logoutput.build(cfg, stdout=logoutput.twistd_writes_stdout(options))
    assert (out is not None and out.format is logoutput.text_line and out.path == "") is ours


def test_a_signal_handler_logging_during_a_write_neither_hangs_nor_loses_its_line(tmp_path):
    """Twisted's SIGTERM handler logs; it may run inside the write of another line."""
    class Interrupting:
        def __init__(self):
            self.lines, self.inside = [], False

        def write(self, line):
            if not self.inside and line.endswith("first\n"):
                self.inside = True
                out({"log_format": "from the handler", "log_time": 0.0})  # as a handler would, here
            self.lines.append(line)

        def flush(self):
            pass

    stream = Interrupting()
    out = logoutput.LogOutput("text", "", stream)
    done = threading.Event()
    threading.Thread(target=lambda: (out({"log_format": "first", "log_time": 0.0}), done.set()), daemon=True).start()
    assert done.wait(5), "the log output waited for itself"
    assert [line.rsplit("] ", 1)[1] for line in stream.lines] == ["first\n", "from the handler\n"]


def test_escape_event_escapes_every_kind_of_field_and_leaves_clean_events_alone():
    from mailstack.logfilter import Trusted, escape_event

    clean = {"log_format": "{a} {n}", "log_level": object(), "a": "plain", "n": 3, "peer": object()}
    before = dict(clean)
    escape_event(clean)
    assert clean == before
    event = {"log_format": "x\n", "a": "ok", "b": "evil\r\nstatus=sent", "c": b"by\ntes", "d": ValueError("bad\x00"),
             "banner": Trusted("line 1\nline 2"), "n": 3}
    escape_event(event)
    assert event["log_format"] == "x\n" and event["a"] == "ok" and event["n"] == 3  # ours, and clean values: as they are
    assert event["b"] == "evil\\r\\nstatus=sent" and event["c"] == "by\\ntes" and event["d"] == "bad\\x00"
    assert event["banner"] == "line 1\nline 2"
    event = {"a": "clean", "c": b"bytes without breaks"}
    escape_event(event)
    assert event["c"] == b"bytes without breaks"


def test_a_mail_line_is_the_event_logger_info_would_make(monkeypatch):
    from twisted.logger import LogLevel

    from mailstack import logcontext

    seen = []
    monkeypatch.setattr(logcontext.log, "observer", seen.append)
    logcontext.mail("q1.1", "accepted", message_id="<m@x>", sender="a@x", size=10, relay="")
    logcontext.log.info("{queue_id}: status={status} message-id={message_id} from=<{sender}> size={size}",
                        queue_id="q1.1", status="accepted", message_id="<m@x>", sender="a@x", size=10)
    ours, twisted = seen
    assert abs(ours.pop("log_time") - twisted.pop("log_time")) < 5
    assert ours == twisted and ours["log_level"] is LogLevel.info and ours["log_namespace"] == "mailstack.mail"
