"""The SMTP session command by command, against the service running in the test process.

Fast (no twistd start): each test is one conversation over a socket, checking the exact
reply of each command in each state (RFC 5321 4.1.4 order, the extensions EHLO lists, the
SASL rules of mailstack.sasl).  End-to-end behaviour with real clients is test_smtp.py's.
"""

from __future__ import annotations

import base64

import pytest

from support.clients import SmtpClient
from support.servers import PASSWORDS

ALICE, BOB = "alice@example.test", "bob@example.test"
LISTENERS = ["smtp", "submission", "submissions"]


@pytest.fixture
def srv(inproc_server_factory):
    return inproc_server_factory(listeners=LISTENERS, extra="[limits]\nrecipients = 3\n").start()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mx(srv) -> SmtpClient:
    c = SmtpClient(srv.port("smtp"))
    assert c.cmd("EHLO client.example")[0] == 250
    return c


def submission(srv) -> SmtpClient:
    c = SmtpClient(srv.port("submissions"), srv.ssl_context())
    assert c.cmd("EHLO client.example")[0] == 250
    return c


def test_greeting_help_and_small_commands(srv):
    c = SmtpClient(srv.port("smtp"))
    assert c.greeting == (220, "mail.example.test ESMTP mailstack")
    assert c.cmd("NOOP") == (250, "2.0.0 OK")
    assert c.cmd("VRFY bob") == (252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery")
    code, text = c.cmd("HELP")
    assert code == 214 and text.startswith("2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL")
    assert c.cmd("FROB") == (500, "5.5.1 Command not recognized")
    assert c.cmd("HELO client.example") == (250, "mail.example.test Hello client.example [127.0.0.1]")
    assert c.cmd("RSET") == (250, "2.0.0 Reset state")
    assert c.cmd("QUIT") == (221, "2.0.0 mail.example.test closing connection")


def test_commands_out_of_order_are_503(srv):
    c = SmtpClient(srv.port("smtp"))
    assert c.cmd("MAIL FROM:<x@remote.test>") == (503, "5.5.1 Bad sequence of commands: MAIL is not allowed now")
    c.cmd("EHLO client.example")
    assert c.cmd("RCPT TO:<bob@example.test>")[0] == 503
    assert c.cmd("DATA")[0] == 503
    assert c.cmd("MAIL FROM:<x@remote.test>")[0] == 250
    assert c.cmd("MAIL FROM:<x@remote.test>")[0] == 503  # one transaction at a time
    assert c.cmd("AUTH PLAIN")[0] == 503  # RFC 4954 4: not during a transaction
    assert c.cmd("RSET")[0] == 250
    assert c.cmd("MAIL FROM:<x@remote.test>")[0] == 250


def test_ehlo_keywords_per_port(srv):
    code, text = mx(srv).cmd("EHLO again.example")
    assert text.split("\n")[1:] == ["PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                                    "CHUNKING", "STARTTLS"]
    assert submission(srv).cmd("EHLO again.example")[1].split("\n")[-1] == "AUTH PLAIN LOGIN"


def test_hello_argument_must_be_a_domain_or_literal(srv):
    c = SmtpClient(srv.port("smtp"))
    assert c.cmd("EHLO") == (501, "5.5.2 Syntax: EHLO your-host-name (a domain or [address literal])")
    assert c.cmd("EHLO [IPv6:::1]")[0] == 250
    assert c.cmd(b"EHLO \xff") == (501, "5.5.2 Syntax error: the command is not valid UTF-8")
    assert c.cmd(b"EHLO a\x01b") == (501, "5.5.2 Syntax error: control characters in the command")


@pytest.mark.parametrize("params, reply", [
    ("SIZE=99999999999", (552, "5.3.4 Message size exceeds fixed maximum message size (52428800)")),
    ("SIZE=big", (501, "5.5.4 SIZE needs a number")),
    ("BODY=BINARYMIME", (501, "5.5.4 BODY must be 7BIT or 8BITMIME")),
    ("SMTPUTF8=yes", (501, "5.5.4 SMTPUTF8 takes no value")),
    ("FROB=1", (555, "5.5.4 Unsupported MAIL parameter FROB")),
    ("SIZE=1 SIZE=2", (501, "5.5.2 Parameter SIZE given twice")),
    ("SIZE=10 BODY=8BITMIME AUTH=<>", (250, "2.1.0 Sender <x@remote.test> OK")),
])
def test_mail_parameters(srv, params, reply):
    assert mx(srv).cmd(f"MAIL FROM:<x@remote.test> {params}") == reply


def test_addresses_and_rcpt(srv):
    c = mx(srv)
    assert c.cmd("MAIL FROM:<jörg@remote.test>") == (553, "5.6.7 Non-ASCII address needs the SMTPUTF8 parameter (RFC 6531)")
    assert c.cmd("MAIL FROM:<>")[0] == 250  # the null reverse-path
    assert c.cmd("RCPT TO:<>") == (501, "5.1.3 Bad recipient address syntax")
    assert c.cmd("RCPT TO:<bob@example.test> NOTIFY=NEVER") == (555, "5.5.4 Unsupported RCPT parameter NOTIFY")
    assert c.cmd("RCPT TO:<Postmaster>") == (250, "2.1.5 Recipient <postmaster> OK")
    assert c.cmd("RCPT TO:nobody") == (501, "5.1.3 Bad recipient address syntax")
    assert c.cmd("RCPT TO:<@relay.example:bob@example.test>") == (250, "2.1.5 Recipient <bob@example.test> OK")


def test_pipelined_transaction_is_answered_in_order(srv):
    c = mx(srv)
    c.send(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
           b"Subject: piped\r\n\r\nhi\r\n.\r\nNOOP\r\n")
    assert [c.read()[0] for _ in range(5)] == [250, 250, 354, 250, 250]
    [stored] = srv.wait_for_messages(BOB, 1)
    assert stored.endswith(b"Subject: piped\r\n\r\nhi\r\n")
    assert stored.startswith(b"Return-Path: <x@remote.test>\r\nDelivered-To: bob@example.test\r\nReceived: from ")


def test_data_and_bdat_rules(srv):
    c = mx(srv)
    c.cmd("MAIL FROM:<x@remote.test>")
    c.cmd("RCPT TO:<bob@example.test>")
    assert c.cmd("DATA now") == (501, "5.5.4 DATA takes no parameters")
    c.send(b"BDAT 5\r\nSubje")
    assert c.read() == (250, "2.0.0 5 octets received")
    assert c.cmd("DATA") == (503, "5.5.1 DATA cannot follow BDAT in one transaction")
    c.send(b"BDAT 12 LAST\r\nct: b\r\n\r\nx\r\n")
    assert c.read()[0] == 250
    c.send(b"BDAT 3\r\nabc")  # refused, but the chunk is read and skipped
    assert c.read() == (503, "5.5.1 BDAT needs MAIL and RCPT first")
    assert c.cmd("NOOP")[0] == 250
    assert c.cmd("BDAT lots") == (501, "5.5.4 Syntax: BDAT size [LAST]; closing connection")
    assert srv.wait_for_messages(BOB, 1)[0].endswith(b"Subject: b\r\n\r\nx\r\n")


def test_an_over_long_line_is_refused_and_the_session_goes_on(srv):
    c = mx(srv)
    assert c.cmd(b"NOOP " + b"x" * 13000) == (500, "5.5.2 Line too long")
    assert c.cmd("NOOP") == (250, "2.0.0 OK")


def test_starttls_rules(srv):
    c = SmtpClient(srv.port("smtp"))
    assert c.cmd("STARTTLS now") == (501, "5.5.4 STARTTLS takes no parameters")
    c.starttls(srv.ssl_context())
    assert c.cmd("MAIL FROM:<x@remote.test>")[0] == 503  # RFC 3207 4.2: EHLO again first
    c.cmd("EHLO client.example")
    assert c.cmd("STARTTLS") == (503, "5.5.1 TLS is already active")


def test_auth_on_the_mx_port_is_refused(srv):
    assert mx(srv).cmd("AUTH PLAIN " + b64(b"\0alice@example.test\0x")) == (503, "5.5.1 AUTH is not available on this port")


@pytest.mark.parametrize("message, reply", [
    (b"\0\0alice-secret-1", (501, "5.5.2 Malformed PLAIN response (RFC 4616)")),  # empty authcid: syntax
    (b"bob@example.test\0alice@example.test\0alice-secret-1", (535, "5.7.8 Authentication credentials invalid")),
    (b"ALICE@Example.Test\0alice@example.test\0alice-secret-1", (235, "2.7.0 Authentication successful")),
    (b"\0alice@example.test\0wrong", (535, "5.7.8 Authentication credentials invalid")),
])
def test_auth_plain_identity_rule(srv, message, reply):
    """mailstack.sasl: authcid not empty; an authzid only if it is the same account, any case."""
    assert submission(srv).cmd("AUTH PLAIN " + b64(message)) == reply


def test_auth_exchange_replies(srv):
    c = submission(srv)
    assert c.cmd("AUTH") == (501, "5.5.4 Syntax: AUTH mechanism [initial-response]")
    assert c.cmd("AUTH CRAM-MD5") == (504, "5.5.4 Unrecognized authentication mechanism")
    assert c.cmd("AUTH PLAIN") == (334, "")
    assert c.cmd("*") == (501, "5.7.0 Authentication cancelled")
    assert c.cmd("AUTH PLAIN !!!") == (501, "5.5.2 Invalid base64 in the SASL response")
    assert c.cmd("AUTH LOGIN " + b64(ALICE.encode())) == (334, b64(b"Password:"))
    assert c.cmd(b64(PASSWORDS[ALICE].encode())) == (235, "2.7.0 Authentication successful")
    assert c.cmd("AUTH PLAIN") == (503, "5.5.1 Already authenticated")
    assert c.cmd(f"MAIL FROM:<{BOB}>") == (553, "5.7.1 Sender address <bob@example.test> is not owned by alice@example.test")
    assert c.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    assert c.cmd("RCPT TO:<someone@remote.test>") == (250, "2.1.5 Recipient <someone@remote.test> OK")


def test_received_address_literals_rfc5321_4_1_3():
    """An IPv6 client is written as the tagged literal [IPv6:...], IPv4 bare (RFC 5321 4.1.3, 4.4)."""
    from mailstack.smtp import accept

    def received(peer, name=""):
        facts = accept.TraceFacts(hostname="mx.example.test", session_id="abc", helo="client.example", peer=peer,
                                  esmtp=True, smtputf8=False, tls=None, user=None, peer_name=name)
        return accept.trace_fields(facts, [], None, submission=False)[0].split(b"\r\n")[0]

    assert received("2001:db8::1") == b"Received: from client.example ([IPv6:2001:db8::1])"
    assert received("192.0.2.1") == b"Received: from client.example ([192.0.2.1])"
    assert received("192.0.2.1", "c.example") == b"Received: from client.example (c.example [192.0.2.1])"


@pytest.mark.parametrize("hops, reply", [
    (99, 250),
    (100, (554, "5.4.6 Too many hops: the message is in a mail loop")),
], ids=["99-passes", "100-refused"])
def test_a_looping_message_is_refused_by_its_received_count_rfc5321_6_3(srv, hops, reply):
    # RFC 5321 6.3: count Received fields, with a large threshold, "normally at least 100".
    c = mx(srv)
    c.cmd("MAIL FROM:<x@remote.test>")
    c.cmd("RCPT TO:<bob@example.test>")
    assert c.cmd("DATA")[0] == 354
    trace = b"".join(b"Received: from h%d.example by mx%d.example; Fri, 4 Dec 2026 10:00:00 +0000\r\n" % (i, i)
                     for i in range(hops))
    c.send(trace + b"Subject: loop\r\n\r\nround and round\r\n.\r\n")
    answer = c.read()
    assert (answer[0] if reply == 250 else answer) == reply
    c.cmd("RSET")
    assert c.cmd("NOOP")[0] == 250  # the session goes on
