"""Can the service use the files and directories the configuration names?

Start-up (and ``mailstack config check``) asks this of every path: it exists, it is the right
kind, the running user may read (or write) it, and nobody else may change it or read a
private key.  Access is checked for the *effective* ids, so after root has dropped to the
service user, or inside :func:`mailstack.privileges.acting_as`, the answer is the service
user's, and a problem names the path, its owner and mode, and the command that fixes it.
"""

from __future__ import annotations

import os
import stat

from mailstack import privileges
from mailstack.errors import ConfigError


def as_whom() -> str:
    """" by user mailstack" when not root: whom a permission problem is about."""
    return "" if os.geteuid() == 0 else f" by user {privileges.who()}"


def readable(path: str, key: str, filename: str) -> None:
    try:
        st = os.stat(filename)
    except FileNotFoundError:
        raise ConfigError(path, key, f"file not found: {filename}") from None
    except PermissionError:
        raise ConfigError(path, key, f"cannot reach {filename}{as_whom()}: a directory on the way "
                          "is not searchable") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(path, key, f"not a regular file: {filename}")
    if not privileges.can_access(filename, os.R_OK):
        raise ConfigError(path, key, f"file not readable{as_whom()}: {filename} ({owner_and_mode(st)})")


def owner_and_mode(st: os.stat_result) -> str:
    import grp
    import pwd

    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"owner {owner}:{group}, mode {st.st_mode & 0o777:03o}"


def not_writable_by_others(path: str, key: str | None, filename: str) -> None:
    """Refuse a file that anyone but its owner may change: whoever can write the configuration
    or the users file can make themselves an account or point the server at their own files."""
    mode = os.stat(filename).st_mode
    if mode & 0o022:
        who = "group- and world-writable" if mode & 0o022 == 0o022 else ("world-writable" if mode & 0o002 else "group-writable")
        what = "the configuration file" if filename == path else filename
        raise ConfigError(path, key, f"{what} is {who} (mode {mode & 0o777:03o}): "
                          f"whoever can write it controls the server; chmod go-w {filename}")


def private_key_file(path: str, key: str, filename: str) -> None:
    """Refuse a private key that everyone may read, or that others may change: a leaked TLS key
    lets its reader impersonate the server, a leaked DKIM key lets them sign mail as our
    domains.  Group read stays allowed: it is how the ``mailstack`` service user reads a key
    owned by root (README, "Install on a server")."""
    mode = os.stat(filename).st_mode
    if mode & 0o026:
        what = "world-readable" if mode & 0o004 else "writable by group or others"
        raise ConfigError(path, key, f"private key {filename} is {what} (mode {mode & 0o777:03o}); "
                          f"chmod 600 {filename} (or 640 with the service's group)")


def writable_dir(path: str, key: str, directory: str) -> None:
    """``directory`` (or, while it does not exist, the nearest parent that does) must be a
    directory the running user may list, search and write: the service makes everything
    below it."""
    existing = directory
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    try:
        st = os.stat(existing)
    except PermissionError:
        raise ConfigError(path, key, f"cannot reach {existing}{as_whom()}: a directory on the way "
                          "is not searchable") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(path, key, f"not a directory: {existing}")
    if not privileges.can_access(existing, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(path, key, f"not writable{as_whom()}: {existing} ({owner_and_mode(st)})"
                          + (f"; chown {privileges.who()}: {existing}" if os.geteuid() != 0 else ""))


#: What is checked of each user's Maildir at start-up: its top level, the INBOX directories and
#: the store's own files beside them, and each folder's directory (not every message).
_MAILDIR_ENTRIES = ("cur", "new", "tmp")


def maildir_problems(root: str) -> list[str]:
    """*Blocking* (one access call per directory).  The users' Maildirs the running user may
    not write, one line each: a Maildir that root made by hand (or with an old ``mailstack
    user add``) fails every delivery to that user (issue 17).  Each user directory, its
    entries and each folder's cur/new/tmp are looked at; the messages are not."""
    problems: list[str] = []
    if not os.path.isdir(root):
        return problems
    fix = f"; chown -R {privileges.who()}: " if os.geteuid() != 0 else "; "

    def check(target: str, udir: str) -> bool:
        if not os.path.lexists(target) or os.path.islink(target):
            return True
        mode = os.R_OK | os.W_OK | (os.X_OK if os.path.isdir(target) else 0)
        if privileges.can_access(target, mode):
            return True
        problems.append(f"not writable{as_whom()}: {target} ({owner_and_mode(os.lstat(target))}){fix}{udir}")
        return False

    for domain in sorted(os.listdir(root)):
        ddir = os.path.join(root, domain)
        if domain.startswith(".") or not os.path.isdir(ddir) or not check(ddir, ddir):
            continue
        for local in sorted(os.listdir(ddir)):
            udir = os.path.join(ddir, local)
            if not os.path.isdir(udir) or not check(udir, udir):
                continue  # one line for a user: the rest of the directory would only repeat it
            for name in sorted(os.listdir(udir)):
                entry = os.path.join(udir, name)
                if check(entry, udir) and name.startswith(".") and os.path.isdir(entry):
                    for sub in _MAILDIR_ENTRIES:
                        check(os.path.join(entry, sub), udir)
    return problems


def check_maildirs(path: str, root: str) -> None:
    """:func:`maildir_problems` as a :class:`ConfigError` (``mailstack config check``)."""
    problems = maildir_problems(root)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(path, "[store] root", problems[0] + more)


def certificate_names_host(path: str, key: str, cert_file: str, hostname: str) -> None:
    """The leaf certificate must name ``hostname`` ([server] hostname): it is the name in the
    MX record and in clients' settings, and every client that checks names (Thunderbird,
    MTA-STS senders, RFC 7817 / RFC 8461) would refuse the certificate."""
    import ipaddress

    from cryptography import x509
    from service_identity import VerificationError
    from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

    with open(cert_file, "rb") as f:
        leaf = x509.load_pem_x509_certificate(f.read())
    try:
        try:
            verify_certificate_ip_address(leaf, str(ipaddress.ip_address(hostname)))
        except ValueError:
            verify_certificate_hostname(leaf, hostname)
    except VerificationError:
        try:
            names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            shown = ", ".join(str(getattr(n, "value", n)) for n in names) or "no names"
        except x509.ExtensionNotFound:
            shown = "no subjectAltName"
        raise ConfigError(path, key, f"{cert_file} is for {shown}, not for the [server] hostname {hostname}: "
                          "clients that check the name refuse it") from None
