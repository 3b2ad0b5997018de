"""Quota limits as written: [quota] values and Dovecot's passwd-file rules (mailstack.quotarules,
mailstack.accounts, mailstack.config)."""

from __future__ import annotations

import pytest

from support.servers import MailServer
from mailstack import config
from mailstack.accounts import Accounts
from mailstack.errors import ConfigError
from mailstack.quotarules import parse_size, rules_of, with_rules


def test_sizes_take_dovecots_units():
    assert parse_size("0") == 0 and parse_size("1500") == 1500
    assert parse_size("1G") == parse_size("1g") == parse_size("1GB") == 1 << 30
    assert parse_size("10k") == 10240 and parse_size("2T") == 2 << 40
    for bad in ("", "1.5G", "-1", "G", "1X"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_dovecot_rules():
    assert rules_of("userdb_quota_rule=*:storage=1G userdb_quota_rule2=*:messages=1000") == {
        "storage": 1 << 30, "messages": 1000}
    assert rules_of("quota_rule=*:storage=1024") == {"storage": 1 << 20}  # a bare storage= is kilobytes
    assert rules_of("userdb_quota_rule=*:bytes=1024") == {"storage": 1024}
    assert rules_of("userdb_quota_rule=*:storage=1G:messages=5") == {"storage": 1 << 30, "messages": 5}
    assert rules_of("userdb_quota_rule=Trash:storage=+100M userdb_mail=maildir:~/Maildir") == {}
    assert rules_of("userdb_quota_rule=*:storage=1G userdb_quota_rule2=*:storage=2G") == {"storage": 2 << 30}
    for bad in ("userdb_quota_rule=*:storage=+10M", "userdb_quota_rule=*:storage=10%", "userdb_quota_rule=*:size=1"):
        with pytest.raises(ValueError):
            rules_of(bad)


def test_rules_rewritten_keep_other_fields():
    assert with_rules("", 1 << 30, 1000) == "userdb_quota_rule=*:storage=1G userdb_quota_rule2=*:messages=1000"
    assert with_rules("userdb_mail=x userdb_quota_rule=*:storage=1G:messages=5", None, 7) == (
        "userdb_mail=x userdb_quota_rule=*:storage=1G userdb_quota_rule2=*:messages=7")
    assert with_rules("userdb_quota_rule=*:messages=5", 1500, None) == (
        "userdb_quota_rule=*:messages=5 userdb_quota_rule2=*:storage=1500b")
    assert rules_of(with_rules("", 1500, 0)) == {"storage": 1500, "messages": 0}


def test_users_file_extra_fields(tmp_path):
    h = MailServer.password_hash("pw")
    users = tmp_path / "users"
    users.write_text(f"a@example.test:{h}::::::userdb_quota_rule=*:storage=10M userdb_quota_rule2=*:messages=9\n"
                     f"b@example.test:{h}\n")
    accounts = Accounts(str(users), domains=["example.test"])
    assert accounts.quota("A@example.test") == {"storage": 10 << 20, "messages": 9}
    assert accounts.quota("b@example.test") == {} and accounts.quota("nobody@example.test") == {}
    accounts.users_file.set_quota("b@example.test", 1 << 20, None)
    assert users.read_text().splitlines()[1] == f"b@example.test:{h}::::::userdb_quota_rule=*:storage=1M"
    assert accounts.quota("b@example.test") == {"storage": 1 << 20}
    users.write_text(f"c@example.test:{h}::::::userdb_quota_rule=*:storage=lots\n")
    with pytest.raises(ConfigError, match=r"line 1: quota rule: not a size"):
        Accounts(str(users), domains=["example.test"])


@pytest.mark.parametrize("text, key, problem", [
    ('storage = "lots"', "[quota] storage", "not a size"),
    ("storage = 5", "[quota] storage", "must be a string"),
    ("messages = -1", "[quota] messages", "must be 0 (no limit) or more"),
    ('smtp_reply = "bounce"', "[quota] smtp_reply", 'must be "temporary" or "permanent"'),
    ("warning_percent = 101", "[quota] warning_percent", "must be from 0 (no warning) to 100"),
])
def test_config_errors_name_the_key(tmp_path, text, key, problem):
    base = MailServer(tmp_path, listeners=["smtp"], extra=f"[quota]\n{text}\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(base.config_path))
    assert f"{key}: " in str(e.value) and problem in str(e.value), str(e.value)


def test_config_defaults(tmp_path):
    cfg = config.load(str(MailServer(tmp_path, listeners=["smtp"], extra='[quota]\nstorage = "2G"\n').config_path))
    assert cfg.quota == {"storage": 2 << 30, "messages": 0, "smtp_reply": "temporary", "warning_percent": 90}
