"""``mailstack init`` for production (issue 17 part 2), ``install-files`` and ``--version``.

In process (the fast loop): the command's ``main``, its exit status and what it prints.  The
same commands run as real programs from an installed wheel in tests/test_packaging.py, with a
real twistd.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sysconfig
import tomllib

import pytest

from support.servers import ROOT
from mailstack import config, prodinit, shipped
from mailstack.cli import main
from mailstack.devinit import make_dev_ca
from mailstack.errors import ConfigError


@pytest.fixture
def run(capsys):
    """``run(*args)``: the command's ``main`` in this process (the fast loop), as a
    CompletedProcess with its exit status and what it printed."""
    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        umask = os.umask(0o022)
        os.umask(umask)
        status = main(list(args))
        after = os.umask(umask)
        assert after == umask, f"mailstack {args[0]} left the process umask at {after:03o}"  # the test run's files
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, out, err)
    return run


def init(run, tmp_path, *extra, domains=("example.org",)):
    args = ["init", "--hostname", "mail.example.org", "--dir", str(tmp_path / "etc"), "--data-dir", str(tmp_path / "data")]
    for d in domains:
        args += ["--domain", d]
    return run(*args, *extra)


def install_certificate(etc, hostname="mail.example.org") -> str:
    """A certificate (signed by a throw-away CA) where init said it goes; returns the CA file."""
    made = make_dev_ca(str(etc.parent / "ca"), hostnames=(hostname,))
    shutil.copy(made["server.pem"], etc / "tls" / "fullchain.pem")
    shutil.copy(made["server-key.pem"], etc / "tls" / "privkey.pem")
    (etc / "tls" / "privkey.pem").chmod(0o600)
    return made["ca.pem"]


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_production_config_on_standard_ports_checked_once_the_certificate_is_there(tmp_path):
    etc, data = tmp_path / "etc", tmp_path / "data"
    path = prodinit.init_production(str(etc), str(data), "Mail.Example.org.", ["example.org", "Example.NET", "example.org"])
    assert path == str(etc / "mailstack.toml")
    assert {mode(etc / n) for n in ("mailstack.toml", "users", "aliases")} == {0o640}
    assert mode(data / "mail") == 0o700 and mode(data) == 0o700
    raw = tomllib.loads((etc / "mailstack.toml").read_text())
    assert raw["listeners"] == {key: f"tcp:{port}" for key, port in config.STANDARD_PORTS.items() if key != "metrics"} | {
        "metrics": "tcp:9909:interface=127.0.0.1"}  # the metrics listener stays on loopback
    assert raw["server"]["hostname"] == "mail.example.org"
    assert raw["server"]["domains"] == ["example.org", "example.net"]
    assert raw["server"]["user"] == "mailstack"  # the service user (mailstack.privileges)
    # No demo users, no dev CA: the users file holds a comment only, tls/ nothing.
    assert all(l.startswith("#") for l in (etc / "users").read_text().splitlines())
    assert os.listdir(etc / "tls") == []
    assert "postmaster@example.net" in (etc / "aliases").read_text()

    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(e.value) == f"{path}: [tls] certificate: file not found: {etc / 'tls' / 'fullchain.pem'}"
    install_certificate(etc)
    cfg = config.load(path)
    assert (cfg.hostname, cfg.domains) == ("mail.example.org", ["example.org", "example.net"])
    assert cfg.store_root == str(data / "mail") and cfg.queue_dir == str(data / "queue")
    assert cfg.dkim["keys"] == str(data / "dkim") and cfg.ports_file == str(data / "ports.json")
    assert cfg.tls_key == str(etc / "tls" / "privkey.pem") and cfg.users_file == str(etc / "users")


def test_init_with_acme_needs_no_certificate_files_and_takes_appended_acme_keys(tmp_path):
    path = prodinit.init_production(str(tmp_path / "etc"), str(tmp_path / "data"), "mail.example.org", ["example.org"],
                                    ports="any", listen="127.0.0.1", acme_contact="hostmaster@example.org")
    with open(path, "a") as f:  # [acme] is the last table: a test CA's directory goes right after it
        f.write('directory = "https://127.0.0.1:14000/dir"\n')
    cfg = config.load(path)
    assert cfg.acme["enabled"] and cfg.acme["contact"] == "hostmaster@example.org"
    assert cfg.acme["directory"] == "https://127.0.0.1:14000/dir"
    assert cfg.tls_certificate == "" and cfg.has_tls
    assert cfg.acme["names"] == ["mail.example.org", "mta-sts.example.org", "autoconfig.example.org"]


def test_sections_appended_to_the_configuration_belong_to_themselves(tmp_path):
    """The file ends with [store], so an [acme] (or any) block can be appended as it is."""
    path = prodinit.init_production(str(tmp_path / "etc"), str(tmp_path / "data"), "mail.example.org", ["example.org"],
                                    ports="dev", listen="::1")
    install_certificate(tmp_path / "etc")
    with open(path, "a") as f:
        f.write("\n[limits]\nrecipients = 7\n")
    cfg = config.load(path)
    assert cfg.max_recipients == 7 and cfg.store_root == str(tmp_path / "data" / "mail")
    assert cfg.listener("smtp").endpoint == "tcp6:2525:interface=\\:\\:1"


def test_init_through_the_command_prints_the_next_steps(run, tmp_path):
    out = init(run, tmp_path, "--ports", "any", "--listen", "127.0.0.1", "--user", "", domains=("example.org", "example.net"))
    assert out.returncode == 0, out.stderr
    cfg_path = tmp_path / "etc" / "mailstack.toml"
    for step in (f"mailstack --config {cfg_path} user add you@example.org",
                 "alias add postmaster@example.org you@example.org",
                 "dkim genkey example.org", "(and each other domain)", " dns ", "ACME", "config check",
                 f"{tmp_path}/etc/tls/fullchain.pem", "systemctl enable --now mailstack"):
        assert step in out.stdout
    listeners = tomllib.loads(cfg_path.read_text())["listeners"]
    assert set(listeners.values()) == {"tcp:0:interface=127.0.0.1"} and set(listeners) == set(config.LISTENERS)
    check = run("--config", str(cfg_path), "config", "check")
    assert check.returncode == 2
    assert check.stderr.strip() == f"mailstack: {cfg_path}: [tls] certificate: file not found: {tmp_path}/etc/tls/fullchain.pem"
    install_certificate(tmp_path / "etc")
    check = run("--config", str(cfg_path), "config", "check")
    assert check.returncode == 0 and check.stdout.strip() == f"{cfg_path}: ok; {len(listeners)} listeners can bind", check.stderr


def test_next_steps_say_to_make_a_missing_service_user(tmp_path):
    path = str(tmp_path / "mailstack.toml")
    steps = prodinit.next_steps(path, "mail.example.org", ["example.org"], user="no-such-user-here")
    assert "  0. the service user: adduser --system --group --home /var/lib/mailstack no-such-user-here" in steps
    assert "0. the service user" not in prodinit.next_steps(path, "mail.example.org", ["example.org"], user="root")
    assert "0. the service user" not in prodinit.next_steps(path, "mail.example.org", ["example.org"], user="")


def test_init_never_overwrites(run, tmp_path):
    assert init(run, tmp_path).returncode == 0
    users = tmp_path / "etc" / "users"
    users.write_text("alice@example.org:{ARGON2ID}x\n")
    before = {n: (tmp_path / "etc" / n).read_bytes() for n in ("mailstack.toml", "users", "aliases")}
    again = init(run, tmp_path, domains=("example.net",))
    assert again.returncode == 2
    assert again.stderr.strip() == (f"mailstack init: {tmp_path}/etc/mailstack.toml exists; mailstack init never "
                                    "overwrites a configuration (move it away, or edit it)")
    assert {n: (tmp_path / "etc" / n).read_bytes() for n in before} == before
    # A users file left without its configuration is not overwritten either; nothing is written.
    (tmp_path / "etc" / "mailstack.toml").unlink()
    again = init(run, tmp_path)
    assert again.returncode == 2 and f"{users} exists" in again.stderr
    assert users.read_text() == "alice@example.org:{ARGON2ID}x\n" and not (tmp_path / "etc" / "mailstack.toml").exists()


@pytest.mark.parametrize("args, problem", [
    (["--domain", "example.org"], "give --hostname and --domain"),
    (["--hostname", "mail.example.org"], "give --hostname and --domain"),
    (["--hostname", "mail", "--domain", "example.org"], "--hostname 'mail': give the fully qualified name"),
    (["--hostname", "mail.example.org", "--domain", "exa mple.org"], "--domain 'exa mple.org': not a domain name"),
    (["--hostname", "mail.example.org", "--domain", "example.org", "--listen", "localhost"], "--listen 'localhost': give an IP address"),
    (["--dev", "--hostname", "mail.example.org"], "--dev takes only --dir"),
])
def test_init_refuses_unusable_arguments(run, tmp_path, args, problem):
    out = run("init", "--dir", str(tmp_path / "etc"), "--data-dir", str(tmp_path / "data"), *args)
    assert out.returncode == 2 and problem in out.stderr, out.stderr
    assert not (tmp_path / "etc" / "mailstack.toml").exists()


def test_install_files_writes_the_unit_for_this_installation_and_the_reference(run, tmp_path):
    out = run("install-files", "--systemd-dir", str(tmp_path / "systemd"), "--dir", str(tmp_path / "etc"))
    assert out.returncode == 0, out.stderr
    unit = (tmp_path / "systemd" / "mailstack.service").read_text()
    twistd = os.path.join(sysconfig.get_path("scripts"), "twistd")
    assert f"ExecStart={twistd} --nodaemon --pidfile= mailstack --config /etc/mailstack/mailstack.toml" in unit
    assert unit == (ROOT / "systemd" / "mailstack.service").read_text().replace(shipped.UNIT_TWISTD, twistd)
    assert (tmp_path / "etc" / "mailstack.toml.example").read_text() == (ROOT / "etc" / "mailstack.toml").read_text()
    assert mode(tmp_path / "systemd" / "mailstack.service") == 0o644


def test_version_is_pyproject_s(capsys):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mailstack {version}"
