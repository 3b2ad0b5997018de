"""The local allow and block list (``[antispam] client_list``): client addresses, networks and
envelope sender domains, one a line::

    # comments and blank lines are ignored
    allow 192.0.2.10            # a client address
    block 198.51.100.0/24       # a network (CIDR), IPv4 or IPv6
    allow 2001:db8::/32
    block spammer.example       # the MAIL FROM domain and its subdomains

The most specific entry wins (the longest network, the longest domain), allow on a tie, so
``block 10.0.0.0/8`` with ``allow 10.1.2.3`` lets 10.1.2.3 in.  The file is read again when it
changes (one ``stat`` a use, as the users file); a broken file at start-up stops it, a broken
edit later is logged and the last good list kept.
"""

from __future__ import annotations

import ipaddress

from mailstack.accounts import _WatchedFile
from mailstack.antispam.dnslists import IPAddress
from mailstack.errors import ConfigError

ALLOW, BLOCK = "allow", "block"


class ClientList(_WatchedFile):
    def __init__(self, path: str):
        super().__init__(path)
        self.networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        self.domains: dict[str, str] = {}
        self.refresh()

    def _parse(self, lines: list[str]) -> None:
        networks, domains = [], {}
        for number, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0].lower() not in (ALLOW, BLOCK):
                raise ConfigError(self.path, f"line {number}", "must be 'allow' or 'block', then one address, "
                                  f"network or domain, not {raw.strip()!r}")
            action, value = parts[0].lower(), parts[1]
            try:
                networks.append((ipaddress.ip_network(value, strict=False), action))
                continue
            except ValueError:
                pass
            domain = value.lstrip("@").rstrip(".").lower()
            if "." not in domain or "/" in domain or ":" in domain:
                raise ConfigError(self.path, f"line {number}", f"{value!r} is not an address, network or domain")
            if domains.get(domain) != ALLOW:  # allow on a tie
                domains[domain] = action
        self.networks, self.domains = networks, domains

    def for_client(self, ip: IPAddress | None) -> str | None:
        """ALLOW, BLOCK or None (not listed) for a client address."""
        self.refresh()
        if ip is None:
            return None
        best = None
        for net, action in self.networks:
            if net.version == ip.version and ip in net:
                key = (net.prefixlen, action == ALLOW)
                if best is None or key > best[0]:
                    best = (key, action)
        return best[1] if best else None

    def for_sender(self, sender: str) -> str | None:
        """ALLOW, BLOCK or None for the envelope sender's domain (or a parent domain)."""
        self.refresh()
        labels = sender.rpartition("@")[2].rstrip(".").lower().split(".")
        for i in range(len(labels) - 1):  # longest first
            action = self.domains.get(".".join(labels[i:]))
            if action is not None:
                return action
        return None
