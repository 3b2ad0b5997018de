"""The mailstack command: users, aliases and store checks, also against a running server."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys

import pytest

from support.servers import MailServer, env_with_tree


def cli(*args, stdin: str = "", config=None, env=None, cwd=None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "mailstack.cli"] + (["--config", str(config)] if config else []) + list(args)
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60,
                          env=env or env_with_tree(), cwd=cwd)


@pytest.fixture
def base(tmp_path) -> MailServer:
    return MailServer(tmp_path, listeners=["submission"])


@pytest.mark.slow  # a dozen mailstack processes: in 'make test', not the fast loop
def test_users_round_trip(base):
    cfg = base.config_path
    out = cli("user", "add", "Dave@Example.test", "--password-file", "-", stdin="dave-pass\n", config=cfg)
    assert out.returncode == 0, out.stderr
    assert "added dave@example.test" in out.stdout
    line = [l for l in (base.base / "users").read_text().splitlines() if l.startswith("dave@")][0]
    assert line.startswith("dave@example.test:{ARGON2ID}$argon2id$")
    assert "dave-pass" not in (base.base / "users").read_text()
    assert (base.store_root / "example.test" / "dave" / ".Sent" / "cur").is_dir()  # Maildir made at once
    assert "dave@example.test" in cli("user", "list", config=cfg).stdout.split()
    again = cli("user", "add", "dave@example.test", "--password-file", "-", stdin="x\n", config=cfg)
    assert again.returncode != 0 and "user exists: dave@example.test" in again.stderr
    assert cli("user", "add", "x@elsewhere.test", "--password-file", "-", stdin="x\n", config=cfg).returncode != 0
    assert cli("user", "passwd", "nobody@example.test", "--password-file", "-", stdin="x\n", config=cfg).returncode != 0
    assert cli("user", "del", "dave@example.test", config=cfg).returncode == 0
    assert "dave@example.test" not in cli("user", "list", config=cfg).stdout
    assert cli("user", "del", "dave@example.test", config=cfg).returncode != 0


def test_password_never_on_the_command_line(base):
    out = cli("user", "add", "eve@example.test", "secret", config=base.config_path)
    assert out.returncode != 0  # no positional password argument exists


@pytest.mark.slow  # a dozen mailstack processes: in 'make test', not the fast loop
def test_aliases_round_trip(base):
    cfg = base.config_path
    assert cli("alias", "add", "sales@example.test", "alice@example.test", "bob@example.test", config=cfg).returncode == 0
    assert cli("alias", "add", "@example.test", "carol@example.test", config=cfg).returncode == 0
    listed = cli("alias", "list", config=cfg).stdout
    assert "sales@example.test: alice@example.test, bob@example.test" in listed
    assert "@example.test: carol@example.test" in listed
    assert cli("alias", "add", "bad alias", "alice@example.test", config=cfg).returncode != 0
    assert cli("alias", "del", "sales@example.test", config=cfg).returncode == 0
    assert "sales@" not in cli("alias", "list", config=cfg).stdout
    assert cli("alias", "del", "sales@example.test", config=cfg).returncode != 0


def test_config_from_environment_and_var_default(base, tmp_path):
    env = env_with_tree()
    env["MAILSTACK_CONFIG"] = str(base.config_path)
    assert "alice@example.test" in cli("user", "list", env=env).stdout
    (tmp_path / "elsewhere" / "var").mkdir(parents=True)
    os.symlink(base.config_path, tmp_path / "elsewhere" / "var" / "mailstack.toml")
    assert "alice@example.test" in cli("user", "list", cwd=tmp_path / "elsewhere").stdout
    bad = cli("user", "list", config=tmp_path / "none.toml")
    assert bad.returncode == 2 and "configuration file not found" in bad.stderr


def can_login(srv, user, password) -> bool:
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=20) as s:
        s.starttls(context=srv.ssl_context())
        try:
            s.login(user, password)
            return True
        except smtplib.SMTPAuthenticationError:
            return False


def test_edits_apply_to_a_running_server_at_once(base):
    srv = base.start()
    try:
        cfg = base.config_path
        assert not can_login(srv, "dave@example.test", "dave-pass")
        assert cli("user", "add", "dave@example.test", "--password-file", "-", stdin="dave-pass\n", config=cfg).returncode == 0
        assert can_login(srv, "dave@example.test", "dave-pass")
        assert cli("user", "passwd", "dave@example.test", "--password-file", "-", stdin="new-pass\n", config=cfg).returncode == 0
        assert not can_login(srv, "dave@example.test", "dave-pass")
        assert can_login(srv, "dave@example.test", "new-pass")
        assert cli("user", "del", "dave@example.test", config=cfg).returncode == 0
        assert not can_login(srv, "dave@example.test", "new-pass")
    finally:
        srv.stop()


@pytest.mark.slow  # four CLI processes
def test_store_check_and_repair(base):
    from mailstack.store import MaildirStore

    store = MaildirStore(str(base.store_root))
    folder = store.mailbox("alice@example.test").folder("INBOX")
    uids = [folder.append(f"Subject: {i}\r\n\r\n{i}\r\n".encode()) for i in range(3)]
    cfg = base.config_path
    ok = cli("store", "check", "alice@example.test", config=cfg)
    assert ok.returncode == 0 and "alice@example.test INBOX: 3 messages, ok" in ok.stdout
    uidlist = base.store_root / "example.test" / "alice" / "mailstack-uidlist"
    lines = uidlist.read_text().splitlines()
    uidlist.write_text("\n".join(lines[:2]) + "\n")  # forget the UIDs of two messages
    kept = cli("store", "check", "alice@example.test", config=cfg)  # dovecot-uidlist still has them
    assert kept.returncode == 0 and "2 UIDs from dovecot-uidlist" in kept.stdout, kept.stdout
    theirs = uidlist.parent / "dovecot-uidlist"
    theirs.write_text("\n".join(theirs.read_text().splitlines()[:2]) + "\n")  # and there too
    bad = cli("store", "check", "alice@example.test", config=cfg)
    assert bad.returncode == 1 and bad.stdout.count("file without UID") == 2
    fixed = cli("store", "check", "--repair", "alice@example.test", config=cfg)
    assert fixed.returncode == 0 and "repaired" in fixed.stdout
    assert cli("store", "check", "--all", config=cfg).returncode == 0
    snap = MaildirStore(str(base.store_root)).mailbox("alice@example.test").folder("INBOX").snapshot()
    assert snap.messages[0].uid == uids[0]  # the UID that still matched is kept
    # The others get new UIDs from the UIDNEXT the surviving state records (the lost lines took
    # the knowledge of UIDs 2 and 3 with them).
    assert sorted(m.uid for m in snap.messages)[1:] == [2, 3] and snap.uidnext == 4
