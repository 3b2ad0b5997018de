"""Client autoconfiguration over HTTP (``twisted.web``): how mail clients find the servers.

* Thunderbird's autoconfig, clientConfig v1.1: ``GET /.well-known/autoconfig/mail/config-v1.1.xml``
  and ``GET /mail/config-v1.1.xml?emailaddress=...`` (what Thunderbird asks
  ``autoconfig.<domain>`` for), and ``GET /v1.1/<domain>`` as Thunderbird's ISPDB asks it;
* Microsoft Autodiscover (Outlook and others): ``POST /autodiscover/autodiscover.xml``.

The answers list the listeners this server really has (the ports they are bound to), the
server's host name, TLS modes, and ``password-cleartext`` authentication with the full
address as user name.  Publish ``autoconfig.<domain>`` as a CNAME of the mail host
(``mailstack dns`` prints it) and run this listener on port 80, or behind a web server.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

from twisted.web import resource, server

BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

#: (listener key, clientConfig type, socketType) in order of preference
_INCOMING = [("imaps", "imap", "SSL"), ("imap", "imap", "STARTTLS"), ("pop3s", "pop3", "SSL"), ("pop3", "pop3", "STARTTLS")]
_OUTGOING = [("submissions", "smtp", "SSL"), ("submission", "smtp", "STARTTLS")]
_EMAIL = re.compile(r"^[^@\s<>]{1,64}@[A-Za-z0-9.-]{1,253}$")
#: Thunderbird's ISPDB lookup, ``<mailnews.auto_config_url><domain>``: pointing that setting at
#: this listener (``http://host:port/v1.1/``) makes the account wizard find a server that has
#: no ``autoconfig.<domain>`` name on port 80, such as the dev server.
_ISPDB = re.compile(r"^/v1\.1/([a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?)$")


class ClientConfig(resource.Resource):
    isLeaf = True

    def __init__(self, context):
        super().__init__()
        self.context = context

    def _bound(self) -> dict:
        return getattr(self.context, "bound", {}) or {}

    def render_GET(self, request):
        path = request.path.decode("ascii", "replace").rstrip("/").lower()
        ispdb = _ISPDB.match(path)
        if path not in ("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml") and not ispdb:
            request.setResponseCode(404)
            return b"not found\n"
        address = (request.args.get(b"emailaddress") or [b""])[0].decode("utf-8", "replace")
        domain = address.rpartition("@")[2].lower() if _EMAIL.match(address) else ""
        if ispdb:
            domain = ispdb.group(1)
        domains = self.context.config.domains
        if domain and domain not in domains:
            request.setResponseCode(404)
            return b"not a domain of this server\n"
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        return self.client_config(domain or domains[0]).encode("utf-8")

    def client_config(self, domain: str) -> str:
        host = escape(self.context.config.hostname)
        bound = self._bound()
        lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<clientConfig version="1.1">',
                 f'  <emailProvider id="{escape(domain)}">']
        lines += [f"    <domain>{escape(d)}</domain>" for d in self.context.config.domains]
        lines += [f"    <displayName>{escape(domain)} mail</displayName>",
                  f"    <displayShortName>{escape(domain)}</displayShortName>"]
        for tag, table in (("incomingServer", _INCOMING), ("outgoingServer", _OUTGOING)):
            for key, kind, socket_type in table:
                if key not in bound:
                    continue
                lines += [f'    <{tag} type="{kind}">', f"      <hostname>{host}</hostname>",
                          f"      <port>{bound[key]['port']}</port>", f"      <socketType>{socket_type}</socketType>",
                          "      <authentication>password-cleartext</authentication>",
                          "      <username>%EMAILADDRESS%</username>", f"    </{tag}>"]
        lines += ["  </emailProvider>", "</clientConfig>", ""]
        return "\n".join(lines)

    def render_POST(self, request):
        path = request.path.decode("ascii", "replace").lower()
        if path != "/autodiscover/autodiscover.xml":
            request.setResponseCode(404)
            return b"not found\n"
        body = request.content.read(65536).decode("utf-8", "replace")
        m = re.search(r"<EMailAddress>\s*([^<\s]+)\s*</EMailAddress>", body, re.I)
        address = m.group(1) if m and _EMAIL.match(m.group(1)) else ""
        if not address or address.rpartition("@")[2].lower() not in self.context.config.domains:
            request.setResponseCode(404)
            return b"not a domain of this server\n"
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        return self.autodiscover(address).encode("utf-8")

    def autodiscover(self, address: str) -> str:
        host = escape(self.context.config.hostname)
        bound = self._bound()
        protocols = []
        for key, kind, socket_type in _INCOMING + _OUTGOING:
            if key in bound:
                protocols += ["      <Protocol>", f"        <Type>{kind.upper()}</Type>", f"        <Server>{host}</Server>",
                              f"        <Port>{bound[key]['port']}</Port>",
                              f"        <SSL>{'on' if socket_type == 'SSL' else 'off'}</SSL>",
                              f"        <Encryption>{'SSL' if socket_type == 'SSL' else 'TLS'}</Encryption>",
                              f"        <LoginName>{escape(address)}</LoginName>",
                              "        <SPA>off</SPA>", "        <AuthRequired>on</AuthRequired>", "      </Protocol>"]
        return "\n".join([
            '<?xml version="1.0" encoding="utf-8"?>',
            '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006">',
            '  <Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a">',
            "    <Account>", "      <AccountType>email</AccountType>", "      <Action>settings</Action>",
            *protocols, "    </Account>", "  </Response>", "</Autodiscover>", ""])


def build_factory(context, listener):
    from mailstack.acmecert import with_challenges  # HTTP-01 answers for [acme] (RFC 8555 section 8.3)

    site = server.Site(with_challenges(context, ClientConfig(context)))
    site.noisy = False
    site.displayTracebacks = False
    return site
