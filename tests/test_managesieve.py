"""ManageSieve (RFC 5804) command by command, with the exact bytes of each reply.

Fast: the service runs in this process (``inproc_server_factory``); a raw socket speaks to it.
The expected replies follow RFC 5804's examples (sections 1.7 and 2.1-2.14); where the RFC
leaves the human-readable text free, the text is this server's.
"""

from __future__ import annotations

import base64
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.clients import LineClient
from support.servers import PASSWORDS
from mailstack.managesieve import wire
from mailstack.managesieve.session import COMMANDS, MAX_LINE, ManageSieveSession

BOB = "bob@example.test"
LIMITS = "[sieve]\nmax_script_size = 200\nmax_scripts = 3\n"
FAST_FAILURES = "[auth]\nfailure_delay = 0.0\n"
SCRIPT = b'require ["fileinto", "envelope"];\r\n\r\nif envelope :contains "to" "tmartin+sent" {\r\n  fileinto "INBOX.sent";\r\n}'

CAPS_PLAIN = (b'"IMPLEMENTATION" "mailstack"\r\n"SASL" "PLAIN"\r\n"SIEVE" "%(sieve)s"\r\n"STARTTLS"\r\n%(redirects)s'
              b'"UNAUTHENTICATE"\r\n"VERSION" "1.0"\r\n')
CAPS_TLS = (b'"IMPLEMENTATION" "mailstack"\r\n"SASL" "PLAIN"\r\n"SIEVE" "%(sieve)s"\r\n%(redirects)s'
            b'"UNAUTHENTICATE"\r\n"VERSION" "1.0"\r\n')
CAPS_AUTHED = (b'"IMPLEMENTATION" "mailstack"\r\n"SASL" "PLAIN"\r\n"SIEVE" "%(sieve)s"\r\n%(redirects)s'
               b'"OWNER" "bob@example.test"\r\n"UNAUTHENTICATE"\r\n"VERSION" "1.0"\r\n')


def extensions() -> bytes:
    from mailstack.sieve.scripts import sieve_extensions

    return " ".join(sieve_extensions()).encode()


def caps(template: bytes) -> bytes:
    """The capability lines with the interpreter's extensions and the redirect limit delivery
    applies, [sieve] max_redirects at its default (RFC 5804 1.7)."""
    from mailstack.configschema import SCHEMA

    limit = SCHEMA["sieve"]["max_redirects"][1]
    redirects = b"" if limit is None else b'"MAXREDIRECTS" "%d"\r\n' % limit
    return template % {b"sieve": extensions(), b"redirects": redirects}


def have_interpreter() -> bool:
    import mailstack.sieve

    return hasattr(mailstack.sieve, "compile_script")


@pytest.fixture
def srv(inproc_server_factory):
    return inproc_server_factory(listeners=["managesieve"], extra=LIMITS + FAST_FAILURES).start()


class Client(LineClient):
    """A ManageSieve conversation; :meth:`response` is every byte up to and with the final
    OK/NO/BYE line (literals in it read by their length)."""

    def __init__(self, srv, context=None):
        super().__init__(srv.port("managesieve"), context)
        self.greeting = self.response()

    def response(self) -> bytes:
        out = b""
        while True:
            line = self.line()
            logical = line
            while re.search(rb"\{(\d+)\}$", line):  # a literal, then the rest of the line
                literal = self.recv_exactly(int(re.search(rb"\{(\d+)\}$", line).group(1)))
                line = self.line()
                logical += b"\r\n" + literal + line
            out += logical + b"\r\n"
            if re.match(rb"(OK|NO|BYE)( |$)", logical):
                self.final = logical  # the response line (with its text even when a literal)
                return out

    def cmd(self, data: bytes | str) -> bytes:
        self.send((data.encode() if isinstance(data, str) else data) + b"\r\n")
        return self.response()

    def challenge(self, data: str) -> bytes:
        """A command answered by a SASL challenge: one line (RFC 5804 2.1)."""
        self.send(data.encode() + b"\r\n")
        return self.line() + b"\r\n"

    def login(self, user: str = BOB) -> bytes:
        return self.cmd(b'AUTHENTICATE "PLAIN" "' + plain(user, PASSWORDS[user]) + b'"')


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def logged_in(srv) -> Client:
    c = Client(srv)
    assert c.login() == b'OK "logged in"\r\n'
    return c


def user_dir(srv):
    return srv.maildir(BOB)


def test_every_handler_of_the_table_exists():
    for table in COMMANDS.values():
        for command in table.values():
            assert callable(getattr(ManageSieveSession, command.handler))


# -- greeting, CAPABILITY, STARTTLS (RFC 5804 1.7, 2.2, 2.4) -----------------------------------


def test_greeting_and_capability(srv):
    c = Client(srv)
    assert c.greeting == caps(CAPS_PLAIN) + b'OK "mailstack ManageSieve ready"\r\n'
    assert c.cmd("CAPABILITY") == caps(CAPS_PLAIN) + b"OK\r\n"
    assert c.cmd("capability") == caps(CAPS_PLAIN) + b"OK\r\n"  # commands are case-insensitive
    assert c.cmd("CAPABILITY x") == b'NO "wrong number of arguments for CAPABILITY"\r\n'


def test_starttls_sends_the_capabilities_again(srv):
    """RFC 5804 2.2: after the TLS negotiation the server re-issues the capabilities, then OK;
    STARTTLS is no longer offered."""
    c = Client(srv)
    assert c.cmd("STARTTLS") == b'OK "begin TLS negotiation now"\r\n'
    c.starttls(srv.ssl_context())
    assert c.response() == caps(CAPS_TLS) + b"OK\r\n"
    assert c.cmd("STARTTLS") == b'NO "STARTTLS is not available (TLS is already active)"\r\n'
    assert c.login() == b'OK "logged in"\r\n'
    assert c.cmd("CAPABILITY") == caps(CAPS_AUTHED) + b"OK\r\n"


def test_input_pipelined_after_starttls_is_dropped(srv):
    """What arrived in the clear behind STARTTLS must not run inside TLS (command injection)."""
    c = Client(srv)
    c.send(b'STARTTLS\r\nPUTSCRIPT "x" {5+}\r\nkeep;\r\n')
    assert c.response() == b'OK "begin TLS negotiation now"\r\n'
    assert c.buf == b""
    c.starttls(srv.ssl_context())
    assert c.response() == caps(CAPS_TLS) + b"OK\r\n"
    assert c.cmd("NOOP") == b'OK "done"\r\n'  # nothing of the injected command came through


def test_no_password_in_the_clear_where_loopback_is_not_trusted(inproc_server_factory):
    srv = inproc_server_factory(listeners=["managesieve"], extra="[auth]\nplaintext_on_loopback = false\n").start()
    c = Client(srv)
    assert c.greeting.startswith(b'"IMPLEMENTATION" "mailstack"\r\n"SASL" ""\r\n')
    assert c.login() == b'NO (ENCRYPT-NEEDED) "authentication needs TLS: use STARTTLS first"\r\n'
    assert c.cmd("STARTTLS") == b'OK "begin TLS negotiation now"\r\n'
    c.starttls(srv.ssl_context())
    assert b'"SASL" "PLAIN"\r\n' in c.response()
    assert c.login() == b'OK "logged in"\r\n'


# -- AUTHENTICATE (RFC 5804 2.1) -------------------------------------------------------------


def test_authenticate_forms(srv):
    c = Client(srv)
    assert c.cmd('AUTHENTICATE "CRAM-MD5"') == b'NO "unsupported authentication mechanism (use PLAIN)"\r\n'
    assert c.cmd("AUTHENTICATE PLAIN") == b'NO "AUTHENTICATE: expected a string (quoted or a literal)"\r\n'
    # no initial response: an empty challenge, the response a string; "*" cancels
    assert c.challenge('AUTHENTICATE "PLAIN"') == b'""\r\n'
    assert c.cmd('"*"') == b'NO "authentication cancelled"\r\n'
    assert c.challenge('AUTHENTICATE "PLAIN"') == b'""\r\n'
    assert c.cmd('"not base64!"') == b'NO "invalid base64 in the SASL response"\r\n'
    assert c.cmd('LISTSCRIPTS') == b'NO "LISTSCRIPTS is not allowed in the non-authenticated state"\r\n'
    # the response as a literal
    response = plain(BOB, PASSWORDS[BOB])
    assert c.challenge('AUTHENTICATE "PLAIN"') == b'""\r\n'
    assert c.cmd(b"{%d+}\r\n" % len(response) + response) == b'OK "logged in"\r\n'
    assert c.cmd('AUTHENTICATE "PLAIN" ""') == b'NO "AUTHENTICATE is not allowed in the authenticated state"\r\n'


def test_failed_logins_then_bye(srv):
    c = Client(srv)
    wrong = b'AUTHENTICATE "PLAIN" "' + plain(BOB, "wrong") + b'"'
    assert c.cmd(wrong) == b'NO "authentication failed"\r\n'
    other = b'AUTHENTICATE "PLAIN" "' + plain(BOB, PASSWORDS[BOB], authzid="alice@example.test") + b'"'
    assert c.cmd(other) == b'NO "authentication failed"\r\n'  # acting as someone else: a failed login
    assert c.cmd(wrong) == b'NO "authentication failed"\r\n'
    assert c.response() == b'BYE "too many authentication failures"\r\n'
    with pytest.raises(ConnectionResetError):
        c.line()


# -- the script commands (RFC 5804 2.5-2.12) ---------------------------------------------------


def test_putscript_listscripts_setactive_getscript(srv):
    c = logged_in(srv)
    assert c.cmd("LISTSCRIPTS") == b"OK\r\n"
    assert c.cmd(b'PUTSCRIPT "mysievescript" {%d+}\r\n' % len(SCRIPT) + SCRIPT) == b"OK\r\n"
    assert c.cmd(b'Putscript "summer_script" {5+}\r\nkeep;') == b"OK\r\n"
    assert c.cmd("LISTSCRIPTS") == b'"mysievescript"\r\n"summer_script"\r\nOK\r\n'
    assert c.cmd('SETACTIVE "mysievescript"') == b"OK\r\n"
    assert c.cmd("LISTSCRIPTS") == b'"mysievescript" ACTIVE\r\n"summer_script"\r\nOK\r\n'
    assert c.cmd('GETSCRIPT "mysievescript"') == b"{%d}\r\n" % len(SCRIPT) + SCRIPT + b"\r\nOK\r\n"
    assert c.cmd('GETSCRIPT "nosuch"') == b"NO (NONEXISTENT) \"there is no script named 'nosuch'\"\r\n"
    assert c.cmd('SETACTIVE "baz"') == b"NO (NONEXISTENT) \"there is no script named 'baz'\"\r\n"
    d = user_dir(srv)
    assert os.readlink(d / ".dovecot.sieve") == "sieve/mysievescript.sieve"  # Dovecot's layout
    assert (d / "sieve" / "mysievescript.sieve").read_bytes() == SCRIPT
    assert (d / "sieve" / "summer_script.sieve").stat().st_mode & 0o777 == 0o600
    assert (d / "sieve").stat().st_mode & 0o777 == 0o700
    assert c.cmd('SETACTIVE ""') == b"OK\r\n"  # RFC 5804 2.8: deactivate
    assert not os.path.lexists(d / ".dovecot.sieve")
    assert c.cmd("LISTSCRIPTS") == b'"mysievescript"\r\n"summer_script"\r\nOK\r\n'


def test_a_name_with_a_quote_is_listed_as_a_literal(srv):
    """RFC 5804 2.7's example lists ``clever"script`` as the literal {13}."""
    c = logged_in(srv)
    assert c.cmd(b'PUTSCRIPT {13+}\r\nclever"script {5+}\r\nkeep;') == b"OK\r\n"
    assert c.cmd(b'PUTSCRIPT "back\\\\slash \\"q\\"" {5+}\r\nkeep;') == b"OK\r\n"
    assert c.cmd("LISTSCRIPTS") == b'{14}\r\nback\\slash "q"\r\n{13}\r\nclever"script\r\nOK\r\n'
    assert c.cmd(b'GETSCRIPT {13+}\r\nclever"script') == b"{5}\r\nkeep;\r\nOK\r\n"


def test_havespace_and_the_limits(srv):
    c = logged_in(srv)
    assert c.cmd('HAVESPACE "foobar" 200') == b"OK\r\n"
    assert c.cmd('HAVESPACE "myscript" 999999') == b'NO (QUOTA/MAXSIZE) "the script is too large (at most 200 octets)"\r\n'
    assert c.cmd('HAVESPACE "myscript" "12"') == b'NO "HAVESPACE: expected a number"\r\n'
    assert c.cmd('HAVESPACE "myscript" 99999999999') == b'NO "number out of range (32 bits)"\r\n'
    # a literal over the limit is read and dropped, and the session goes on
    big = b"#" * 201
    assert c.cmd(b'PUTSCRIPT "big" {201+}\r\n' + big) == \
        b'NO (QUOTA/MAXSIZE) "the script is too large (at most 200 octets)"\r\n'
    assert c.cmd("NOOP") == b'OK "done"\r\n'
    for name in ("a", "b", "c"):
        assert c.cmd(f'PUTSCRIPT "{name}" {{5+}}\r\nkeep;') == b"OK\r\n"
    assert c.cmd('HAVESPACE "d" 5') == b'NO (QUOTA/MAXSCRIPTS) "too many scripts (at most 3)"\r\n'
    assert c.cmd('PUTSCRIPT "d" {5+}\r\nkeep;') == b'NO (QUOTA/MAXSCRIPTS) "too many scripts (at most 3)"\r\n'
    assert c.cmd('HAVESPACE "a" 5') == b"OK\r\n"  # replacing one does not add one
    assert c.cmd('PUTSCRIPT "a" {7+}\r\nstop;\r\n') == b"OK\r\n"


def test_deletescript_and_renamescript(srv):
    c = logged_in(srv)
    for name in ("foo", "bar"):
        assert c.cmd(f'PUTSCRIPT "{name}" {{5+}}\r\nkeep;') == b"OK\r\n"
    assert c.cmd('SETACTIVE "foo"') == b"OK\r\n"
    assert c.cmd('DELETESCRIPT "foo"') == \
        b'NO (ACTIVE) "the active script cannot be deleted: deactivate it first (RFC 5804 2.10)"\r\n'
    assert c.cmd('DELETESCRIPT "baz"') == b"NO (NONEXISTENT) \"there is no script named 'baz'\"\r\n"
    assert c.cmd('RENAMESCRIPT "foo" "bar"') == b"NO (ALREADYEXISTS) \"a script named 'bar' already exists\"\r\n"
    assert c.cmd('RENAMESCRIPT "nope" "new"') == b"NO (NONEXISTENT) \"there is no script named 'nope'\"\r\n"
    assert c.cmd('RENAMESCRIPT "foo" "main"') == b"OK\r\n"  # the active script stays active
    assert c.cmd("LISTSCRIPTS") == b'"bar"\r\n"main" ACTIVE\r\nOK\r\n'
    assert os.readlink(user_dir(srv) / ".dovecot.sieve") == "sieve/main.sieve"
    assert c.cmd('DELETESCRIPT "bar"') == b"OK\r\n"
    assert c.cmd("LISTSCRIPTS") == b'"main" ACTIVE\r\nOK\r\n'


@pytest.mark.skipif(not have_interpreter(), reason="the interpreter (branch sieve-lang) is not merged yet")
def test_an_invalid_script_is_refused_with_its_line_and_column(srv):
    """RFC 5804 2.6 and 2.12: PUTSCRIPT and CHECKSCRIPT check the script; the NO names where."""
    from mailstack.sieve import SieveSyntaxError, compile_script

    bad = b"#comment\r\nInvalidSieveCommand\r\n"
    with pytest.raises(SieveSyntaxError) as raised:
        compile_script(bad.decode())
    expected = b"NO " + wire.string(str(raised.value), escape=True) + b"\r\n"
    assert re.match(rb'NO "line 2, column \d+: [^"]+"\r\n$', expected)
    c = logged_in(srv)
    assert c.cmd(b'Putscript "foo" {%d+}\r\n' % len(bad) + bad) == expected
    assert c.cmd(b"CheckScript {%d+}\r\n" % len(bad) + bad) == expected
    assert c.cmd("LISTSCRIPTS") == b"OK\r\n"  # nothing stored
    assert c.cmd(b"CHECKSCRIPT {5+}\r\nkeep;") == b"OK\r\n"
    # a message with double quotes in it: escaped in the quoted string (RFC 5804 4, QUOTED-SPECIALS)
    unrequired = b'if envelope :is "to" "x" { stop; }'
    with pytest.raises(SieveSyntaxError) as raised:
        compile_script(unrequired.decode())
    assert '"envelope"' in str(raised.value)
    quoted = str(raised.value).replace('"', '\\"').encode()
    assert c.cmd(b"CHECKSCRIPT {%d+}\r\n" % len(unrequired) + unrequired) == b'NO "' + quoted + b'"\r\n'


def test_checkscript_stores_nothing(srv):
    c = logged_in(srv)
    assert c.cmd(b"CHECKSCRIPT {5+}\r\nkeep;") == b"OK\r\n"
    assert c.cmd(b"CHECKSCRIPT {2+}\r\n\xff\xfe") == b'NO "the script is not valid UTF-8 (RFC 5228 2.2)"\r\n'
    assert c.cmd("LISTSCRIPTS") == b"OK\r\n"


def test_bad_script_names(srv):
    """RFC 5804 1.6: no control characters; here no path either (nothing outside sieve/)."""
    c = logged_in(srv)
    slash = b'NO "a script name must not contain a slash or start with a dot"\r\n'
    for name in (b"../evil", b"a/b", b".hidden", b".."):
        assert c.cmd(b'PUTSCRIPT "' + name + b'" {5+}\r\nkeep;') == slash, name
        assert c.cmd(b'GETSCRIPT "' + name + b'"') == slash, name
    control = b'NO "a script name must not contain control characters (RFC 5804 1.6)"\r\n'
    assert c.cmd(b'PUTSCRIPT "a\x01b" {5+}\r\nkeep;') == control
    assert c.cmd(b'PUTSCRIPT {3+}\r\na\nb {5+}\r\nkeep;') == control
    assert c.cmd(b'PUTSCRIPT "" {5+}\r\nkeep;') == b'NO "a script name must not be empty"\r\n'
    assert c.cmd(b'PUTSCRIPT "' + b"n" * 129 + b'" {5+}\r\nkeep;') == \
        b'NO "a script name is at most 128 characters"\r\n'
    assert c.cmd(b'PUTSCRIPT "\xff" {5+}\r\nkeep;') == b'NO "a script name must be UTF-8 (RFC 5804 1.6)"\r\n'
    assert c.cmd('PUTSCRIPT "caf\u00e9 \u00fcber" {5+}\r\nkeep;') == b"OK\r\n"  # UTF-8 names are fine
    assert c.cmd("LISTSCRIPTS") == '"caf\u00e9 \u00fcber"\r\nOK\r\n'.encode()
    assert sorted(os.listdir(user_dir(srv) / "sieve")) == [".lock", "caf\u00e9 \u00fcber.sieve"]
    assert not (user_dir(srv).parent / "evil.sieve").exists()


# -- NOOP, UNAUTHENTICATE, LOGOUT, errors (RFC 5804 2.3, 2.13, 2.14.1) -------------------------


def test_noop_unauthenticate_logout(srv):
    c = logged_in(srv)
    assert c.cmd('NOOP "STARTTLS-SYNC-42"') == b'OK (TAG "STARTTLS-SYNC-42") "done"\r\n'
    assert c.cmd("NOOP") == b'OK "done"\r\n'
    assert c.cmd("UNAUTHENTICATE") == b"OK\r\n"
    assert c.cmd("LISTSCRIPTS") == b'NO "LISTSCRIPTS is not allowed in the non-authenticated state"\r\n'
    assert c.cmd("CAPABILITY") == caps(CAPS_PLAIN) + b"OK\r\n"
    assert c.login() == b'OK "logged in"\r\n'
    assert c.cmd("LOGOUT") == b'OK "logout complete"\r\n'
    with pytest.raises(ConnectionResetError):
        c.line()


def test_syntax_errors_get_no_and_the_session_goes_on(srv):
    c = logged_in(srv)
    assert c.cmd("FOO") == b'NO "unknown command"\r\n'
    assert c.cmd("") == b'NO "expected a command name"\r\n'
    assert c.cmd('"LISTSCRIPTS"') == b'NO "expected a command name"\r\n'
    assert c.cmd('GETSCRIPT "unterminated') == b'NO "unterminated quoted string"\r\n'
    assert c.cmd('GETSCRIPT "a\\b"') == b'NO "in a quoted string a backslash may only escape a double quote or a backslash"\r\n'
    assert c.cmd('GETSCRIPT  "a"') == b'NO "unexpected character in the command"\r\n'
    assert c.cmd('GETSCRIPT "a" ') == b'NO "a space at the end of the command"\r\n'
    assert c.cmd('GETSCRIPT {x}') == b'NO "bad literal: use {n+} at the end of a line"\r\n'
    assert c.cmd('GETSCRIPT a') == b'NO "GETSCRIPT: expected a string (quoted or a literal)"\r\n'
    assert c.cmd('GETSCRIPT "a" "b"') == b'NO "wrong number of arguments for GETSCRIPT"\r\n'
    assert c.cmd('GETSCRIPT "' + "x" * 1025 + '"') == \
        b'NO "quoted string longer than 1024 octets (use a literal)"\r\n'
    assert c.cmd(b'GETSCRIPT {9000+}\r\n' + b"x" * 9000) == b'NO "string too long (at most 8192 octets)"\r\n'
    assert c.cmd(b'5 {3+}\r\nabc') == b'NO "expected a command name"\r\n'
    assert c.cmd(b'{3+}\r\nabc') == b'NO "expected a command name"\r\n'
    assert c.cmd(b'"x" {3+}\r\nabc') == b'NO "expected a command name"\r\n'
    assert c.cmd(b'GETSCRIPT {0+}\r\n') == b'NO "a script name must not be empty"\r\n'
    assert c.cmd(b'GETSCRIPT {1+}\r\nab') == b'NO "expected a space after the literal"\r\n'
    assert c.cmd("NOOP") == b'OK "done"\r\n'


def test_an_overlong_line_or_literal_ends_the_session(srv):
    c = logged_in(srv)
    c.send(b"NOOP " + b"x" * MAX_LINE + b"\r\n")
    assert c.response() == b'BYE "command line too long (at most 8192 octets without literals)"\r\n'
    c = logged_in(srv)
    assert c.cmd(b'PUTSCRIPT "x" {99999999999+}') == b'BYE "literal of 99999999999 octets refused"\r\n'


def test_pipelined_commands_keep_their_order(srv):
    c = logged_in(srv)
    c.send(b'PUTSCRIPT "p" {5+}\r\nkeep;\r\nSETACTIVE "p"\r\nLISTSCRIPTS\r\nGETSCRIPT "p"\r\nNOOP "t"\r\n')
    assert [c.response() for _ in range(5)] == [b"OK\r\n", b"OK\r\n", b'"p" ACTIVE\r\nOK\r\n',
                                                b"{5}\r\nkeep;\r\nOK\r\n", b'OK (TAG "t") "done"\r\n']


def test_srv_record_in_mailstack_dns(srv):
    """RFC 5804 1.8: _sieve._tcp names the ManageSieve server."""
    from mailstack import config, dnsrecords

    cfg = config.load(str(srv.config_path))
    records = {(r.name, r.rtype): r.value for r in dnsrecords.records_for(cfg, "example.test")}
    assert records[("_sieve._tcp.example.test", "SRV")] == "0 1 4190 mail.example.test."


def test_lockout_is_shared_with_the_other_protocols(inproc_server_factory):
    """The login gate (mailstack.throttle) counts ManageSieve failures with the rest: once the
    address is locked out even the right password gets TRYLATER (RFC 5804 1.3)."""
    srv = inproc_server_factory(listeners=["managesieve", "pop3"],
                                extra="[auth]\nmax_failures = 2\nfailure_delay = 0.0\nlockout = 900.0\n").start()
    from support.clients import Pop3Client

    pop = Pop3Client(srv.port("pop3"))
    assert pop.cmd(f"USER {BOB}").startswith(b"+OK")
    assert pop.cmd("PASS wrong").startswith(b"-ERR")
    c = Client(srv)
    assert c.cmd(b'AUTHENTICATE "PLAIN" "' + plain(BOB, "wrong") + b'"') == b'NO "authentication failed"\r\n'
    got = c.login()
    assert re.fullmatch(rb'NO \(TRYLATER\) "too many authentication failures; try again in \d+ s"\r\n', got), got


# -- the wire syntax, as properties ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_any_line_parses_or_is_a_syntax_problem(line, first):
    try:
        fragment = wire.parse_fragment(line, first)
    except wire.SyntaxProblem:
        return
    assert fragment.literal is None or fragment.literal >= 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_strings_round_trip(value, escape):
    """What the server sends as a string reads back as the same octets."""
    sent = wire.string(value, escape=escape)
    if sent.startswith(b"{"):
        size, _, rest = sent.partition(b"}\r\n")
        assert int(size[1:]) == len(value) and rest == value
    else:
        assert wire.parse_fragment(b"X " + sent, first=True).tokens[1] == value


def test_a_store_failure_is_trylater_and_the_session_goes_on(srv):
    """The scripts' directory unwritable (a root-made one, a full disk): NO (TRYLATER), logged."""
    c = logged_in(srv)
    assert c.cmd('PUTSCRIPT "a" {5+}\r\nkeep;') == b"OK\r\n"
    sieve_dir = user_dir(srv) / "sieve"
    (sieve_dir / "a.sieve").unlink()
    (sieve_dir / ".lock").unlink()
    sieve_dir.rmdir()
    sieve_dir.write_text("not a directory")
    try:
        assert c.cmd('PUTSCRIPT "b" {5+}\r\nkeep;') == b'NO (TRYLATER) "internal server error, try again later"\r\n'
        assert c.cmd("NOOP") == b'OK "done"\r\n'
    finally:
        sieve_dir.unlink()
    assert c.cmd("LISTSCRIPTS") == b"OK\r\n"
