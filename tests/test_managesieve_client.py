"""ManageSieve against a real ``twistd`` with an independent client: ``sievelib``'s
``managesieve.Client`` (what Python tools such as Modoboa use), over STARTTLS with the dev CA
checked, every command it has."""

from __future__ import annotations

import os

import pytest

from support.servers import PASSWORDS

sievelib = pytest.importorskip("sievelib.managesieve")

BOB = "bob@example.test"
RULES = 'require ["fileinto"];\r\nif header :contains "subject" "[list]" {\r\n  fileinto "Lists";\r\n}\r\n'


def have_interpreter() -> bool:
    import mailstack.sieve

    return hasattr(mailstack.sieve, "compile_script")


@pytest.fixture
def client(server_factory, monkeypatch):
    srv = server_factory(listeners=["managesieve"]).start()
    monkeypatch.setenv("SSL_CERT_FILE", srv.ca_file)  # sievelib verifies with the default CAs: the dev CA
    c = sievelib.Client("127.0.0.1", srv.port("managesieve"), srvhostname="localhost")
    assert c.connect(BOB, PASSWORDS[BOB], starttls=True, authmech="PLAIN")
    yield srv, c
    c.logout()


@pytest.mark.slow
def test_sievelib_manages_scripts_over_starttls(client):
    srv, c = client
    import ssl

    assert isinstance(c.sock, ssl.SSLSocket)
    assert c.get_implementation() == "mailstack"
    assert c.get_sasl_mechanisms() == ["PLAIN"]
    assert not c.has_tls_support()  # after STARTTLS it is no longer offered (RFC 5804 2.2)
    if have_interpreter():
        assert {"fileinto", "vacation", "envelope", "imap4flags"} <= set(c.get_sieve_capabilities())
    assert c.listscripts() == (None, [])
    assert c.havespace("rules", len(RULES))
    assert not c.havespace("rules", 10_000_000) and c.errcode == b"QUOTA/MAXSIZE"
    assert c.putscript("rules", RULES)
    assert c.putscript("vacation", "keep;\r\n")
    assert c.setactive("rules")
    assert c.listscripts() == ("rules", ["vacation"])
    assert c.getscript("rules") == "\n".join(RULES.splitlines())  # sievelib joins the lines with LF
    assert (srv.maildir(BOB) / "sieve" / "rules.sieve").read_bytes() == RULES.encode()  # stored as sent
    assert c.checkscript("keep;\r\n")
    assert c.renamescript("rules", "main")
    assert c.listscripts() == ("main", ["vacation"])
    assert os.readlink(srv.maildir(BOB) / ".dovecot.sieve") == "sieve/main.sieve"
    assert not c.deletescript("main") and c.errcode == b"ACTIVE"
    assert not c.deletescript("nope") and c.errcode == b"NONEXISTENT"
    assert c.deletescript("vacation")
    assert c.setactive("")
    assert c.listscripts() == (None, ["main"])
    assert c.deletescript("main")
    assert c.listscripts() == (None, [])


@pytest.mark.slow
@pytest.mark.skipif(not have_interpreter(), reason="the interpreter (branch sieve-lang) is not merged yet")
def test_sievelib_sees_the_line_and_column_of_an_invalid_script(client):
    _srv, c = client
    assert not c.putscript("bad", "#comment\r\nInvalidSieveCommand\r\n")
    assert c.errmsg.startswith(b"line 2, column ")
    assert not c.checkscript("#comment\r\nInvalidSieveCommand\r\n")
    assert c.errmsg.startswith(b"line 2, column ")
    assert c.listscripts() == (None, [])
