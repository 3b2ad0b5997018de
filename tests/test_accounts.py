"""Accounts: password schemes, the two files, alias resolution, twisted.cred."""

from __future__ import annotations

import base64
import hashlib
import os

import bcrypt
import pytest
from twisted.cred import credentials, error

from mailstack import accounts, passwords
from mailstack.accounts import Accounts, AccountsChecker, IMailUser, make_portal
from mailstack.passwords import hash_password, verify_password
from mailstack.errors import ConfigError


def ssha(algorithm: str, password: bytes, salt: bytes) -> str:
    return base64.b64encode(hashlib.new(algorithm, password + salt).digest() + salt).decode()


@pytest.mark.parametrize("stored", [
    hash_password("pässword"),
    "{BLF-CRYPT}" + bcrypt.hashpw("pässword".encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$"),
    "{SSHA512}" + ssha("sha512", "pässword".encode(), b"saltsalt"),
    "{SSHA256}" + ssha("sha256", "pässword".encode(), b"salty"),
    "{SSHA}" + ssha("sha1", "pässword".encode(), b"s4lt"),
    "{SHA512}" + base64.b64encode(hashlib.sha512("pässword".encode()).digest()).decode(),
    "{SHA256}" + base64.b64encode(hashlib.sha256("pässword".encode()).digest()).decode(),
])
def test_password_schemes(stored):
    assert verify_password(stored, "pässword")
    assert not verify_password(stored, "password")
    assert not verify_password(stored, "")


def test_new_hashes_are_argon2id_and_salted():
    a, b = hash_password("x"), hash_password("x")
    assert a.startswith("{ARGON2ID}$argon2id$") and a != b


def test_unknown_or_malformed_hashes_never_verify():
    assert not verify_password("{PLAIN}secret", "secret")
    assert not verify_password("secret", "secret")
    assert not verify_password("{SSHA512}!!!notbase64", "secret")


def make_accounts(tmp_path, users: str, aliases: str = "", domains=("example.test",)) -> Accounts:
    (tmp_path / "users").write_text(users)
    (tmp_path / "aliases").write_text(aliases)
    return Accounts(str(tmp_path / "users"), str(tmp_path / "aliases"), list(domains), "+")


H = hash_password("pw")


def test_users_file_errors_name_file_and_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        make_accounts(tmp_path, f"# comment\nalice@example.test:{H}\nbob@example.test:{{PLAIN}}pw\n")
    assert str(e.value).startswith(f"{tmp_path / 'users'}: line 3: bob@example.test: password scheme {{PLAIN}} is not supported")
    with pytest.raises(ConfigError) as e:
        make_accounts(tmp_path, f"alice@example.test:{H}\nALICE@example.test:{H}\n")
    assert "line 2: alice@example.test is listed twice" in str(e.value)
    with pytest.raises(ConfigError) as e:
        make_accounts(tmp_path, "not an entry\n")
    assert "line 1: expected user@domain:{SCHEME}hash" in str(e.value)
    with pytest.raises(ConfigError) as e:
        make_accounts(tmp_path, f"alice@example.test:{H}\n", "sales@example.test:\n")
    assert f"{tmp_path / 'aliases'}: line 1: sales@example.test has no target" in str(e.value)


def test_dovecot_extra_fields_are_ignored(tmp_path):
    acc = make_accounts(tmp_path, f"alice@example.test:{H}:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G\n")
    assert acc.authenticate("alice@example.test", "pw") == "alice@example.test"


def test_authenticate(tmp_path):
    acc = make_accounts(tmp_path, f"alice@example.test:{H}\n")
    assert acc.authenticate("Alice@Example.TEST", "pw") == "alice@example.test"
    assert acc.authenticate("alice", "pw") == "alice@example.test"  # one domain: bare name allowed
    assert acc.authenticate("alice@example.test", "PW") is None
    assert acc.authenticate("nobody@example.test", "pw") is None


def test_resolution(tmp_path):
    acc = make_accounts(
        tmp_path,
        f"alice@example.test:{H}\nbob@example.test:{H}\ncarol@other.test:{H}\n",
        "sales@example.test: alice@example.test, bob@example.test, partner@remote.test\n"
        "loop1@example.test: loop2@example.test\nloop2@example.test: loop1@example.test, alice@example.test\n"
        "bob+vip@example.test: carol@other.test\n"
        "@other.test: carol@other.test\n",
        domains=("example.test", "other.test"),
    )
    r = acc.resolve("Sales@Example.test")
    assert r.local == ["alice@example.test", "bob@example.test"] and r.remote == ["partner@remote.test"]
    assert acc.resolve("bob+lists@example.test").local == ["bob@example.test"]
    assert acc.resolve("bob+vip@example.test").local == ["carol@other.test"]  # full address alias wins
    assert acc.resolve("loop1@example.test").local == ["alice@example.test"]  # loops end
    assert acc.resolve("nobody@example.test") is None
    assert acc.resolve("whoever@other.test").local == ["carol@other.test"]  # catch-all
    assert acc.resolve("someone@remote.test") is None  # not a local domain
    assert acc.owns("alice@example.test", "alice+x@example.test")
    assert acc.owns("alice@example.test", "sales@example.test")
    assert not acc.owns("alice@example.test", "bob@example.test")
    assert not acc.owns("carol@other.test", "anything@other.test")  # a catch-all is not ownership


def test_file_edits_are_seen_without_restart(tmp_path):
    acc = make_accounts(tmp_path, f"alice@example.test:{H}\n")
    assert acc.authenticate("bob@example.test", "pw") is None
    acc.users_file.set("bob@example.test", H, must_exist=False)
    assert acc.authenticate("bob@example.test", "pw") == "bob@example.test"
    (tmp_path / "users").write_text(f"alice@example.test:{H}\nbroken line\n")
    os.utime(tmp_path / "users", ns=(1, 1))
    assert acc.authenticate("alice@example.test", "pw") == "alice@example.test"  # last good state kept


def test_cred_checker_and_realm(tmp_path):
    # The checker hashes in the reactor's thread pool: run the logins on the session's reactor
    # thread (tests/support/inprocess.py), which the in-process servers share.
    from twisted.internet import defer

    from support.inprocess import in_reactor

    acc = make_accounts(tmp_path, f"alice@example.test:{H}\n")
    portal, realm = make_portal(acc)

    def login_twice():
        return defer.DeferredList([
            portal.login(credentials.UsernamePassword(b"alice@example.test", b"pw"), None, IMailUser),
            portal.login(credentials.UsernamePassword(b"alice@example.test", b"no"), None, IMailUser),
        ], consumeErrors=True)

    (_, ok), (_, bad) = in_reactor(login_twice, timeout=10)
    assert ok[0] is IMailUser and ok[1].address == "alice@example.test"
    assert bad.check(error.UnauthorizedLogin)
    assert AccountsChecker.credentialInterfaces == (credentials.IUsernamePassword,)


def test_send_as_identities_and_their_file_errors(tmp_path):
    (tmp_path / "users").write_text(f"alice@example.test:{H}\nbob@example.test:{H}\n")
    (tmp_path / "send-as").write_text("# shared addresses\nalice@example.test: sales@example.test, @partner.test\n")
    acc = Accounts(str(tmp_path / "users"), "", ["example.test"], "+", str(tmp_path / "send-as"))
    assert acc.owns("alice@example.test", "Sales@example.test")
    assert acc.owns("alice@example.test", "sales+eu@example.test")
    assert acc.owns("alice@example.test", "anyone@partner.test")
    assert not acc.owns("bob@example.test", "sales@example.test")
    assert not acc.owns("alice@example.test", "anyone@sub.partner.test")
    for bad, problem in (("@example.test: x@example.test", "expected 'user@domain: address, @domain, ...'"),
                         ("alice@example.test: not an address", "target 'not an address' is not an address")):
        (tmp_path / "send-as").write_text(bad + "\n")
        with pytest.raises(ConfigError) as e:
            Accounts(str(tmp_path / "users"), "", ["example.test"], "+", str(tmp_path / "send-as"))
        assert str(e.value).startswith(f"{tmp_path / 'send-as'}: line 1: ") and problem in str(e.value), e.value


def test_a_verified_password_is_remembered_not_a_wrong_one_and_not_past_a_change(tmp_path, monkeypatch):
    # Issue 16 item 2: like Dovecot's auth_cache; every login used to pay a full Argon2 hash.
    import mailstack.accounts as accounts_mod

    acc = make_accounts(tmp_path, f"alice@example.test:{H}\n")
    calls = []
    real = accounts_mod.verify_password
    monkeypatch.setattr(accounts_mod, "verify_password", lambda stored, pw: calls.append(pw) or real(stored, pw))
    assert acc.authenticate("alice@example.test", "pw") == "alice@example.test"
    assert acc.authenticate("Alice@Example.test", "pw") == "alice@example.test"  # from the cache
    assert calls == ["pw"]
    assert acc.authenticate("alice@example.test", "wrong") is None
    assert acc.authenticate("alice@example.test", "wrong") is None  # failures are checked every time
    assert calls == ["pw", "wrong", "wrong"]
    import os
    import time

    (tmp_path / "users").write_text(f"alice@example.test:{hash_password('new')}\n")
    os.utime(tmp_path / "users", (time.time() + 5, time.time() + 5))
    assert acc.authenticate("alice@example.test", "pw") is None  # the old password no longer works
    acc.auth_cache_ttl = 0
    assert acc.authenticate("alice@example.test", "new") == "alice@example.test"
    assert acc.authenticate("alice@example.test", "new") == "alice@example.test"
    assert calls.count("new") == 2  # with the cache off every login verifies


def test_the_cache_answers_without_hashing_so_the_reactor_may_ask(tmp_path, monkeypatch):
    import mailstack.accounts as accounts_mod

    acc = make_accounts(tmp_path, f"alice@example.test:{H}\n")
    assert acc.cached("alice@example.test", "pw") is None  # never verified: the thread pool's work
    assert acc.authenticate("alice@example.test", "pw") == "alice@example.test"
    monkeypatch.setattr(accounts_mod, "verify_password", lambda *a: pytest.fail("hashed"))
    assert acc.cached("ALICE@example.test", "pw") == "alice@example.test"
    assert acc.cached("alice@example.test", "wrong") is None
    assert acc.cached("bob@example.test", "pw") is None
    acc._auth_cache["alice@example.test"] = (acc._auth_cache["alice@example.test"][0], 0.0)  # expired
    assert acc.cached("alice@example.test", "pw") is None


@pytest.fixture
def small_argon2():
    """New hashes cheap for the test (t=1, 64 KiB, p=1); the defaults come back after."""
    passwords.configure_argon2(1, 64, 1)
    yield
    passwords.configure_argon2(**passwords.ARGON2_DEFAULTS)


def test_argon2_defaults_are_rfc_9106_second_recommendation():
    # RFC 9106 4: "If much less memory is available, ... Argon2id with t=3 iterations,
    # p=4 lanes, m=2^(16) (64 MiB of RAM)".
    assert passwords.ARGON2_DEFAULTS == {"time_cost": 3, "memory_cost": 65536, "parallelism": 4}
    assert "$m=65536,t=3,p=4$" in hash_password("pw")


def test_an_old_hash_is_made_again_at_login_and_still_verifies_before(tmp_path, small_argon2):
    # Issue 16 item 2: hashes with other parameters verify, and the next login stores one with
    # the configured parameters; the password is the same, the cache keeps working.
    from argon2 import PasswordHasher

    old = "{ARGON2ID}" + PasswordHasher(time_cost=2, memory_cost=128, parallelism=2).hash("pw")
    acc = make_accounts(tmp_path, f"alice@example.test:{old}:1000:1000::\n")
    assert passwords.needs_rehash(old) and not passwords.needs_rehash(hash_password("pw"))
    assert acc.authenticate("alice@example.test", "pw") == "alice@example.test"
    line = (tmp_path / "users").read_text()
    assert "$m=64,t=1,p=1$" in line and line.endswith(":1000:1000::\n")  # Dovecot's fields kept
    assert acc.authenticate("alice@example.test", "pw") == "alice@example.test"
    assert acc.authenticate("alice@example.test", "wrong") is None
    assert not passwords.needs_rehash("{SSHA512}" + base64.b64encode(b"x" * 72).decode())  # only Argon2 is made again


def test_a_rehash_never_undoes_a_password_change_nor_fails_a_login(tmp_path, small_argon2, monkeypatch):
    from argon2 import PasswordHasher

    old = "{ARGON2ID}" + PasswordHasher(time_cost=2, memory_cost=128, parallelism=2).hash("pw")
    acc = make_accounts(tmp_path, f"alice@example.test:{old}\n")
    with pytest.raises(KeyError):
        acc.users_file.set("alice@example.test", "{SHA256}x", must_exist=True, unless_changed_from="{SHA256}other")
    acc.rehash = False
    assert acc.authenticate("alice@example.test", "pw") == "alice@example.test"
    assert (tmp_path / "users").read_text() == f"alice@example.test:{old}\n"  # rehash_on_login = false
    acc.rehash, acc.auth_cache_ttl = True, 0
    monkeypatch.setattr(accounts, "atomic_write", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    assert acc.authenticate("alice@example.test", "pw") == "alice@example.test"  # a read-only users file
    assert (tmp_path / "users").read_text() == f"alice@example.test:{old}\n"
