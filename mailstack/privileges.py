"""The service user: who mailstack runs as, and how root's admin commands leave files it can use.

The service runs unprivileged, as ``[server] user`` / ``group`` (``mailstack`` by default).
There are two ways to get there:

* systemd starts ``twistd`` as that user, with ``CAP_NET_BIND_SERVICE`` for the low ports
  (``systemd/mailstack.service``).  There is nothing to drop, and nothing here runs.
* root starts ``twistd`` by hand.  The plugin binds every listener as root, calls
  :func:`drop_to` (for good: real, effective and saved ids, and the supplementary groups), and
  only then loads the configuration again and builds the service.  So every file of the
  accounts, store, queue and keys is opened by the service user, and start-up checks what
  that user can really read and write.

Admin commands run by root (``mailstack user add``, ``dkim genkey``, ``store check --repair``,
``queue ...``) do their work under the data directories inside :func:`acting_as`, which
switches the effective ids to the service user.  Every file and directory they make is then
the service's own, with the service's modes.  The files under the configuration directory
(users, aliases) stay root's: a rewrite keeps their owner, group and mode
(:func:`mailstack.fsutil.atomic_write` ``owner=``).

``user = ""`` means "whoever starts it": nothing is switched.  ``mailstack init --dev`` and the
tests use it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from dataclasses import dataclass
from typing import Iterator

from mailstack.errors import ConfigError

ADD_USER_HINT = "adduser --system --group --home /var/lib/mailstack {name}"


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, as initgroups would give them

    def describe(self) -> str:
        return f"user {self.name}"


def lookup(config_path: str, user: str, group: str) -> ServiceUser:
    """The account named in ``[server] user``/``group``; a :class:`ConfigError` if it is missing."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(config_path, "[server] user",
                          f"no such user {user!r}: make it ({ADD_USER_HINT.format(name=user)}), "
                          f"or set user = \"\" to stay whoever starts mailstack") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(config_path, "[server] group", f"no such group {group!r}") from None
    groups = tuple(sorted({gid} | set(os.getgrouplist(entry.pw_name, gid))))
    return ServiceUser(entry.pw_name, entry.pw_uid, gid, groups)


def service_user(cfg) -> ServiceUser | None:
    """The user this root process should become, or None: not root, or ``user`` is empty or root."""
    if os.geteuid() != 0 or not cfg.user:
        return None
    user = lookup(cfg.path, cfg.user, cfg.group)
    return None if user.uid == 0 else user


def drop_to(user: ServiceUser) -> None:
    """Become ``user`` for good.  Groups first: once the uid is not 0, they cannot be changed."""
    os.setgroups(list(user.groups))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("dropping root failed: setuid(0) still works")  # never start as root by accident


@contextlib.contextmanager
def acting_as(user: ServiceUser | None) -> Iterator[None]:
    """Within the block, files are made (and access is checked) as ``user``; root again after.

    Only the effective ids change (the real and saved uid stay 0), which is what lets the
    block end.  ``None``: nothing changes.
    """
    if user is None:
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups(list(user.groups))
    os.setegid(user.gid)
    os.seteuid(user.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def who() -> str:
    """The current effective user's name, for messages ("not writable by user mailstack")."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def can_access(path: str, mode: int) -> bool:
    """``os.access`` for the *effective* ids, so checks made inside :func:`acting_as` (and after
    :func:`drop_to`) answer for the service user, not for root."""
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)
