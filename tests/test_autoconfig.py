"""Client autoconfiguration: Thunderbird's clientConfig v1.1 and Microsoft Autodiscover,
fetched with curl and urllib from a real server."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest


@pytest.fixture
def srv(inproc_server_factory):
    return inproc_server_factory(listeners=["autoconfig", "imaps", "imap", "pop3s", "submissions", "submission"]).start()


def servers(root):
    provider = root.find("emailProvider")
    out = []
    for tag in ("incomingServer", "outgoingServer"):
        for s in provider.findall(tag):
            out.append((tag, s.get("type"), s.findtext("hostname"), int(s.findtext("port")), s.findtext("socketType"),
                        s.findtext("authentication"), s.findtext("username")))
    return provider, out


def test_thunderbird_autoconfig(srv):
    base = f"http://127.0.0.1:{srv.port('autoconfig')}"
    for url in (f"{base}/.well-known/autoconfig/mail/config-v1.1.xml",
                f"{base}/mail/config-v1.1.xml?emailaddress=alice%40example.test",
                f"{base}/v1.1/example.test"):  # the ISPDB form (mailnews.auto_config_url)
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("application/xml")
            root = ET.fromstring(r.read())
        assert root.tag == "clientConfig" and root.get("version") == "1.1"
        provider, found = servers(root)
        assert provider.get("id") == "example.test" and provider.findtext("domain") == "example.test"
        assert found == [
            ("incomingServer", "imap", "mail.example.test", srv.port("imaps"), "SSL", "password-cleartext", "%EMAILADDRESS%"),
            ("incomingServer", "imap", "mail.example.test", srv.port("imap"), "STARTTLS", "password-cleartext", "%EMAILADDRESS%"),
            ("incomingServer", "pop3", "mail.example.test", srv.port("pop3s"), "SSL", "password-cleartext", "%EMAILADDRESS%"),
            ("outgoingServer", "smtp", "mail.example.test", srv.port("submissions"), "SSL", "password-cleartext", "%EMAILADDRESS%"),
            ("outgoingServer", "smtp", "mail.example.test", srv.port("submission"), "STARTTLS", "password-cleartext", "%EMAILADDRESS%"),
        ]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{base}/mail/config-v1.1.xml?emailaddress=someone%40other.example", timeout=10)
    assert e.value.code == 404
    for bad in ("/v1.1/other.example", "/v1.1/../etc/passwd", "/v1.1/"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}{bad}", timeout=10)
        assert e.value.code == 404, bad
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{base}/../../etc/passwd", timeout=10)
    assert e.value.code == 404


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_autodiscover_post_with_curl(srv):
    request = ('<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
               'autodiscover/outlook/requestschema/2006"><Request><EMailAddress>bob@example.test</EMailAddress>'
               '<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a'
               '</AcceptableResponseSchema></Request></Autodiscover>')
    out = subprocess.run(["curl", "-sS", "-f", "-X", "POST", "-H", "Content-Type: text/xml", "--data", request,
                          f"http://127.0.0.1:{srv.port('autoconfig')}/Autodiscover/Autodiscover.xml"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    ns = {"r": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
    root = ET.fromstring(out.stdout)
    protocols = [(p.findtext("r:Type", namespaces=ns), int(p.findtext("r:Port", namespaces=ns)),
                  p.findtext("r:SSL", namespaces=ns), p.findtext("r:LoginName", namespaces=ns))
                 for p in root.iter("{%s}Protocol" % ns["r"])]
    assert ("IMAP", srv.port("imaps"), "on", "bob@example.test") in protocols
    assert ("SMTP", srv.port("submission"), "off", "bob@example.test") in protocols
    wrong = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--data",
                            "<EMailAddress>x@elsewhere.example</EMailAddress>",
                            f"http://127.0.0.1:{srv.port('autoconfig')}/autodiscover/autodiscover.xml"],
                           capture_output=True, text=True, timeout=30)
    assert wrong.stdout == "404"
