"""The configuration: one TOML file, read with tomllib, checked against a schema.

Every option, its type and its default is in :data:`~mailstack.configschema.SCHEMA`; ``etc/mailstack.toml`` documents
the same options for administrators (a test keeps the two in step).  Any problem stops
start-up with a :class:`~mailstack.errors.ConfigError` naming the file, the key and what is
wrong.  Relative paths are taken relative to the directory of the configuration file.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any

from mailstack import fileaccess
from mailstack.errors import ConfigError
from mailstack.srs import check_config as check_srs_config

from mailstack.configschema import DEV_PORTS, LISTENERS, REQUIRED as _REQUIRED, SCHEMA, STANDARD_PORTS  # noqa: F401

@dataclass
class Listener:
    key: str  # "imaps"
    protocol: str  # "imap"
    tls: str  # "implicit" | "starttls" | "optional" | "none"
    endpoint: str  # Twisted endpoint description


@dataclass
class Config:
    path: str
    hostname: str
    domains: list[str]
    ports_file: str
    listeners: list[Listener]
    user: str  # [server] user: who the service runs as (mailstack.privileges)
    group: str
    workers: int  # [server] workers, resolved: how many reactor processes serve (mailstack.workers)
    tls_certificate: str
    tls_key: str
    users_file: str
    aliases_file: str
    send_as_file: str
    recipient_delimiter: str
    plaintext_on_loopback: bool
    store_root: str
    store_fsync: bool
    poll_interval: float
    max_connections: int
    max_connections_per_address: int
    max_message_size: int
    max_recipients: int
    max_commands: int  # 0: no limit
    command_rate: int
    command_burst: int
    trusted_networks: list[str]
    smtp_timeout: int
    imap_autologout: int = 1800
    pop3_uidl_format: str = "%08Xu%08Xv"  # checked by mailstack.pop3.uidl.check
    auth: dict = field(default_factory=dict)  # [auth] throttling: see mailstack.throttle.LoginGate
    dns: dict = field(default_factory=dict)  # [dns] resolver for MX, SPF, DKIM, DMARC lookups
    dkim: dict = field(default_factory=dict)  # [dkim] signing of submitted mail
    checks: dict = field(default_factory=dict)  # [checks] SPF/DKIM/DMARC on the MX port
    relay: dict = field(default_factory=dict)  # [relay], checked; see mailstack.outbound.relay.RelaySettings
    queue_dir: str = ""
    smarthost_password: str = field(default="", repr=False)
    #: Every key as read, typed, defaults filled in: what SIGHUP compares (mailstack.reconfigure).
    values: dict = field(default_factory=dict, repr=False)
    acme: dict = field(default_factory=lambda: {"enabled": False})  # [acme], checked: mailstack.acmecert
    mta_sts: dict = field(default_factory=dict)  # [mta_sts], checked: mailstack.mtasts
    log: dict = field(default_factory=lambda: {"format": "text", "file": ""})  # [log]: see mailstack.logoutput
    antispam: dict = field(default_factory=dict)  # [antispam], checked: mailstack.antispam.screen
    rspamd: dict = field(default_factory=lambda: {"url": ""}, repr=False)  # [rspamd], checked: _check_rspamd
    sieve: dict = field(default_factory=dict)  # [sieve], checked: mailstack.sieve.delivery.check_config
    srs: dict = field(default_factory=lambda: {"enabled": False})  # [srs], checked: mailstack.srs.check_config
    #: [sieve] max_script_size, max_scripts: the script storage (mailstack.sieve.scripts), checked: _check_sieve_storage
    sieve_limits: dict = field(default_factory=lambda: {"max_script_size": 64 * 1024, "max_scripts": 16})
    #: [quota], checked by _check_quota: storage in bytes, messages, smtp_reply, warning_percent
    quota: dict = field(default_factory=lambda: {"storage": 0, "messages": 0, "smtp_reply": "temporary",
                                                 "warning_percent": 90})

    @property
    def has_tls(self) -> bool:
        """A certificate to offer: [tls] files, or (with [acme] on) the ACME one or its placeholder."""
        return bool(self.tls_certificate) or bool(self.acme.get("enabled"))

    def listener(self, key: str) -> Listener | None:
        return next((l for l in self.listeners if l.key == key), None)


def _type_name(t: Any) -> str:
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number", "path": "a path (string)",
            "list[str]": "a list of strings", "list[int]": "a list of integers", "endpoint": "an endpoint string"}[t]


def _check_type(path: str, key: str, value: Any, t: Any) -> Any:
    ok = {
        str: isinstance(value, str),
        "path": isinstance(value, str),
        "endpoint": isinstance(value, str),
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "list[int]": isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
    }[t]
    if not ok:
        raise ConfigError(path, key, f"must be {_type_name(t)}, not {type(value).__name__} {value!r}")
    return float(value) if t is float else value


def check_endpoint(path: str, key: str, description: str) -> None:
    """Parse an endpoint description without binding anything."""
    from twisted.internet import endpoints, reactor

    kind = description.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "unix", "systemd"):
        raise ConfigError(path, key, f"endpoint {description!r}: use tcp:, tcp6:, unix: or systemd: "
                          "(TLS is chosen by the listener key, not the endpoint)")
    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise ConfigError(path, key, f"bad endpoint {description!r}: {e}") from None


def load(path: str) -> Config:
    """Read and check the configuration file at ``path``."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, None, "configuration file not found") from None
    except PermissionError:
        raise ConfigError(path, None, "configuration file not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, not a configuration file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, None, f"not valid TOML: {e}") from None
    fileaccess.not_writable_by_others(path, None, path)
    return from_dict(raw, path)


def _typed_values(raw: dict, path: str) -> dict[str, dict[str, Any]]:
    """Every key of SCHEMA, from the file (type-checked; paths made absolute) or its default;
    unknown sections and keys refused."""
    base = os.path.dirname(os.path.realpath(path))  # a symlinked config keeps its own relative paths
    values: dict[str, dict[str, Any]] = {}
    for section, content in raw.items():
        if section not in SCHEMA:
            raise ConfigError(path, f"[{section}]", f"unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(content, dict):
            raise ConfigError(path, f"[{section}]", "must be a table")
        for key in content:
            if key not in SCHEMA[section]:
                raise ConfigError(path, f"[{section}] {key}", f"unknown key (known in [{section}]: {', '.join(SCHEMA[section])})")
    for section, keys in SCHEMA.items():
        values[section] = {}
        for key, (t, default) in keys.items():
            name = f"[{section}] {key}"
            if key in raw.get(section, {}):
                value = _check_type(path, name, raw[section][key], t)
            elif default is _REQUIRED:
                raise ConfigError(path, name, "required key is missing")
            else:
                value = default
            if t == "path" and value:
                value = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
            values[section][key] = value
    return values


def _listeners(values: dict, path: str) -> list[Listener]:
    listeners = []
    for key, (protocol, tls) in LISTENERS.items():
        description = values["listeners"][key]
        if description:
            check_endpoint(path, f"[listeners] {key}", description)
            listeners.append(Listener(key, protocol, tls, description))
    return listeners


def _check_metrics(values: dict, path: str) -> None:
    """The metrics listener tells whoever can reach it who logs in and when, and how busy the
    server is: a non-loopback endpoint is refused unless ``[metrics] allow_remote`` says so."""
    description = values["listeners"]["metrics"]
    if description and not values["metrics"]["allow_remote"] and not loopback_endpoint(description):
        raise ConfigError(path, "[listeners] metrics",
                          f"{description!r} is not a loopback address: bind it to 127.0.0.1 or ::1 "
                          "(tcp:PORT:interface=127.0.0.1), a unix: socket, or set [metrics] allow_remote = true")


def loopback_endpoint(description: str) -> bool:
    """Does the endpoint listen only on loopback (or a unix socket)?  tcp: without
    ``interface=`` listens on every address; systemd: cannot be told from here."""
    parts = [p.replace("\0", ":") for p in description.replace("\\:", "\0").split(":")]
    kind = parts[0]
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6"):
        return False
    # Every interface= given, not only the first: Twisted takes the last of repeated keys.
    interfaces = [p.split("=", 1)[1] for p in parts[1:] if p.startswith("interface=")]
    return bool(interfaces) and all(is_loopback(i) for i in interfaces)


def _check_tls(values: dict, listeners: list[Listener], path: str, hostname: str) -> tuple[str, str]:
    """[tls]: both files or neither, readable and matching; needed by any TLS listener unless
    [acme] provides the certificate."""
    cert, key = values["tls"]["certificate"], values["tls"]["key"]
    if bool(cert) != bool(key):
        missing = "[tls] key" if cert else "[tls] certificate"
        raise ConfigError(path, missing, "certificate and key go together: set both or neither")
    for listener in listeners:
        if listener.tls in ("implicit", "starttls") and not cert and not values["acme"]["enabled"]:
            raise ConfigError(path, f"[listeners] {listener.key}", "needs TLS: set [tls] certificate and key")
    if cert:
        fileaccess.readable(path, "[tls] certificate", cert)
        fileaccess.readable(path, "[tls] key", key)
        fileaccess.private_key_file(path, "[tls] key", key)
        from mailstack.tls import load_context_factory

        load_context_factory(cert, key, path)
        fileaccess.certificate_names_host(path, "[tls] certificate", cert, hostname)
    return cert, key


def _check_accounts(values: dict, path: str) -> str:
    fileaccess.readable(path, "[accounts] users", values["accounts"]["users"])
    fileaccess.not_writable_by_others(path, "[accounts] users", values["accounts"]["users"])
    for key in ("aliases", "send_as"):
        if values["accounts"][key]:
            fileaccess.readable(path, f"[accounts] {key}", values["accounts"][key])
            fileaccess.not_writable_by_others(path, f"[accounts] {key}", values["accounts"][key])
    delimiter = values["accounts"]["recipient_delimiter"]
    if len(delimiter) > 1 or delimiter in ("@", ".", " ", "/"):
        raise ConfigError(path, "[accounts] recipient_delimiter", "must be one character such as + or -, or empty to turn it off")
    return delimiter


def _check_store(values: dict, path: str) -> str:
    root = values["store"]["root"]
    if os.path.exists(root) and not os.path.isdir(root):
        raise ConfigError(path, "[store] root", f"not a directory: {root}")
    fileaccess.writable_dir(path, "[store] root", root)  # the users' Maildirs: at start-up and by config check
    if values["store"]["poll_interval"] <= 0:
        raise ConfigError(path, "[store] poll_interval", "must be above 0")
    return root


def _check_sessions(values: dict, path: str) -> None:
    """[smtp], [imap], [pop3] and [auth]."""
    from mailstack.pop3.uidl import UidlFormatError, check

    try:
        check(values["pop3"]["uidl_format"])
    except UidlFormatError as e:
        raise ConfigError(path, "[pop3] uidl_format", f"{values['pop3']['uidl_format']!r}: {e}") from None
    for net in values["smtp"]["trusted_networks"]:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(path, "[smtp] trusted_networks", f"not a network: {net!r} (use CIDR such as 192.0.2.0/24)") from None
    if values["smtp"]["timeout"] < 1:
        raise ConfigError(path, "[smtp] timeout", "must be at least 1 (seconds)")
    if values["imap"]["autologout"] < 1800:
        raise ConfigError(path, "[imap] autologout", "must be at least 1800 (seconds; RFC 3501 section 5.4)")
    auth = values["auth"]
    if auth["max_failures"] < 1:
        raise ConfigError(path, "[auth] max_failures", "must be at least 1")
    for k in ("lockout", "failure_delay", "max_failure_delay", "failure_window", "cache_ttl"):
        if auth[k] < 0:
            raise ConfigError(path, f"[auth] {k}", "must not be negative")
    if not 1 <= auth["argon2_time_cost"] <= 100:
        raise ConfigError(path, "[auth] argon2_time_cost", "must be 1 to 100 (passes; RFC 9106 recommends 3)")
    if not 1 <= auth["argon2_parallelism"] <= 64:
        raise ConfigError(path, "[auth] argon2_parallelism", "must be 1 to 64 (lanes; RFC 9106 recommends 4)")
    if not 8 * auth["argon2_parallelism"] <= auth["argon2_memory_kib"] <= 4 * 1024 * 1024:
        raise ConfigError(path, "[auth] argon2_memory_kib",
                          "must be at least 8 KiB a lane and at most 4 GiB (RFC 9106 recommends 65536, 64 MiB)")


def _check_relay(values: dict, root: str, path: str) -> str:
    """[relay]; returns the queue directory (taken out of the section)."""
    relay = values["relay"]
    queue_dir = relay.pop("queue") or os.path.join(os.path.dirname(root), "queue")
    fileaccess.writable_dir(path, "[relay] queue", queue_dir)
    if relay["tls"] not in ("opportunistic", "required", "none"):
        raise ConfigError(path, "[relay] tls", "must be opportunistic, required or none")
    if relay["smarthost_tls"] not in ("starttls", "implicit"):
        raise ConfigError(path, "[relay] smarthost_tls", "must be starttls or implicit")
    if relay["smarthost"]:
        host, sep, port = relay["smarthost"].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(path, "[relay] smarthost", f"must be host:port, not {relay['smarthost']!r}")
    if not relay["retry_schedule"] or any(v < 1 for v in relay["retry_schedule"]):
        raise ConfigError(path, "[relay] retry_schedule", "must list at least one delay, each at least 1 second")
    for k in ("port", "max_age", "max_connections", "max_connections_per_domain"):
        if relay[k] < 1:
            raise ConfigError(path, f"[relay] {k}", "must be at least 1")
    for k in ("connect_timeout", "reply_timeout", "scan_interval"):
        if relay[k] <= 0:
            raise ConfigError(path, f"[relay] {k}", "must be above 0")
    return queue_dir


def _check_dns_dkim(values: dict, root: str, path: str) -> None:
    """[dns] and [dkim] (whose key directory defaults to beside the store)."""
    dns = values["dns"]
    for ns in dns["nameservers"]:
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            raise ConfigError(path, "[dns] nameservers", f"not an IP address: {ns!r}") from None
    if not 0 < dns["port"] < 65536:
        raise ConfigError(path, "[dns] port", "must be a port number")
    if dns["timeout"] <= 0:
        raise ConfigError(path, "[dns] timeout", "must be above 0")
    if not 0 <= dns["cache_size"] <= 10_000_000:
        raise ConfigError(path, "[dns] cache_size", "must be 0 (no cache) to 10000000 answers")
    dkim = values["dkim"]
    dkim["keys"] = dkim["keys"] or os.path.join(os.path.dirname(root), "dkim")
    if not dkim["selector"] or not all(c.isalnum() or c in "-_" for c in dkim["selector"]):
        raise ConfigError(path, "[dkim] selector", "must be letters, digits, - or _")
    from mailstack.smtp.authentication import key_paths

    for domain in values["server"]["domains"]:
        for key_file in key_paths(dkim["keys"], domain.strip().lower().rstrip("."), dkim["selector"]).values():
            # A key that is there but cannot be read is an error, not "this domain is unsigned":
            # the admin published the DKIM record and a DMARC policy for it (issue 17).
            try:
                os.stat(key_file)
            except FileNotFoundError:
                continue
            except PermissionError:
                raise ConfigError(path, "[dkim] keys", f"cannot reach {key_file}{fileaccess.as_whom()}: "
                                  f"{os.path.dirname(key_file)} is not searchable") from None
            fileaccess.readable(path, "[dkim] keys", key_file)
            fileaccess.private_key_file(path, "[dkim] keys", key_file)


def _smarthost_password(relay: dict, path: str) -> str:
    """The first line of [relay] smarthost_password_file (the key is taken out of the section)."""
    smarthost_password = ""
    password_file = relay.pop("smarthost_password_file")
    if password_file:
        fileaccess.readable(path, "[relay] smarthost_password_file", password_file)
        with open(password_file, encoding="utf-8") as f:
            smarthost_password = f.readline().rstrip("\r\n")
    if relay["smarthost_ca_file"]:
        fileaccess.readable(path, "[relay] smarthost_ca_file", relay["smarthost_ca_file"])
    return smarthost_password


def _check_log(values: dict, path: str) -> dict:
    """[log]: a known format; a file in a directory the service may write (made when missing;
    the file is opened at start-up and again on SIGUSR1)."""
    section = values["log"]
    if section["format"] not in ("text", "json"):
        raise ConfigError(path, "[log] format", f'must be "text" or "json", not {section["format"]!r}')
    if section["file"]:
        if os.path.isdir(section["file"]):
            raise ConfigError(path, "[log] file", f"{section['file']} is a directory")
        fileaccess.writable_dir(path, "[log] file", os.path.dirname(section["file"]))
    return section


def _check_greylisting_limits(values: dict, path: str) -> None:
    """[greylisting] and [outbound_limits] (mailstack.antispam.greylist, .outlimits)."""
    from mailstack.antispam.outlimits import KEYS, parse_override

    g = values["greylisting"]
    for k, low in (("delay", 1), ("memory", 3600), ("auto_allow", 0), ("max_pending", 1)):
        if g[k] < low:
            raise ConfigError(path, f"[greylisting] {k}", f"must be at least {low}")
    if g["memory"] <= g["delay"]:
        raise ConfigError(path, "[greylisting] memory", "must be longer than delay")
    if any(not d.strip() or " " in d.strip() for d in g["spf_allow_domains"]):
        raise ConfigError(path, "[greylisting] spf_allow_domains", "must list domains, without blanks")
    if g["enabled"]:
        database = g["database"] or os.path.join(os.path.dirname(values["store"]["root"]), "greylist.sqlite")
        if os.path.isdir(database):
            raise ConfigError(path, "[greylisting] database", f"{database} is a directory, not a file")
        fileaccess.writable_dir(path, "[greylisting] database", os.path.dirname(database))
    o = values["outbound_limits"]
    for k in KEYS:
        if o[k] < 0:
            raise ConfigError(path, f"[outbound_limits] {k}", "must be 0 (no limit) or more")
    for entry in o["users"]:
        try:
            parse_override(entry)
        except ValueError as e:
            raise ConfigError(path, "[outbound_limits] users", str(e)) from None
def _check_rspamd(values: dict, path: str) -> dict:
    """[rspamd]: http(s) URLs, a known on_failure and checks, positive limits; the password from its file."""
    section = values["rspamd"]
    for key in ("url", "controller_url"):
        url = section[key]
        if url and not (url.startswith(("http://", "https://")) and len(url.split("/")) >= 3 and url.split("/")[2]):
            raise ConfigError(path, f"[rspamd] {key}", f"must be an http:// or https:// URL such as http://127.0.0.1:11333, not {url!r}")
    if section["on_failure"] not in ("tempfail", "accept"):
        raise ConfigError(path, "[rspamd] on_failure", f'must be "tempfail" or "accept", not {section["on_failure"]!r}')
    if section["checks"] not in ("rspamd", "mailstack"):
        raise ConfigError(path, "[rspamd] checks", f'must be "rspamd" or "mailstack", not {section["checks"]!r}')
    for key in ("timeout", "learn_retry_delay", "max_size", "pool_size"):
        if section[key] <= 0:
            raise ConfigError(path, f"[rspamd] {key}", "must be above 0")
    if section["learn_retries"] < 0:
        raise ConfigError(path, "[rspamd] learn_retries", "must be 0 or more")
    password_file = section.pop("password_file")
    if password_file:
        if section["password"]:
            raise ConfigError(path, "[rspamd] password_file", "set password or password_file, not both")
        fileaccess.readable(path, "[rspamd] password_file", password_file)
        with open(password_file, encoding="utf-8") as f:
            section["password"] = f.readline().rstrip("\r\n")
    return section


def _check_sieve_storage(values: dict, path: str) -> dict:
    """[sieve] max_script_size and max_scripts (ManageSieve's QUOTA/MAXSIZE and QUOTA/MAXSCRIPTS,
    RFC 5804 1.3)."""
    section = values["sieve"]
    if not 1 <= section["max_script_size"] <= 16 * 1024 * 1024:
        raise ConfigError(path, "[sieve] max_script_size", "must be 1 to 16777216 (octets; default 65536)")
    if not 1 <= section["max_scripts"] <= 10000:
        raise ConfigError(path, "[sieve] max_scripts", "must be 1 to 10000 (default 16)")
    return {"max_script_size": section["max_script_size"], "max_scripts": section["max_scripts"]}


def _check_quota(values: dict, path: str) -> dict:
    """[quota] (mailstack.store.quota): a size, counts of 0 or more, a known reply, a percentage."""
    from mailstack.quotarules import parse_size

    section = dict(values["quota"])
    try:
        section["storage"] = parse_size(section["storage"])
    except ValueError as e:
        raise ConfigError(path, "[quota] storage", str(e)) from None
    if section["messages"] < 0:
        raise ConfigError(path, "[quota] messages", "must be 0 (no limit) or more")
    if section["smtp_reply"] not in ("temporary", "permanent"):
        raise ConfigError(path, "[quota] smtp_reply", f'must be "temporary" or "permanent", not {section["smtp_reply"]!r}')
    if not 0 <= section["warning_percent"] <= 100:
        raise ConfigError(path, "[quota] warning_percent", "must be from 0 (no warning) to 100")
    return section


def _check_sieve(values: dict, path: str) -> dict:
    """[sieve] (mailstack.sieve.delivery): limits, and the global scripts compile."""
    from mailstack.sieve.delivery import check_config

    return check_config(values, path)


def from_dict(raw: dict, path: str) -> Config:
    values = _typed_values(raw, path)
    as_read = copy.deepcopy(values)
    server = values["server"]
    hostname = server["hostname"] or socket.getfqdn()
    domains = [d.strip().lower().rstrip(".") for d in server["domains"]]
    if not domains or any(not d or " " in d for d in domains):
        raise ConfigError(path, "[server] domains", "must list at least one domain, without blanks")

    listeners = _listeners(values, path)
    _check_metrics(values, path)
    if server["ports_file"]:
        fileaccess.writable_dir(path, "[server] ports_file", os.path.dirname(server["ports_file"]))
    cert, key = _check_tls(values, listeners, path, hostname)
    delimiter = _check_accounts(values, path)
    root = _check_store(values, path)
    _check_sessions(values, path)
    auth, relay, dns, dkim = values["auth"], values["relay"], values["dns"], values["dkim"]
    queue_dir = _check_relay(values, root, path)
    _check_dns_dkim(values, root, path)
    smarthost_password = _smarthost_password(relay, path)
    from mailstack.acmecert import check_acme_config
    from mailstack.mtasts import check_mta_sts_config

    acme = check_acme_config(values, hostname, domains, listeners, root, path)
    mta_sts = check_mta_sts_config(values, hostname, path)
    from mailstack.antispam.screen import check_config as check_antispam_config

    antispam = check_antispam_config(values, path)
    _check_greylisting_limits(values, path)
    for k in ("connections", "connections_per_address", "message_size", "recipients", "commands_per_second",
              "command_burst"):
        if values["limits"][k] < 1:
            raise ConfigError(path, f"[limits] {k}", "must be at least 1")
    if values["limits"]["commands_per_session"] < 0:
        raise ConfigError(path, "[limits] commands_per_session", "must be 0 (no limit) or more")

    return Config(
        path=os.path.abspath(path),
        hostname=hostname,
        domains=domains,
        ports_file=server["ports_file"],
        listeners=listeners,
        user=server["user"], group=server["group"], workers=_check_workers(server, path),
        tls_certificate=cert,
        tls_key=key,
        users_file=values["accounts"]["users"],
        aliases_file=values["accounts"]["aliases"],
        send_as_file=values["accounts"]["send_as"],
        recipient_delimiter=delimiter,
        plaintext_on_loopback=values["auth"]["plaintext_on_loopback"],
        store_root=root,
        store_fsync=values["store"]["fsync"],
        poll_interval=values["store"]["poll_interval"],
        max_connections=values["limits"]["connections"],
        max_connections_per_address=values["limits"]["connections_per_address"],
        max_message_size=values["limits"]["message_size"],
        max_recipients=values["limits"]["recipients"],
        max_commands=values["limits"]["commands_per_session"],
        command_rate=values["limits"]["commands_per_second"],
        command_burst=values["limits"]["command_burst"],
        trusted_networks=values["smtp"]["trusted_networks"],
        smtp_timeout=values["smtp"]["timeout"],
        imap_autologout=values["imap"]["autologout"],
        pop3_uidl_format=values["pop3"]["uidl_format"],
        auth=auth,
        dns=dns,
        dkim=dkim,
        checks=values["checks"],
        relay=relay,
        queue_dir=queue_dir,
        smarthost_password=smarthost_password,
        values=as_read,
        acme=acme,
        mta_sts=mta_sts,
        log=_check_log(values, path), antispam=antispam, sieve_limits=_check_sieve_storage(values, path),
        rspamd=_check_rspamd(values, path), srs=check_srs_config(values, domains, root, path),
        quota=_check_quota(values, path), sieve=_check_sieve(values, path),
    )


def _check_workers(server: dict, path: str) -> int:
    """``[server] workers``: 0 (the default) is one per CPU, at most :data:`MAX_WORKERS`."""
    workers = server["workers"]
    if workers < 0 or workers > MAX_WORKERS:
        raise ConfigError(path, "[server] workers", f"must be 0 (one per CPU) or from 1 to {MAX_WORKERS}")
    return workers or min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 1)


MAX_WORKERS = 64


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def default_path() -> str:
    """$MAILSTACK_CONFIG, then var/mailstack.toml when present, then /etc/mailstack/mailstack.toml."""
    env = os.environ.get("MAILSTACK_CONFIG")
    if env:
        return env
    if os.path.exists(os.path.join("var", "mailstack.toml")):
        return os.path.join("var", "mailstack.toml")
    return "/etc/mailstack/mailstack.toml"
