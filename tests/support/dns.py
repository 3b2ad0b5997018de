"""DNS on loopback for the tests: ``tests/tools/dnsserver.py`` (twisted.names) serving zones.

``serve_zones(tmp_path, {"remote.test": ["MX('remote.test', 10, 'mx.remote.test')", ...]})``
is a generator for a fixture: it writes one zone file a zone (an SOA added), starts the server
on a port free for both UDP and TCP, yields that port and stops the server afterwards.  Point
mailstack at it with ``[dns] nameservers = ["127.0.0.1"]`` and ``port = <port>``.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from support.servers import Proc, free_port

__all__ = ["SOA", "TOOLS", "serve_zones", "udp_tcp_free_port"]

TOOLS = Path(__file__).resolve().parent.parent / "tools"
SOA = "SOA('{z}', mname='ns.{z}', rname='root.{z}', serial=1, refresh=60, retry=60, expire=600, minimum=60)"


def udp_tcp_free_port() -> int:
    """A loopback port free for TCP and for UDP (a DNS server wants both)."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def serve_zones(tmp_path, zones: dict[str, list[str]]):
    """Run tools/dnsserver.py over these zones (twisted.names syntax); yields its port."""
    files = []
    for zone, records in zones.items():
        path = tmp_path / f"{zone}.zone"
        path.write_text("zone = [\n    " + ",\n    ".join([SOA.format(z=zone)] + records) + ",\n]\n")
        files.append(str(path))
    port = udp_tcp_free_port()
    proc = Proc([sys.executable, str(TOOLS / "dnsserver.py"), str(port)] + files)
    yield port
    proc.stop()
