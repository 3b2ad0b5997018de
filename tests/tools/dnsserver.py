"""A small authoritative DNS server on loopback for tests, on twisted.names.

    python dnsserver.py PORT ZONEFILE [ZONEFILE ...]

Each ZONEFILE is twisted.names' Python zone syntax (``zone = [SOA(...), MX(...), A(...)]``).
Names outside the zones get NXDOMAIN.  Prints
"ready" once listening on UDP and TCP 127.0.0.1:PORT.
"""

import sys

from twisted.internet import reactor
from twisted.names import authority, dns, server

port, zones = int(sys.argv[1]), sys.argv[2:]
factory = server.DNSServerFactory(authorities=[authority.PySourceAuthority(z) for z in zones])
factory.noisy = False
reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
reactor.listenTCP(port, factory, interface="127.0.0.1")
reactor.callWhenRunning(lambda: print("ready", flush=True))
reactor.run()
