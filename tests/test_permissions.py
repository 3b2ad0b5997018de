"""File modes (issue 14 item 8): start-up and ``mailstack config check`` refuse a configuration
or users/aliases file others may write, and TLS/DKIM private keys everyone may read (group
read stays allowed: README's set-up gives the service group read access); running as root is
logged as a warning."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.servers import MailServer, env_with_tree
from test_config import run_twistd


@pytest.fixture
def base(tmp_path) -> MailServer:
    return MailServer(tmp_path, listeners=["smtp", "submission"])


def config_check(base: MailServer) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(base.config_path), "config", "check"],
                          capture_output=True, text=True, timeout=60, env=env_with_tree(), cwd=base.base)


def test_config_check_passes_the_safe_modes_the_test_setup_writes(base):
    out = config_check(base)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{base.config_path}: ok; 2 listeners can bind"


def test_twistd_refuses_a_group_writable_config_file(base):
    os.chmod(base.config_path, 0o664)
    out = run_twistd(base.config_path)
    assert out.returncode != 0
    assert (f"mailstack: {base.config_path}: the configuration file is group-writable (mode 664)" in out.stderr), out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_twistd_refuses_a_world_writable_users_file(base):
    os.chmod(base.base / "users", 0o666)
    out = run_twistd(base.config_path)
    assert out.returncode != 0
    assert (f"mailstack: {base.config_path}: [accounts] users: {base.base / 'users'} is group- and world-writable "
            "(mode 666)") in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout


@pytest.mark.parametrize("target, mode, key, problem", [
    ("mailstack.toml", 0o646, None, "the configuration file is world-writable (mode 646)"),
    ("users", 0o620, "[accounts] users", "{file} is group-writable (mode 620)"),
    ("aliases", 0o602, "[accounts] aliases", "{file} is world-writable (mode 602)"),
    ("tls/server-key.pem", 0o644, "[tls] key", "private key {file} is world-readable (mode 644)"),
    ("tls/server-key.pem", 0o660, "[tls] key", "private key {file} is writable by group or others (mode 660)"),
])
def test_config_check_names_the_file_and_the_problem(base, target, mode, key, problem):
    path = base.base / target
    os.chmod(path, mode)
    out = config_check(base)
    assert out.returncode == 2
    where = f"{base.config_path}: {key}: " if key else f"{base.config_path}: "
    assert out.stderr.startswith(f"mailstack: {where}{problem.format(file=path)}"), out.stderr
    assert f"chmod" in out.stderr


def test_config_check_refuses_a_readable_dkim_key(base):
    out = subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(base.config_path), "dkim", "genkey",
                          "example.test"], capture_output=True, text=True, timeout=60, env=env_with_tree(), cwd=base.base)
    assert out.returncode == 0, out.stderr
    key = base.base / "dkim" / "example.test" / "mail.rsa.pem"
    assert config_check(base).returncode == 0  # genkey writes it 600
    os.chmod(key, 0o644)
    out = config_check(base)
    assert out.returncode == 2
    assert out.stderr.startswith(f"mailstack: {base.config_path}: [dkim] keys: private key {key} is world-readable"), out.stderr


def test_a_key_readable_by_the_service_group_is_accepted(base):
    """README's production set-up: key owned by root, group mailstack, mode 640."""
    os.chmod(base.base / "tls" / "server-key.pem", 0o640)
    assert config_check(base).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to run as root to see the warning")
def test_running_as_root_is_a_warning_not_a_refusal(server):
    assert "running as root" in server.log_text()
    assert "--uid/--gid" in server.log_text()
