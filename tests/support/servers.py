"""A real ``twistd`` process on loopback with its own store, users and CA: :class:`MailServer`.

Listeners bind port 0; the server writes the ports it got to a ports file, which
:meth:`MailServer.start` waits for.  The process runs the working tree (PYTHONPATH), not an
installed copy.  :class:`support.inprocess.InProcessServer` has the same API without the process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from support import ROOT
from mailstack.passwords import hash_password
from mailstack.config import LISTENERS
from mailstack.devinit import make_dev_ca
from mailstack.service import PROTOCOLS

__all__ = ["ROOT", "DOMAIN", "PASSWORDS", "MailServer", "Proc", "env_with_tree", "free_port"]

DOMAIN = "example.test"
PASSWORDS = {"alice@example.test": "alice-secret-1", "bob@example.test": "bob-secret-2", "carol@example.test": "carol-secret-3"}
_HASHES: dict[str, str] = {}


def _hash(password: str) -> str:
    """An ``{ARGON2ID}`` hash, made once per password and test session (each costs ~0.1 s)."""
    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    return _HASHES[password]


def env_with_tree() -> dict:
    """The environment for a child process that must run this tree's ``mailstack``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("MAILSTACK_CONFIG", None)
    return env


def free_port(host: str = "127.0.0.1", also: tuple = ()) -> int:
    """A TCP port free on ``host`` (bound, then released), and free on the ``also`` hosts too."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        ok = True
        for other in also:
            with socket.socket() as s:
                try:
                    s.bind((other, port))
                except OSError:
                    ok = False
        if ok:
            return port


class Proc:
    """A helper program (fake MX, DNS server) that prints ``ready`` once it listens."""

    def __init__(self, argv, env=None):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        line = self.p.stdout.readline()
        assert line.strip() == "ready", line + (self.p.stdout.read() if self.p.poll() is not None else "")

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            self.p.wait(10)


def _write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


class MailServer:
    """A mailstack process under test."""

    #: ``[server] workers`` to write; None: the default (one process per CPU).
    workers: int | None = None

    def __init__(self, base: Path, listeners=None, extra: str = "", aliases: str = "", checks: bool = False,
                 endpoints: dict[str, str] | None = None, workers: int | None = None):
        """``endpoints``: listener key -> endpoint, for a listener that needs a known port
        (the default is port 0 on 127.0.0.1)."""
        self.base = base
        if workers is not None:
            self.workers = workers
        self.config_path = base / "mailstack.toml"
        self.ports_file = base / "ports.json"
        self.log_path = base / "server.log"
        self.store_root = base / "mail"
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, dict] = {}
        if not (base / "tls").exists():
            make_dev_ca(str(base / "tls"), hostnames=("localhost", "mail.example.test"))
        self.ca_file = str(base / "tls" / "ca.pem")
        # Modes set explicitly, whatever the umask: start-up refuses group/world-writable files.
        _write_private(base / "users", "".join(f"{u}:{self.password_hash(p)}\n" for u, p in PASSWORDS.items()))
        _write_private(base / "aliases", aliases or f"postmaster@{DOMAIN}: alice@{DOMAIN}\n")
        if listeners is None:
            listeners = [k for k, (proto, _) in LISTENERS.items() if proto in PROTOCOLS]
        body = [
            "[server]", 'hostname = "mail.example.test"', f'domains = ["{DOMAIN}"]', f'ports_file = "{self.ports_file}"',
            'user = ""',  # stay whoever runs the tests (root on CI): tests/test_service_user.py drops
            *([f"workers = {self.workers}"] if self.workers else []),
            "[listeners]", *[f'{k} = "{(endpoints or {}).get(k, "tcp:0:interface=127.0.0.1")}"' for k in listeners],
            "[tls]", 'certificate = "tls/server.pem"', 'key = "tls/server-key.pem"',
            "[accounts]", 'users = "users"', 'aliases = "aliases"',
            "[store]", 'root = "mail"',
        ]
        if not checks:  # SPF/DKIM/DMARC need DNS; tests that want them serve it on loopback
            body += ["[checks]", "spf = false", "dkim = false", "dmarc = false"]
        _write_private(self.config_path, "\n".join(body) + "\n" + extra)

    @staticmethod
    def password_hash(password: str) -> str:
        """The users file entry for ``password``: what ``mailstack user add`` writes."""
        return _hash(password)

    def start(self, timeout: float = 30.0, all_workers: bool = False) -> "MailServer":
        """Start and wait for the ports file; with ``all_workers`` also until every process of
        [server] workers serves (the benchmarks: a worker still starting competes for the CPU)."""
        self._start(timeout)
        if all_workers:
            count = self.workers or len(os.sched_getaffinity(0))
            deadline = time.monotonic() + timeout
            while self.log_text().count(" serving ") < count - 1:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the workers did not start in {timeout}s:\n{self.log_text()}")
                time.sleep(0.05)
        return self

    def _start(self, timeout: float) -> "MailServer":
        if self.ports_file.exists():
            self.ports_file.unlink()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=", "mailstack", "--config", str(self.config_path)],
            cwd=self.base, env=env_with_tree(), stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ports_file.exists():
                self.ports = json.loads(self.ports_file.read_text())["listeners"]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log_text()}")

    def stop(self, sig=signal.SIGTERM) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        return self.proc.returncode if self.proc else None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def port(self, key: str) -> int:
        return self.ports[key]["port"]

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def maildir(self, address: str, folder: str = "") -> Path:
        local, domain = address.split("@")
        path = self.store_root / domain / local
        return path / ("." + folder if folder else "")

    def messages(self, address: str, folder: str = "") -> list[bytes]:
        d = self.maildir(address, folder)
        out = []
        for sub in ("new", "cur"):
            if (d / sub).exists():
                for name in sorted(os.listdir(d / sub)):
                    out.append((d / sub / name).read_bytes())
        return out

    def deliver(self, *messages: bytes, user: str = "bob@example.test", folder: str = "INBOX") -> list[int]:
        """Deliver straight into the store, as another process would; return the new UIDs."""
        from mailstack.store import MaildirStore

        store = MaildirStore(str(self.store_root))
        uids = []
        for m in messages:
            store.deliver(user, m, folder=folder)
            uids.append(store.mailbox(user).folder(folder).snapshot().messages[-1].uid)
        return uids

    def wait_for_messages(self, address: str, count: int, timeout: float = 10.0, folder: str = "") -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.messages(address, folder)
            if len(msgs) >= count:
                return msgs
            time.sleep(0.05)
        return self.messages(address, folder)
