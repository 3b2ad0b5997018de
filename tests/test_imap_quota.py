"""IMAP QUOTA (RFC 9208) with the exact bytes of the RFC's examples: GETQUOTAROOT (4.1.2),
GETQUOTA (4.1.1), SETQUOTA refused (4.1.3), OVERQUOTA on APPEND, COPY and MOVE (4.3.1),
STORAGE in units of 1024 octets (5.1), MESSAGE (5.2).  In process, over a raw socket.

Where the RFC leaves a choice the test says so: the quota root's name (``""`` here, as in
RFC 2087's example and Dovecot's default) and the text after the status.
"""

from __future__ import annotations

import re

from support.clients import ImapClient

BOB, ALICE = "bob@example.test", "alice@example.test"
QUOTA = '[quota]\nstorage = "10k"\nmessages = 3\nwarning_percent = 0\n'
BODY = b"Subject: quota\r\n\r\n" + b"x" * (2048 - 19 + 1)  # 2048 octets: STORAGE 2 (units of 1024)


def start(factory, users_extra: dict | None = None):
    server = factory(listeners=["imap", "smtp"], extra=QUOTA)
    if users_extra:
        users = server.base / "users"
        lines = users.read_text().splitlines()
        users.write_text("".join(line + (users_extra.get(line.split(":")[0], "")) + "\n" for line in lines))
    return server.start()


def client(server, user=BOB) -> ImapClient:
    c = ImapClient(server.port("imap"))
    c.login(user)
    return c


def append(c, tag=b"A", folder=b"INBOX", body=BODY) -> bytes:
    c.send(tag + b" APPEND " + folder + b" {%d+}\r\n" % len(body) + body + b"\r\n")
    return c.until(tag)[-1]


def test_capabilities(inproc_server_factory):
    c = client(start(inproc_server_factory))
    caps = c.cmd(b"C", b"CAPABILITY")[0]
    assert b" QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE" in caps
    assert b"QUOTASET" not in caps  # RFC 9208 3.1: only with SETQUOTA


def test_getquotaroot_and_getquota_report_usage(inproc_server_factory):
    c = client(start(inproc_server_factory))
    # RFC 9208 4.1.2 (RFC 2087's example, root ""): QUOTAROOT, then QUOTA for each root.
    assert c.cmd(b"A003", b"GETQUOTAROOT INBOX") == [
        b'* QUOTAROOT INBOX ""', b'* QUOTA "" (STORAGE 0 10 MESSAGE 0 3)', b"A003 OK Getquotaroot completed"]
    assert append(c).startswith(b"A OK [APPENDUID ")
    assert c.cmd(b"A004", b"GETQUOTAROOT Sent") == [
        b'* QUOTAROOT Sent ""', b'* QUOTA "" (STORAGE 2 10 MESSAGE 1 3)', b"A004 OK Getquotaroot completed"]
    assert c.cmd(b"A005", b'GETQUOTAROOT "Sent"')[0] == b'* QUOTAROOT Sent ""'
    # RFC 9208 4.1.1.
    assert c.cmd(b"G0001", b'GETQUOTA ""') == [
        b'* QUOTA "" (STORAGE 2 10 MESSAGE 1 3)', b"G0001 OK Getquota completed"]
    assert re.match(rb'^G0002 NO \[NONEXISTENT\] ', c.cmd(b"G0002", b'GETQUOTA "!partition/sda4"')[0])
    assert re.match(rb"^A006 NO \[NONEXISTENT\] ", c.cmd(b"A006", b"GETQUOTAROOT Nowhere")[0])
    assert c.cmd(b"A007", b"GETQUOTAROOT")[-1].startswith(b"A007 BAD ")


def test_setquota_is_refused(inproc_server_factory):
    c = client(start(inproc_server_factory))
    # RFC 9208 4.1.3: NO is "setquota error: can't set that data".
    assert re.match(rb"^S0000 NO \[NOPERM\] ", c.cmd(b"S0000", b'SETQUOTA "" (STORAGE 512)')[0])
    assert c.cmd(b"S0001", b"SETQUOTA")[0].startswith(b"S0001 BAD ")


def test_append_copy_and_move_over_quota(inproc_server_factory):
    c = client(start(inproc_server_factory))
    for tag in (b"A1", b"A2", b"A3"):
        assert append(c, tag).startswith(tag + b" OK ")
    # RFC 9208 4.3.1's example, word for word.
    assert append(c, b"A003") == b"A003 NO [OVERQUOTA] APPEND Failed"
    c.cmd(b"S", b"SELECT INBOX")
    assert c.cmd(b"C1", b"COPY 1 Archive") == [b"C1 NO [OVERQUOTA] COPY Failed"]
    assert c.cmd(b"C2", b"STATUS Archive (MESSAGES)")[0] == b'* STATUS "Archive" (MESSAGES 0)'
    # A move between one user's folders changes no usage: allowed when full.
    lines = c.cmd(b"M1", b"MOVE 1:2 Archive")
    assert lines[-1] == b"M1 OK MOVE completed"
    assert c.cmd(b"Q", b"GETQUOTAROOT Archive")[1] == b'* QUOTA "" (STORAGE 6 10 MESSAGE 3 3)'
    # Expunging gives room back.
    c.cmd(b"E1", b"STORE 1 +FLAGS (\\Deleted)")
    c.cmd(b"E2", b"EXPUNGE")
    assert c.cmd(b"Q2", b'GETQUOTA ""')[0] == b'* QUOTA "" (STORAGE 4 10 MESSAGE 2 3)'
    assert append(c, b"A4").startswith(b"A4 OK ")


def test_multiappend_over_quota_appends_nothing(inproc_server_factory):
    c = client(start(inproc_server_factory))
    assert append(c, b"A1").startswith(b"A1 OK ")
    c.send(b"A2 APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {%d+}\r\n%s" % (len(BODY), BODY, len(BODY), BODY, len(BODY), BODY) + b"\r\n")
    assert c.until(b"A2")[-1] == b"A2 NO [OVERQUOTA] APPEND Failed"
    assert c.cmd(b"Q", b'GETQUOTA ""')[0] == b'* QUOTA "" (STORAGE 2 10 MESSAGE 1 3)'


def test_a_user_without_limits_has_no_quota_root(inproc_server_factory):
    extra = {ALICE: "::::::userdb_quota_rule=*:storage=0 userdb_quota_rule2=*:messages=0"}
    c = client(start(inproc_server_factory, extra), ALICE)
    # RFC 9208 4.1.2: a mailbox without a quota root: QUOTAROOT names none.
    assert c.cmd(b"A", b"GETQUOTAROOT INBOX") == [b"* QUOTAROOT INBOX", b"A OK Getquotaroot completed"]
    assert c.cmd(b"B", b'GETQUOTA ""')[0].startswith(b"B NO [NONEXISTENT] ")


def test_per_user_rules_override_the_defaults(inproc_server_factory):
    extra = {ALICE: "::::::userdb_quota_rule=*:storage=1M userdb_quota_rule2=*:messages=1000"}
    c = client(start(inproc_server_factory, extra), ALICE)
    assert c.cmd(b"A", b'GETQUOTA ""')[0] == b'* QUOTA "" (STORAGE 0 1024 MESSAGE 0 1000)'


def test_quotaroot_names_a_mailbox_as_the_client_can_read_it(inproc_server_factory):
    c = client(start(inproc_server_factory))
    assert c.cmd(b"C", b'CREATE "My Box"')[-1].startswith(b"C OK")
    assert c.cmd(b"Q", b'GETQUOTAROOT "My Box"')[0] == b'* QUOTAROOT "My Box" ""'  # not an atom: quoted
    assert c.cmd(b"R", b"GETQUOTAROOT inbox")[0] == b'* QUOTAROOT inbox ""'  # the client's spelling
