"""Fixtures shared by every test; the helpers themselves live in ``tests/support``.

- ``server_factory(**kw)`` / ``server``: :class:`support.servers.MailServer`, a real ``twistd``
  process (started by ``server``; by the test otherwise), stopped after the test.
- ``inproc_server_factory(**kw)`` / ``inproc_server``: :class:`support.inprocess.InProcessServer`,
  the same API with the service inside the test process (milliseconds, no restart or signals).

Markers set at collection (see ``Makefile``: ``make test-fast`` leaves them out):
``process`` on every test that starts a ``twistd`` process, found by the fixtures it uses
(``server``, ``server_factory``, ``e2e_server``) or the names its code (and the module's
helpers and fixtures it reaches) uses: ``twistd``, ``run_twistd``, ``MailServer`` with ``start``.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # 'support' (pyproject sets it too)

from support import ROOT  # noqa: E402,F401  - puts the worktree first on sys.path
from support.inprocess import InProcessServer, stop_all, stop_reactor  # noqa: E402
from support.servers import MailServer  # noqa: E402

PROCESS_FIXTURES = {"server", "server_factory", "e2e_server"}
PROCESS_NAMES = {"twistd", "run_twistd"}  # and MailServer(...) with a .start()


def _servers(tmp_path, server_class):
    """Yield ``make(**kw)``, which makes servers in tmp_path/server0, server1, ...; stop them after."""
    servers = []

    def make(**kw):
        base = tmp_path / f"server{len(servers)}"
        base.mkdir()
        srv = server_class(base, **kw)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def server_factory(tmp_path):
    """``make(listeners=None, extra="", aliases="", checks=False) -> MailServer`` (not started)."""
    yield from _servers(tmp_path, MailServer)


@pytest.fixture
def server(server_factory) -> MailServer:
    return server_factory().start()


@pytest.fixture
def inproc_server_factory(tmp_path):
    """``make(...) -> InProcessServer`` (not started), the same arguments as ``server_factory``;
    every server made is stopped after the test, passed or failed."""
    yield from _servers(tmp_path, InProcessServer)


@pytest.fixture
def inproc_server(inproc_server_factory) -> InProcessServer:
    return inproc_server_factory().start()


# -- markers -----------------------------------------------------------------------------------


def _names(obj, module, seen: set) -> set[str]:
    """Global and attribute names used by ``obj``'s code and by the module functions it calls."""
    code = getattr(inspect.unwrap(obj), "__code__", None)
    if code is None or code in seen:
        return set()
    seen.add(code)
    names, stack = set(), [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if inspect.iscode(k))
    for name in list(names):
        helper = getattr(module, name, None)
        if inspect.isfunction(helper) and helper.__module__ == module.__name__:
            names |= _names(helper, module, seen)
    return names


def _module_fixtures(module, wanted: set[str]):
    """The fixture functions defined in ``module`` under the names in ``wanted``."""
    for name, value in vars(module).items():
        if name in wanted and callable(value):
            yield inspect.unwrap(value)


def starts_twistd(item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & PROCESS_FIXTURES:
        return True
    module = getattr(item, "module", None)
    function = getattr(item, "function", None)
    if module is None or function is None:
        return False
    seen: set = set()
    names = _names(function, module, seen)
    for fixture in _module_fixtures(module, fixtures):
        names |= _names(fixture, module, seen)
    return bool(names & PROCESS_NAMES) or {"MailServer", "start"} <= names


def pytest_collection_modifyitems(config, items):
    for item in items:
        if starts_twistd(item):
            item.add_marker(pytest.mark.process)


def pytest_sessionfinish(session, exitstatus):
    stop_all()  # servers made without the fixtures and never stopped
    stop_reactor()
