"""Configuration: every error names the file, the key and the problem; start-up stops cleanly."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from support.servers import ROOT, MailServer, env_with_tree, free_port
from mailstack import config
from mailstack.errors import ConfigError


@pytest.fixture
def base(tmp_path) -> MailServer:
    """A directory with a valid config (users file, CA, store) to break in each test."""
    return MailServer(tmp_path, listeners=["smtp", "submission"])


def write(base: MailServer, text: str) -> str:
    base.config_path.write_text(text)
    return str(base.config_path)


def valid(base: MailServer) -> str:
    return base.config_path.read_text()


def error_of(path: str) -> str:
    with pytest.raises(ConfigError) as e:
        config.load(path)
    return str(e.value)


def test_valid_config_loads(base):
    cfg = config.load(str(base.config_path))
    assert cfg.domains == ["example.test"]
    assert [l.key for l in cfg.listeners] == ["smtp", "submission"]
    assert cfg.store_root == str(base.base / "mail")  # relative to the config file
    assert cfg.max_message_size == 50 * 1024 * 1024


@pytest.mark.parametrize("change, key, problem", [
    (lambda t: t + "[bogus]\nx = 1\n", "[bogus]", "unknown section"),
    (lambda t: t.replace("[store]", "[store]\nrooot = \"x\""), "[store] rooot", "unknown key"),
    (lambda t: t.replace('root = "mail"', "root = 5"), "[store] root", "must be a path (string), not int 5"),
    (lambda t: t.replace("[store]", "[store]\nfsync = \"yes\""), "[store] fsync", "must be true or false"),
    (lambda t: t.replace('root = "mail"', ""), "[store] root", "required key is missing"),
    (lambda t: t.replace('users = "users"', 'users = "nope"'), "[accounts] users", "file not found"),
    (lambda t: t.replace('users = "users"', 'users = "tls"'), "[accounts] users", "not a regular file"),
    (lambda t: t.replace('certificate = "tls/server.pem"', 'certificate = "tls/none.pem"'), "[tls] certificate", "file not found"),
    (lambda t: t.replace('certificate = "tls/server.pem"', 'certificate = "users"'), "[tls] certificate", "no PEM certificate"),
    (lambda t: t.replace('key = "tls/server-key.pem"', 'key = "tls/ca-key.pem"'), "[tls] key", "does not match the certificate"),
    (lambda t: t.replace('certificate = "tls/server.pem"', "").replace('key = "tls/server-key.pem"', ""),
     "[listeners] submission", "needs TLS"),
    (lambda t: t.replace('submission = "tcp:0:interface=127.0.0.1"', 'submission = "tcp:notaport"'),
     "[listeners] submission", "bad endpoint"),
    (lambda t: t.replace('submission = "tcp:0:interface=127.0.0.1"', 'submission = "ssl:465"'),
     "[listeners] submission", "use tcp:, tcp6:, unix: or systemd:"),
    (lambda t: t.replace('domains = ["example.test"]', "domains = []"), "[server] domains", "at least one domain"),
    (lambda t: t + "[limits]\nrecipients = 0\n", "[limits] recipients", "must be at least 1"),
    (lambda t: t + "[smtp]\ntrusted_networks = [\"10.0.0.0/33\"]\n", "[smtp] trusted_networks", "not a network"),
    (lambda t: t + "[auth]\nargon2_parallelism = 0\n", "[auth] argon2_parallelism", "must be 1 to 64"),
    (lambda t: t + "[auth]\nargon2_memory_kib = 16\n", "[auth] argon2_memory_kib", "at least 8 KiB a lane"),
    (lambda t: t + "[auth]\nargon2_time_cost = 0\n", "[auth] argon2_time_cost", "must be 1 to 100"),
])
def test_each_error_names_file_key_and_problem(base, change, key, problem):
    path = write(base, change(valid(base)))
    message = error_of(path)
    assert problem in message
    assert message.startswith(f"{path}: {key}: ")


def test_bad_toml_and_missing_file(base, tmp_path):
    assert "not valid TOML" in error_of(write(base, "[server\n"))
    assert error_of(str(tmp_path / "absent.toml")) == f"{tmp_path / 'absent.toml'}: configuration file not found"


def run_twistd(config_path: Path, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
         "mailstack", "--config", str(config_path)],
        capture_output=True, text=True, timeout=timeout, env=env_with_tree(), cwd=config_path.parent)


def test_twistd_stops_with_the_message_and_nonzero_status(base):
    write(base, valid(base).replace("[store]", "[store]\nrooot = 1"))
    out = run_twistd(base.config_path)
    assert out.returncode != 0
    assert f"mailstack: {base.config_path}: [store] rooot: unknown key" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_endpoint_that_cannot_bind_leaves_no_listener_open(base):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    first = free_port()
    text = valid(base).replace('smtp = "tcp:0:interface=127.0.0.1"', f'smtp = "tcp:{first}:interface=127.0.0.1"')
    text = text.replace('submission = "tcp:0:interface=127.0.0.1"', f'submission = "tcp:{taken}:interface=127.0.0.1"')
    write(base, text)
    out = run_twistd(base.config_path)
    busy.close()
    assert out.returncode != 0
    assert re.search(rf"\[listeners\] submission: cannot listen on tcp:{taken}:interface=127.0.0.1: .*[Aa]ddress already in use",
                     out.stderr), out.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", first), timeout=2)


def test_example_config_documents_every_option():
    text = (ROOT / "etc" / "mailstack.toml").read_text()
    parsed = tomllib.loads(text)
    section = None
    seen = set()
    for line in text.splitlines():
        m = re.match(r"^#?\s*\[(\w+)\]\s*$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^#?\s*(\w+)\s*=", line)
        if m and section:
            seen.add((section, m.group(1)))
    for sec, keys in config.SCHEMA.items():
        for key in keys:
            assert (sec, key) in seen, f"etc/mailstack.toml does not document [{sec}] {key}"
    for sec, keys in parsed.items():
        assert sec in config.SCHEMA
        for key in keys:
            assert key in config.SCHEMA[sec], f"etc/mailstack.toml has unknown [{sec}] {key}"
