"""Debian's ``pebble`` (Let's Encrypt's test ACME CA) on loopback: :class:`Pebble`.

It listens on free loopback ports with a certificate of a CA made here (``ca_file``: what
mailstack's ``[acme] ca_file`` trusts), resolves names with the test's DNS server, and
validates HTTP-01 on ``http_port`` (where the test puts mailstack's autoconfig listener).
``root_pem()`` is the root the issued chains lead to, from pebble's management API.
``PEBBLE_VA_NOSLEEP`` makes validation immediate, ``PEBBLE_WFE_NONCEREJECT=0`` stops it
refusing good nonces at random (a test would then test luck).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from mailstack.devinit import make_dev_ca
from support.servers import free_port

__all__ = ["Pebble", "pebble_binary"]


def pebble_binary() -> str | None:
    return shutil.which("pebble") or next((p for p in ("/usr/bin/pebble",) if os.path.exists(p)), None)


class Pebble:
    def __init__(self, base: Path, dns_port: int, http_port: int):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        make_dev_ca(str(base / "tls"))
        self.ca_file = str(base / "tls" / "ca.pem")
        self.acme_port, self.management_port = free_port(), free_port()
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(base / "tls" / "server.pem"), "privateKey": str(base / "tls" / "server-key.pem"),
            "httpPort": http_port, "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}
        (base / "pebble.json").write_text(json.dumps(config))
        self.dns_port = dns_port
        self.log_path = base / "pebble.log"
        self.proc: subprocess.Popen | None = None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def start(self, timeout: float = 30.0) -> "Pebble":
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([pebble_binary(), "-config", str(self.base / "pebble.json"),
                                      "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.base)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pebble exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(self.directory, context=self._context(), timeout=5) as r:
                    json.load(r)
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pebble did not answer in {timeout}s:\n{self.log_text()}")

    def root_pem(self) -> str:
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=self._context(), timeout=10) as r:
            return r.read().decode("ascii")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
