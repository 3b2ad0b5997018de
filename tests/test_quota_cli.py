"""``mailstack quota show|set`` and the maildirsize part of ``mailstack store check``."""

from __future__ import annotations

import os

import pytest

from support.servers import MailServer
from test_cli import cli

pytestmark = pytest.mark.slow  # a dozen CLI processes: in "make test", not the fast loop

BOB = "bob@example.test"
MSG = b"Subject: x\r\n\r\n" + b"z" * 86  # 100 bytes


@pytest.fixture
def base(tmp_path) -> MailServer:
    return MailServer(tmp_path, listeners=["submission"], extra='[quota]\nstorage = "1M"\nmessages = 100\n')


def deliver(base, n=2):
    from mailstack.store import Limits, MaildirStore, QuotaPolicy

    store = MaildirStore(str(base.store_root), fsync=False)
    store.quota = QuotaPolicy(lambda a: Limits(1 << 20, 100), fsync=False)
    for _ in range(n):
        store.deliver(BOB, MSG)


def test_show_and_set_edit_the_users_file(base):
    deliver(base)
    out = cli("quota", "show", BOB, config=base.config_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:3] == [
        f"{BOB}:", "  storage:  200 bytes used, limit 1MB ([quota])", "  messages: 2 used, limit 100 ([quota])"]
    out = cli("quota", "set", BOB, "--storage", "2G", "--messages", "5000", config=base.config_path)
    assert out.returncode == 0, out.stderr
    line = [l for l in (base.base / "users").read_text().splitlines() if l.startswith(BOB)][0]
    assert line.endswith("::::::userdb_quota_rule=*:storage=2G userdb_quota_rule2=*:messages=5000"), line
    out = cli("quota", "show", BOB, config=base.config_path)
    assert "  storage:  200 bytes used, limit 2GB (users file)" in out.stdout, out.stdout
    assert "  messages: 2 used, limit 5000 (users file)" in out.stdout
    out = cli("quota", "set", BOB, "--messages", "0", config=base.config_path)
    line = [l for l in (base.base / "users").read_text().splitlines() if l.startswith(BOB)][0]
    assert line.endswith("::::::userdb_quota_rule=*:storage=2G userdb_quota_rule2=*:messages=0"), line
    assert "messages: 2 used, limit no limit (users file)" in cli("quota", "show", BOB, config=base.config_path).stdout
    assert cli("quota", "set", "nobody@example.test", "--messages", "1", config=base.config_path).returncode != 0
    bad = cli("quota", "set", BOB, "--storage", "lots", config=base.config_path)
    assert bad.returncode != 0 and "--storage: not a size" in bad.stderr


def test_store_check_finds_and_repairs_a_stale_maildirsize(base):
    deliver(base, 3)
    inbox = base.maildir(BOB)
    os.unlink(inbox / "new" / sorted(os.listdir(inbox / "new"))[0])  # another program's expunge
    out = cli("store", "check", BOB, config=base.config_path)
    assert out.returncode == 1
    assert f"{BOB} quota: 200 bytes in 2 messages, PROBLEMS" in out.stdout, out.stdout
    assert "  - maildirsize says 300 bytes in 3 messages, the Maildir holds 200 bytes in 2" in out.stdout
    out = cli("store", "check", "--repair", BOB, config=base.config_path)
    assert f"{BOB} quota: 200 bytes in 2 messages, repaired" in out.stdout, out.stdout
    out = cli("store", "check", BOB, config=base.config_path)
    assert out.returncode == 0 and f"{BOB} quota: 200 bytes in 2 messages, ok" in out.stdout
    assert (inbox / "maildirsize").read_text() == "1048576S,100C\n200 2\n"
