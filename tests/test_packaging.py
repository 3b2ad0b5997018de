"""Packaging (issue 17 part 8): the wheel ``python -m build`` makes, installed into a fresh
virtual environment, is a working server: ``mailstack`` and ``twistd mailstack`` on its PATH,
the reference configuration and the systemd unit inside, a production ``mailstack init`` that
``twistd`` runs and a mail client logs in to.  And the Dockerfile: checked as text always, built
only where a Docker daemon answers (never on CI: Docker is not part of it).

Nothing here runs the source tree: the programs are the fresh environment's, started without
PYTHONPATH, from a directory outside the tree.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from support.install import built_dists
from support.servers import ROOT
from mailstack.config import STANDARD_PORTS
from mailstack.devinit import make_dev_ca

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAILSTACK_CONFIG", "VIRTUAL_ENV")}
    return env


def run(argv, cwd, stdin="", timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], input=stdin, capture_output=True, text=True, cwd=cwd,
                          env=clean_env(), timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The sdist and wheel of this tree, and a fresh virtual environment with the wheel installed."""
    base = tmp_path_factory.mktemp("packaging")
    wheel, sdist = built_dists()
    venv = base / "venv"
    out = run([sys.executable, "-m", "venv", venv], cwd=base)
    assert out.returncode == 0, out.stderr
    out = run([venv / "bin" / "pip", "install", "-q", wheel], cwd=base)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"base": base, "wheel": wheel, "sdist": sdist, "bin": venv / "bin"}


@pytest.mark.slow
def test_the_wheel_holds_the_plugin_and_the_shipped_files(built):
    assert built["wheel"].name == f"mailstack-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(built["wheel"]) as z:
        names = set(z.namelist())
        assert "twisted/plugins/mailstack_plugin.py" in names
        assert "twisted/plugins/__init__.py" not in names  # Twisted's plugin namespace is not ours
        assert z.read("mailstack/data/mailstack.toml") == (ROOT / "etc" / "mailstack.toml").read_bytes()
        assert z.read("mailstack/data/mailstack.service") == (ROOT / "systemd" / "mailstack.service").read_bytes()
        assert not any(n.startswith("tests/") for n in names)
        entry_points = z.read(f"mailstack-{VERSION}.dist-info/entry_points.txt").decode()
    assert "mailstack = mailstack.cli:main" in entry_points


@pytest.mark.slow
@pytest.mark.process
def test_installed_wheel_inits_checks_and_serves(built, tmp_path):
    bin_dir = built["bin"]
    out = run([bin_dir / "mailstack", "--version"], cwd=tmp_path)
    assert out.stdout.strip() == f"mailstack {VERSION}", out.stderr
    out = run([bin_dir / "twistd", "--help"], cwd=tmp_path)
    assert re.search(r"^\s+mailstack\s+mailstack mail server", out.stdout, re.M), out.stdout

    etc, data = tmp_path / "etc", tmp_path / "data"
    out = run([bin_dir / "mailstack", "init", "--hostname", "mail.example.test", "--domain", "example.test",
               "--dir", etc, "--data-dir", data, "--ports", "any", "--listen", "127.0.0.1",
               "--user", ""], cwd=tmp_path)  # stay whoever runs the tests (tests/test_service_user.py drops)
    assert out.returncode == 0 and "Next:" in out.stdout, out.stderr
    config = etc / "mailstack.toml"
    ms = [bin_dir / "mailstack", "--config", config]
    out = run([*ms, "config", "check"], cwd=tmp_path)
    assert out.returncode == 2 and f"[tls] certificate: file not found: {etc}/tls/fullchain.pem" in out.stderr

    made = make_dev_ca(str(tmp_path / "ca"), hostnames=("mail.example.test",))
    shutil.copy(made["server.pem"], etc / "tls" / "fullchain.pem")
    shutil.copy(made["server-key.pem"], etc / "tls" / "privkey.pem")
    out = run([*ms, "config", "check"], cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"{config}: ok; {len(tomllib.loads(config.read_text())['listeners'])} listeners can bind", out.stderr
    password = secrets.token_urlsafe(12)
    out = run([*ms, "user", "add", "admin@example.test", "--password-file", "-"], cwd=tmp_path, stdin=password + "\n")
    assert out.returncode == 0, out.stderr

    log = open(tmp_path / "twistd.log", "wb")
    twistd = subprocess.Popen([str(bin_dir / "twistd"), "--nodaemon", "--pidfile=", "mailstack", "--config", str(config)],
                              cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        ports = wait_for_ports(data / "ports.json", twistd, tmp_path / "twistd.log")
        context = ssl.create_default_context(cafile=made["ca.pem"])
        with smtplib.SMTP_SSL("127.0.0.1", ports["submissions"]["port"], context=context, timeout=30) as s:
            code, banner = s.ehlo("client.example.test")
            assert code == 250 and banner.startswith(b"mail.example.test")
            assert s.login("admin@example.test", password)[0] == 235
    finally:
        twistd.terminate()
        twistd.wait(30)
        log.close()
    # twistd ends itself with the signal it was stopped by, once it has shut down cleanly.
    assert twistd.returncode in (0, -signal.SIGTERM) and "Server Shut Down." in (tmp_path / "twistd.log").read_text()


def wait_for_ports(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())["listeners"]
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"twistd did not start (status {proc.poll()}):\n{log.read_text(errors='replace')}")


@pytest.mark.slow
def test_installed_wheel_installs_its_unit_and_reference(built, tmp_path):
    (plugins,) = built["bin"].parent.glob("lib/python3*/site-packages/twisted/plugins")
    (plugins / "dropin.cache").unlink(missing_ok=True)  # as pip leaves it (twistd --help makes it)
    out = run([built["bin"] / "mailstack", "install-files", "--systemd-dir", tmp_path / "systemd", "--dir", tmp_path / "etc"],
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    unit = (tmp_path / "systemd" / "mailstack.service").read_text()
    assert f"ExecStart={built['bin']}/twistd --nodaemon --pidfile= mailstack" in unit
    # Read from the package data: this environment has no source tree to fall back on.
    assert (tmp_path / "etc" / "mailstack.toml.example").read_bytes() == (ROOT / "etc" / "mailstack.toml").read_bytes()
    # Twisted's plugin cache is written, so a service user that cannot write the installation
    # never has to (twistd would rescan and log the failure at every start).
    assert (plugins / "dropin.cache").stat().st_mtime >= (plugins / "mailstack_plugin.py").stat().st_mtime


@pytest.mark.slow
def test_the_sdist_builds_the_same_wheel(built):
    """'python -m build' makes the wheel from the sdist, so the shipped files must be in it."""
    import tarfile

    with tarfile.open(built["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"etc/mailstack.toml", "systemd/mailstack.service", "setup.py", "MANIFEST.in"} <= names


# -- the Dockerfile ----------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of ROOT/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_slim_unprivileged_with_volumes_and_ports():
    steps = dockerfile()
    froms = [args for word, args in steps if word == "FROM"]
    assert froms and all(re.match(r"(python:3\.11-slim|debian:bookworm-slim)", f) for f in froms)
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    assert {"/etc/mailstack", "/var/lib/mailstack"} <= set(json.loads(next(a for w, a in final if w == "VOLUME")))
    exposed = {int(p) for w, a in final if w == "EXPOSE" for p in a.split()}
    # The metrics listener binds loopback only (config.py refuses more without [metrics] allow_remote).
    assert exposed == {port for key, port in STANDARD_PORTS.items() if key != "metrics"}
    entrypoint = json.loads(next(a for w, a in final if w == "ENTRYPOINT"))
    assert entrypoint[0].endswith("/twistd") and entrypoint[-1] == "mailstack" and "--nodaemon" in entrypoint
    # The build context keeps what the wheel is made from, and leaves the rest out.
    ignored = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")}
    assert {".git", ".venv", "var"} <= ignored
    assert not ignored & {"pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "mailstack", "twisted", "etc", "systemd"}


def docker_works() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not docker_works(), reason="no Docker daemon answers 'docker info' (Docker is not part of CI)")
def test_docker_build(tmp_path):
    tag = f"mailstack-test:{secrets.token_hex(4)}"
    out = run(["docker", "build", "-t", tag, ROOT], cwd=tmp_path, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    try:
        out = run(["docker", "run", "--rm", "--entrypoint", "mailstack", tag, "--version"], cwd=tmp_path)
        assert out.stdout.strip() == f"mailstack {VERSION}", out.stderr
        out = run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.strip() != "0"
        out = run(["docker", "run", "--rm", tag, "--help"], cwd=tmp_path)
        assert "--config" in out.stdout, out.stderr
    finally:
        run(["docker", "image", "rm", "-f", tag], cwd=tmp_path)
