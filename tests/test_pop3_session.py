"""Each POP3 command in each state, with the exact replies (RFC 1939, RFC 2449, RFC 5034).

Fast: the service runs in this process (``inproc_server_factory``); a raw socket speaks to it.
"""

from __future__ import annotations

import base64

import pytest

from support.clients import Pop3Client
from support.servers import PASSWORDS
from mailstack.pop3.session import COMMANDS, MAX_COMMAND, MAX_SASL_LINE, POP3Session
from mailstack.store import MaildirStore

BOB = "bob@example.test"
LISTENERS = ["pop3", "pop3s"]
FAST_FAILURES = "[auth]\nfailure_delay = 0.0\n"  # failed logins answered at once
GREETING = b"+OK mailstack POP3 server ready\r\n"
CAPA_PLAIN = [b"TOP", b"UIDL", b"USER", b"SASL PLAIN", b"STLS", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
              b"IMPLEMENTATION mailstack"]
CAPA_TLS = [c for c in CAPA_PLAIN if c != b"STLS"]
M1 = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: one\r\n\r\n.dot line\r\nbody\r\n"
M2 = b"From: alice@example.test\r\nSubject: two\r\n\r\nsecond\r\n"


@pytest.fixture
def srv(inproc_server_factory):
    return inproc_server_factory(listeners=LISTENERS, extra=FAST_FAILURES).start()


class Client(Pop3Client):
    """A POP3 conversation: lines exactly as on the wire; bodies without their CRLFs."""

    def __init__(self, srv, port: str = "pop3", context=None):
        super().__init__(srv.port(port), context)
        assert self.greeting == GREETING

    def body(self) -> list[bytes]:
        return [line[:-2] for line in self.multiline()]

    def login(self, user: str = BOB) -> bytes:
        """USER and PASS; PASS's reply."""
        assert self.cmd(f"USER {user}") == b"+OK send PASS\r\n"
        return self.cmd(f"PASS {PASSWORDS[user]}")

    def starttls(self, context) -> None:
        super().starttls(context)
        self.file = self.sock.makefile("rb")

    def closed(self) -> bool:
        return self.line() == b""


def plain(authzid: str, authcid: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


def err(text: str) -> bytes:
    return b"-ERR " + text.encode() + b"\r\n"


def test_every_handler_of_the_table_exists():
    for table in COMMANDS.values():
        for command in table.values():
            assert callable(getattr(POP3Session, command.handler))


# -- AUTHORIZATION state (RFC 1939 section 4) -----------------------------------------------


def test_authorization_state_replies(srv):
    c = Client(srv)
    assert c.cmd("CAPA") == b"+OK capability list follows\r\n" and c.body() == CAPA_PLAIN
    assert c.cmd("capa") == b"+OK capability list follows\r\n" and c.body() == CAPA_PLAIN  # any case
    assert c.cmd("CAPA x") == err("wrong number of arguments")
    for command in ("STAT", "LIST", "LIST 1", "UIDL", "RETR 1", "TOP 1 1", "DELE 1", "RSET", "NOOP"):
        name = command.split()[0]
        assert c.cmd(command) == err(f"{name} is not valid in the AUTHORIZATION state"), command
    for unknown in ("FOO", "", "APOP bob 0123", "US\0ER x", "\xff"):
        assert c.cmd(unknown) == err("unknown command"), unknown
    assert c.cmd("USER") == err("USER needs one argument: the account address")
    assert c.cmd("USER a b") == err("USER needs one argument: the account address")
    assert c.cmd("PASS secret") == err("USER first")
    assert c.cmd(f"USER {BOB}") == b"+OK send PASS\r\n"
    assert c.cmd("PASS wrong") == err("[AUTH] authentication failed")
    assert c.cmd("PASS wrong") == err("USER first")  # USER is needed again
    assert c.cmd("QUIT") == b"+OK mailstack POP3 server signing off\r\n"
    assert c.closed()


def test_auth_command_rfc_5034(srv):
    c = Client(srv)
    assert c.cmd("AUTH") == b"+OK SASL mechanisms follow\r\n" and c.body() == [b"PLAIN"]
    assert c.cmd("AUTH CRAM-MD5") == err("unsupported SASL mechanism (use PLAIN)")
    assert c.cmd("AUTH LOGIN") == err("unsupported SASL mechanism (use PLAIN)")
    assert c.cmd("AUTH PLAIN a b") == err("AUTH mechanism [initial-response]")
    assert c.cmd("AUTH PLAIN =") == err("malformed PLAIN response (RFC 4616)")
    assert c.cmd("AUTH PLAIN") == b"+ \r\n"
    assert c.cmd("*") == err("authentication cancelled")  # RFC 5034 section 4
    assert c.cmd("AUTH PLAIN") == b"+ \r\n"
    assert c.cmd("not base64!") == err("invalid base64 in the SASL response")
    assert c.cmd("AUTH PLAIN") == b"+ \r\n"
    assert c.cmd("x" * MAX_SASL_LINE) == err("authentication cancelled: response line too long")
    # RFC 4616: an authzid naming someone else is a failed login; the same one in any case is not
    assert c.cmd(f"AUTH PLAIN {plain('alice@example.test', BOB, PASSWORDS[BOB])}") == err("[AUTH] authentication failed")
    assert c.cmd(f"AUTH PLAIN {plain(BOB.upper(), BOB, PASSWORDS[BOB])}") == b"+OK maildrop has 0 messages (0 octets)\r\n"
    assert c.cmd("AUTH PLAIN") == err("AUTH is not valid in the TRANSACTION state")


def test_sasl_response_line_may_be_longer_than_a_command(srv):
    c = Client(srv)
    assert c.cmd("AUTH PLAIN") == b"+ \r\n"
    long_password = base64.b64encode(f"\0{BOB}\0{'p' * 400}".encode())  # > 255 octets, < 8192
    assert c.cmd(long_password) == err("[AUTH] authentication failed")


def test_three_failed_logins_close_the_session(srv):
    c = Client(srv)
    for _ in range(2):
        c.cmd(f"USER {BOB}")
        assert c.cmd("PASS nope") == err("[AUTH] authentication failed")
    c.cmd(f"USER {BOB}")
    assert c.cmd("PASS nope") == err("[AUTH] authentication failed")
    assert c.line() == err("too many authentication failures")
    assert c.closed()


def test_plaintext_refused_outside_tls(inproc_server_factory):
    srv = inproc_server_factory(listeners=LISTENERS, extra="[auth]\nplaintext_on_loopback = false\n").start()
    c = Client(srv)
    assert c.cmd("CAPA") == b"+OK capability list follows\r\n"
    assert c.body() == [b"TOP", b"UIDL", b"STLS", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                        b"IMPLEMENTATION mailstack"]
    refused = err("[AUTH] plaintext authentication is not allowed without TLS: use STLS first")
    assert c.cmd(f"USER {BOB}") == refused
    assert c.cmd(f"AUTH PLAIN {plain('', BOB, PASSWORDS[BOB])}") == refused
    assert c.cmd("AUTH") == b"+OK SASL mechanisms follow\r\n" and c.body() == []


def test_stls_once_then_not_again_and_never_on_pop3s(srv):
    c = Client(srv)
    assert c.cmd("STLS x") == err("wrong number of arguments")
    assert c.cmd("STLS") == b"+OK begin TLS negotiation\r\n"  # RFC 2595 section 4
    c.starttls(srv.ssl_context())
    assert c.cmd("STLS") == err("STLS is not available (TLS is already active)")
    assert c.cmd("CAPA") == b"+OK capability list follows\r\n" and c.body() == CAPA_TLS
    assert c.login().startswith(b"+OK maildrop has")
    c.close()
    s = Client(srv, "pop3s", srv.ssl_context())
    assert s.cmd("STLS") == err("STLS is not available (TLS is already active)")
    assert s.cmd("CAPA") == b"+OK capability list follows\r\n" and s.body() == CAPA_TLS


# -- line limits and pipelining (RFC 2449 sections 4 and 6.6) -------------------------------


def test_line_length_limit_is_255_octets_with_crlf(srv):
    c = Client(srv)
    longest = "USER " + "a" * (MAX_COMMAND - len("USER ") - 2)
    assert c.cmd(longest) == b"+OK send PASS\r\n"
    too_long = err("command line too long (at most 255 octets, RFC 2449 section 4)")
    assert c.cmd(longest + "a") == too_long
    c.send(b"X" * 300 + b"\r\nNOOP\r\nCAPA\r\n")  # the lines after the long one, in order
    assert c.line() == too_long
    assert c.line() == err("NOOP is not valid in the AUTHORIZATION state")
    assert c.line() == b"+OK capability list follows\r\n" and c.body() == CAPA_PLAIN
    c.send(b"Y" * 5000)  # no line end yet: refused at once, the rest discarded
    assert c.line() == too_long
    c.send(b"Y" * 5000 + b"\r\nCAPA\n")  # a bare LF ends a line too
    assert c.line() == b"+OK capability list follows\r\n" and c.body() == CAPA_PLAIN


def test_argument_limit_is_40_octets(srv):
    srv.deliver(M1)
    c = Client(srv)
    assert c.login().startswith(b"+OK")
    assert c.cmd("LIST " + "1" * 41) == err("bad argument")
    assert c.cmd("LIST " + "0" * 39 + "1") == b"+OK 1 %d\r\n" % len(M1)


def test_pipelined_commands_answered_in_order(srv):
    srv.deliver(M1, M2)
    c = Client(srv)
    c.send(f"USER {BOB}\r\nPASS {PASSWORDS[BOB]}\r\nRETR 1\r\nRETR 2\r\nSTAT\r\nDELE 2\r\nQUIT\r\n".encode())
    assert c.line() == b"+OK send PASS\r\n"
    assert c.line() == b"+OK maildrop has 2 messages (%d octets)\r\n" % (len(M1) + len(M2))
    assert c.line() == b"+OK %d octets\r\n" % len(M1) and c.body()[-2] == b"..dot line"
    assert c.line() == b"+OK %d octets\r\n" % len(M2) and c.body()[-1] == b"second"
    assert c.line() == b"+OK 2 %d\r\n" % (len(M1) + len(M2))
    assert c.line() == b"+OK message 2 deleted\r\n"
    assert c.line() == b"+OK mailstack POP3 server signing off (1 messages deleted)\r\n"
    assert c.closed()
    assert srv.messages(BOB) == [M1]


def test_too_many_commands_close_the_session(inproc_server_factory):
    srv = inproc_server_factory(listeners=LISTENERS, extra="[limits]\ncommands_per_session = 2\n").start()
    c = Client(srv)
    assert c.cmd("CAPA").startswith(b"+OK") and c.body()
    assert c.cmd("FOO") == err("unknown command")
    assert c.cmd("CAPA") == err("[SYS/PERM] too many commands in one session")
    assert c.closed()


# -- TRANSACTION state (RFC 1939 section 5, RFC 2449) ---------------------------------------


def test_transaction_state_replies(srv):
    uids = srv.deliver(M1, M2)
    c = Client(srv)
    total = len(M1) + len(M2)
    assert c.login() == b"+OK maildrop has 2 messages (%d octets)\r\n" % total
    for command in ("USER x", "PASS x", "AUTH PLAIN", "STLS"):
        assert c.cmd(command) == err(f"{command.split()[0]} is not valid in the TRANSACTION state")
    assert c.cmd("CAPA") == b"+OK capability list follows\r\n" and c.body() == CAPA_TLS
    assert c.cmd("STAT") == b"+OK 2 %d\r\n" % total
    assert c.cmd("STAT 1") == err("wrong number of arguments")
    assert c.cmd("LIST") == b"+OK 2 messages (%d octets)\r\n" % total
    assert c.body() == [b"1 %d" % len(M1), b"2 %d" % len(M2)]
    assert c.cmd("LIST 2") == b"+OK 2 %d\r\n" % len(M2)
    for bad in ("LIST 0", "LIST 3", "LIST x", "LIST -1", "UIDL 3", "RETR 3", "DELE 0", "TOP 3 0"):
        assert c.cmd(bad) == err("no such message"), bad
    assert c.cmd("LIST 1 2") == err("wrong number of arguments")
    assert c.cmd("UIDL") == b"+OK unique-id listing follows\r\n"
    listing = c.body()
    uidvalidity = MaildirStore(str(srv.store_root), fsync=False).mailbox(BOB).folder("INBOX").uidvalidity()
    assert listing == [b"%d %08x%08x" % (n, u, uidvalidity) for n, u in enumerate(uids, 1)]  # "%08Xu%08Xv"
    assert c.cmd("UIDL 2") == b"+OK " + listing[1] + b"\r\n"
    assert c.cmd("RETR") == err("wrong number of arguments")
    assert c.cmd("RETR 1") == b"+OK %d octets\r\n" % len(M1)
    assert c.body() == [b"From: alice@example.test", b"To: bob@example.test", b"Subject: one", b"", b"..dot line", b"body"]
    assert c.cmd("TOP 1 0") == b"+OK top of message follows\r\n"
    assert c.body() == [b"From: alice@example.test", b"To: bob@example.test", b"Subject: one", b""]
    assert c.cmd("TOP 1 1") == b"+OK top of message follows\r\n" and c.body()[-1] == b"..dot line"
    assert c.cmd("TOP 1") == err("wrong number of arguments")
    assert c.cmd("TOP 1 x") == err("TOP msg n: n must be a number of lines")
    assert c.cmd("NOOP") == b"+OK\r\n"
    assert c.cmd("NOOP x") == err("wrong number of arguments")
    assert c.cmd("DELE 1") == b"+OK message 1 deleted\r\n"
    for again in ("DELE 1", "RETR 1", "LIST 1", "UIDL 1", "TOP 1 0"):
        assert c.cmd(again) == err("message 1 already deleted"), again
    assert c.cmd("STAT") == b"+OK 1 %d\r\n" % len(M2)
    assert c.cmd("LIST") == b"+OK 1 messages (%d octets)\r\n" % len(M2) and c.body() == [b"2 %d" % len(M2)]
    assert c.cmd("RSET") == b"+OK maildrop has 2 messages (%d octets)\r\n" % total
    assert c.cmd("DELE 2") == b"+OK message 2 deleted\r\n"
    assert c.cmd("QUIT") == b"+OK mailstack POP3 server signing off (1 messages deleted)\r\n"
    assert c.closed()
    assert srv.messages(BOB) == [M1]


def test_second_session_gets_in_use(srv):
    first = Client(srv)
    assert first.login().startswith(b"+OK maildrop has")
    second = Client(srv)
    assert second.login() == err("[IN-USE] the maildrop is in use by another POP3 session")
    assert first.cmd("QUIT").startswith(b"+OK")
    assert first.closed()
    assert second.login().startswith(b"+OK maildrop has")


def test_quit_without_deletions(srv):
    c = Client(srv)
    c.login()
    assert c.cmd("QUIT") == b"+OK mailstack POP3 server signing off (0 messages deleted)\r\n"
    assert c.closed()
