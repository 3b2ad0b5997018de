"""``mailstack config check`` (issue 17, part 5): every check start-up makes, exit 0 or 2, and
the problem as ``FILE: [section] key: problem``, the same line start-up prints."""

from __future__ import annotations

import json
import os
import socket

from mailstack.devinit import make_dev_ca
from support.servers import MailServer
from test_cli import cli


def test_a_port_in_use_is_named_with_its_listener_key(tmp_path):
    srv = MailServer(tmp_path, listeners=["submission"])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        text = srv.config_path.read_text().replace('submission = "tcp:0:interface=127.0.0.1"',
                                                   f'submission = "tcp:{port}:interface=127.0.0.1"')
        srv.config_path.write_text(text)
        got = cli("config", "check", config=srv.config_path)
        assert got.returncode == 2, got.stdout + got.stderr
        assert got.stderr.startswith(f"mailstack: {srv.config_path}: [listeners] submission: cannot listen on "
                                     f"tcp:{port}:interface=127.0.0.1: "), got.stderr
        assert "in use" in got.stderr
        skipped = cli("config", "check", "--skip-ports", config=srv.config_path)
        assert skipped.returncode == 0 and "ports not checked" in skipped.stdout, skipped.stderr
    got = cli("config", "check", config=srv.config_path)
    assert got.returncode == 0 and "1 listeners can bind" in got.stdout, got.stderr


def test_a_running_server_is_not_reported_as_holding_its_own_ports(tmp_path):
    srv = MailServer(tmp_path, listeners=["submission"])
    srv.ports_file.write_text(json.dumps({"pid": os.getpid(), "listeners": {}}))  # this process is alive
    got = cli("config", "check", config=srv.config_path)
    assert got.returncode == 0 and f"mailstack is running as pid {os.getpid()}" in got.stdout, got.stderr


def test_a_certificate_for_another_name_is_refused(tmp_path):
    srv = MailServer(tmp_path, listeners=["submission"])
    make_dev_ca(str(tmp_path / "other"), hostnames=("other.example.net",), addresses=())
    for name in ("server.pem", "server-key.pem"):
        (tmp_path / "tls" / name).write_bytes((tmp_path / "other" / name).read_bytes())
    got = cli("config", "check", config=srv.config_path)
    assert got.returncode == 2
    assert got.stderr.strip() == (f"mailstack: {srv.config_path}: [tls] certificate: {tmp_path / 'tls' / 'server.pem'} "
                                  "is for other.example.net, not for the [server] hostname mail.example.test: "
                                  "clients that check the name refuse it")


def test_the_systemd_unit_runs_the_check_first_and_does_not_restart_on_its_exit_status(tmp_path):
    """``ExecStartPre`` is the check, and ``RestartPreventExitStatus`` is exactly the status
    a configuration error exits with, so a bad configuration is not restarted forever."""
    from support import ROOT

    unit = dict(line.split("=", 1) for line in (ROOT / "systemd" / "mailstack.service").read_text().splitlines()
                if "=" in line and not line.startswith("#"))
    assert unit["ExecStartPre"].endswith("mailstack --config /etc/mailstack/mailstack.toml config check")
    srv = MailServer(tmp_path, listeners=["submission"])
    srv.config_path.write_text(srv.config_path.read_text().replace('root = "mail"', "root = 5"))
    got = cli("config", "check", config=srv.config_path)
    assert got.stderr.strip() == f"mailstack: {srv.config_path}: [store] root: must be a path (string), not int 5"
    assert str(got.returncode) == unit["RestartPreventExitStatus"]
