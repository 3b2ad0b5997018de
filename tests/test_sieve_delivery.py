"""Sieve at local delivery (mailstack.sieve.delivery, .vacation): issue 19 section 1.

The fast tests drive :class:`SieveDelivery` in-process with a stand-in interpreter (a script
names an outcome the test defines), so they check the executor alone: what is stored where
with which flags, what is queued with which sender, what is refused with which reply, and
Pigeonhole's before/user/after sequence.  The slow ones (further down) run real twistd
with the real interpreter through the MX port.
"""

from __future__ import annotations

import email.utils
import imaplib
import json
import os
import smtplib
import time
from dataclasses import dataclass, field

import pytest
from twisted.internet import defer

import mailstack.sieve as lang
from mailstack.errors import ConfigError, MailError
from mailstack.outbound.bounce import refusal_report
from mailstack.sieve import delivery as sd
from mailstack.sieve import vacation
from mailstack.sieve.actions import Envelope, FileInto, Keep, Outcome, Redirect, Reject, Vacation
from mailstack.store import MaildirStore

BOB, CAROL, HOST = "bob@example.test", "carol@example.test", "mail.example.test"
MESSAGE = (b"Received: from x ([192.0.2.1])\r\n\tby mail.example.test; Fri, 4 Dec 2026 10:00:00 +0000\r\n"
           b"From: Ann <ann@remote.test>\r\nTo: Bob <bob@example.test>\r\nSubject: Hello\r\n"
           b"Message-ID: <m1@remote.test>\r\n\r\nBody line\r\n")


# -- a stand-in interpreter: a script's text names an outcome --------------------------------------


class FakeSyntaxError(Exception):
    pass


@dataclass
class FakeScript:
    text: str


OUTCOMES: dict = {}
RUNS: list = []


def fake_compile(text: str, name: str = ""):
    if text.startswith("bad"):
        raise FakeSyntaxError("line 1, column 1: bad script")
    return FakeScript(text.strip())


def fake_run(script, message, envelope, **kw):
    if script.text == "keep;":  # SieveDelivery's warm-up at start
        return Outcome([Keep()])
    RUNS.append((script.text, envelope))
    return OUTCOMES[script.text](message, envelope, kw)


@pytest.fixture
def fake_interpreter(monkeypatch):
    monkeypatch.setattr(lang, "compile_script", fake_compile, raising=False)
    monkeypatch.setattr(lang, "run", fake_run, raising=False)
    monkeypatch.setattr(lang, "SieveSyntaxError", FakeSyntaxError, raising=False)
    OUTCOMES.clear()
    RUNS.clear()


@dataclass
class Resolution:
    local: list = field(default_factory=list)
    remote: list = field(default_factory=list)


class Accounts:
    users = {BOB, CAROL}

    def resolve(self, address):
        bare = sd._bare(address)
        if bare.endswith("@example.test"):
            return Resolution(local=[bare]) if bare in self.users else None
        return None


class SRS:
    def is_ours(self, address):
        return False

    def forward(self, sender):
        return f"SRS0=hash=tt={sender.partition('@')[2]}={sender.partition('@')[0]}@example.test"


@pytest.fixture
def env(tmp_path, fake_interpreter):
    store = MaildirStore(str(tmp_path / "mail"), fsync=False, hostname=HOST)
    queued = []

    def make(before=(), after=(), srs=None, **settings):
        s = sd.SieveSettings(before=tuple(before), after=tuple(after), **settings)
        return sd.SieveDelivery(s, store, Accounts(), HOST, enqueue_now=lambda *a: queued.append(a),
                                refusal=lambda *a: refusal_report(HOST, *a), srs=lambda: srs)

    return store, queued, make


def script(store, account, text):
    path = os.path.join(store.mailbox(account).path, ".dovecot.sieve")
    with open(path, "w") as f:
        f.write(text)
    return path


def outcome(*actions, header=None, errors=()):
    return lambda message, envelope, kw: Outcome(list(actions), header, list(errors))


def stored(store, account, folder="INBOX"):
    f = store.mailbox(account).folder(folder)
    return [(f.read_message(m.uid), set(m.flags)) for m in f.snapshot().messages]


def deliver_sync(monkeypatch, sieve, deliveries, sender=("ann@remote.test"), body=MESSAGE, folder="INBOX",
                 single=False):
    """SieveDelivery.deliver with the worker threads run in line (the store_items the SMTP
    batcher would be: store.deliver_batch)."""
    monkeypatch.setattr(sd.threads, "deferToThread", lambda f, *a, **k: defer.maybeDeferred(f, *a, **k))
    results = []

    def store_items(items):
        errors = [e for e in sieve.store.deliver_batch(items) if e is not None]
        return defer.fail(errors[0]) if errors else defer.succeed(None)

    sieve.deliver(deliveries, sender, b"", body, folder, store_items, smtp_single=single).addBoth(results.append)
    return results[0]


# -- the executor ---------------------------------------------------------------------------------


def test_no_script_stores_as_without_sieve(env, monkeypatch):
    store, queued, make = env
    assert deliver_sync(monkeypatch, make(), [(BOB, BOB)]) is None
    [(data, flags)] = stored(store, BOB)
    assert data == b"Return-Path: <ann@remote.test>\r\nDelivered-To: bob@example.test\r\n" + MESSAGE
    assert flags == set() and RUNS == [] and queued == []


def test_keep_with_flags_and_fileinto(env, monkeypatch):
    store, _, make = env
    store.mailbox(BOB).create_folder("Work")
    OUTCOMES["s"] = outcome(FileInto("Work", flags=("\\Flagged",)), Keep(flags=("\\Seen", "$Label1")))
    script(store, BOB, "s")
    deliver_sync(monkeypatch, make(), [(BOB, "bob+x@example.test")])
    assert [f for _, f in stored(store, BOB)] == [{"\\Seen", "$Label1"}]
    assert [f for _, f in stored(store, BOB, "Work")] == [{"\\Flagged"}]
    [(name, envelope)] = RUNS
    assert envelope == Envelope("ann@remote.test", "bob+x@example.test", "", "")


def test_fileinto_a_missing_folder(env, monkeypatch):
    store, _, make = env
    OUTCOMES["s"] = outcome(FileInto("Lists/Python"), FileInto("Made", create=True))
    script(store, BOB, "s")
    deliver_sync(monkeypatch, make(), [(BOB, BOB)])
    assert len(stored(store, BOB)) == 1  # RFC 5228 4.1: the default mailbox instead
    assert not store.mailbox(BOB).folder_exists("Lists/Python")
    assert len(stored(store, BOB, "Made")) == 1  # RFC 5490 3.2 :create


def test_duplicate_fileinto_and_keep_make_one_copy(env, monkeypatch):
    store, _, make = env
    OUTCOMES["s"] = outcome(FileInto("INBOX", flags=("\\Seen",)), Keep(flags=("\\Answered",)))
    script(store, BOB, "s")
    deliver_sync(monkeypatch, make(), [(BOB, BOB)])
    assert [f for _, f in stored(store, BOB)] == [{"\\Seen", "\\Answered"}]


def test_discard_stores_nothing(env, monkeypatch):
    store, queued, make = env
    OUTCOMES["s"] = outcome()
    script(store, BOB, "s")
    assert deliver_sync(monkeypatch, make(), [(BOB, BOB)]) == {BOB: "discarded"}
    assert stored(store, BOB) == [] and queued == []


def test_editheader_replaces_the_header_of_stored_and_redirected_copies(env, monkeypatch):
    store, queued, make = env
    new_header = b"X-Tag: yes\r\nFrom: Ann <ann@remote.test>\r\nSubject: Hello\r\n"
    OUTCOMES["s"] = outcome(Redirect("dave@other.test"), Keep(), header=new_header)
    script(store, BOB, "s")
    deliver_sync(monkeypatch, make(), [(BOB, BOB)])
    [(data, _)] = stored(store, BOB)
    assert data == (b"Return-Path: <ann@remote.test>\r\nDelivered-To: bob@example.test\r\n" + new_header
                    + b"\r\nBody line\r\n")
    assert queued == [("ann@remote.test", ["dave@other.test"],
                       b"Delivered-To: bob@example.test\r\n" + new_header + b"\r\nBody line\r\n")]


def test_redirect_with_srs_and_to_a_local_user(env, monkeypatch):
    store, queued, make = env
    OUTCOMES["s"] = outcome(Redirect("dave@other.test"), Redirect("carol@example.test"))
    script(store, BOB, "s")
    deliver_sync(monkeypatch, make(srs=SRS()), [(BOB, BOB)])
    assert stored(store, BOB) == []
    assert queued == [("SRS0=hash=tt=remote.test=ann@example.test", ["dave@other.test"],
                       b"Delivered-To: bob@example.test\r\n" + MESSAGE)]
    [(data, _)] = stored(store, CAROL)  # local: delivered here (with carol's own Sieve), no SRS
    assert data == (b"Return-Path: <ann@remote.test>\r\nDelivered-To: carol@example.test\r\n"
                    b"Delivered-To: bob@example.test\r\n" + MESSAGE)


def test_a_redirect_loop_is_stopped_and_the_message_kept(env, monkeypatch):
    store, queued, make = env
    OUTCOMES["bob"] = outcome(Redirect("carol@example.test"))
    OUTCOMES["carol"] = outcome(Redirect("bob@example.test"))
    script(store, BOB, "bob")
    script(store, CAROL, "carol")
    deliver_sync(monkeypatch, make(), [(BOB, BOB)])
    # bob -> carol -> bob: bob sees his own Delivered-To and keeps it; carol stored nothing
    [(data, _)] = stored(store, BOB)
    assert data.startswith(b"Return-Path: <ann@remote.test>\r\nDelivered-To: bob@example.test\r\n"
                           b"Delivered-To: carol@example.test\r\nDelivered-To: bob@example.test\r\n")
    assert stored(store, CAROL) == [] and queued == []


def test_too_many_redirects(env, monkeypatch):
    store, queued, make = env
    OUTCOMES["s"] = outcome(*[Redirect(f"r{i}@other.test") for i in range(3)])
    script(store, BOB, "s")
    deliver_sync(monkeypatch, make(max_redirects=2), [(BOB, BOB)])
    assert [q[1] for q in queued] == [["r0@other.test"], ["r1@other.test"]]
    assert len(stored(store, BOB)) == 1  # the rest not sent: kept


def test_reject_with_one_recipient_is_the_smtp_reply(env, monkeypatch):
    store, queued, make = env
    OUTCOMES["s"] = outcome(Reject("I do not\r\n want  this"))
    script(store, BOB, "s")
    failure = deliver_sync(monkeypatch, make(), [(BOB, BOB)], single=True)
    assert failure.check(MailError)
    e = failure.value
    assert (e.code, e.enhanced, e.text) == (550, "5.7.1", "Message refused: I do not want this")
    assert stored(store, BOB) == [] and queued == []


def test_reject_for_one_of_two_recipients_is_a_bounce(env, monkeypatch):
    store, queued, make = env
    OUTCOMES["s"] = outcome(Reject("not for me"))
    script(store, BOB, "s")
    assert deliver_sync(monkeypatch, make(), [(BOB, BOB), (CAROL, CAROL)]) == {BOB: "rejected", CAROL: "INBOX"}
    assert stored(store, BOB) == [] and len(stored(store, CAROL)) == 1
    [(sender, rcpts, report)] = queued
    assert (sender, rcpts) == ("", ["ann@remote.test"])
    assert b"Final-Recipient: rfc822; bob@example.test\r\nAction: failed\r\nStatus: 5.7.1\r\n" in report
    assert b"Diagnostic-Code: smtp; 550 5.7.1 not for me\r\n" in report
    assert b"Subject: Hello\r\n" in report  # the original header, quoted


def test_reject_of_a_bounce_sends_nothing(env, monkeypatch):
    store, queued, make = env
    OUTCOMES["s"] = outcome(Reject("no"))
    script(store, BOB, "s")
    deliver_sync(monkeypatch, make(), [(BOB, BOB), (CAROL, CAROL)], sender="")
    assert stored(store, BOB) == [] and queued == []


def test_a_run_time_error_keeps_the_message(env, monkeypatch):
    store, queued, make = env
    OUTCOMES["s"] = outcome(Keep(), errors=["line 3: regex took too long"])
    script(store, BOB, "s")
    deliver_sync(monkeypatch, make(), [(BOB, BOB)], folder="Junk")
    assert len(stored(store, BOB, "Junk")) == 1 and stored(store, BOB) == []


def test_an_invalid_user_script_keeps_the_message(env, monkeypatch):
    store, _, make = env
    script(store, BOB, "bad script")
    deliver_sync(monkeypatch, make(), [(BOB, BOB)])
    assert len(stored(store, BOB)) == 1


def test_before_and_after_follow_pigeonholes_sequence(env, monkeypatch, tmp_path):
    store, queued, make = env
    before, after = tmp_path / "before.sieve", tmp_path / "after.sieve"
    before.write_text("before")
    after.write_text("after")
    script(store, BOB, "user")
    store.mailbox(BOB).create_folder("Junk") if not store.mailbox(BOB).folder_exists("Junk") else None
    OUTCOMES["before"] = outcome(Keep())
    OUTCOMES["user"] = outcome(Keep(flags=("\\Seen",)), Redirect("x@other.test"))
    OUTCOMES["after"] = outcome(FileInto("Junk", flags=("$After",)), Keep(flags=("$Last",)))
    sieve = make(before=[str(before)], after=[str(after)])
    deliver_sync(monkeypatch, sieve, [(BOB, BOB)])
    assert [r[0] for r in RUNS] == ["before", "user", "after"]
    assert [f for _, f in stored(store, BOB)] == [{"\\Seen", "$Last"}]  # one keep, every keep's flags
    assert [f for _, f in stored(store, BOB, "Junk")] == [{"$After"}]
    assert [q[1] for q in queued] == [["x@other.test"]]  # earlier scripts' actions are carried out
    # "discard; stop;" in a before script ends the sequence
    RUNS.clear()
    OUTCOMES["before"] = outcome()
    deliver_sync(monkeypatch, sieve, [(BOB, BOB)])
    assert [r[0] for r in RUNS] == ["before"] and len(stored(store, BOB)) == 1
    # an error in the user's script: implicit keep, the after script does not run
    RUNS.clear()
    OUTCOMES["before"] = outcome(Keep())
    OUTCOMES["user"] = outcome(Keep(), errors=["boom"])
    deliver_sync(monkeypatch, sieve, [(BOB, BOB)])
    assert [r[0] for r in RUNS] == ["before", "user"]
    assert [f for _, f in stored(store, BOB)][-1] == set()


def test_scripts_compile_once_until_the_file_changes(env, monkeypatch):
    store, _, make = env
    compiled = []
    monkeypatch.setattr(lang, "compile_script",
                        lambda text, name="": (text == "keep;" or compiled.append(text)) and FakeScript(text)
                        or FakeScript(text))
    OUTCOMES["one"] = OUTCOMES["two"] = outcome(Keep())
    path = script(store, BOB, "one")
    sieve = make()
    for _ in range(3):
        deliver_sync(monkeypatch, sieve, [(BOB, BOB)])
    assert compiled == ["one"]
    with open(path, "w") as f:
        f.write("two")
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    deliver_sync(monkeypatch, sieve, [(BOB, BOB)])
    assert compiled == ["one", "two"]


def test_include_loader(env, tmp_path):
    store, _, make = env
    global_dir = tmp_path / "global"
    global_dir.mkdir()
    (global_dir / "spam.sieve").write_text("global text")
    user_dir = store.mailbox(BOB).path
    os.makedirs(os.path.join(user_dir, "sieve"))
    with open(os.path.join(user_dir, "sieve", "mine.sieve"), "w") as f:
        f.write("personal text")
    load = make(global_dir=str(global_dir))._loader(user_dir)
    assert load("spam", "global") == "global text"
    assert load("mine", "personal") == "personal text"
    assert load("spam", "personal") is None and load("../x", "global") is None and load(".x", "personal") is None


def test_bounces_to_a_local_sender_run_sieve(env):
    store, _, make = env
    store.mailbox(BOB).create_folder("Bounces")
    OUTCOMES["s"] = outcome(FileInto("Bounces"))
    script(store, BOB, "s")
    make().deliver_now(BOB, "", b"Subject: Undelivered\r\n\r\nx\r\n")
    [(data, _)] = stored(store, BOB, "Bounces")
    assert data == b"Return-Path: <>\r\nDelivered-To: bob@example.test\r\nSubject: Undelivered\r\n\r\nx\r\n"


# -- vacation -------------------------------------------------------------------------------------


def _vacation_run(env, monkeypatch, message=MESSAGE, sender="ann@remote.test", **kw):
    store, queued, make = env
    OUTCOMES["s"] = outcome(Vacation("I am away.", **kw), Keep())
    script(store, BOB, "s")
    deliver_sync(monkeypatch, make(), [(BOB, BOB)], sender=sender, body=message)
    return queued


def test_vacation_replies_once_per_sender(env, monkeypatch):
    queued = _vacation_run(env, monkeypatch, seconds=86400, handle="h")
    _vacation_run(env, monkeypatch, seconds=86400, handle="h")
    [(sender, rcpts, reply)] = queued
    assert (sender, rcpts) == ("", ["ann@remote.test"])
    head, _, body = reply.partition(b"\r\n\r\n")
    fields = vacation.parse_header(reply)
    assert [n for n, _ in fields] == ["from", "to", "subject", "date", "message-id", "in-reply-to", "references",
                                      "auto-submitted", "mime-version", "content-type", "content-transfer-encoding"]
    d = dict(fields)
    assert (d["from"], d["to"], d["subject"]) == ("bob@example.test", "<ann@remote.test>", "Auto: Hello")
    assert (d["in-reply-to"], d["references"], d["auto-submitted"]) == ("<m1@remote.test>", "<m1@remote.test>",
                                                                        "auto-replied")
    assert body == b"I am away.\r\n"
    assert len(env[0].mailbox(BOB).folder("INBOX").snapshot().messages) == 2  # both kept


@pytest.mark.parametrize("extra, sender", [
    (b"List-Id: <python.lists.example>\r\n", "ann@remote.test"),
    (b"Precedence: bulk\r\n", "ann@remote.test"),
    (b"Auto-Submitted: auto-generated\r\n", "ann@remote.test"),
    (b"", ""),
    (b"", "MAILER-DAEMON@remote.test"),
    (b"", "owner-list@remote.test"),
    (b"", "list-request@remote.test"),
    (b"", "bob@example.test"),
])
def test_vacation_does_not_answer(env, monkeypatch, extra, sender):
    assert _vacation_run(env, monkeypatch, extra + MESSAGE, sender) == []


def test_vacation_needs_the_users_address_in_the_header(env, monkeypatch):
    other = MESSAGE.replace(b"To: Bob <bob@example.test>", b"To: team@remote.test")
    assert _vacation_run(env, monkeypatch, other) == []
    cc = MESSAGE.replace(b"To: Bob <bob@example.test>", b"To: team@remote.test\r\nCc: alt@example.test")
    [(_, _, reply)] = _vacation_run(env, monkeypatch, cc, addresses=("alt@example.test",),
                                    subject="Gone fishing", from_addr="Bob <bob@example.test>")
    d = dict(vacation.parse_header(reply))
    assert (d["subject"], d["from"]) == ("Gone fishing", "Bob <bob@example.test>")


def test_vacation_mime_reason(env, monkeypatch):
    store, queued, make = env
    OUTCOMES["m"] = outcome(Vacation("Content-Type: text/html; charset=utf-8\r\n\r\n<p>away</p>\r\n", mime=True))
    script(store, BOB, "m")
    deliver_sync(monkeypatch, make(), [(BOB, BOB)])
    [(_, _, reply)] = queued
    assert reply.endswith(b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>away</p>\r\n")


def test_vacation_tracking_expires_and_stays_bounded(tmp_path, monkeypatch, fake_interpreter):
    now = 1_000_000.0
    assert vacation.first_reply(str(tmp_path), "a@x.test", "h", 100, now)
    assert not vacation.first_reply(str(tmp_path), "A@X.test", "h", 100, now + 50)
    assert vacation.first_reply(str(tmp_path), "a@x.test", "other handle", 100, now + 50)
    assert vacation.first_reply(str(tmp_path), "a@x.test", "h", 100, now + 101)  # expired
    monkeypatch.setattr(vacation, "MAX_ENTRIES", 3)
    for i in range(10):
        vacation.first_reply(str(tmp_path), f"s{i}@x.test", "h", 1000, now + 200 + i)
    assert len((tmp_path / vacation.TRACK_FILE).read_text().splitlines()) == 3


# -- configuration ---------------------------------------------------------------------------------


def _values(**sieve):
    base = {"enabled": True, "before": [], "after": [], "global_dir": "", "max_run_time": 2.0,
            "max_body_size": 1 << 20, "max_redirects": 4, "vacation_min_period": 86400,
            "vacation_max_period": 30 * 86400}
    return {"sieve": {**base, **sieve}}


def test_config_refuses_missing_and_invalid_global_scripts(tmp_path, fake_interpreter):
    conf = str(tmp_path / "mailstack.toml")
    with pytest.raises(ConfigError) as e:
        sd.check_config(_values(before=["nowhere.sieve"]), conf)
    assert str(e.value).startswith(f"{conf}: [sieve] before: {tmp_path}/nowhere.sieve: cannot be read")
    (tmp_path / "bad.sieve").write_text("bad script")
    with pytest.raises(ConfigError) as e:
        sd.check_config(_values(after=["bad.sieve"]), conf)
    assert str(e.value) == f"{conf}: [sieve] after: {tmp_path}/bad.sieve: line 1, column 1: bad script"
    with pytest.raises(ConfigError, match=r"\[sieve\] max_run_time: must be at least"):
        sd.check_config(_values(max_run_time=0.0), conf)
    with pytest.raises(ConfigError, match=r"\[sieve\] global_dir: .* is not a directory"):
        sd.check_config(_values(global_dir=str(tmp_path / "none")), conf)
    (tmp_path / "good.sieve").write_text("good")
    assert sd.check_config(_values(before=["good.sieve"]), conf)["before"] == [str(tmp_path / "good.sieve")]


def test_reply_text_is_one_safe_line():
    assert sd._reply_text("a\r\nb\tc\x00d é") == "a b c?d ?"
    assert sd._reply_text("") == "rejected by the recipient's filter"


def test_replace_header():
    assert sd.replace_header(b"A: 1\r\n\r\nbody", b"B: 2\r\n") == b"B: 2\r\n\r\nbody"
    assert sd.replace_header(b"A: 1\r\n\r\nbody", b"B: 2\r\n\r\n") == b"B: 2\r\n\r\nbody"
    assert sd.replace_header(b"A: 1\r\n", b"B: 2") == b"B: 2\r\n\r\n"


def test_vacation_non_ascii_reason_is_quoted_printable():
    reply = vacation.build_reply(Vacation("Je suis en congé."), [("subject", "Hi")], "a@x.test", BOB, HOST, now=0)
    assert reply.endswith(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
                          b"\r\n\r\nJe suis en cong=C3=A9.\r\n")
    reply = vacation.build_reply(Vacation("x", subject="Abwesend bis März"), [], "a@x.test", BOB, HOST, now=0)
    assert dict(vacation.parse_header(reply))["subject"] == "=?utf-8?q?Abwesend_bis_M=C3=A4rz?="  # RFC 2047 4.2


def test_vacation_date_is_rfc5322():
    reply = vacation.build_reply(Vacation("x"), [("subject", "Hi")], "a@x.test", BOB, HOST, now=0)
    assert email.utils.parsedate_to_datetime(dict(vacation.parse_header(reply))["date"]).timestamp() == 0


# -- through the MX port, real twistd, the real interpreter ------------------------------------------

from test_relay import dns_server, relay_env  # noqa: E402,F401  - DNS for remote.test, fake MX hosts

ANN = "ann@remote.test"

USER_SCRIPT = r'''require ["fileinto", "imap4flags", "editheader", "reject", "vacation", "mailbox", "include"];
if header :contains "subject" "[list]" { fileinto :create "Lists"; stop; }
if header :is "subject" "flag me" { addflag ["\\Flagged", "$Work"]; keep; stop; }
if header :is "subject" "edit me" { addheader "X-Edited" "by sieve"; deleteheader "X-Remove"; keep; stop; }
if header :is "subject" "reject me" { reject "No thanks, not interested."; stop; }
if header :is "subject" "redirect me" { redirect "dave@remote.test"; stop; }
if header :is "subject" "error me" { include :personal "missing"; }
if header :contains "subject" "away" { vacation :days 1 :subject "Out of office" "I am away until Monday."; }
'''
BEFORE = 'require ["fileinto"];\nif header :is "x-spam" "yes" { fileinto "Junk"; stop; }\n'
AFTER = 'require ["imap4flags"];\nif header :is "subject" "flag me" { addflag "$After"; }\n'


def _send(srv, subject, to=(BOB,), sender=ANN, extra=""):
    msg = (f"From: Ann <{sender}>\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '.')}.{time.monotonic_ns()}@remote.test>\r\n{extra}\r\nHello.\r\n")
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=20) as s:
        s.sendmail(sender, list(to), msg.encode())


def _imap_flags(srv, user, password, folder="INBOX"):
    with imaplib.IMAP4("127.0.0.1", srv.port("imap")) as m:
        m.starttls(srv.ssl_context())
        m.login(user, password)
        m.select(folder, readonly=True)
        _, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out = {}
        for item in data:
            if isinstance(item, tuple):
                flags = set(imaplib.ParseFlags(item[0])) - {b"\\Recent"}
                out[item[1].decode().split(":", 1)[1].strip()] = {f.decode() for f in flags}
        return out


def _install(srv):
    from mailstack.store import MaildirStore

    user_dir = MaildirStore(str(srv.store_root)).mailbox(BOB).path
    os.makedirs(os.path.join(user_dir, "sieve"))
    with open(os.path.join(user_dir, "sieve", "main.sieve"), "w") as f:
        f.write(USER_SCRIPT)
    os.symlink("sieve/main.sieve", os.path.join(user_dir, ".dovecot.sieve"))  # Dovecot's layout
    (srv.base / "before.sieve").write_text(BEFORE)
    (srv.base / "after.sieve").write_text(AFTER)


@pytest.mark.slow
def test_sieve_at_the_mx_port(relay_env):
    from support.servers import PASSWORDS
    from support.waiting import wait_files

    make, start_fake, _ = relay_env
    out = start_fake()
    srv = make(extra='[sieve]\nbefore = ["before.sieve"]\nafter = ["after.sieve"]\n', listeners=("smtp", "imap"))
    _install(srv)
    srv.start()
    _send(srv, "flag me")
    _send(srv, "[list] news")
    _send(srv, "edit me", extra="X-Remove: gone\r\n")
    _send(srv, "error me")
    _send(srv, "flag me too", extra="X-Spam: yes\r\n")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send(srv, "reject me")
    assert (refused.value.smtp_code, refused.value.smtp_error) == (550, b"5.7.1 Message refused: No thanks, not interested.")
    _send(srv, "reject me", to=(BOB, CAROL))  # two recipients: a bounce, carol has it
    _send(srv, "redirect me")
    _send(srv, "away 1")
    _send(srv, "away 2")  # the same sender within :days: no second reply
    _send(srv, "away 3", sender="zed@remote.test", extra="List-Id: <news.remote.test>\r\n")

    flags = _imap_flags(srv, BOB, PASSWORDS[BOB])
    assert flags == {"flag me": {"\\Flagged", "$Work", "$After"}, "edit me": set(), "error me": set(),
                     "away 1": set(), "away 2": set(), "away 3": set()}
    assert list(_imap_flags(srv, BOB, PASSWORDS[BOB], "Lists")) == ["[list] news"]
    assert list(_imap_flags(srv, BOB, PASSWORDS[BOB], "Junk")) == ["flag me too"]  # before's stop: no user script
    assert list(_imap_flags(srv, CAROL, PASSWORDS[CAROL])) == ["reject me"]
    [edited] = [m for m in srv.messages(BOB) if b"Subject: edit me" in m]
    assert edited.startswith(b"Return-Path: <ann@remote.test>\r\nDelivered-To: bob@example.test\r\n"
                             b"X-Edited: by sieve\r\nReceived: from ")
    assert b"X-Remove" not in edited
    assert "include" in srv.log_text() and "implicit keep" in srv.log_text()  # the error, logged

    # queued and sent: the bounce, the redirect, one vacation reply (order of arrival varies)
    files = wait_files(out, "*.json", 3)
    time.sleep(1.5)  # a second reply, were there one, would have come by now
    sent = {}
    for j in sorted(out.glob("*.json")):
        meta = json.loads(j.read_text())
        data = j.with_suffix(".eml").read_bytes()
        kind = ("bounce" if b"multipart/report" in data else "vacation" if b"Auto-Submitted: auto-replied" in data
                else "redirect")
        assert kind not in sent, f"two {kind} messages"
        sent[kind] = (meta["sender"], meta["recipients"], data)
    assert set(sent) == {"bounce", "redirect", "vacation"}, files
    assert sent["bounce"][:2] == ("", [ANN])
    assert b"Status: 5.7.1\r\n" in sent["bounce"][2] and b"550 5.7.1 No thanks, not interested." in sent["bounce"][2]
    sender, rcpts, data = sent["redirect"]
    assert rcpts == ["dave@remote.test"] and data.startswith(b"Delivered-To: bob@example.test\r\nReceived: ")
    # SRS (srs branch, merged): the sender rewritten, SRS0 of remote.test's ann at our domain
    assert sender.startswith("SRS0=") and sender.endswith("=remote.test=ann@example.test"), sender
    sender, rcpts, data = sent["vacation"]
    assert (sender, rcpts) == ("", [ANN])
    fields = dict(vacation.parse_header(data))
    assert (fields["subject"], fields["from"], fields["to"]) == ("Out of office", BOB, f"<{ANN}>")
    assert fields["in-reply-to"].startswith("<away.1.") and data.endswith(b"\r\n\r\nI am away until Monday.\r\n")


@pytest.mark.slow
def test_submission_to_a_local_user_and_a_script_over_its_time(server_factory):
    from mailstack.store import MaildirStore
    from support.servers import PASSWORDS

    srv = server_factory(listeners=["smtp", "submission"], extra="[sieve]\nmax_run_time = 0.5\n")
    user_dir = MaildirStore(str(srv.store_root)).mailbox(BOB).path
    with open(os.path.join(user_dir, ".dovecot.sieve"), "w") as f:  # a hand-written file counts too
        f.write('require ["envelope", "fileinto", "mailbox", "body", "regex"];\n'
                'if envelope :is "from" "alice@example.test" { fileinto :create "From Alice"; stop; }\n'
                'if body :regex "(a|aa)+$" { fileinto :create "Never"; }\n')
    srv.start()
    alice = "alice@example.test"
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=20) as s:
        s.starttls(context=srv.ssl_context())
        s.login(alice, PASSWORDS[alice])
        s.sendmail(alice, [BOB], f"From: {alice}\r\nTo: {BOB}\r\nSubject: hi\r\n\r\nHello.\r\n".encode())
    [filed] = srv.messages(BOB, "From Alice")
    assert filed.startswith(b"Return-Path: <alice@example.test>\r\nDelivered-To: bob@example.test\r\nReceived: ")
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=20) as s:
        s.sendmail(ANN, [BOB], b"From: ann@remote.test\r\nTo: bob@example.test\r\nSubject: slow\r\n\r\n"
                   + b"a" * 50000 + b"b\r\n")
    assert time.monotonic() - started < 5
    assert len(srv.messages(BOB)) == 1 and srv.messages(BOB, "Never") == []  # the implicit keep
    assert "took too long; implicit keep" in srv.log_text()


def test_a_sieve_step_that_overruns_keeps_everything(env, monkeypatch):
    store, _, make = env
    sieve = make()
    monkeypatch.setattr(sd.threads, "deferToThread", lambda f, *a, **k: defer.fail(defer.TimeoutError()))
    results = []

    def store_items(items):
        assert [(a, f) for a, _, f in items] == [(BOB, "INBOX"), (CAROL, "INBOX")]
        return defer.succeed(store.deliver_batch(items))

    sieve.deliver([(BOB, BOB), (CAROL, CAROL)], "ann@remote.test", b"", MESSAGE, "INBOX", store_items).addBoth(results.append)
    assert len(stored(store, BOB)) == 1 and len(stored(store, CAROL)) == 1


@pytest.mark.slow
def test_an_invalid_global_script_stops_start_up(server_factory):
    srv = server_factory(listeners=["smtp"], extra='[sieve]\nbefore = ["spam.sieve"]\n')
    (srv.base / "spam.sieve").write_text('require "fileinto";\nif header :is "x-spam" "yes" { fileinto "Junk" }\n')
    with pytest.raises(RuntimeError) as e:
        srv.start()
    assert f"{srv.config_path}: [sieve] before: {srv.base}/spam.sieve: line 2, column " in str(e.value)


@pytest.mark.slow
def test_a_bounce_to_a_local_sender_runs_her_script(relay_env):
    from mailstack.store import MaildirStore
    from test_relay import submit

    make, start_fake, _ = relay_env
    start_fake("127.0.0.2", "--rcpt-code", "550")
    srv = make()
    alice = "alice@example.test"
    user_dir = MaildirStore(str(srv.store_root)).mailbox(alice).path
    with open(os.path.join(user_dir, ".dovecot.sieve"), "w") as f:
        f.write('require ["envelope", "fileinto", "mailbox", "imap4flags"];\n'
                'if envelope :is "from" "" { fileinto :create :flags "\\\\Seen" "Bounces"; }\n')
    srv.start()
    submit(srv, "nobody@remote.test", subject="bounceme")
    [raw] = srv.wait_for_messages(alice, 1, timeout=20, folder="Bounces")
    assert raw.startswith(b"Return-Path: <>\r\nDelivered-To: alice@example.test\r\nFrom: Mail Delivery System")
    assert srv.messages(alice) == []
    [name] = os.listdir(srv.maildir(alice, "Bounces") / "cur")
    assert name.endswith(":2,S")


def test_the_mail_log_is_told_where_each_copy_went(env, monkeypatch):
    """The per-account ``folder=`` of the mail log comes from what the scripts decided."""
    store, _, make = env
    store.mailbox(BOB).create_folder("Work")
    OUTCOMES["s"] = outcome(FileInto("Work"), Keep())
    OUTCOMES["d"] = outcome()
    script(store, BOB, "s")
    script(store, "alice@example.test", "d")
    assert deliver_sync(monkeypatch, make(), [(BOB, BOB), ("alice@example.test", "alice@example.test")]) == \
        {BOB: "Work,INBOX", "alice@example.test": "discarded"}


def test_keywords_past_the_folders_26_still_store_the_message(env, monkeypatch):
    """A keep with more keywords than a Maildir folder has letters for (26) stores the message
    with those that fit; it used to fail the delivery (451 at every retry) and leave the quota
    charged."""
    from mailstack.store import Limits, QuotaPolicy

    store, _, make = env
    store.quota = QuotaPolicy(lambda a: Limits(10_000_000, 100), fsync=False)
    words = tuple(f"$k{i}" for i in range(30))
    OUTCOMES["s"] = outcome(Keep(flags=("\\Seen",) + words))
    script(store, BOB, "s")
    assert isinstance(deliver_sync(monkeypatch, make(), [(BOB, BOB)]), dict)
    [(_, flags)] = stored(store, BOB)
    assert "\\Seen" in flags and len(flags - {"\\Seen"}) == 26 and flags <= {"\\Seen", *words}
    usage = store.quota_usage(BOB)
    assert (usage.messages, usage.bytes) == (1, os.path.getsize(
        os.path.join(store.mailbox(BOB).path, "cur", os.listdir(os.path.join(store.mailbox(BOB).path, "cur"))[0])))


def test_a_redirect_to_a_full_local_mailbox_bounces_and_keeps_the_smtp_reply(env, monkeypatch):
    """bob keeps and redirects to carol, whose mailbox is full: bob's copy is stored, so the
    SMTP reply must be 250 (a 452 made the sender try again and bob get one more copy each
    time); carol's refusal goes back to the sender as a report, as a remote host's would."""
    from mailstack.store import Limits, QuotaPolicy

    store, queued, make = env
    store.quota = QuotaPolicy(lambda a: Limits(0, 1) if a == CAROL else Limits(), warning_percent=0, fsync=False)
    store.deliver(CAROL, b"Subject: old\r\n\r\nx\r\n")
    OUTCOMES["s"] = outcome(Keep(), Redirect(CAROL))
    script(store, BOB, "s")
    assert isinstance(deliver_sync(monkeypatch, make(), [(BOB, BOB)]), dict)
    assert len(stored(store, BOB)) == 1 and len(stored(store, CAROL)) == 1
    [(sender, rcpts, report)] = queued
    assert (sender, rcpts) == ("", ["ann@remote.test"])
    assert b"Final-Recipient: rfc822; carol@example.test\r\nAction: failed\r\nStatus: 5.2.2\r\n" in report


def test_a_reject_report_to_a_full_local_sender_is_stored(env, monkeypatch):
    """A Sieve reject's report to a local sender past her quota is stored (grace), as the
    relay's delivery reports are; it used to fail the whole delivery with 452."""
    from mailstack.store import Limits, QuotaPolicy

    store, queued, make = env
    store.quota = QuotaPolicy(lambda a: Limits(0, 1) if a == CAROL else Limits(), warning_percent=0, fsync=False)
    store.deliver(CAROL, b"Subject: old\r\n\r\nx\r\n")
    OUTCOMES["s"] = outcome(Reject("not for me"))
    script(store, BOB, "s")
    assert isinstance(deliver_sync(monkeypatch, make(), [(BOB, BOB)], sender=CAROL), dict)  # not single: a bounce
    assert stored(store, BOB) == [] and queued == []
    reports = [d for d, _ in stored(store, CAROL) if b"Status: 5.7.1" in d]
    assert len(reports) == 1


def test_a_script_deleting_delivered_to_does_not_defeat_loop_detection(env, monkeypatch):
    """``deleteheader "Delivered-To"`` (editheader) then ``redirect``: the loop check reads the
    message as it arrived, so a message that was here before is kept, not sent round again
    (there is no hop limit elsewhere to stop it)."""
    store, queued, make = env
    OUTCOMES["s"] = outcome(Redirect("dave@other.test"), header=b"Subject: Hello\r\n")
    script(store, BOB, "s")
    came_back = b"Delivered-To: bob@example.test\r\n" + MESSAGE
    assert isinstance(deliver_sync(monkeypatch, make(), [(BOB, BOB)], body=came_back), dict)
    assert queued == [] and len(stored(store, BOB)) == 1


def test_a_long_non_ascii_vacation_subject_is_folded_with_crlf():
    """An encoded subject longer than one encoded word is folded (RFC 2047 2, RFC 5322 2.2.3)
    with CRLF: a bare LF in the reply's header is refused by many receivers (and is what
    SMTP smuggling is made of)."""
    subject = "Vacances d'été " * 8
    reply = vacation.build_reply(Vacation("x", subject=subject), [], "a@x.test", BOB, HOST, now=0)
    assert b"\n" not in reply.replace(b"\r\n", b"")
    head = reply.split(b"\r\n\r\n", 1)[0].decode()
    field = head.split("\r\nSubject: ", 1)[1].split("\r\nDate: ", 1)[0]
    assert "\r\n " in field
    import email.header
    decoded = "".join(p.decode(c or "ascii") if isinstance(p, bytes) else p
                      for p, c in email.header.decode_header(field.replace("\r\n", "")))
    assert decoded == " ".join(subject.split())


def test_a_non_ascii_vacation_from_keeps_its_address_readable():
    """RFC 2047 5: an encoded word may stand for a display name, never for the address; the
    whole "José <jose@…>" used to become one encoded word, a From with no address in it."""
    reply = vacation.build_reply(Vacation("x", from_addr="José Müller <jose@example.test>"), [], "a@x.test", BOB,
                                 HOST, now=0)
    value = dict(vacation.parse_header(reply))["from"]
    assert value == "=?utf-8?b?Sm9zw6kgTcO8bGxlcg==?= <jose@example.test>"
    assert email.utils.getaddresses([value])[0][1] == "jose@example.test"
    reply = vacation.build_reply(Vacation("x", from_addr="Jörg <jörg@example.test>"), [], "a@x.test", BOB, HOST, now=0)
    assert dict(vacation.parse_header(reply))["from"] == "=?utf-8?b?SsO2cmc=?= <jörg@example.test>"  # EAI: no error


def test_a_message_with_many_received_fields_is_not_redirected_again(env, monkeypatch):
    """RFC 5228 4.2: loop control may count Received fields.  A loop through a forwarder that
    drops Delivered-To came back with only Received fields (which editheader cannot delete)
    to show for it, and the MX has no hop limit: it went round for ever."""
    store, queued, make = env
    OUTCOMES["s"] = outcome(Redirect("dave@other.test"))
    script(store, BOB, "s")
    def hops(n):  # MESSAGE has one of its own
        return b"".join(b"Received: from hop%d by x; Fri, 4 Dec 2026 10:00:00 +0000\r\n" % i for i in range(n - 1))

    assert isinstance(deliver_sync(monkeypatch, make(), [(BOB, BOB)], body=hops(sd.MAX_RECEIVED) + MESSAGE), dict)
    assert queued == [] and len(stored(store, BOB)) == 1
    assert isinstance(deliver_sync(monkeypatch, make(), [(BOB, BOB)], body=hops(sd.MAX_RECEIVED - 1) + MESSAGE), dict)
    assert len(queued) == 1


def test_a_vacation_reply_to_a_long_thread_keeps_lines_under_998():
    """References grows with a thread and is folded over many lines; unfolded into one line
    it passed RFC 5322 2.1.1's 998 characters (receivers refuse such a message)."""
    ids = " ".join(f"<{i:04d}.a-rather-long-message-id@mail.example.test>" for i in range(40))
    fields = [("message-id", "<last@x.test>"), ("references", ids), ("subject", "Re: " + "word " * 250)]
    reply = vacation.build_reply(Vacation("x"), fields, "a@x.test", BOB, HOST, now=0)
    assert max(len(line) for line in reply.split(b"\r\n")) <= 78 + 60
    parsed = dict(vacation.parse_header(reply))
    assert parsed["references"] == ids + " <last@x.test>"
    assert parsed["subject"] == "Auto: Re: " + " ".join(["word"] * 250)


def test_a_reply_to_one_of_our_srs_addresses_goes_to_the_original_sender(env, monkeypatch):
    """A message whose sender is one of our SRS addresses (a copy we forwarded, sent back
    here by a forwarder without SRS): bob's vacation reply goes where the MX would send it,
    the original sender, not to the catch-all of the SRS domain."""
    from mailstack.srs import SRS as RealSRS

    store, queued, make = env
    srs = RealSRS(b"k", "example.test", local_domains=["example.test"])
    ours = srs.forward("dave@outside.test")

    class CatchAll(Accounts):
        def resolve(self, address):
            found = super().resolve(address)
            return found if found or not address.endswith("@example.test") else Resolution(local=[CAROL])

    OUTCOMES["s"] = outcome(Vacation("I am away.", seconds=86400))
    script(store, BOB, "s")
    sieve = make(srs=srs)
    sieve.accounts = CatchAll()
    deliver_sync(monkeypatch, sieve, [(BOB, BOB)], sender=ours)
    assert [(s, r) for s, r, _ in queued] == [("", ["dave@outside.test"])]
    assert stored(store, CAROL) == []
