"""Greylisting and per-user outbound limits (issue 20, items 4 and 5), with a clock the test
moves; the SMTP replies are checked byte-exact through real sockets (in-process server), and
'mailstack queue hold/release' through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mailstack import config as config_mod
from mailstack import metrics
from mailstack.antispam.greylist import GreylistDB, client_network
from mailstack.antispam.outlimits import OutboundLimits, parse_override
from mailstack.errors import ConfigError, MailError
from mailstack.outbound.queue import OutboundQueue
from support.clients import SmtpClient as Raw
from support.dns import serve_zones
from support.inprocess import in_reactor
from support.servers import PASSWORDS, MailServer, env_with_tree

ALICE, BOB = "alice@example.test", "bob@example.test"
DAY = 86400
GREY_451 = (451, "4.7.1 Greylisted: this server delays first-time senders; please try again in {} seconds")


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the greylist database ---------------------------------------------------------------------


def test_client_network_is_the_slash_24_or_64():
    assert client_network("192.0.2.77") == "192.0.2.0/24"
    assert client_network("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert client_network("2001:db8:1:2:3::9") == "2001:db8:1:2::/64"


def test_triplet_passes_after_the_delay_and_is_remembered(tmp_path):
    clock = Clock()
    db = GreylistDB(str(tmp_path / "g.sqlite"), 300, 36 * DAY, 0, clock)
    assert db.check("192.0.2.1", "a@x.test", "bob@example.test") == 300  # first attempt: greylisted
    clock.now += 100
    assert db.check("192.0.2.1", "a@x.test", "bob@example.test") == 200  # too early: the clock does not restart
    clock.now += 200
    assert db.check("192.0.2.9", "A@X.test", "bob@example.test") == 0  # same /24, case-blind: passes
    assert db.check("192.0.2.1", "a@x.test", "carol@example.test") == 300  # another triplet
    assert db.check("198.51.100.1", "a@x.test", "bob@example.test") == 300  # another network
    clock.now += 35 * DAY
    assert db.check("192.0.2.1", "a@x.test", "bob@example.test") == 0  # seen: 36 days from now on
    db.close()
    reopened = GreylistDB(str(tmp_path / "g.sqlite"), 300, 36 * DAY, 0, clock)  # a restart
    clock.now += 36 * DAY - 1
    assert reopened.check("192.0.2.1", "a@x.test", "bob@example.test") == 0
    clock.now += 36 * DAY + 1  # not seen for longer than the memory: a stranger again
    assert reopened.check("192.0.2.1", "a@x.test", "bob@example.test") == 300


def test_client_auto_allowed_after_n_passed_triplets(tmp_path):
    clock = Clock()
    db = GreylistDB(str(tmp_path / "g.sqlite"), 300, 36 * DAY, 2, clock)
    for rcpt in ("r1@example.test", "r2@example.test"):
        assert db.check("2001:db8::1", "s@x.test", rcpt) == 300
    clock.now += 300
    assert db.check("2001:db8::1", "s@x.test", "r1@example.test") == 0
    assert db.check("2001:db8::1", "s@x.test", "r3@example.test") == 300  # one pass is not enough
    assert db.check("2001:db8::2", "s@x.test", "r2@example.test") == 0  # same /64: second pass
    assert db.check("2001:db8::3", "other@y.test", "r4@example.test") == 0  # auto-allowed now
    assert db.check("2001:db8:0:1::3", "other@y.test", "r4@example.test") == 300  # not another /64


# -- the outbound limits -------------------------------------------------------------------------


def _limits(**kw):
    defaults = dict(messages_per_hour=0, messages_per_day=0, recipients_per_hour=0, recipients_per_day=0)
    defaults.update(kw)
    return defaults


def test_limits_per_hour_and_day_slide_with_the_clock():
    clock = Clock()
    lim = OutboundLimits(_limits(recipients_per_hour=3, recipients_per_day=5, messages_per_hour=0), clock=clock)
    lim.check_recipient(ALICE, 0)
    lim.check_recipient(ALICE, 2)
    with pytest.raises(MailError) as e:
        lim.check_recipient(ALICE, 3)
    assert (e.value.code, e.value.enhanced, e.value.text) == (
        451, "4.7.0", f"Sending limit reached: at most 3 recipients per hour for {ALICE}; try again later")
    lim.record(ALICE, 3)
    with pytest.raises(MailError):
        lim.check_recipient(ALICE, 0)
    lim.check_recipient(BOB, 0)  # per user
    clock.now += 3601
    lim.check_recipient(ALICE, 1)  # the hour slid on
    lim.record(ALICE, 2)
    with pytest.raises(MailError) as e:
        lim.check_recipient(ALICE, 0)
    assert "at most 5 recipients per day" in e.value.text
    clock.now += DAY - 3600
    lim.check_recipient(ALICE, 2)


def test_override_and_warning_once_per_episode(caplog):
    from twisted.logger import globalLogPublisher

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        clock = Clock()
        user, over = parse_override("Bulk@example.test messages_per_hour=2 recipients_per_day=0")
        assert (user, over) == ("bulk@example.test", {"messages_per_hour": 2, "recipients_per_day": 0})
        lim = OutboundLimits(_limits(messages_per_hour=1), {user: over}, clock)
        before = metrics.OUTBOUND_LIMIT_HITS.labels("messages_per_hour")._value.get()
        for _ in range(2):
            lim.check_message("bulk@example.test")
            lim.record("bulk@example.test", 1)
        for _ in range(3):
            with pytest.raises(MailError):
                lim.check_message("bulk@example.test")
        clock.now += 3601
        lim.check_message("bulk@example.test")  # under again: the episode is over
        lim.record("bulk@example.test", 1)
        lim.record("bulk@example.test", 1)
        with pytest.raises(MailError):
            lim.check_message("bulk@example.test")
    finally:
        globalLogPublisher.removeObserver(seen)
    warnings = [e for e in seen if e.get("log_format", "").startswith("outbound limit:")]
    assert len(warnings) == 2 and all(e["log_level"].name == "warn" for e in warnings)
    assert metrics.OUTBOUND_LIMIT_HITS.labels("messages_per_hour")._value.get() == before + 2


@pytest.mark.parametrize("text", ["alice@example.test", "alice@example.test hours=3", "nobody recipients_per_hour=1",
                                  "alice@example.test recipients_per_hour=x"])
def test_bad_override_is_refused(text):
    with pytest.raises(ValueError):
        parse_override(text)


@pytest.mark.parametrize("extra, key", [
    ("[greylisting]\ndelay = 0\n", "[greylisting] delay"),
    ("[greylisting]\nmemory = 100\n", "[greylisting] memory"),
    ("[outbound_limits]\nrecipients_per_hour = -1\n", "[outbound_limits] recipients_per_hour"),
    ('[outbound_limits]\nusers = ["alice@example.test often=2"]\n', "[outbound_limits] users"),
    ('[greylisting]\nenabled = true\ndatabase = "tls"\n', "[greylisting] database"),
])
def test_config_errors_name_the_key(tmp_path, extra, key):
    srv = MailServer(tmp_path, listeners=["smtp"], extra=extra)
    with pytest.raises(ConfigError) as e:
        config_mod.load(str(srv.config_path))
    assert key in str(e.value) and str(srv.config_path) in str(e.value)


# -- through the SMTP server -----------------------------------------------------------------------


def _mx_transaction(srv, sender="someone@outside.test", rcpt=BOB):
    c = Raw(srv.port("smtp"))
    assert c.cmd("EHLO client.outside.test")[0] == 250
    assert c.cmd(f"MAIL FROM:<{sender}>") == (250, f"2.1.0 Sender <{sender}> OK")
    return c, c.cmd(f"RCPT TO:<{rcpt}>")


def _set_clock(srv, clock):
    srv.service.context.greylist.db.clock = clock


def test_greylisting_over_smtp_survives_a_restart(inproc_server_factory):
    srv = inproc_server_factory(listeners=["smtp", "submission"], extra="[greylisting]\nenabled = true\n").start()
    clock = Clock(time.time())
    _set_clock(srv, clock)
    c, reply = _mx_transaction(srv)
    assert reply == (GREY_451[0], GREY_451[1].format(300))
    assert c.cmd("RCPT TO:<nobody@example.test>") == (550, "5.1.1 <nobody@example.test>: no such user here")
    clock.now += 120
    assert c.cmd(f"RCPT TO:<{BOB}>") == (GREY_451[0], GREY_451[1].format(180))
    assert c.cmd("DATA") == (503, "5.5.1 Bad sequence of commands: DATA is not allowed now")
    c.close()
    assert "greylisted 127.0.0.1 <someone@outside.test> -> <bob@example.test>" in srv.log_text()
    srv.stop()
    srv.start()  # the state is in SQLite: the retry after the restart passes
    clock.now += 180
    _set_clock(srv, clock)
    c, reply = _mx_transaction(srv)
    assert reply == (250, f"2.1.5 Recipient <{BOB}> OK")
    assert c.cmd("DATA")[0] == 354
    assert c.cmd(b"Subject: hi\r\n\r\nafter the delay\r\n.")[0] == 250
    assert len(srv.wait_for_messages(BOB, 1)) == 1
    # Submission is never greylisted.
    s = Raw(srv.port("submission"))
    s.cmd("EHLO client.example")
    assert s.cmd(f"AUTH PLAIN {_plain(ALICE)}")[0] == 235
    assert s.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    assert s.cmd(f"RCPT TO:<{BOB}>") == (250, f"2.1.5 Recipient <{BOB}> OK")


def _plain(user):
    import base64

    return base64.b64encode(f"\0{user}\0{PASSWORDS[user]}".encode()).decode()


@pytest.fixture
def spf_dns(tmp_path):
    yield from serve_zones(tmp_path, {
        "allowed.test": ["TXT('allowed.test', b'v=spf1 ip4:127.0.0.1 -all')"],
        "elsewhere.test": ["TXT('elsewhere.test', b'v=spf1 ip4:192.0.2.1 -all')"],
    })


def test_spf_pass_for_an_allowed_domain_skips_greylisting(inproc_server_factory, spf_dns):
    extra = (f'[dns]\nnameservers = ["127.0.0.1"]\nport = {spf_dns}\n'
             '[greylisting]\nenabled = true\nspf_allow_domains = ["allowed.test", "elsewhere.test"]\n')
    srv = inproc_server_factory(listeners=["smtp"], extra=extra).start()
    before = metrics.GREYLIST.labels("spf_allowed")._value.get()
    _, reply = _mx_transaction(srv, sender="news@allowed.test")
    assert reply == (250, f"2.1.5 Recipient <{BOB}> OK")
    assert metrics.GREYLIST.labels("spf_allowed")._value.get() == before + 1
    _, reply = _mx_transaction(srv, sender="news@elsewhere.test")  # listed, but SPF fails from here
    assert reply == (GREY_451[0], GREY_451[1].format(300))


def test_outbound_limits_over_submission(inproc_server_factory):
    extra = ('[outbound_limits]\nrecipients_per_hour = 3\nmessages_per_hour = 2\n'
             f'users = ["{BOB} recipients_per_hour=10 messages_per_hour=10"]\n')
    srv = inproc_server_factory(listeners=["submission"], extra=extra).start()
    before = metrics.OUTBOUND_LIMITED.labels("recipients_per_hour")._value.get()
    s = Raw(srv.port("submission"))
    s.cmd("EHLO client.example")
    assert s.cmd(f"AUTH PLAIN {_plain(ALICE)}")[0] == 235
    assert s.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    for rcpt in (BOB, "carol@example.test"):
        assert s.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(b"Subject: one\r\n\r\nx\r\n.")[0] == 250
    assert s.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    assert s.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    assert s.cmd(f"RCPT TO:<{ALICE}>") == (
        451, f"4.7.0 Sending limit reached: at most 3 recipients per hour for {ALICE}; try again later")
    assert s.cmd("DATA")[0] == 354  # the accepted recipient still gets it
    assert s.cmd(b"Subject: two\r\n\r\nx\r\n.")[0] == 250
    assert s.cmd(f"MAIL FROM:<{ALICE}>") == (
        451, f"4.7.0 Sending limit reached: at most 2 messages per hour for {ALICE}; try again later")
    b = Raw(srv.port("submission"))  # bob's override is higher
    b.cmd("EHLO client.example")
    assert b.cmd(f"AUTH PLAIN {_plain(BOB)}")[0] == 235
    assert b.cmd(f"MAIL FROM:<{BOB}>")[0] == 250
    for i in range(4):
        assert b.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
    log = srv.log_text()
    assert log.count(f"outbound limit: {ALICE} reached") == 1  # the first hit only
    assert metrics.OUTBOUND_LIMITED.labels("recipients_per_hour")._value.get() == before + 1
    # SIGHUP: higher limits apply at once, the counts so far are kept (3 recipients this hour).
    text = srv.config_path.read_text().replace("recipients_per_hour = 3\nmessages_per_hour = 2",
                                               "recipients_per_hour = 4\nmessages_per_hour = 10")
    srv.config_path.write_text(text)
    in_reactor(srv.service.reload)
    assert s.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    assert s.cmd(f"RCPT TO:<{BOB}>")[0] == 250
    assert s.cmd(f"RCPT TO:<{ALICE}>") == (
        451, f"4.7.0 Sending limit reached: at most 4 recipients per hour for {ALICE}; try again later")


# -- queue hold and release ----------------------------------------------------------------------------


def test_queue_skips_a_held_users_mail(tmp_path):
    q = OutboundQueue(str(tmp_path / "queue"), fsync=False)
    mine = q.enqueue(ALICE, ["x@remote.test"], b"Subject: a\r\n\r\n", user="Alice@example.test")
    other = q.enqueue(BOB, ["x@remote.test"], b"Subject: b\r\n\r\n", user=BOB)
    bounce = q.enqueue("", ["x@remote.test"], b"Subject: c\r\n\r\n")
    assert q.hold(ALICE) == [mine]
    assert sorted(qid for _, qid in q.due()) == sorted([other, bounce])
    later = q.enqueue(ALICE, ["y@remote.test"], b"Subject: d\r\n\r\n", user=ALICE)  # queued while held
    assert later not in [qid for _, qid in q.due()]
    assert sorted(q.hold(ALICE, held=False)) == sorted([mine, later])
    assert sorted(qid for _, qid in q.due()) == sorted([mine, other, bounce, later])


@pytest.mark.slow  # two CLI processes and seconds of relay scans
def test_cli_hold_and_release(inproc_server_factory):
    dead = "127.0.0.1:9"  # discard port: nothing listens, every attempt fails at once
    extra = f'[relay]\nsmarthost = "{dead}"\nsmarthost_verify = false\nscan_interval = 0.2\nretry_schedule = [1]\n'
    srv = inproc_server_factory(listeners=["submission"], extra=extra).start()
    queue = srv.service.context.relay.queue

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(srv.config_path), "queue", *args],
                              capture_output=True, text=True, env=env_with_tree(), timeout=60)

    out = cli("hold", ALICE)
    assert out.returncode == 0 and out.stdout == f"{ALICE}: 0 queued messages held (and what the user queues until released)\n"
    s = Raw(srv.port("submission"))
    s.cmd("EHLO client.example")
    assert s.cmd(f"AUTH PLAIN {_plain(ALICE)}")[0] == 235
    assert s.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    assert s.cmd("RCPT TO:<carol@remote.test>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(b"Subject: held\r\n\r\nx\r\n.")[0] == 250
    time.sleep(1.5)  # several relay scans
    [(env, where)] = list(queue.all())
    assert (env.user, env.attempts, where) == (ALICE, 0, "waiting")
    listing = cli("list").stdout
    assert f"{env.id}  held" in listing
    out = cli("release", ALICE)
    assert out.stdout == f"{ALICE}: 1 queued messages released, due now\n"
    deadline = time.time() + 10
    while time.time() < deadline and not any(e.attempts for e, _ in queue.all()):
        time.sleep(0.1)
    assert [e.attempts > 0 for e, _ in queue.all()] == [True]


def test_greylisting_fails_open(inproc_server_factory):
    """A broken database, or too many checks waiting, lets mail through (logged, counted)."""
    srv = inproc_server_factory(listeners=["smtp"], extra="[greylisting]\nenabled = true\nmax_pending = 4\n").start()
    greylist = srv.service.context.greylist

    def broken(*args):
        raise OSError("disk I/O error")

    greylist.db.check = broken
    _, reply = _mx_transaction(srv)
    assert reply == (250, f"2.1.5 Recipient <{BOB}> OK")
    assert "greylisting: check of 127.0.0.1 failed; letting it through" in srv.log_text()
    greylist.pending = 4  # as if four checks were waiting
    for _ in range(2):
        _, reply = _mx_transaction(srv, rcpt=ALICE)
        assert reply == (250, f"2.1.5 Recipient <{ALICE}> OK")
    assert srv.log_text().count("checks waiting; letting mail through unchecked") == 1
    greylist.pending = 0


def test_counts_survive_a_restart_through_the_journal(tmp_path):
    # A restart must not give a stolen password a fresh allowance.
    clock, path = Clock(), str(tmp_path / "outbound-usage.log")
    lim = OutboundLimits(_limits(recipients_per_day=5), clock=clock)
    lim.open_journal(path)
    lim.record(ALICE, 3)
    clock.now += 3600
    lim.record(ALICE, 2)
    again = OutboundLimits(_limits(recipients_per_day=5), clock=clock)
    with open(path, "a") as f:
        f.write("17")  # a line torn by a crash is skipped
    again.open_journal(path)
    with pytest.raises(MailError) as e:
        again.check_recipient(ALICE, 0)
    assert "at most 5 recipients per day" in e.value.text
    again.check_recipient(BOB, 0)
    # A day after the first message, it is out of the count and out of the rewritten journal.
    clock.now += DAY - 3600 + 1
    later = OutboundLimits(_limits(recipients_per_day=5), clock=clock)
    later.open_journal(path)
    later.check_recipient(ALICE, 2)
    with open(path) as f:
        assert [line.split()[1:] for line in f] == [["2", ALICE]]
    assert os.stat(path).st_mode & 0o077 == 0


def test_processes_sharing_the_journal_share_the_counts(tmp_path, monkeypatch):
    # [server] workers: the client may reach any process; the limit is one limit all the same.
    from mailstack.antispam import outlimits

    clock, path = Clock(), str(tmp_path / "outbound-usage.log")
    first = OutboundLimits(_limits(messages_per_hour=3), clock=clock)
    first.open_journal(path)
    second = OutboundLimits(_limits(messages_per_hour=3), clock=clock)
    second.open_journal(path)
    first.record(ALICE, 1)
    second.record(ALICE, 1)
    first.check_message(ALICE)  # two of three so far
    second.record(ALICE, 1)
    for process in (first, second):
        with pytest.raises(MailError) as e:
            process.check_message(ALICE)
        assert "at most 3 messages per hour" in e.value.text
    # One process rewrites the journal (another file): the other reads the new one from its
    # start and counts the same, and lines appended after the rewrite count too.
    monkeypatch.setattr(outlimits, "COMPACT_AFTER", 1)
    clock.now += 3601
    second.record(BOB, 1)
    with open(path) as f:
        assert [line.split()[2] for line in f] == [ALICE, ALICE, ALICE, BOB]
    first.check_message(ALICE)  # the hour is over
    assert first._usage(BOB)["messages_per_hour"] == 1
    first.record(BOB, 1)
    assert second._usage(BOB)["messages_per_hour"] == 2


def test_sighup_turns_greylisting_on(server_factory):
    import signal

    from support.waiting import wait_for

    srv = server_factory(listeners=["smtp"], extra="[greylisting]\nenabled = false\n").start()
    c, reply = _mx_transaction(srv)
    assert reply == (250, f"2.1.5 Recipient <{BOB}> OK")
    c.close()
    srv.config_path.write_text(srv.config_path.read_text().replace("enabled = false", "enabled = true"))
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload: applied [greylisting] enabled" in srv.log_text(), timeout=20), srv.log_text()[-2000:]
    c, reply = _mx_transaction(srv, sender="new@outside.test")
    assert reply == (GREY_451[0], GREY_451[1].format(300))
    c.close()
