"""The reference configuration and the systemd unit that come with the package, and
``mailstack install-files``, which puts them in place on a server.

In a wheel they are package data in ``mailstack/data/`` (setup.py copies them there from
``etc/`` and ``systemd/``, the one copy that is edited); run from a source tree, they are read
from there.
"""

from __future__ import annotations

import os
import sysconfig
from importlib import resources
from pathlib import Path

from mailstack.fsutil import atomic_write

#: name in mailstack/data/ -> where it is in the source tree (setup.py's SHIPPED, reversed)
SHIPPED = {"mailstack.toml": "etc/mailstack.toml", "mailstack.service": "systemd/mailstack.service"}

#: the twistd path the unit in the source names; install-files puts this installation's there
UNIT_TWISTD = "/opt/mailstack/bin/twistd"


def read(name: str) -> str:
    """The text of a shipped file (``mailstack.toml`` or ``mailstack.service``)."""
    packaged = resources.files("mailstack").joinpath("data", name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source = Path(__file__).resolve().parent.parent / SHIPPED[name]
    if source.is_file():
        return source.read_text(encoding="utf-8")
    raise FileNotFoundError(f"{name} is missing from this installation of mailstack (neither "
                            f"mailstack/data/{name} nor {SHIPPED[name]} in a source tree)")


def unit_text(scripts_dir: str | None = None) -> str:
    """The systemd unit, its ExecStart naming the ``twistd`` of this installation."""
    twistd = os.path.join(scripts_dir or sysconfig.get_path("scripts"), "twistd")
    return read("mailstack.service").replace(UNIT_TWISTD, twistd)


def refresh_plugin_cache() -> None:
    """Have Twisted write its plugin cache (``twisted/plugins/dropin.cache``) now.  Run by
    root after an install or upgrade: the service user may not write the installation, and
    twistd would otherwise rescan, and log that it could not write the cache, at every start."""
    from twisted.plugin import IPlugin, getPlugins

    list(getPlugins(IPlugin))


def install_files(systemd_dir: str, config_dir: str) -> list[str]:
    """Write ``mailstack.service`` into ``systemd_dir`` and the reference configuration as
    ``mailstack.toml.example`` into ``config_dir``, replacing older copies (they are ours, not
    the administrator's: local changes to the unit belong in a drop-in,
    ``systemctl edit mailstack``).  Neither holds a secret: mode 644.  Then the plugin cache."""
    written = []
    for directory, name, text in ((systemd_dir, "mailstack.service", unit_text()),
                                  (config_dir, "mailstack.toml.example", read("mailstack.toml"))):
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        atomic_write(path, text.encode("utf-8"), mode=0o644)
        written.append(path)
    refresh_plugin_cache()
    return written
