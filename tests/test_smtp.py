"""SMTP MX and submission, end to end against a real twistd process."""

from __future__ import annotations

import base64
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

from support.clients import SmtpClient as Raw
from support.servers import PASSWORDS

SMTP_LISTENERS = ["smtp", "submission", "submissions"]
ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"


@pytest.fixture
def srv(server_factory):
    return server_factory(listeners=SMTP_LISTENERS, extra="[limits]\nrecipients = 3\n").start()


def login(port, srv, user=ALICE, tls="starttls"):
    if tls == "implicit":
        s = smtplib.SMTP_SSL("127.0.0.1", port, context=srv.ssl_context(), timeout=20)
    else:
        s = smtplib.SMTP("127.0.0.1", port, timeout=20)
        s.starttls(context=srv.ssl_context())
    s.login(user, PASSWORDS[user])
    return s


def test_ehlo_advertises_what_each_port_honours(srv):
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        code, text = s.ehlo("client.example")
        assert code == 250
        caps = text.decode().split("\n")[1:]
        assert caps == ["PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "STARTTLS"]
        s.starttls(context=srv.ssl_context())
        caps = s.ehlo("client.example")[1].decode().split("\n")[1:]
        assert "STARTTLS" not in caps and not any(c.startswith("AUTH") for c in caps)
    with smtplib.SMTP("127.0.0.1", srv.port("submission")) as s:
        caps = s.ehlo("client.example")[1].decode().split("\n")[1:]
        assert "STARTTLS" in caps and "AUTH PLAIN LOGIN" in caps  # loopback, plaintext allowed by default
        s.starttls(context=srv.ssl_context())
        caps = s.ehlo("client.example")[1].decode().split("\n")[1:]
        assert "STARTTLS" not in caps and "AUTH PLAIN LOGIN" in caps
    with smtplib.SMTP_SSL("127.0.0.1", srv.port("submissions"), context=srv.ssl_context()) as s:
        caps = s.ehlo("client.example")[1].decode().split("\n")[1:]
        assert "STARTTLS" not in caps and "AUTH PLAIN LOGIN" in caps


def test_no_auth_before_tls_when_plaintext_is_off(server_factory):
    srv = server_factory(listeners=SMTP_LISTENERS, extra="[auth]\nplaintext_on_loopback = false\n").start()
    c = Raw(srv.port("submission"))
    code, text = c.cmd("EHLO client.example")
    assert "AUTH" not in text and "STARTTLS" in text
    assert c.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0alice-secret-1").decode()) == (
        538, "5.7.11 Encryption required: use STARTTLS first")
    c.starttls(srv.ssl_context())
    assert "AUTH PLAIN LOGIN" in c.cmd("EHLO client.example")[1]
    assert c.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0alice-secret-1").decode())[0] == 235


def test_submission_587_starttls_delivers_exact_bytes_with_trace_headers(srv):
    body = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hello\r\nMessage-ID: <m1@example.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nHi Bob,\r\n.leading dot\r\n..two dots\r\n"
    with login(srv.port("submission"), srv) as s:
        assert s.sendmail(ALICE, [BOB], body) == {}
    [stored] = srv.wait_for_messages(BOB, 1)
    assert stored.endswith(body)
    head = stored[: -len(body)].decode()
    assert head.startswith("Return-Path: <alice@example.test>\r\nDelivered-To: bob@example.test\r\nReceived: from ")
    assert "with ESMTPSA" in head and "(authenticated as alice@example.test)" in head
    assert "(using TLSv1.3 with cipher " in head or "(using TLSv1.2 with cipher " in head
    assert "Message-ID:" not in head and "Date:" not in head  # the client gave both


def test_submission_465_implicit_tls_adds_missing_message_id_and_date(srv):
    body = b"Subject: no id\r\n\r\nbody\r\n"
    with login(srv.port("submissions"), srv, tls="implicit") as s:
        s.sendmail(ALICE, [BOB], body)
    [stored] = srv.wait_for_messages(BOB, 1)
    assert stored.endswith(body)
    head = stored[: -len(body)].decode()
    assert "\r\nMessage-ID: <" in head and "@mail.example.test>\r\n" in head
    assert "\r\nDate: " in head


def test_mail_needs_auth_on_submission(srv):
    with smtplib.SMTP("127.0.0.1", srv.port("submission")) as s:
        s.starttls(context=srv.ssl_context())
        s.ehlo()
        assert s.mail(ALICE) == (530, b"5.7.0 Authentication required")
    with smtplib.SMTP_SSL("127.0.0.1", srv.port("submissions"), context=srv.ssl_context()) as s:
        s.ehlo()
        assert s.mail(ALICE) == (530, b"5.7.0 Authentication required")


def test_wrong_password_is_refused(srv):
    with smtplib.SMTP("127.0.0.1", srv.port("submission")) as s:
        s.starttls(context=srv.ssl_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(ALICE, "wrong")
        assert e.value.smtp_code == 535 and e.value.smtp_error.startswith(b"5.7.8")
    assert "auth failed submission from 127.0.0.1 for alice@example.test" in srv.log_text()
    assert "wrong" not in srv.log_text().split("auth failed")[1].split("\n")[0]


def test_auth_login_mechanism(srv):
    c = Raw(srv.port("submission"))
    c.starttls(srv.ssl_context())
    c.cmd("EHLO client.example")
    assert c.cmd("AUTH LOGIN") == (334, base64.b64encode(b"Username:").decode())
    assert c.cmd(base64.b64encode(ALICE.encode())) == (334, base64.b64encode(b"Password:").decode())
    assert c.cmd(base64.b64encode(PASSWORDS[ALICE].encode()))[0] == 235
    assert c.cmd("AUTH PLAIN")[0] == 503  # already authenticated


def test_policy_replies(srv):
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.ehlo("client.example")
        assert s.mail("someone@remote.test") == (250, b"2.1.0 Sender <someone@remote.test> OK")
        assert s.rcpt("nobody@example.test") == (550, b"5.1.1 <nobody@example.test>: no such user here")
        assert s.rcpt("carol@remote.test") == (554, b"5.7.1 <carol@remote.test>: relay access denied")
        for _ in range(3):
            assert s.rcpt(BOB)[0] == 250
        assert s.rcpt(BOB) == (452, b"4.5.3 Too many recipients (at most 3 per message)")
        s.rset()
        assert s.docmd("RCPT TO:<bob@example.test>") == (503, b"5.5.1 Bad sequence of commands: RCPT is not allowed now")
        assert s.docmd("DATA")[0] == 503
        assert s.docmd("MAIL FROM:<broken") == (501, b"5.5.2 Missing '>' after the address")
        assert s.docmd("MAIL FROM:<a@b> BOGUS=1") == (555, b"5.5.4 Unsupported MAIL parameter BOGUS")
        assert s.docmd("FROB") == (500, b"5.5.1 Command not recognized")
        assert s.docmd("VRFY bob") == (252, b"2.5.0 Cannot VRFY user, but will accept message and attempt delivery")
        assert s.docmd("NOOP") == (250, b"2.0.0 OK")
        assert s.docmd("HELP")[0] == 214
    with login(srv.port("submission"), srv) as s:
        assert s.mail(BOB) == (553, b"5.7.1 Sender address <bob@example.test> is not owned by alice@example.test")
        assert s.mail("alice+news@example.test")[0] == 250  # plus-variant of her own address
        assert s.rcpt("carol@remote.test") == (250, b"2.1.5 Recipient <carol@remote.test> OK")  # relayed for her


def test_mail_before_helo_and_helo_for_old_clients(srv):
    c = Raw(srv.port("smtp"))
    assert c.greeting[0] == 220 and "ESMTP" in c.greeting[1]
    assert c.cmd("MAIL FROM:<a@remote.test>")[0] == 503
    assert c.cmd("HELO old.client")[0] == 250
    assert c.cmd("MAIL FROM:<a@remote.test>")[0] == 250
    assert c.cmd("RCPT TO:<Postmaster>")[0] == 250  # RFC 5321 4.1.1.3
    assert c.cmd("DATA")[0] == 354
    assert c.cmd(b"Subject: old\r\n\r\nold client\r\n.")[0] == 250
    assert c.cmd("QUIT")[0] == 221
    [stored] = srv.wait_for_messages(ALICE, 1)  # postmaster is an alias of alice
    assert b"with SMTP id" in stored and stored.endswith(b"\r\n\r\nold client\r\n")


def test_line_too_long_and_session_continues(srv):
    c = Raw(srv.port("smtp"))
    c.cmd("EHLO client.example")
    assert c.cmd(b"NOOP " + b"x" * 20000) == (500, "5.5.2 Line too long")
    assert c.cmd("NOOP") == (250, "2.0.0 OK")


def test_pipelining_replies_in_order(srv):
    c = Raw(srv.port("smtp"))
    c.cmd("EHLO client.example")
    c.send(b"MAIL FROM:<p@remote.test>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<nobody@example.test>\r\n"
           b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [c.read()[0] for _ in range(5)] == [250, 250, 550, 250, 354]
    c.send(b"Subject: piped\r\n\r\nbody\r\n.\r\nMAIL FROM:<q@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert [c.read()[0] for _ in range(4)] == [250, 250, 250, 354]
    c.send(b"Subject: second\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert [c.read()[0] for _ in range(2)] == [250, 221]
    assert len(srv.wait_for_messages(BOB, 2)) == 2
    assert len(srv.messages(ALICE)) == 1


def test_ten_megabyte_message_round_trips_byte_exact(srv):
    line = bytes(range(33, 127)) + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line)) + b".starts with a dot\r\n"
    with login(srv.port("submission"), srv) as s:
        s.sendmail(ALICE, [BOB], body)
    [stored] = srv.wait_for_messages(BOB, 1)
    assert stored.endswith(body) and len(stored) < len(body) + 2000


def test_eight_bit_and_smtputf8_arrive_intact(srv):
    eight = "Subject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÄÖÜ ß € 日本\r\n".encode()
    c = Raw(srv.port("smtp"))
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<x@remote.test> BODY=8BITMIME")[0] == 250
    assert c.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    assert c.cmd(eight + b".")[0] == 250
    utf8 = "From: Jörg <jörg@bücher.example>\r\nSubject: ünïcödé\r\n\r\nhallo\r\n".encode()
    assert c.cmd("MAIL FROM:<jörg@bücher.example>")[0] == 553  # needs SMTPUTF8
    assert c.cmd("MAIL FROM:<jörg@bücher.example> SMTPUTF8 BODY=8BITMIME".encode())[0] == 250
    assert c.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    assert c.cmd(utf8 + b".")[0] == 250
    stored = srv.wait_for_messages(BOB, 2)
    assert any(m.endswith(eight) for m in stored)
    utf8_stored = [m for m in stored if m.endswith(utf8)]
    assert utf8_stored and "Return-Path: <jörg@bücher.example>".encode() in utf8_stored[0]
    assert b"with UTF8ESMTP" in utf8_stored[0]


def test_size_limits(server_factory):
    srv = server_factory(listeners=SMTP_LISTENERS, extra="[limits]\nmessage_size = 100000\n").start()
    c = Raw(srv.port("smtp"))
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<x@remote.test> SIZE=100001")[0:1] == (552,)
    assert c.cmd("MAIL FROM:<x@remote.test> SIZE=1000")[0] == 250
    assert c.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(b"Subject: big\r\n\r\n" + b"y" * 998 + b"\r\n")
    for _ in range(300):
        c.send(b"z" * 998 + b"\r\n")
    assert c.cmd(b".") == (552, "5.3.4 Message size exceeds fixed maximum message size (100000)")
    assert c.cmd("NOOP")[0] == 250
    assert srv.messages(BOB) == []


def test_bdat_chunking(srv):
    c = Raw(srv.port("smtp"))
    c.cmd("EHLO client.example")
    c.send(b"BDAT 5\r\nhello")
    assert c.read()[0] == 503  # chunk read and discarded, session goes on
    assert c.cmd("MAIL FROM:<x@remote.test>")[0] == 250
    assert c.cmd("RCPT TO:<bob@example.test>")[0] == 250
    part1 = b"Subject: chunks\r\n\r\nfirst "
    part2 = b"second\r\n.not stuffed\r\n"
    c.send(b"BDAT %d\r\n" % len(part1) + part1)
    assert c.read() == (250, f"2.0.0 {len(part1)} octets received")
    assert c.cmd("DATA")[0] == 503
    c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    assert c.read()[0] == 250
    assert c.cmd("MAIL FROM:<x@remote.test>")[0] == 250
    assert c.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert c.cmd("BDAT 0 LAST")[0] == 250
    stored = srv.wait_for_messages(BOB, 2)
    assert any(m.endswith(part1 + part2) for m in stored)


def test_aliases_catchall_and_plus_addressing(server_factory):
    srv = server_factory(listeners=SMTP_LISTENERS, aliases=(
        "team@example.test: alice@example.test, bob@example.test\n"
        "@example.test: carol@example.test\n")).start()
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.sendmail("x@remote.test", ["team@example.test"], b"Subject: team\r\n\r\n1\r\n")
        s.sendmail("x@remote.test", ["bob+lists@example.test"], b"Subject: plus\r\n\r\n2\r\n")
        s.sendmail("x@remote.test", ["whoever@example.test"], b"Subject: catchall\r\n\r\n3\r\n")
        s.sendmail("x@remote.test", ["team@example.test", "alice@example.test"], b"Subject: once\r\n\r\n4\r\n")
    assert len(srv.wait_for_messages(ALICE, 2)) == 2  # "once" reaches her once, not twice
    bob = srv.wait_for_messages(BOB, 3)  # team, plus, once
    assert len(bob) == 3 and any(b"Subject: plus" in m for m in bob)
    [catch] = srv.wait_for_messages(CAROL, 1)
    assert b"Subject: catchall" in catch and b"Delivered-To: carol@example.test" in catch


def test_starttls_discards_pipelined_plaintext(srv):
    c = Raw(srv.port("submission"))
    c.cmd("EHLO client.example")
    c.send(b"STARTTLS\r\nNOOP\r\n")
    assert c.read()[0] == 220
    c.sock = srv.ssl_context().wrap_socket(c.sock, server_hostname="localhost")
    code, text = c.cmd("EHLO client.example")
    assert code == 250 and text.startswith("mail.example.test Hello")  # not the NOOP's reply


def test_idle_client_is_dropped(server_factory):
    srv = server_factory(listeners=["smtp"], extra="[smtp]\ntimeout = 1\n").start()
    c = Raw(srv.port("smtp"))
    time.sleep(1.5)
    assert c.read() == (421, "4.4.2 mail.example.test Timeout, closing connection")
    assert c.sock.recv(10) == b""


def test_connection_limit_per_address(server_factory):
    srv = server_factory(listeners=["smtp"], extra="[limits]\nconnections_per_address = 2\n").start()
    a, b = Raw(srv.port("smtp")), Raw(srv.port("smtp"))
    third = socket.create_connection(("127.0.0.1", srv.port("smtp")), timeout=5)
    assert third.recv(100) == b"421 4.7.0 Too many connections, try again later\r\n"
    a.close()
    time.sleep(0.3)
    assert Raw(srv.port("smtp")).greeting[0] == 220
    b.close()


def test_commands_per_session_limit(server_factory):
    srv = server_factory(listeners=["smtp"], extra="[limits]\ncommands_per_session = 5\n").start()
    c = Raw(srv.port("smtp"))
    for _ in range(5):
        assert c.cmd("NOOP")[0] == 250
    assert c.cmd("NOOP") == (421, "4.7.0 Too many commands in one session")


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_submission_with_starttls_and_auth(srv):
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(srv.port("submission")), "--tls", "--tls-verify",
         "--tls-ca-path", srv.ca_file, "--tls-sni", "localhost", "--auth", "PLAIN", "--auth-user", ALICE,
         "--auth-password", PASSWORDS[ALICE], "--from", ALICE, "--to", BOB, "--header", "Subject: from swaks",
         "--body", "sent by swaks"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    [stored] = srv.wait_for_messages(BOB, 1)
    assert b"Subject: from swaks" in stored and b"sent by swaks" in stored


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_implicit_tls_and_pipelining(srv):
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(srv.port("submissions")), "--tlsc", "--tls-verify",
         "--tls-ca-path", srv.ca_file, "--tls-sni", "localhost", "--pipeline", "--auth", "LOGIN", "--auth-user", ALICE,
         "--auth-password", PASSWORDS[ALICE], "--from", ALICE, "--to", f"{BOB},{CAROL}"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert srv.wait_for_messages(BOB, 1) and srv.wait_for_messages(CAROL, 1)


def test_header_injection_through_ehlo_or_address_is_refused(srv):
    c = Raw(srv.port("smtp"))
    assert c.cmd(b"EHLO evil\nX-Injected: yes")[0] == 501
    assert c.cmd("EHLO not a hostname")[0] == 501
    assert c.cmd("EHLO [127.0.0.1]")[0] == 250
    assert c.cmd(b"MAIL FROM:<spoof@evil.example\n>")[0] == 501
    assert c.cmd("MAIL FROM:<x@remote.test>")[0] == 250


def test_bare_newlines_in_data_are_refused(srv):
    """SMTP smuggling: a bare LF before "." could end the message at a lenient next hop."""
    c = Raw(srv.port("smtp"))
    c.cmd("EHLO client.example")
    for body in (b"Subject: s\r\n\r\nhi\n.\r\nMAIL FROM:<ceo@victim.example>\r\n", b"Subject: s\r\n\r\na\rb\r\n"):
        assert c.cmd("MAIL FROM:<x@remote.test>")[0] == 250
        assert c.cmd("RCPT TO:<bob@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        assert c.cmd(body + b".") == (550, "5.6.11 Bare CR or LF in the message; lines must end with CRLF")
    assert c.cmd("MAIL FROM:<x@remote.test>")[0] == 250
    assert c.cmd("RCPT TO:<bob@example.test>")[0] == 250
    c.send(b"BDAT 12 LAST\r\nSubject: \nx\r\n")
    assert c.read()[0] == 550
    assert srv.messages(BOB) == []


def test_starttls_forgets_an_earlier_login_and_auth_edge_cases(srv):
    c = Raw(srv.port("submission"))
    c.cmd("EHLO client.example")
    assert c.cmd("AUTH") == (501, "5.5.4 Syntax: AUTH mechanism [initial-response]")
    assert c.cmd("AUTH PLAIN")[0] == 334
    assert c.cmd(b"x" * 13000)[0] == 500  # the exchange ends with the over-long line ...
    assert c.cmd("NOOP")[0] == 250  # ... and the next line is a command again
    assert c.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0alice-secret-1").decode())[0] == 235
    c.starttls(srv.ssl_context())
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<alice@example.test>") == (530, "5.7.0 Authentication required")
