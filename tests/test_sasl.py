"""The SASL rules every protocol shares (mailstack/sasl.py), tested on their own.

Expected values come from RFC 4616 (PLAIN), RFC 4422 5 (base64, cancel) and RFC 4954 4 (``=``
as an empty initial response); the identity rule is the one documented in the module.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from twisted.cred import error as cred_error
from twisted.internet import defer

from mailstack import sasl
from mailstack.passwords import hash_password, verify_password
from mailstack.throttle import LoginThrottled

BOTH = ("PLAIN", "LOGIN")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_plain_with_initial_response():
    ex = sasl.start("plain", b64(b"\0alice@example.test\0secret"), BOTH)
    assert ex.challenge is None
    assert ex.credentials == sasl.Credentials(b"alice@example.test", b"secret", b"")


def test_plain_without_initial_response_sends_empty_challenge():
    ex = sasl.start("PLAIN", None, BOTH)
    assert ex.challenge == b""  # RFC 4954 4: "334 " with an empty challenge
    ex.respond(b64(b"alice@example.test\0alice@example.test\0pw with spaces") + b"\r\n")
    assert ex.credentials.password == b"pw with spaces"


@pytest.mark.parametrize("authzid", [b"alice@example.test", b"ALICE@Example.Test", b""])
def test_authzid_naming_the_same_account_case_insensitively_is_accepted(authzid):
    ex = sasl.start("PLAIN", b64(authzid + b"\0alice@example.test\0pw"), BOTH)
    assert ex.credentials.authcid == b"alice@example.test"


def test_authzid_naming_someone_else_is_an_identity_failure_with_the_credentials_kept():
    with pytest.raises(sasl.SaslError) as e:
        sasl.start("PLAIN", b64(b"bob@example.test\0alice@example.test\0pw"), BOTH)
    assert e.value.kind == "identity"


@pytest.mark.parametrize("message", [b"\0\0pw", b"alice\0pw", b"a\0b\0c\0d", b""])
def test_plain_needs_three_parts_and_an_authcid(message):
    with pytest.raises(sasl.SaslError) as e:
        sasl.start("PLAIN", b64(message) if message else b"=", BOTH)
    assert e.value.kind == "malformed"


@pytest.mark.parametrize("line", [b"not base64!", b"YWJj=", b"YW Jj"])
def test_bad_base64_is_malformed(line):
    with pytest.raises(sasl.SaslError) as e:
        sasl.start("PLAIN", line, BOTH)
    assert e.value.kind == "malformed"


def test_star_cancels():
    ex = sasl.start("PLAIN", None, BOTH)
    with pytest.raises(sasl.SaslError) as e:
        ex.respond(b"*")
    assert e.value.kind == "cancelled"


def test_login_asks_for_user_then_password():
    ex = sasl.start("LOGIN", None, BOTH)
    assert ex.challenge == b"Username:"
    ex.respond(b64(b"alice@example.test"))
    assert ex.challenge == b"Password:"
    ex.respond(b64(b"secret"))
    assert ex.challenge is None and ex.credentials == sasl.Credentials(b"alice@example.test", b"secret")


def test_login_with_initial_user_name():
    ex = sasl.start("LOGIN", b64(b"alice@example.test"), BOTH)
    assert ex.challenge == b"Password:"


def test_login_empty_user_name_is_malformed():
    ex = sasl.start("LOGIN", None, BOTH)
    with pytest.raises(sasl.SaslError) as e:
        ex.respond(b"=")
    assert e.value.kind == "malformed"


@pytest.mark.parametrize("mechanism,offered", [("CRAM-MD5", BOTH), ("LOGIN", ("PLAIN",)), ("", BOTH)])
def test_mechanism_not_offered_is_unsupported(mechanism, offered):
    with pytest.raises(sasl.SaslError) as e:
        sasl.start(mechanism, None, offered)
    assert e.value.kind == "unsupported"


def test_respond_after_completion_is_refused():
    ex = sasl.start("PLAIN", b64(b"\0a@b\0c"), BOTH)
    with pytest.raises(sasl.SaslError):
        ex.respond(b"=")


@pytest.mark.parametrize("secure,peer,loopback_ok,allowed", [
    (True, "192.0.2.1", False, True),
    (False, "192.0.2.1", True, False),
    (False, "127.0.0.1", True, True),
    (False, "::1", True, True),
    (False, "127.0.0.1", False, False),
    (False, "not-an-ip", True, False),
])
def test_login_allowed(secure, peer, loopback_ok, allowed):
    assert sasl.login_allowed(secure, peer, loopback_ok) is allowed


def test_shown_escapes_control_characters_and_truncates():
    assert sasl.shown(b"eve\r\nauth ok smtp as root") == "eve\\x0d\\x0aauth ok smtp as root"
    assert sasl.shown(b"\x00x") == "\\x00x"
    assert len(sasl.shown("a" * 500)) == 100
    assert sasl.shown(b"\xff") == "\ufffd"


def test_failure_counter_closes_at_the_limit():
    c = sasl.FailureCounter()
    assert [c.failed() for _ in range(sasl.MAX_AUTH_FAILURES)] == [False] * (sasl.MAX_AUTH_FAILURES - 1) + [True]


class _Avatar:
    address = "alice@example.test"


class _Gate:
    def __init__(self, outcome):
        self.outcome, self.calls = outcome, []

    def login(self, creds, peer, protocol, *interfaces):
        self.calls.append((creds.username, creds.password, peer, protocol, interfaces))
        if isinstance(self.outcome, Exception):
            return defer.fail(self.outcome)
        return defer.succeed((interfaces[0], _Avatar(), "logout"))


def _outcome(gate):
    results = []
    sasl.authenticate(gate, b"alice@example.test", b"pw", "127.0.0.1", "imap", "IFACE").addBoth(results.append)
    return results[0]


def test_authenticate_success():
    gate = _Gate(None)
    result = _outcome(gate)
    assert result == sasl.LoginResult("alice@example.test", result.avatar, "logout")
    assert gate.calls == [(b"alice@example.test", b"pw", "127.0.0.1", "imap", ("IFACE",))]


@pytest.mark.parametrize("error,expected", [
    (cred_error.UnauthorizedLogin(), sasl.LoginRefused),
    (cred_error.UnhandledCredentials(), sasl.LoginRefused),
    (LoginThrottled(30), LoginThrottled),
    (RuntimeError("database on fire"), sasl.LoginUnavailable),
])
def test_authenticate_failures(error, expected):
    failure = _outcome(_Gate(error))
    assert failure.check(expected)


# -- SASLprep (RFC 4013 section 3's examples, and the tables it names) --------------------------


@pytest.mark.parametrize("given, prepared", [
    ("I\u00adX", "IX"),  # SOFT HYPHEN mapped to nothing
    ("user", "user"),
    ("USER", "USER"),  # case is kept
    ("\u00aa", "a"),  # NFKC
    ("\u2168", "IX"),  # NFKC
    ("caf\u00e9", "caf\u00e9"),
    ("cafe\u0301", "caf\u00e9"),  # NFD and NFC are the same password
    ("a\u00a0b", "a b"),  # non-ASCII space to SPACE
])
def test_saslprep_maps_and_normalises(given, prepared):
    assert sasl.saslprep(given) == prepared


@pytest.mark.parametrize("given", ["\u0007", "a\u0000b", "\ue000", "\u0627\u0031"])
def test_saslprep_prohibits(given):
    with pytest.raises(ValueError):
        sasl.saslprep(given)  # control, NUL, private use, bidi rule (RFC 4013 3, example 4-5)


def test_passwords_match_after_saslprep_and_as_typed_for_old_hashes():
    stored = hash_password("caf\u00e9")
    assert verify_password(stored, "cafe\u0301") and verify_password(stored, "caf\u00e9")
    assert not verify_password(stored, "cafe")
    # {SSHA512} of the NFD form made elsewhere (doveadm pw): the password as typed still works
    salt = b"saltsalt"
    old = "{SSHA512}" + base64.b64encode(hashlib.sha512("cafe\u0301".encode() + salt).digest() + salt).decode()
    assert verify_password(old, "cafe\u0301")
