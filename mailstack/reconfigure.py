"""SIGHUP: read the configuration file again, apply what can change while running, and say
what could not be applied.

Applied at once, without dropping a session (:data:`LIVE`): ``[server] domains``,
``[tls] certificate``/``key`` (while TLS stays on), ``[accounts] recipient_delimiter``, every key
of ``[auth]``, ``[limits]``, ``[smtp]``, ``[imap]``, ``[checks]``, ``[mta_sts]``, ``[antispam]``,
``[outbound_limits]``, ``[greylisting]``, ``[rspamd]``, ``[dkim] selector`` and the script
limits of ``[sieve]``.
Everything else (the listeners, the host name, the store, the queue and relay, DNS, the
account files' paths) needs a restart: such a change is logged by its key and the running
value is kept, so the running server never mixes the two files.  A file with an error is
not applied at all.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json

from twisted.logger import Logger

from mailstack import config as config_mod
from mailstack import passwords

log = Logger()

#: section -> the keys applied at once ("*": all of the section's).
LIVE: dict[str, set[str] | str] = {
    "server": {"domains"},
    "tls": {"certificate", "key"},
    "accounts": {"recipient_delimiter"},
    "auth": "*",
    "limits": "*",
    "smtp": "*",
    "imap": "*",
    "checks": "*",
    "dkim": {"selector"},
    "mta_sts": "*",  # the policy is made from the running configuration at each request
    "antispam": "*",  # the MX listener's client checks are made again (new sessions see them)
    "outbound_limits": "*",  # the counts so far are kept (mailstack.antispam.outlimits.rebuild)
    "greylisting": "*",  # a new Greylist on the same triplets (MailstackService.rebuild_greylist)
    "rspamd": "*",  # a new filter and learner for new messages (MailstackService.rebuild_content_filter)
    "sieve": {"max_script_size", "max_scripts"},  # ManageSieve sessions started after the reload
}

#: "[section] key" -> the Config field it becomes (keys of dict sections need none).
FIELDS = {
    ("server", "domains"): "domains",
    ("tls", "certificate"): "tls_certificate",
    ("tls", "key"): "tls_key",
    ("accounts", "recipient_delimiter"): "recipient_delimiter",
    ("auth", "plaintext_on_loopback"): "plaintext_on_loopback",
    ("limits", "connections"): "max_connections",
    ("limits", "connections_per_address"): "max_connections_per_address",
    ("limits", "message_size"): "max_message_size",
    ("limits", "recipients"): "max_recipients",
    ("limits", "commands_per_second"): "command_rate",
    ("limits", "command_burst"): "command_burst",
    ("limits", "commands_per_session"): "max_commands",
    ("smtp", "trusted_networks"): "trusted_networks",
    ("smtp", "timeout"): "smtp_timeout",
    ("imap", "autologout"): "imap_autologout",
}
#: Sections kept as dicts in Config: a live key is copied into the running copy of the dict.
DICT_SECTIONS = {"auth": "auth", "checks": "checks", "dkim": "dkim", "mta_sts": "mta_sts", "antispam": "antispam",
                 "sieve": "sieve_limits"}


def restart_digest(cfg: config_mod.Config) -> str:
    """A digest of the keys only a restart applies (all but :data:`LIVE`): a worker process
    (mailstack.workers) whose file differs there from what the main process runs must not
    serve, or one server would run two stores, two sets of listeners..."""
    restart_only = {section: {k: v for k, v in keys.items() if not (LIVE.get(section) == "*" or k in LIVE.get(section, ()))}
                    for section, keys in cfg.values.items()}
    text = json.dumps(restart_only, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_keys(old: config_mod.Config, new: config_mod.Config) -> list[tuple[str, str]]:
    out = []
    for section in sorted(set(old.values) | set(new.values)):
        before, after = old.values.get(section, {}), new.values.get(section, {})
        out += [(section, key) for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
    return out


def is_live(old: config_mod.Config, new: config_mod.Config, section: str, key: str) -> bool:
    keys = LIVE.get(section, set())
    if keys != "*" and key not in keys:
        return False
    if section == "tls" and old.has_tls != new.has_tls:
        return False  # TLS turned on or off changes what the listeners are
    return True


def merge(old: config_mod.Config, new: config_mod.Config, live: list[tuple[str, str]]) -> config_mod.Config:
    """``old`` with the ``live`` keys taken from ``new``: the configuration to run with now."""
    fields: dict = {}
    values = copy.deepcopy(old.values)
    for section, key in live:
        values.setdefault(section, {})[key] = copy.deepcopy(new.values[section][key])
        if (section, key) in FIELDS:
            fields[FIELDS[section, key]] = getattr(new, FIELDS[section, key])
        if section in DICT_SECTIONS:
            name = DICT_SECTIONS[section]
            running = fields.setdefault(name, dict(getattr(old, name)))
            running[key] = getattr(new, name)[key]
    return dataclasses.replace(old, values=values, **fields)


def apply(service, new: config_mod.Config) -> tuple[list[str], list[str]]:
    """Apply ``new`` to the running ``service``; return ("[s] k" applied, "[s] k" needing a restart)."""
    old = service.config
    changed = changed_keys(old, new)
    live = [c for c in changed if is_live(old, new, *c)]
    later = [f"[{s}] {k}" for s, k in changed if (s, k) not in live]
    if old.acme.get("names") != new.acme.get("names") and "[acme] names" not in later:
        later.append("[acme] names (the default follows [server] domains)")  # the certificate's names
    if not live:
        return [], later
    running = merge(old, new, live)
    if any(s == "rspamd" for s, _ in live):  # whole: its password is read from password_file
        running = dataclasses.replace(running, rspamd=dict(new.rspamd))
    sections = {s for s, _ in live}
    context = service.context
    # What can fail comes first, so that a failure leaves the running objects as they were.
    checker = service.make_inbound_checker(running) if "checks" in sections else context.inbound_checker
    if "tls" in sections and context.acme is not None:
        context.acme.tls_files_changed(running.tls_certificate, running.tls_key)  # served only until ACME issues
    service.config = context.config = running
    context.accounts.domains = list(running.domains)
    context.accounts.delimiter = running.recipient_delimiter
    context.dkim_signer.domains = list(running.domains)
    if getattr(context, "srs", None) is not None:
        context.srs.local_domains = list(running.domains)  # their senders are never rewritten
    context.dkim_signer.selector = running.dkim["selector"]
    if "auth" in sections:
        a, gate = running.auth, context.login_gate
        gate.max_failures, gate.lockout = a["max_failures"], a["lockout"]
        gate.delay, gate.max_delay, gate.window = a["failure_delay"], a["max_failure_delay"], a["failure_window"]
        context.accounts.auth_cache_ttl, context.accounts.rehash = a["cache_ttl"], a["rehash_on_login"]
        passwords.configure_argon2(a["argon2_time_cost"], a["argon2_memory_kib"], a["argon2_parallelism"])
    context.inbound_checker = checker
    if "outbound_limits" in sections:
        from mailstack.antispam import outlimits

        context.outbound_limits = outlimits.rebuild(context.outbound_limits, running)
    if "greylisting" in sections and hasattr(service, "rebuild_greylist"):
        service.rebuild_greylist(running)
    if sections & {"rspamd", "checks"} and hasattr(service, "rebuild_content_filter"):
        service.rebuild_content_filter(running)
    if "tls" in sections and context.acme is None and context.tls is not None:
        context.tls.cert_path, context.tls.key_path = running.tls_certificate, running.tls_key
    for _lst, wrapped in service.factories:
        wrapped.max_total, wrapped.max_per_address = running.max_connections, running.max_connections_per_address
    for _lst, factory in service.protocol_factories:
        if hasattr(factory, "reconfigure"):
            factory.reconfigure(context)
    return [f"[{s}] {k}" for s, k in live], later
