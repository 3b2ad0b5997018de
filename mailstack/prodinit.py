"""``mailstack init --hostname H --domain D``: a production configuration for a new server.

It writes ``mailstack.toml``, an empty users file and an aliases file into the configuration
directory (default ``/etc/mailstack``), and makes the data directory (default
``/var/lib/mailstack``: the store in ``mail/``; the queue, DKIM keys and ACME state go beside
it).  No users, no certificate: ``[tls]`` names where the certificate is to be put, so that
``mailstack config check`` says exactly which file is missing until it is there.  Nothing that
exists is overwritten: each file is created exclusively.

Files and directories are made by :func:`write_file` and :func:`make_dir` only, the one place
to hook ownership (the service user) into.
"""

from __future__ import annotations

import datetime
import json
import os
import re

from mailstack.config import DEV_PORTS, LISTENERS, STANDARD_PORTS, is_loopback
from mailstack.fsutil import fsync_dir

DEFAULT_DIR = "/etc/mailstack"
DEFAULT_DATA_DIR = "/var/lib/mailstack"

#: ``--ports``: the well-known ports; the dev ports of ``init --dev``; or port 0 everywhere
#: (each listener gets a free port, written to the ports file: for tests and trials).
PORT_SETS = {"standard": STANDARD_PORTS, "dev": DEV_PORTS, "any": {key: 0 for key in LISTENERS}}

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")


class InitError(ValueError):
    """Unusable arguments (a bad host or domain name, an address that is not one)."""


# -- the only two functions that touch the file system (ownership goes here) ------------------


def write_file(path: str, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` with exactly ``mode`` (and ``owner``, uid and gid); FileExistsError if
    anything is there already, even one made since the check (O_EXCL), so init never overwrites."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)  # the umask narrowed what os.open gave
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(path))


def make_dir(path: str, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Make ``path`` (and its parents) with ``mode`` (and ``owner``) if it does not exist; an
    existing one keeps its mode and owner (``/etc/mailstack`` may come from elsewhere)."""
    if not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):  # /etc, /var/lib: anyone may pass through
            make_dir(parent, 0o755)
        os.makedirs(path, mode=mode, exist_ok=True)
        if owner is not None:
            os.chown(path, *owner)
        os.chmod(path, mode)


def _owners(user: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(configuration files, data directories) owners: root:<service group> and the service
    user, when root runs init and the service user exists (mailstack.privileges); else None:
    whoever runs init owns what it makes."""
    import pwd

    if os.geteuid() != 0 or not user:
        return None, None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None, None
    return (0, entry.pw_gid), (entry.pw_uid, entry.pw_gid)


# -- what is written --------------------------------------------------------------------------


def check_names(hostname: str, domains: list[str]) -> tuple[str, list[str]]:
    """Lower-cased, trailing dots gone, duplicates dropped; InitError for a name that is not a
    fully qualified DNS name (the MX record and the certificate need one)."""
    host = hostname.strip().lower().rstrip(".")
    if not _DOMAIN_RE.match(host):
        raise InitError(f"--hostname {hostname!r}: give the fully qualified name, such as mail.example.org")
    seen: list[str] = []
    for d in domains:
        name = d.strip().lower().rstrip(".")
        if not _DOMAIN_RE.match(name):
            raise InitError(f"--domain {d!r}: not a domain name, such as example.org")
        if name not in seen:
            seen.append(name)
    if not seen:
        raise InitError("give at least one --domain")
    return host, seen


def _endpoint(port: int, listen: str) -> str:
    if not listen:
        return f"tcp:{port}"
    if ":" in listen:  # IPv6: colons in an endpoint description are escaped
        return f"tcp6:{port}:interface={listen.replace(':', chr(92) + ':')}"
    return f"tcp:{port}:interface={listen}"


def _q(value: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(value)


def production_config(hostname: str, domains: list[str], config_dir: str, data_dir: str,
                      ports: dict[str, int], listen: str = "", user: str = "mailstack", acme_contact: str = "") -> str:
    """The text of ``mailstack.toml``.  Its last table is ``[store]``, or ``[acme]`` with
    ``acme_contact``, so more keys or sections can be appended as they are."""
    from mailstack.service import PROTOCOLS

    tls_dir = os.path.join(config_dir, "tls")
    today = datetime.date.today().isoformat()
    lines = [
        f"# mailstack configuration for {hostname}, written by 'mailstack init' on {today}.",
        "# Every option, with its default, is documented in the reference configuration:",
        "# etc/mailstack.toml in the source, mailstack.toml.example after 'mailstack install-files'.",
        f"# Check it with: mailstack --config {os.path.join(config_dir, 'mailstack.toml')} config check",
        "",
        "[server]",
        f"hostname = {_q(hostname)}",
        "domains = [" + ", ".join(_q(d) for d in domains) + "]",
        "# The addresses the listeners bound, for monitoring (and port 0).",
        f"ports_file = {_q(os.path.join(data_dir, 'ports.json'))}",
        "# The service user: started as root, mailstack binds its ports and then becomes it (\"\": stay).",
        f"user = {_q(user)}",
        "# Processes serving the mail protocols: 0 is one per CPU core (README, Administration).",
        "# workers = 0",
        "",
        "[listeners]",
        "# Remove a line to turn that service off (e.g. autoconfig when a web server has port 80).",
    ]
    for key, (protocol, _tls) in LISTENERS.items():
        where = listen if key != "metrics" or is_loopback(listen) else "127.0.0.1"  # metrics: loopback (config.py)
        line = f"{key} = {_q(_endpoint(ports[key], where))}"
        lines.append(line if protocol in PROTOCOLS else f"# {line}   (the {protocol} server is not built yet)")
    if acme_contact:
        tls = ["", "[tls]", "# None: the certificate comes by ACME (the [acme] section below)."]
    else:
        tls = [
            "",
            "[tls]",
            f"# The certificate for {hostname} (full chain: the server certificate first) and its",
            "# private key (mode 600, or 640 with the service's group).  Until both are there the",
            "# server does not start and 'mailstack config check' names the missing file.",
            "# Or have mailstack obtain one by ACME (Let's Encrypt): see [acme] in the reference.",
            f"certificate = {_q(os.path.join(tls_dir, 'fullchain.pem'))}",
            f"key = {_q(os.path.join(tls_dir, 'privkey.pem'))}",
        ]
    lines += tls + [
        "",
        "[accounts]",
        "# Edit with 'mailstack user' and 'mailstack alias'; a running server sees changes at once.",
        f"users = {_q(os.path.join(config_dir, 'users'))}",
        f"aliases = {_q(os.path.join(config_dir, 'aliases'))}",
        "",
        "[store]",
        "# The mail.  The outbound queue and the DKIM keys are kept beside it, in",
        f"# {os.path.join(data_dir, 'queue')} and {os.path.join(data_dir, 'dkim')} ([relay] queue, [dkim] keys).",
        f"root = {_q(os.path.join(data_dir, 'mail'))}",
        "",
    ]
    if acme_contact:
        lines += [
            "[acme]",
            "# The certificate for the host name, mta-sts.<domain> and autoconfig.<domain> from Let's",
            "# Encrypt (HTTP-01 on the autoconfig listener: port 80 must reach it).  Turning this on",
            "# agrees to the CA's terms of service.  State and keys: beside the store, in acme/.",
            "enabled = true",
            f"contact = {_q(acme_contact)}",
            "",
        ]
    return "\n".join(lines)


def _aliases_text(domains: list[str]) -> str:
    lines = ["# alias@domain: target, target   or   @domain: catch-all target",
             "# Every domain needs postmaster@ (RFC 5321 4.5.1); point it at a user once you have one:"]
    lines += [f"#   mailstack alias add postmaster@{d} you@{domains[0]}" for d in domains]
    return "\n".join(lines) + "\n"


def init_production(config_dir: str, data_dir: str, hostname: str, domains: list[str],
                    ports: str = "standard", listen: str = "", user: str = "mailstack", acme_contact: str = "") -> str:
    """Write the configuration; return the path of ``mailstack.toml``.  FileExistsError (naming
    the file) if the configuration, users or aliases file exists; nothing is written then."""
    hostname, domains = check_names(hostname, domains)
    if listen:
        import ipaddress

        try:
            ipaddress.ip_address(listen)
        except ValueError:
            raise InitError(f"--listen {listen!r}: give an IP address, such as 127.0.0.1 or ::1") from None
    config_dir, data_dir = os.path.abspath(config_dir), os.path.abspath(data_dir)
    config_path = os.path.join(config_dir, "mailstack.toml")
    files = {  # written in this order: the configuration last, its presence means done
        os.path.join(config_dir, "users"): ("# user@domain:{SCHEME}hash  (Dovecot passwd-file form); edit with 'mailstack user'\n", 0o640),
        os.path.join(config_dir, "aliases"): (_aliases_text(domains), 0o640),
        config_path: (production_config(hostname, domains, config_dir, data_dir, PORT_SETS[ports], listen, user,
                                        acme_contact), 0o640),
    }
    for path in sorted(files, key=lambda p: p != config_path):  # the configuration named first
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists; mailstack init never overwrites a configuration "
                                  f"(move it away, or edit it)")
    config_owner, data_owner = _owners(user)
    make_dir(config_dir, 0o750, config_owner)
    make_dir(os.path.join(config_dir, "tls"), 0o750, config_owner)
    make_dir(data_dir, 0o700, data_owner)
    make_dir(os.path.join(data_dir, "mail"), 0o700, data_owner)
    for path, (text, mode) in files.items():
        write_file(path, text.encode(), mode, config_owner)
    return config_path


def _data_dir_of(config_path: str) -> str:
    """The data directory init wrote into the configuration (the store root's parent)."""
    import tomllib

    try:
        with open(config_path, "rb") as f:
            return os.path.dirname(tomllib.load(f)["store"]["root"].rstrip("/"))
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return DEFAULT_DATA_DIR


def next_steps(config_path: str, hostname: str, domains: list[str], user: str = "mailstack", acme: bool = False) -> str:
    """What the administrator does next, printed by ``mailstack init``."""
    import pwd

    hostname, domains = check_names(hostname, domains)
    config_dir = os.path.dirname(config_path)
    ms = "mailstack" if config_path == os.path.join(DEFAULT_DIR, "mailstack.toml") else f"mailstack --config {config_path}"
    first = f"you@{domains[0]}"
    try:
        missing_user = bool(user) and not pwd.getpwnam(user)
    except KeyError:
        missing_user = True
    return "\n".join([
        f"made {config_path} (with users and aliases beside it).  Next:",
        *([f"  0. the service user: adduser --system --group --home /var/lib/mailstack {user}",
           f"                  chgrp -R {user} {config_dir} && chown -R {user}: {_data_dir_of(config_path)}"]
          if missing_user else []),
        f"  1. users:       {ms} user add {first}      (asks for the password)",
        f"                  {ms} alias add postmaster@{domains[0]} {first}",
        f"  2. DKIM key:    {ms} dkim genkey {domains[0]}" + ("      (and each other domain)" if len(domains) > 1 else ""),
        f"  3. DNS records: {ms} dns      (publish them, then check: ... dns --check)",
        *([f"  4. certificate: by ACME once it runs: {hostname}, mta-sts.<domain> and autoconfig.<domain>",
           "                  must resolve here and port 80 be open; then: {ms} acme status".replace("{ms}", ms)] if acme else
          [f"  4. certificate for {hostname}: the full chain in {config_dir}/tls/fullchain.pem, the key",
           f"                  in {config_dir}/tls/privkey.pem (e.g. from certbot); or add an [acme] section",
           "                  for mailstack to get one by ACME (Let's Encrypt; see the reference configuration)"]),
        f"  5. check:       {ms} config check",
        "  6. run it:      mailstack install-files && systemctl daemon-reload && systemctl enable --now mailstack",
    ])
