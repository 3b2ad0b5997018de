"""SRS through a real twistd process (issue 19 section 3): mail to an alias that forwards outside
leaves with an SRS0 sender, and a bounce to that address comes back through the MX port to the
original sender; a forged one is refused.  DNS on loopback (tests/tools/dnsserver.py) gives the
outside domains MX hosts on 127.0.0.2-4, where fake MXes (tests/tools/fake_mx.py) listen."""

from __future__ import annotations

import json
import smtplib
import sys

import pytest
from support.dns import TOOLS, serve_zones
from support.servers import Proc, free_port
from support.waiting import wait_files, wait_for

from mailstack.srs import SRS, load_keys

pytestmark = pytest.mark.slow

ALIASES = "fwd@example.test: carol@remote.test\nfwd2@example.test: carol@rejecting.test\n"


@pytest.fixture
def world(tmp_path, server_factory):
    zones = {
        "remote.test": ["MX('remote.test', 10, 'mx.remote.test')", "A('mx.remote.test', '127.0.0.2')"],
        "outside.test": ["MX('outside.test', 10, 'mx.outside.test')", "A('mx.outside.test', '127.0.0.3')"],
        "rejecting.test": ["MX('rejecting.test', 10, 'mx.rejecting.test')", "A('mx.rejecting.test', '127.0.0.4')"],
    }
    dns = serve_zones(tmp_path, zones)
    dns_port = next(dns)
    mx_port = free_port("127.0.0.2", also=("127.0.0.3", "127.0.0.4"))
    fakes = []

    def fake(ip, name, *args):
        out = tmp_path / name
        fakes.append(Proc([sys.executable, str(TOOLS / "fake_mx.py"), ip, str(mx_port), str(out), *args]))
        return out

    extra = (f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\n'
             f"[relay]\nport = {mx_port}\nretry_schedule = [1]\nscan_interval = 0.5\nconnect_timeout = 15\n")
    srv = server_factory(listeners=["smtp"], extra=extra, aliases=ALIASES)
    yield srv, fake
    for f in fakes:
        f.stop()
    next(dns, None)


def envelope(path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def test_forwarded_mail_gets_an_srs0_sender_and_its_bounce_comes_back(world):
    srv, fake = world
    srv.start()
    srs = SRS(load_keys(str(srv.base / "srs.key")), "example.test")  # the key the server made at start
    message = b"From: dave@outside.test\r\nTo: fwd@example.test\r\nSubject: forwarded\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.sendmail("dave@outside.test", ["fwd@example.test"], message)

    # queued (carol's MX is not up yet): the envelope sender is ours, in SRS0 form
    queue = srv.base / "queue"
    [env_file] = wait_for(lambda: list((queue / "env").glob("*.json")))
    queued = json.loads(env_file.read_text())
    srs0 = queued["sender"]
    assert srs0 == srs.forward("dave@outside.test")
    assert srs0.startswith("SRS0=") and srs0.endswith("=outside.test=dave@example.test")
    assert [r["address"] for r in queued["recipients"]] == ["carol@remote.test"]
    assert srs.reverse(srs0) == "dave@outside.test"

    # what leaves: MAIL FROM the SRS0 address, the message as it came
    carol = fake("127.0.0.2", "carol")
    [eml] = wait_files(carol, "*.eml", 1)
    assert envelope(eml) == {"sender": srs0, "recipients": ["carol@remote.test"], "tls": False, "auth": False}
    assert eml.read_bytes().endswith(message)

    # carol's server bounces it later: the bounce to the SRS0 address reaches dave's MX
    dave = fake("127.0.0.3", "dave")
    bounce = b"From: MAILER-DAEMON@remote.test\r\nTo: " + srs0.encode() + b"\r\nSubject: Undelivered\r\n\r\nno such user\r\n"
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.sendmail("<>", [srs0], bounce)
    [back] = wait_files(dave, "*.eml", 1)
    assert envelope(back) == {"sender": "", "recipients": ["dave@outside.test"], "tls": False, "auth": False}
    assert back.read_bytes().endswith(bounce)


def test_a_bounce_to_a_local_sender_lands_in_their_inbox(world):
    srv, _fake = world
    srv.start()
    srs = SRS(load_keys(str(srv.base / "srs.key")), "example.test")
    address = srs._srs0("bob", "example.test")  # as if bob's domain had not been ours when it was made
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.sendmail("<>", [address], b"Subject: your message bounced\r\n\r\nsorry\r\n")
    [stored] = srv.wait_for_messages("bob@example.test", 1)
    assert stored.startswith(b"Return-Path: <>\r\nDelivered-To: bob@example.test\r\n")
    assert b"Subject: your message bounced" in stored


def test_the_relays_own_bounce_of_a_forwarded_copy_goes_to_the_original_sender(world):
    srv, fake = world
    fake("127.0.0.4", "rejecting", "--rcpt-code", "550")
    dave = fake("127.0.0.3", "dave")
    srv.start()
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.sendmail("dave@outside.test", ["fwd2@example.test"], b"Subject: to be refused\r\n\r\nx\r\n")
    [report] = wait_files(dave, "*.eml", 1)
    assert envelope(report)["sender"] == "" and envelope(report)["recipients"] == ["dave@outside.test"]
    text = report.read_bytes()
    assert b"\r\nTo: <dave@outside.test>\r\n" in text and b"carol@rejecting.test" in text


def test_forged_srs_addresses_are_refused_with_550_511(world):
    srv, _fake = world
    srv.start()
    srs = SRS(load_keys(str(srv.base / "srs.key")), "example.test")
    good = srs.forward("dave@outside.test")
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.ehlo()
        s.mail("")
        for forged in (good.replace("=outside.test=", "=victim.test="),
                       SRS(b"a guess", "example.test").forward("victim@victim.test")):
            assert s.rcpt(forged) == (550, f"5.1.1 <{forged}>: not a valid address here".encode())
        assert s.rcpt(good)[0] == 250
    assert "srs: refused <" in srv.log_text()


def test_a_sieve_redirect_leaves_with_srs_and_its_bounce_reaches_the_original_sender(world):
    """Issue 19's "done when": a message redirected by a user's Sieve script goes out under an
    SRS0 sender, and the bounce the far end sends to that address reaches the original sender."""
    srv, fake = world
    user_dir = srv.store_root / "example.test" / "bob"
    (user_dir / "sieve").mkdir(parents=True)
    (user_dir / "sieve" / "away.sieve").write_text('redirect "carol@remote.test";\n')
    (user_dir / ".dovecot.sieve").symlink_to("sieve/away.sieve")
    srv.start()
    srs = SRS(load_keys(str(srv.base / "srs.key")), "example.test")
    message = b"From: dave@outside.test\r\nTo: bob@example.test\r\nSubject: for bob\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.sendmail("dave@outside.test", ["bob@example.test"], message)
    carol = fake("127.0.0.2", "carol")
    [eml] = wait_files(carol, "*.eml", 1)
    srs0 = envelope(eml)["sender"]
    assert srs0 == srs.forward("dave@outside.test") and envelope(eml)["recipients"] == ["carol@remote.test"]
    assert eml.read_bytes().endswith(message) and b"Delivered-To: bob@example.test\r\n" in eml.read_bytes()
    assert srv.messages("bob@example.test") == []  # redirect without :copy cancels the implicit keep

    dave = fake("127.0.0.3", "dave")
    bounce = b"From: MAILER-DAEMON@remote.test\r\nTo: " + srs0.encode() + b"\r\nSubject: Undelivered\r\n\r\nno\r\n"
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.sendmail("<>", [srs0], bounce)
    [back] = wait_files(dave, "*.eml", 1)
    assert envelope(back)["recipients"] == ["dave@outside.test"] and back.read_bytes().endswith(bounce)
