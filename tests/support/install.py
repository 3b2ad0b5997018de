"""mailstack installed the way an administrator installs it: a system user, and a venv built
from the wheel, both reachable by that user (issue 17).

The test venv (``.venv``) cannot serve: its Python may live under root's home (pyenv), and a
CI clone is in a 0700 directory, so another user can run neither.  :func:`installed_venv`
builds the wheel and installs it into a new venv in a world-readable directory, made with a
system Python the service user can execute; it is made once per test session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support import ROOT
from support.ci import on_ci

SERVICE_USER = "mailstack-test"


def need_root() -> None:
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv"):
        reason = "needs root (to make a service user) and useradd/setpriv"
        if on_ci():
            pytest.fail(reason + " - CI is set, so this test must run", pytrace=False)
        pytest.skip(reason)


def ensure_service_user(name: str = SERVICE_USER) -> pwd.struct_passwd:
    """A system user and group ``name`` (made if missing), as README's install makes ``mailstack``."""
    need_root()
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
        return pwd.getpwnam(name)


def public_dir(prefix: str) -> Path:
    """A new directory every user may enter (mode 0755), outside pytest's 0700 tmp tree."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    return path


def _python_for(user: str) -> str:
    """A Python 3.11+ that ``user`` can run *with its own standard library*: a pyenv Python
    under root's 0700 home still starts for another user, but then falls back to whatever
    library it finds under /usr, and lazily imported modules go missing.  Debian's first."""
    probe = ("import sys, sysconfig, venv, ensurepip; assert sys.version_info >= (3, 11); "
             "print(sysconfig.get_paths()['stdlib'])")
    for candidate in ("/usr/bin/python3", os.path.realpath(sys.base_prefix + "/bin/python3")):
        if not os.path.exists(candidate):
            continue
        mine = subprocess.run([candidate, "-c", probe], capture_output=True, text=True)
        theirs = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", candidate, "-c",
                                 probe], capture_output=True, text=True)
        if mine.returncode == 0 and theirs.returncode == 0 and mine.stdout == theirs.stdout:
            return candidate
    pytest.fail(f"no Python 3.11 with venv that user {user} can run (apt-get install python3-venv)", pytrace=False)


_DISTS: dict[str, Path] = {}


def built_dists() -> tuple[Path, Path]:
    """(wheel, sdist) of this tree, made once per test session with ``python -m build``, the
    way a release is made; in a directory every user can read."""
    if "wheel" not in _DISTS:
        out = public_dir("mailstack-dist-")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        got = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True,
                             text=True, timeout=600, cwd=out, env=env)
        assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
        (_DISTS["wheel"],) = out.glob("mailstack-*.whl")
        (_DISTS["sdist"],) = out.glob("mailstack-*.tar.gz")
    return _DISTS["wheel"], _DISTS["sdist"]


def make_venv(where: Path, wheel: Path, user: str) -> Path:
    """A venv at ``where`` with ``wheel`` (and its dependencies) installed; returns its bin/."""
    python = _python_for(user)
    subprocess.run([python, "-m", "venv", str(where)], check=True, capture_output=True, timeout=300)
    got = subprocess.run([str(where / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                         timeout=900)
    assert got.returncode == 0, got.stderr[-2000:]
    return where / "bin"


_VENV: dict[str, Path] = {}


def installed_venv() -> Path:
    """bin/ of a venv with mailstack installed from its wheel, runnable by the service user."""
    if "bin" not in _VENV:
        ensure_service_user()
        base = public_dir("mailstack-venv-")
        _VENV["bin"] = make_venv(base / "venv", built_dists()[0], SERVICE_USER)
    return _VENV["bin"]


def _remove_venv() -> None:
    if "bin" in _VENV:
        shutil.rmtree(_VENV["bin"].parent.parent, ignore_errors=True)
    if "wheel" in _DISTS:
        shutil.rmtree(_DISTS["wheel"].parent, ignore_errors=True)


import atexit  # noqa: E402

atexit.register(_remove_venv)
