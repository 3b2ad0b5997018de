"""Fixtures of the end-to-end suite: real client programs against a real ``twistd`` process.

``require("swaks", "curl", modules=["imapclient"])`` (the ``require`` fixture) checks that the
client programs a test drives are installed and able to do what the suite asks of them (swaks
with TLS, curl with the mail protocols).  When one is missing the test is skipped with the
reason, except on CI (the environment variable ``CI`` set, e.g. ``CI=true``), where it fails:
a CI run that quietly skips the end-to-end tests proves nothing.

``e2e_server(**kw)`` is ``server_factory`` from ``tests/conftest.py`` with outbound delivery
pinned to loopback: mail for other domains would go to a closed port on 127.0.0.1 rather than
to the Internet, even if a bug put some in the queue.

Nothing here is autouse.  The helpers the tests import come from ``tests/support``
(``from support.servers import PASSWORDS``); fixtures of this file are found by pytest.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess

import pytest

from support.ci import on_ci


# -- required programs -----------------------------------------------------------------------

APT_PACKAGES = {"swaks": "swaks libnet-ssleay-perl", "curl": "curl", "fetchmail": "fetchmail", "mbsync": "isync"}
CURL_PROTOCOLS = {"smtp", "imap", "imaps", "pop3", "pop3s"}


def _problem(program: str) -> str | None:
    """Why ``program`` cannot be used by the suite, or None."""
    path = shutil.which(program)
    hint = f"(apt-get install {APT_PACKAGES.get(program, program)})"
    if path is None:
        return f"{program} is not installed {hint}"
    try:
        if program == "swaks":
            out = subprocess.run([path, "--support"], capture_output=True, text=True, timeout=30)
            if "=== TLS supported" not in out.stdout + out.stderr:
                return f"swaks cannot do TLS: it needs Net::SSLeay {hint}"
        elif program == "curl":
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            protocols = next((line.split(":", 1)[1].split() for line in out.stdout.splitlines()
                              if line.startswith("Protocols:")), [])
            missing = sorted(CURL_PROTOCOLS - set(protocols))
            if missing or "SSL" not in out.stdout:
                return f"curl lacks {', '.join(missing) or 'TLS'} support {hint}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{program} does not run: {e}"
    return None


_checked: dict[str, str | None] = {}


def require(*programs: str, modules: tuple[str, ...] | list[str] = ()) -> None:
    """Skip the calling test (fail it when on CI) unless every program and module is usable."""
    problems = []
    for program in programs:
        if program not in _checked:
            _checked[program] = _problem(program)
        if _checked[program]:
            problems.append(_checked[program])
    for module in modules:
        if importlib.util.find_spec(module) is None:
            problems.append(f"the Python module {module} is not installed (pip install '.[test]')")
    if problems:
        reason = "; ".join(problems)
        if on_ci():
            pytest.fail(f"{reason} - CI is set, so the end-to-end tests must run", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(name="require")
def require_fixture():
    """The :func:`require` check; call it at the start of the test body."""
    return require


# -- the server ------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def e2e_server(server_factory):
    """``make(listeners=None, extra="", ...) -> MailServer`` (not started): outbound mail only
    ever goes to loopback, and name lookups only to a closed loopback port."""

    def make(extra: str = "", **kw):
        nowhere = closed_port()
        pinned = (f'[dns]\nnameservers = ["127.0.0.1"]\nport = {nowhere}\ntimeout = 2.0\n'
                  f'[relay]\nsmarthost = "127.0.0.1:{nowhere}"\nconnect_timeout = 2.0\n')
        return server_factory(extra=pinned + extra, **kw)

    return make
