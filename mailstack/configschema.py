"""The configuration's schema: every listener key, section, option, type and default.

Kept apart from :mod:`mailstack.config` (which reads and checks a file against it) so that the
table an administrator's ``etc/mailstack.toml`` mirrors is in one place.
"""

from __future__ import annotations

from typing import Any

#: What each listener key means: (protocol, TLS mode). "implicit": TLS from the first byte
#: (RFC 8314); "starttls": plaintext with STARTTLS/STLS offered; "optional": STARTTLS offered
#: when a certificate is configured (the MX port, where TLS is opportunistic).
LISTENERS = {
    "smtp": ("smtp", "optional"),
    "submission": ("submission", "starttls"),
    "submissions": ("submission", "implicit"),
    "imap": ("imap", "starttls"),
    "imaps": ("imap", "implicit"),
    "pop3": ("pop3", "starttls"),
    "pop3s": ("pop3", "implicit"),
    "managesieve": ("managesieve", "starttls"),  # Sieve script management (RFC 5804, mailstack.managesieve)
    "autoconfig": ("autoconfig", "none"),  # HTTP: client autoconfiguration (mailstack.autoconfig)
    "https": ("https", "implicit"),  # HTTPS: the MTA-STS policy, autoconfiguration (mailstack.mtasts)
    "metrics": ("metrics", "none"),  # HTTP: Prometheus /metrics (mailstack.metrics); loopback unless allowed
}

#: The dev ports `mailstack init --dev` writes; production uses the well-known ports.
DEV_PORTS = {"smtp": 2525, "submission": 2587, "submissions": 2465, "imap": 2143, "imaps": 2993, "pop3": 2110, "pop3s": 2995,
             "managesieve": 2190, "autoconfig": 2080, "https": 2443, "metrics": 2909}
STANDARD_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995,
                  "managesieve": 4190, "autoconfig": 80, "https": 443, "metrics": 9909}

REQUIRED = object()  # a key without a default

# section -> key -> (type, default).  Types: str, bool, int, "path", "list[str]", "endpoint".
SCHEMA: dict[str, dict[str, tuple[Any, Any]]] = {
    "server": {
        "hostname": (str, None),  # default: this machine's FQDN
        "domains": ("list[str]", REQUIRED),
        "ports_file": ("path", ""),
        "user": (str, "mailstack"),  # started as root: bind the ports, then become this user ("": stay)
        "group": (str, ""),  # default: the user's own group
        "workers": (int, 0),  # reactor processes sharing the listeners (mailstack.workers); 0: one per CPU
    },
    "listeners": {key: ("endpoint", "") for key in LISTENERS},
    "tls": {
        "certificate": ("path", ""),
        "key": ("path", ""),
    },
    "accounts": {
        "users": ("path", REQUIRED),
        "aliases": ("path", ""),
        "send_as": ("path", ""),
        "recipient_delimiter": (str, "+"),
    },
    "auth": {
        "plaintext_on_loopback": (bool, True),
        "max_failures": (int, 10),
        "lockout": (float, 900.0),
        "failure_delay": (float, 0.5),
        "max_failure_delay": (float, 8.0),
        "failure_window": (float, 900.0),
        "cache_ttl": (float, 3600.0),
        "argon2_time_cost": (int, 3),
        "argon2_memory_kib": (int, 65536),
        "argon2_parallelism": (int, 4),
        "rehash_on_login": (bool, True),
    },
    "store": {
        "root": ("path", REQUIRED),
        "fsync": (bool, True),
        "poll_interval": (float, 1.0),
    },
    "smtp": {
        "trusted_networks": ("list[str]", []),
        "timeout": (int, 300),
    },
    "imap": {
        "autologout": (int, 1800),
    },
    "pop3": {
        "uidl_format": (str, "%08Xu%08Xv"),  # Dovecot's pop3_uidl_format syntax (mailstack.pop3.uidl)
    },
    # Storage of users' Sieve scripts (mailstack.sieve.scripts; ManageSieve and 'mailstack sieve').
    "dns": {
        "nameservers": ("list[str]", []),
        "port": (int, 53),
        "timeout": (float, 10.0),
        "cache_size": (int, 10000),
    },
    "dkim": {
        "keys": ("path", ""),  # default: "dkim" beside the store root
        "selector": (str, "mail"),
        "ed25519": (bool, False),
    },
    "checks": {
        "spf": (bool, True),
        "dkim": (bool, True),
        "dmarc": (bool, True),
        "dmarc_enforce": (bool, True),
    },
    "relay": {
        "queue": ("path", ""),  # default: "queue" beside the store root
        "port": (int, 25),
        "retry_schedule": ("list[int]", [300, 900, 1800, 3600, 7200, 14400]),
        "max_age": (int, 5 * 86400),
        "delay_warning": (int, 4 * 3600),
        "connect_timeout": (float, 30.0),
        "reply_timeout": (float, 300.0),
        "max_connections": (int, 20),
        "max_connections_per_domain": (int, 3),
        "tls": (str, "opportunistic"),
        "plaintext_fallback": (bool, True),
        "scan_interval": (float, 10.0),
        "smarthost": (str, ""),
        "smarthost_tls": (str, "starttls"),
        "smarthost_username": (str, ""),
        "smarthost_password_file": ("path", ""),
        "smarthost_ca_file": ("path", ""),
        "smarthost_verify": (bool, True),
    },
    "metrics": {
        "allow_remote": (bool, False),  # the metrics listener on a non-loopback address
    },
    "limits": {
        "connections": (int, 2000),
        "connections_per_address": (int, 20),
        "message_size": (int, 50 * 1024 * 1024),
        "recipients": (int, 100),
        "commands_per_second": (int, 5000),
        "command_burst": (int, 20000),
        "commands_per_session": (int, 0),
    },
    # Certificates by ACME (mailstack.acme) and the MTA-STS policy (mailstack.mtasts).
    "acme": {
        "enabled": (bool, False),
        "directory": (str, "https://acme-v02.api.letsencrypt.org/directory"),
        "contact": (str, ""),
        "names": ("list[str]", []),  # default: hostname, mta-sts.<domain> and autoconfig.<domain>
        "state": ("path", ""),  # default: "acme" beside the store root
        "ca_file": ("path", ""),
        "renew_days": (int, 30),
        "check_interval": (float, 3600.0),
        "retry_delay": (float, 600.0),
        "max_retry_delay": (float, 86400.0),
    },
    "mta_sts": {
        "mode": (str, "testing"),
        "max_age": (int, 604800),
        "mx": ("list[str]", []),  # default: [server] hostname
    },
    "log": {
        "format": (str, "text"),  # "text" | "json" (mailstack.logoutput)
        "file": ("path", ""),  # "": twistd's own output (standard output with --nodaemon)
    },
    # Client checks on the MX port (mailstack.antispam.screen): DNS lists, the local list, iprev.
    "antispam": {
        "dnsbl": ("list[str]", []),  # "zone[=codes][*weight]" (mailstack.antispam.dnslists)
        "dnswl": ("list[str]", []),
        "dnsbl_threshold": (int, 1),
        "reject_at": (str, "rcpt"),  # "rcpt" | "ehlo"
        "client_list": ("path", ""),
        "iprev": (str, "off"),  # "off" | "record" | "require"
        "early_talkers": (bool, False),
        "greet_wait": (float, 0.0),
    },
    # Greylisting on the MX port (mailstack.antispam.greylist); off unless enabled.
    "greylisting": {
        "enabled": (bool, False),
        "delay": (int, 300),
        "memory": (int, 36 * 86400),
        "auto_allow": (int, 5),  # 0: never
        "spf_allow_domains": ("list[str]", []),
        "database": ("path", ""),  # default: greylist.sqlite beside the store root
        "max_pending": (int, 100),
    },
    # Per-user outbound limits on submission (mailstack.antispam.outlimits); 0: no limit.
    "outbound_limits": {
        "enabled": (bool, True),
        "messages_per_hour": (int, 500),
        "messages_per_day": (int, 1000),
        "recipients_per_hour": (int, 500),
        "recipients_per_day": (int, 1000),
        "users": ("list[str]", []),  # "USER KEY=N ...": per-user overrides
    },
    # The rspamd content filter and learning from Junk (mailstack.antispam.rspamd, .learning).
    "rspamd": {
        "url": (str, ""),  # "": no content filter
        "timeout": (float, 10.0),
        "on_failure": (str, "tempfail"),  # "tempfail" | "accept"
        "checks": (str, "rspamd"),  # who checks SPF/DKIM/DMARC on the MX port: "rspamd" | "mailstack"
        "junk": (bool, True),
        "scan_outbound": (bool, True),
        "max_size": (int, 20 * 1024 * 1024),
        "pool_size": (int, 16),
        "controller_url": (str, ""),  # "": no learning
        "password": (str, ""),
        "password_file": ("path", ""),
        "learn_retries": (int, 5),
        "learn_retry_delay": (float, 30.0),
    },
    # Sieve at local delivery (mailstack.sieve.delivery); ManageSieve's keys join this section.
    "sieve": {
        "enabled": (bool, True),
        "before": ("list[str]", []),
        "after": ("list[str]", []),
        "global_dir": ("path", ""),
        "max_run_time": (float, 2.0),
        "max_body_size": (int, 1 << 20),
        "max_redirects": (int, 4),
        "vacation_min_period": (int, 86400),
        "vacation_max_period": (int, 30 * 86400),
        "max_script_size": (int, 64 * 1024),  # octets (ManageSieve, mailstack sieve put)
        "max_scripts": (int, 16),  # per user
    },
    # The Sender Rewriting Scheme for forwarded mail (mailstack.srs).
    "srs": {
        "enabled": (bool, True),
        "domain": (str, ""),  # default: the first [server] domain
        "key_file": ("path", ""),  # default: srs.key beside the store root
        "max_age_days": (int, 21),
    },
    # Per-user quotas (mailstack.store.quota); the users file's Dovecot quota rules override.
    "quota": {
        "storage": (str, "0"),  # bytes, with an optional unit b/k/M/G/T; "0": no limit
        "messages": (int, 0),  # 0: no limit
        "smtp_reply": (str, "temporary"),  # "temporary" (452 4.2.2) | "permanent" (552 5.2.2)
        "warning_percent": (int, 90),  # 0: no warning
    },
}
