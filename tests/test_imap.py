"""End-to-end tests of the IMAP server (mailstack.imap) against a real twistd process.

Clients: Python's imaplib, imapclient (an independent parser of FETCH responses), and a raw
socket for what neither will send (malformed input, LITERAL+, pipelining).  Mail is put in
with the store from this process, as another writer would, or over SMTP.
"""

from __future__ import annotations

import base64
import imaplib
import re
import shutil
import smtplib
import subprocess
import time

import imapclient
import pytest

from support.clients import Fetchmail, ImapClient as Raw, imap_login as raw_login
from support.messages import message
from support.servers import PASSWORDS
from mailstack.store import MaildirStore

ALICE, BOB = "alice@example.test", "bob@example.test"
LISTENERS = ["imap", "imaps"]


MULTIPART = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= report\r\n"
    b"X-Trace: keep me\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="BoUnD"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--BoUnD\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"first part text\r\nzebra line\r\n"
    b"--BoUnD\r\n"
    b"Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=\"a.bin\"\r\n"
    b"\r\n"
    b"AAECAwQ=\r\n"
    b"--BoUnD--\r\n"
    b"epilogue\r\n"
)


@pytest.fixture
def srv(server_factory):
    return server_factory(listeners=LISTENERS).start()


def store(srv) -> MaildirStore:
    return MaildirStore(str(srv.store_root))


def deliver(srv, *messages: bytes, user: str = BOB, folder: str = "INBOX") -> list[int]:
    return srv.deliver(*messages, user=user, folder=folder)


def login(srv, user: str = BOB, tls: str | None = None) -> imaplib.IMAP4:
    if tls == "implicit":
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.port("imaps"), ssl_context=srv.ssl_context(), timeout=20)
    else:
        m = imaplib.IMAP4("127.0.0.1", srv.port("imap"), timeout=20)
        if tls == "starttls":
            m.starttls(srv.ssl_context())
    m.login(user, PASSWORDS[user])
    return m


def client(srv, user: str = BOB) -> imapclient.IMAPClient:
    c = imapclient.IMAPClient("127.0.0.1", port=srv.port("imaps"), ssl=True, ssl_context=srv.ssl_context(), timeout=20)
    c.login(user, PASSWORDS[user])
    return c


def untagged(m: imaplib.IMAP4, name: str) -> list:
    return m.untagged_responses.pop(name, [])


# -- listeners, capabilities, authentication -------------------------------------------------------


def test_capabilities_starttls_and_imaps(srv):
    m = imaplib.IMAP4("127.0.0.1", srv.port("imap"), timeout=20)
    caps = set(m.capabilities)
    for cap in ("IMAP4REV1", "STARTTLS", "AUTH=PLAIN", "IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "NAMESPACE", "ID",
                "ENABLE", "UNSELECT", "LITERAL+", "CHILDREN", "SASL-IR"):
        assert cap in caps, cap
    assert "LOGINDISABLED" not in caps  # loopback, plaintext_on_loopback defaults to true
    m.starttls(srv.ssl_context())
    m._get_capabilities()
    assert "STARTTLS" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
    typ, data = m.login(BOB, PASSWORDS[BOB])
    assert typ == "OK" and b"[CAPABILITY" in data[0]
    m.logout()

    s = login(srv, tls="implicit")
    assert "STARTTLS" not in s.capabilities
    typ, data = s.capability()
    assert b"MOVE" in data[0] and b"AUTH=PLAIN" not in data[0]  # after login: no AUTH= any more
    s.logout()


def test_logindisabled_without_tls(server_factory):
    srv = server_factory(listeners=LISTENERS, extra="[auth]\nplaintext_on_loopback = false\n").start()
    m = imaplib.IMAP4("127.0.0.1", srv.port("imap"), timeout=20)
    assert "LOGINDISABLED" in m.capabilities and "AUTH=PLAIN" not in m.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        m.login(BOB, PASSWORDS[BOB])
    r = Raw(srv.port("imap"))
    plain = base64.b64encode(f"\0{BOB}\0{PASSWORDS[BOB]}".encode())
    assert b"PRIVACYREQUIRED" in r.cmd(b"A", b"AUTHENTICATE PLAIN " + plain)[-1]
    r.close()
    m.starttls(srv.ssl_context())
    assert m.login(BOB, PASSWORDS[BOB])[0] == "OK"
    m.logout()


def test_authenticate_plain_and_failures(srv):
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.port("imaps"), ssl_context=srv.ssl_context(), timeout=20)
    typ, _ = m.authenticate("PLAIN", lambda _: f"\0{BOB}\0{PASSWORDS[BOB]}".encode())
    assert typ == "OK" and m.state == "AUTH"
    m.logout()

    r = Raw(srv.port("imap"))
    plain = base64.b64encode(f"\0{ALICE}\0{PASSWORDS[ALICE]}".encode())
    assert r.cmd(b"a1", b"AUTHENTICATE PLAIN " + plain)[-1].startswith(b"a1 OK")  # SASL-IR (RFC 4959)
    r.close()

    r = Raw(srv.port("imap"))
    r.send(b"a1 AUTHENTICATE PLAIN\r\n")
    assert r.line().startswith(b"+")
    r.send(b"*\r\n")
    assert r.until(b"a1")[-1].startswith(b"a1 BAD")
    bad = r.cmd(b"a2", b'LOGIN bob@example.test "wrong-password"')
    assert bad[-1].startswith(b"a2 NO [AUTHENTICATIONFAILED]")
    assert r.cmd(b"a3", b"AUTHENTICATE PLAIN !!notbase64")[-1].startswith(b"a3 BAD")
    assert r.cmd(b"a4", b"AUTHENTICATE CRAM-MD5")[-1].startswith(b"a4 NO")
    assert r.cmd(b"a5", b"SELECT INBOX")[-1].startswith(b"a5 BAD")  # not logged in yet
    r.close()
    time.sleep(0.2)
    log = srv.log_text()
    assert "imap authentication failed for bob@example.test from 127.0.0.1" in log
    assert "wrong-password" not in log and PASSWORDS[BOB] not in log


# -- mailbox management ----------------------------------------------------------------------------


def test_select_examine_uids_and_recent(srv):
    uids = deliver(srv, message(1), message(2), message(3))
    snap = store(srv).mailbox(BOB).folder("INBOX").snapshot()
    m = login(srv)
    typ, data = m.select("INBOX", readonly=True)
    assert typ == "OK" and data == [b"3"]
    assert untagged(m, "UIDVALIDITY") == [str(snap.uidvalidity).encode()]
    assert untagged(m, "RECENT") == [b"3"]
    assert "READ-ONLY" in m.untagged_responses
    typ, data = m.store("1", "+FLAGS", "\\Seen")
    assert typ == "NO" and b"READ-ONLY" in data[0]
    typ, data = m.fetch("1:*", "(UID FLAGS)")
    assert [int(re.search(rb"UID (\d+)", d).group(1)) for d in data] == uids
    m.select("INBOX")  # SELECT claims them: \Recent for this session only
    assert untagged(m, "RECENT") == [b"3"]
    typ, data = m.fetch("1", "(FLAGS)")
    assert b"\\Recent" in data[0]
    assert untagged(m, "UNSEEN")[-1] == b"1"
    m.store("2", "+FLAGS.SILENT", "(\\Deleted)")
    m.unselect()  # UNSELECT (RFC 3691) expunges nothing
    m.select("INBOX", readonly=True)
    assert m._simple_command("CLOSE")[0] == "OK"  # CLOSE after EXAMINE expunges nothing either
    assert len(store(srv).mailbox(BOB).folder("INBOX").snapshot().messages) == 3
    m.select("INBOX")
    m2 = login(srv)
    m2.select("INBOX")
    assert untagged(m2, "RECENT") == [b"0"]
    typ, data = m2.fetch("1", "(FLAGS)")
    assert b"\\Recent" not in data[0]
    m.logout(), m2.logout()


def test_folders_create_list_rename_delete(srv):
    c = client(srv)
    c.create_folder("Work/Projects/2024")
    c.create_folder("Caf\u00e9")
    names = {f[2]: f[0] for f in c.list_folders()}
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive", "Work", "Work/Projects", "Work/Projects/2024", "Caf\u00e9"} <= set(names)
    assert b"\\HasChildren" in names["Work"] and b"\\HasNoChildren" in names["Work/Projects/2024"]
    assert b"\\Sent" in names["Sent"] and b"\\Trash" in names["Trash"]
    assert [f[2] for f in c.list_folders("", "Work/%")] == ["Work/Projects"]
    assert [f[2] for f in c.list_folders("Work/", "*")] == ["Work/Projects", "Work/Projects/2024"]
    assert [f[2] for f in c.list_folders("", "inbox")] == ["INBOX"]
    assert c.folder_exists("Caf\u00e9")
    assert {f[2] for f in c.list_sub_folders()} >= {"Sent", "Trash"}
    c.subscribe_folder("Work/Projects")
    assert "Work/Projects" in [f[2] for f in c.list_sub_folders("", "Work/*")]
    c.unsubscribe_folder("Work/Projects")
    assert "Work/Projects" not in [f[2] for f in c.list_sub_folders()]
    assert "INBOX" in [f[2] for f in c.list_sub_folders()]  # INBOX always counts as subscribed

    c.select_folder("Work/Projects/2024")
    c.append("Work/Projects/2024", message(1))
    c.rename_folder("Work", "Old")
    names = {f[2] for f in c.list_folders()}
    assert "Old/Projects/2024" in names and "Work" not in names
    assert c.select_folder("Old/Projects/2024")[b"EXISTS"] == 1
    c.delete_folder("Old/Projects/2024")
    assert "Old/Projects/2024" not in {f[2] for f in c.list_folders()}
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="NONEXISTENT"):
        c.delete_folder("Nope")
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="ALREADYEXISTS"):
        c.create_folder("Sent")
    with pytest.raises(imapclient.exceptions.IMAPClientError):
        c.delete_folder("INBOX")

    # RENAME INBOX moves its mail and leaves INBOX empty (RFC 3501 6.3.5)
    deliver(srv, message(1), message(2))
    c.rename_folder("INBOX", "Saved")
    assert c.select_folder("Saved", readonly=True)[b"EXISTS"] == 2
    assert c.select_folder("INBOX")[b"EXISTS"] == 0
    c.logout()


def test_status_namespace_id_enable_lsub_special(srv):
    deliver(srv, message(1), message(2))
    m = login(srv)
    typ, data = m.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
    snap = store(srv).mailbox(BOB).folder("INBOX").snapshot()
    assert data == [f'"INBOX" (MESSAGES 2 RECENT 2 UIDNEXT {snap.uidnext} UIDVALIDITY {snap.uidvalidity} UNSEEN 2)'.encode()]
    assert m.namespace()[1] == [b'(("" "/")) NIL NIL']
    typ, data = m._simple_command("ID", '("name" "pytest")')
    assert typ == "OK" and untagged(m, "ID") == [b'("name" "mailstack")']
    typ, data = m._simple_command("ENABLE", "CONDSTORE")
    assert typ == "OK"
    m._simple_command("LIST", "(SPECIAL-USE)", '""', '"*"')
    listed = untagged(m, "LIST")
    assert len(listed) == 5 and all(b"\\HasNoChildren" in x for x in listed)
    m._simple_command("LIST", '""', '"*"', "RETURN", "(STATUS (MESSAGES UNSEEN) SUBSCRIBED)")
    statuses = untagged(m, "STATUS")
    assert b'"INBOX" (MESSAGES 2 UNSEEN 2)' in statuses
    assert any(b"\\Subscribed" in x and b"Sent" in x for x in untagged(m, "LIST"))
    assert m.list('""', '""')[1] == [b'(\\Noselect) "/" ""']
    m.logout()


def test_invalid_mailbox_names(srv):
    m = login(srv)
    for name in ['"../etc"', '"a/../../b"', '"a..b"', '"&Jjo"', '"&AGE-"', '".hidden"', '"a//b"', '"/abs"']:
        typ, data = m._simple_command("CREATE", name)
        assert typ == "NO", (name, typ, data)
        typ, data = m._simple_command("SELECT", name)
        assert typ == "NO", name
    typ, _ = m._simple_command("CREATE", '"&ZeVnLIqe-"')  # 日本語, valid modified UTF-7
    assert typ == "OK"
    listed = [x for x in m.list()[1] if b"&ZeVnLIqe-" in x]
    assert listed
    m.logout()
    root = srv.store_root
    assert not (root.parent / "etc").exists() and not (root / "b").exists()
    assert "Traceback" not in srv.log_text()


# -- APPEND, FETCH -----------------------------------------------------------------------------------


def test_append_is_byte_exact(srv):
    raw = (b"From: me@example.test\r\nSubject: exact\r\nX-Weird:   spaces  \r\n\tfolded\r\n\r\n"
           b"line with trailing space \r\n\xe9 8-bit\r\nbare\nlf\r\n\r\n")
    r = raw_login(srv)  # imaplib would turn the bare LF into CRLF
    r.send(b'a APPEND Drafts (\\Draft \\Seen $Label1) "05-Mar-2023 14:15:16 +0100" {%d}\r\n' % len(raw))
    assert r.line().startswith(b"+ ")
    r.send(raw + b"\r\n")
    done = r.until(b"a")[-1]
    v, uid = map(int, re.search(rb"APPENDUID (\d+) (\d+)", done).groups())
    r.close()
    m = login(srv)
    snap = store(srv).mailbox(BOB).folder("Drafts").snapshot()
    assert v == snap.uidvalidity and uid == snap.messages[-1].uid
    m.select("Drafts")
    typ, data = m.uid("FETCH", str(uid), "(BODY.PEEK[] FLAGS INTERNALDATE RFC822.SIZE)")
    served = raw.replace(b"bare\nlf", b"bare\r\nlf")  # stored byte for byte, served in the CRLF form (RFC 5322 2.1)
    assert data[0][1] == served
    rest = data[1]
    assert b"INTERNALDATE \"05-Mar-2023 13:15:16 +0000\"" in rest
    assert b"RFC822.SIZE %d" % len(served) in rest
    # \Recent too: this session is the first told of it (RFC 3501 2.3.2), though APPENDed with flags
    assert set(re.search(rb"FLAGS \(([^)]*)\)", rest).group(1).split()) == {b"\\Draft", b"\\Seen", b"$Label1",
                                                                            b"\\Recent"}
    info = store(srv).mailbox(BOB).folder("Drafts").snapshot().by_uid()[uid]
    assert (srv.maildir(BOB, "Drafts") / info.filename).read_bytes() == raw
    typ, data = m.append("NoSuchFolder", None, None, b"Subject: x\r\n\r\nx\r\n")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    m.logout()


def test_literal_limits_and_literal_plus(server_factory):
    srv = server_factory(listeners=LISTENERS, extra="[limits]\nmessage_size = 1000\n").start()
    r = raw_login(srv)
    r.send(b"a1 APPEND INBOX {5000}\r\n")
    line = r.line()
    assert line.startswith(b"a1 NO [TOOBIG]"), line  # refused before any data is read
    r.send(b"a2 APPEND INBOX (\\Seen) {12+}\r\nSubject: x\r\n\r\n")  # LITERAL+ (RFC 7888)
    assert r.until(b"a2")[-1].startswith(b"a2 OK [APPENDUID")
    r.cmd(b"s", b"SELECT INBOX")
    r.send(b"a3 SEARCH SUBJECT {1+}\r\nx\r\n")  # literals in SEARCH keys too
    assert r.until(b"a3")[-1].startswith(b"a3 OK")
    r.send(b'a5 LIST "" {5}\r\n')  # and in LIST (a synchronizing one this time)
    assert r.line().startswith(b"+ ")
    r.send(b"INBOX\r\n")
    assert r.until(b"a5") == [b'* LIST (\\HasNoChildren) "/" "INBOX"', b"a5 OK LIST completed"]
    r.send(b"a4 APPEND INBOX {5000+}\r\n" + b"x" * 100)
    assert r.line().startswith(b"* BYE [TOOBIG]")
    r.close()


def test_fetch_sections_of_multipart(srv):
    (uid,) = deliver(srv, MULTIPART)
    c = client(srv)
    c.select_folder("INBOX")
    r = c.fetch([uid], ["BODY.PEEK[1]", "BODY.PEEK[2]", "BODY.PEEK[2.MIME]", "BODY.PEEK[TEXT]", "BODY.PEEK[HEADER]",
                        "BODY.PEEK[HEADER.FIELDS (SUBJECT X-TRACE)]", "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT X-TRACE)]",
                        "BODY.PEEK[1]<6.4>", "BODY.PEEK[]<0.4>", "BODY.PEEK[]<5000.10>", "BODYSTRUCTURE", "ENVELOPE",
                        "BODY", "RFC822.SIZE", "FLAGS"])[uid]
    header, _, body = MULTIPART.partition(b"\r\n\r\n")
    assert r[b"BODY[1]"] == b"first part text\r\nzebra line"
    assert r[b"BODY[2]"] == b"AAECAwQ="
    assert r[b"BODY[2.MIME]"].startswith(b"Content-Type: application/octet-stream") and r[b"BODY[2.MIME]"].endswith(b"\r\n\r\n")
    assert r[b"BODY[TEXT]"] == body
    assert r[b"BODY[HEADER]"] == header + b"\r\n\r\n"
    assert r[b"BODY[HEADER.FIELDS (SUBJECT X-TRACE)]"] == b"Subject: =?utf-8?q?caf=C3=A9?= report\r\nX-Trace: keep me\r\n\r\n"
    notf = r[b"BODY[HEADER.FIELDS.NOT (SUBJECT X-TRACE)]"]
    assert b"Subject" not in notf and b"From: Alice" in notf and notf.endswith(b"\r\n\r\n")
    assert r[b"BODY[1]<6>"] == b"part"
    assert r[b"BODY[]<0>"] == b"From"
    assert r[b"BODY[]<5000>"] == b""
    bs = r[b"BODYSTRUCTURE"]
    assert bs.is_multipart and bs[1] == b"MIXED"
    text, attachment = bs[0]
    assert text[:2] == (b"TEXT", b"PLAIN") and text[2] == (b"CHARSET", b"utf-8") and text[6] == len(b"first part text\r\nzebra line")
    assert attachment[:2] == (b"APPLICATION", b"OCTET-STREAM") and attachment[5] == b"BASE64"
    assert bs[2] == (b"BOUNDARY", b"BoUnD")  # case kept
    env = r[b"ENVELOPE"]
    assert env.subject == b"=?utf-8?q?caf=C3=A9?= report"
    assert env.from_[0].mailbox == b"alice" and env.from_[0].host == b"example.test" and env.from_[0].name == b"Alice"
    assert r[b"RFC822.SIZE"] == len(MULTIPART)
    assert b"\\Seen" not in r[b"FLAGS"]  # BODY.PEEK
    r = c.fetch([uid], ["BODY[1]"])[uid]
    assert b"\\Seen" in r[b"FLAGS"]  # BODY[] sets \Seen and reports it (RFC 3501 6.4.5)
    c.logout()


def test_fetch_large_message_streams(srv):
    body = b"".join(b"line %07d of a large message, padded to look like real text........\r\n" % i for i in range(40000))
    raw = message(1, body=body)
    (uid,) = deliver(srv, raw)
    m = login(srv, tls="implicit")
    m.select("INBOX")
    typ, data = m.uid("FETCH", str(uid), "(BODY.PEEK[])")
    assert data[0][1] == raw
    typ, data = m.uid("FETCH", str(uid), "(BODY.PEEK[]<1000000.65536> RFC822.SIZE)")
    assert data[0][1] == raw[1000000:1065536]
    typ, data = m.fetch("1", "(RFC822)")
    assert data[0][1] == raw
    m.logout()


# -- SEARCH, STORE, EXPUNGE, COPY, MOVE ------------------------------------------------------------


def test_search(srv):
    deliver(srv,
            message(1, "Invoice March", b"please pay the amount\r\n", extra="Cc: carol@example.test\r\n"),
            message(2, "Lunch?", b"sandwiches\r\n"),
            message(3, "Re: Invoice March", b"paid\r\n" + b"x" * 5000),
            MULTIPART)
    c = client(srv)
    c.select_folder("INBOX")
    c.add_flags([2], [b"\\Flagged", b"$Important"])
    c.add_flags([3], [b"\\Seen"])
    seq = {u: i + 1 for i, u in enumerate(c.search("ALL"))}
    assert len(seq) == 4
    uids = sorted(seq)
    assert c.search(["SUBJECT", "invoice"]) == [uids[0], uids[2]]
    assert c.search(["BODY", "SANDWICH"]) == [uids[1]]
    assert c.search(["TEXT", "zebra"]) == [uids[3]]
    assert c.search(["TEXT", "lunch"]) == [uids[1]]
    assert c.search(["HEADER", "X-Trace", "keep"]) == [uids[3]]
    assert c.search(["HEADER", "X-Trace", ""]) == [uids[3]]
    assert c.search(["SUBJECT", "café"], charset="UTF-8") == [uids[3]]
    assert c.search(["CC", "carol"]) == [uids[0]]
    assert c.search(["FROM", "alice"]) == uids
    assert c.search(["LARGER", "4000"]) == [uids[2]]
    assert c.search(["SMALLER", "4000", "NOT", "SUBJECT", "lunch"]) == [uids[0], uids[3]]
    assert c.search(["OR", "FLAGGED", "SEEN"]) == [uids[1], uids[2]]
    assert c.search(["UNSEEN", "UNFLAGGED"]) == [uids[0], uids[3]]
    assert c.search(["KEYWORD", "$Important"]) == [uids[1]]
    assert c.search(["UNKEYWORD", "$Important"]) == [uids[0], uids[2], uids[3]]
    assert c.search(["SENTON", "03-Jan-2024"]) == [uids[1]]
    assert c.search(["SENTBEFORE", "03-Jan-2024"]) == [uids[0]]
    assert c.search(["SENTSINCE", "03-Jan-2024", "NOT", "HEADER", "X-Trace", ""]) == [uids[1], uids[2]]
    assert c.search(["SINCE", "1-Jan-2020"]) == uids and c.search(["BEFORE", "1-Jan-2020"]) == []
    assert c.search(["2:3"]) == [uids[1], uids[2]]
    assert c.search(["UID", f"{uids[1]}:*"]) == uids[1:]
    assert c.search(["NOT", "2,4"]) == [uids[0], uids[2]]
    assert c.search([["OR", "SUBJECT", "lunch", "SUBJECT", "march"], "SEEN"]) == [uids[2]]
    m = login(srv)
    m.select("INBOX")
    assert m.search(None, "1:2")[1] == [b"1 2"]
    assert m.uid("SEARCH", "SUBJECT", "lunch")[1] == [str(uids[1]).encode()]
    assert m.search(None, "NEW")[1] == [b""]  # c took \Recent
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        m.search(None, "FROBNICATE")
    typ, data = m.search("KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[0]
    with pytest.raises(imaplib.IMAP4.error):
        m.search(None, "BEFORE", "yesterday")
    m.logout(), c.logout()


def test_store_flags(srv):
    deliver(srv, message(1), message(2), message(3))
    m = login(srv)
    m.select("INBOX")
    typ, data = m.store("1:2", "+FLAGS", "(\\Seen \\Flagged)")
    assert [re.sub(rb" \\Recent", b"", d) for d in data] == [b"1 (FLAGS (\\Flagged \\Seen))", b"2 (FLAGS (\\Flagged \\Seen))"]
    typ, data = m.store("2", "-FLAGS", "\\Flagged")
    assert data == [b"2 (FLAGS (\\Seen \\Recent))"]
    typ, data = m.store("3", "FLAGS.SILENT", "(\\Answered Work)")
    assert data == [None]
    typ, data = m.uid("STORE", "1:*", "+FLAGS", "(\\Draft)")
    assert all(b"UID" in d for d in data)
    flags = {u: f for u, f in ((m.uid, m.flags) for m in store(srv).mailbox(BOB).folder("INBOX").snapshot().messages)}
    assert sorted(map(sorted, flags.values())) == sorted(map(sorted, [{"\\Seen", "\\Flagged", "\\Draft"}, {"\\Seen", "\\Draft"},
                                                                       {"\\Answered", "Work", "\\Draft"}]))
    assert b"Work" in untagged(m, "FLAGS")[-1]
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        m.store("1", "+FLAGS", "(\\Bogus)")
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        m.store("9", "+FLAGS", "(\\Seen)")
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        m.store("1", "FROBFLAGS", "(\\Seen)")
    m.logout()


def test_expunge_sequence_numbers(srv):
    uids = deliver(srv, *[message(i) for i in range(1, 7)])
    r = raw_login(srv)
    r.cmd(b"s", b"SELECT INBOX")
    r.cmd(b"d", b"STORE 2,4:5 +FLAGS.SILENT (\\Deleted)")
    lines = r.cmd(b"e", b"EXPUNGE")
    # highest first: each number is right when the client applies them in order
    assert lines[:-1] == [b"* 5 EXPUNGE", b"* 4 EXPUNGE", b"* 2 EXPUNGE"]
    lines = r.cmd(b"f", b"FETCH 1:* (UID)")
    assert [int(re.search(rb"UID (\d+)", x).group(1)) for x in lines[:-1]] == [uids[0], uids[2], uids[5]]
    assert [x.split()[1] for x in lines[:-1]] == [b"1", b"2", b"3"]
    # UID EXPUNGE removes only the given UIDs (RFC 4315 2.1)
    r.cmd(b"g", b"STORE 1:* +FLAGS.SILENT (\\Deleted)")
    lines = r.cmd(b"h", b"UID EXPUNGE %d" % uids[2])
    assert lines[:-1] == [b"* 2 EXPUNGE"] and lines[-1].startswith(b"h OK")
    assert [m.uid for m in store(srv).mailbox(BOB).folder("INBOX").snapshot().messages] == [uids[0], uids[5]]
    # CLOSE expunges silently
    lines = r.cmd(b"i", b"CLOSE")
    assert lines == [b"i OK CLOSE completed"]
    assert store(srv).mailbox(BOB).folder("INBOX").snapshot().messages == ()
    assert r.cmd(b"j", b"FETCH 1 FLAGS")[-1].startswith(b"j BAD")  # no mailbox selected
    r.close()


def test_copy_move_uidplus(srv):
    uids = deliver(srv, message(1), message(2), message(3))
    c = client(srv)
    c.select_folder("INBOX")
    c.add_flags([uids[0]], [b"\\Flagged"])
    c._imap.uid("COPY", f"{uids[0]}:{uids[1]}", "Archive")
    archive = store(srv).mailbox(BOB).folder("Archive").snapshot()
    code = f"{archive.uidvalidity} {uids[0]}:{uids[1]} {archive.messages[0].uid}:{archive.messages[1].uid}"
    assert c._imap.untagged_responses.pop("COPYUID") == [code.encode()]
    assert "\\Flagged" in archive.messages[0].flags
    assert c.folder_status("Archive", ["MESSAGES"])[b"MESSAGES"] == 2
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="TRYCREATE"):
        c.copy([uids[0]], "Nowhere")
    m = login(srv)
    m.select("INBOX")
    typ, data = m.uid("MOVE", str(uids[1]), "Trash")
    assert typ == "OK"
    assert untagged(m, "EXPUNGE") == [b"2"]
    assert any(b"COPYUID" in x for x in untagged(m, "OK") if x)
    typ, data = m.move("1", "Junk") if hasattr(m, "move") else m._simple_command("MOVE", "1", "Junk")
    assert typ == "OK"
    assert [x.uid for x in store(srv).mailbox(BOB).folder("INBOX").snapshot().messages] == [uids[2]]
    assert len(store(srv).mailbox(BOB).folder("Trash").snapshot().messages) == 1
    m.logout(), c.logout()


# -- two sessions, IDLE ------------------------------------------------------------------------------


def test_two_sessions_see_each_other(srv):
    uids = deliver(srv, message(1), message(2), message(3))
    a, b = raw_login(srv), raw_login(srv)
    a.cmd(b"a", b"SELECT INBOX")
    b.cmd(b"b", b"SELECT INBOX")
    b.cmd(b"b", b"STORE 2 +FLAGS.SILENT (\\Seen)")
    lines = a.cmd(b"a", b"NOOP")
    assert any(re.match(rb"\* 2 FETCH \(UID %d FLAGS \(\\Seen( \\Recent)?\)\)" % uids[1], x) for x in lines), lines
    b.send(b"b APPEND INBOX {20}\r\n")
    assert b.line().startswith(b"+")
    b.send(b"Subject: new\r\n\r\nbody\r\n")
    b.until(b"b")
    assert b"* 4 EXISTS" in a.cmd(b"a", b"NOOP")
    b.cmd(b"b", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.cmd(b"b", b"EXPUNGE")
    lines = a.cmd(b"a", b"FETCH 1:* (UID)")  # no EXPUNGE during FETCH (RFC 3501 7.4.1)
    assert not any(b"EXPUNGE" in x for x in lines)
    assert not any(b"UID %d)" % uids[0] in x for x in lines)  # the expunged message is not returned
    lines = a.cmd(b"a", b"NOOP")
    assert b"* 1 EXPUNGE" in lines
    lines = a.cmd(b"a", b"FETCH 1 (UID)")
    assert lines[0] == b"* 1 FETCH (UID %d)" % uids[1]
    a.close(), b.close()


def test_idle(srv):
    deliver(srv, message(1))
    c = client(srv)
    c.select_folder("INBOX")
    c.idle()
    deliver(srv, message(2))  # another process (the test's), straight into the store
    t0 = time.monotonic()  # from the moment the message is there
    events = c.idle_check(timeout=5)
    assert (2, b"EXISTS") in events and time.monotonic() - t0 < 2.0, events
    other = login(srv)
    other.append("INBOX", None, None, message(3))  # this process, another session
    t0 = time.monotonic()
    events = []
    while time.monotonic() - t0 < 3 and (3, b"EXISTS") not in events:
        events += c.idle_check(timeout=1)
    assert (3, b"EXISTS") in events and time.monotonic() - t0 < 1.0, events
    other.select("INBOX")
    other.store("1", "+FLAGS", "\\Deleted")
    other.expunge()
    events = c.idle_check(timeout=3)
    assert (1, b"EXPUNGE") in events, events
    text, _ = c.idle_done()
    assert b"IDLE terminated" in text
    assert c.noop()[0].startswith(b"NOOP")
    other.logout(), c.logout()


# -- robustness ----------------------------------------------------------------------------------------


def test_bad_input_gets_bad_never_a_traceback(srv):
    r = Raw(srv.port("imap"))
    assert r.cmd(b"a", b"FROBNICATE")[-1].startswith(b"a BAD")
    assert r.cmd(b"b", b"")[-1].startswith(b"b BAD")
    r.send(b"\r\n")
    assert r.line().startswith(b"* BAD")
    r.send(b"+x NOOP\r\n")
    assert r.line().startswith(b"* BAD")
    r.login()
    r.cmd(b"s", b"SELECT INBOX")
    for junk in [b"FETCH", b"FETCH 1", b"FETCH x FLAGS", b"FETCH 1:* (FROB)", b"FETCH 0 FLAGS", b"STORE 1",
                 b"SEARCH", b"SEARCH (", b"UID FROB 1", b"LIST", b'SELECT "unterminated', b"STATUS INBOX (FROB)",
                 b"COPY 1", b"APPEND INBOX {abc}", b"SEARCH OR SEEN", b"UID SEARCH UID x", b"CREATE"]:
        lines = r.cmd(b"t", junk)
        assert lines[-1].startswith((b"t BAD", b"t NO")), (junk, lines)
    assert r.cmd(b"n", b"NOOP")[-1] == b"n OK NOOP completed"
    r.send(b"x " + b"A" * 70000 + b"\r\n")
    assert r.line().startswith(b"* BYE")
    r.close()
    time.sleep(0.2)
    assert "Traceback" not in srv.log_text()


def test_pipelined_commands_answer_in_order(srv):
    deliver(srv, message(1), message(2))
    r = raw_login(srv)
    r.send(b"p1 SELECT INBOX\r\np2 FETCH 1:* (UID)\r\np3 STORE 1 +FLAGS (\\Seen)\r\np4 SEARCH SEEN\r\np5 NOOP\r\n")
    lines = r.until(b"p5")
    tags = [x.split()[0] for x in lines if not x.startswith(b"*")]
    assert tags == [b"p1", b"p2", b"p3", b"p4", b"p5"]
    assert b"* SEARCH 1" in lines
    r.close()


def test_uids_stable_across_restart(srv):
    uids = deliver(srv, message(1), message(2))
    m = login(srv)
    m.select("INBOX")
    v1 = untagged(m, "UIDVALIDITY")
    m.logout()
    srv.stop()
    srv.start()
    m = login(srv)
    m.select("INBOX")
    assert untagged(m, "UIDVALIDITY") == v1
    assert [int(re.search(rb"UID (\d+)", d).group(1)) for d in m.fetch("1:*", "(UID)")[1]] == uids
    m.logout()


# -- across protocols --------------------------------------------------------------------------------


def test_smtp_delivery_fetched_byte_exact_with_pop3_uid(server_factory):
    srv = server_factory(listeners=["smtp", "imap", "imaps"]).start()
    sent = (b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: across\r\n"
            b"Message-ID: <across@example.test>\r\n\r\nfrom SMTP to IMAP\r\n.leading dot\r\n")
    watcher = client(srv)
    watcher.select_folder("INBOX")
    watcher.idle()
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=20) as s:
        s.sendmail(ALICE, [BOB], sent)  # stored when this returns (250 after the fsync)
        t0 = time.monotonic()
        events = watcher.idle_check(timeout=5)
    waited = time.monotonic() - t0
    # IDLE hears of mail delivered by SMTP in the same process within a second
    assert (1, b"EXISTS") in events and waited < 1.0, (events, waited)
    watcher.idle_done()
    watcher.logout()
    srv.wait_for_messages(BOB, 1)
    snap = store(srv).mailbox(BOB).folder("INBOX").snapshot()
    stored = store(srv).mailbox(BOB).folder("INBOX").read_message(snap.messages[0].uid)
    assert stored.endswith(sent)  # trace headers are added at the top
    c = client(srv)
    c.select_folder("INBOX", readonly=True)
    (uid,) = c.search(["HEADER", "Message-ID", "across@example.test"])
    fetched = c.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
    assert fetched == stored
    assert uid == snap.messages[0].uid
    uidl = f"{snap.uidvalidity}.{snap.messages[0].uid}"  # what POP3 UIDL says for it with uidl_format "%v.%u"
    assert uidl == f"{c.folder_status('INBOX', ['UIDVALIDITY'])[b'UIDVALIDITY']}.{uid}"
    c.logout()


def test_condstore(srv):
    uids = deliver(srv, message(1), message(2), message(3))
    r = raw_login(srv)
    assert b"CONDSTORE" in r.cmd(b"c", b"CAPABILITY")[0]
    lines = r.cmd(b"s", b"SELECT INBOX (CONDSTORE)")
    highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"\n".join(lines)).group(1))
    assert highest == max(1, store(srv).mailbox(BOB).folder("INBOX").snapshot().highestmodseq)
    lines = r.cmd(b"f", b"FETCH 1:* (UID FLAGS MODSEQ)")
    modseqs = [int(re.search(rb"MODSEQ \((\d+)\)", x).group(1)) for x in lines[:-1]]
    snap = store(srv).mailbox(BOB).folder("INBOX").snapshot()
    assert modseqs == [m.modseq for m in snap.messages]
    lines = r.cmd(b"t", b"STORE 2 +FLAGS.SILENT (\\Flagged)")
    new = int(re.search(rb"MODSEQ \((\d+)\)", lines[0]).group(1))  # sent even with .SILENT
    assert new > max(modseqs)
    lines = r.cmd(b"g", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % max(modseqs))
    assert len(lines) == 2 and b"UID %d" % uids[1] in lines[0] and b"MODSEQ (%d)" % new in lines[0]
    lines = r.cmd(b"u", b"UID STORE %d,%d (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % (uids[0], uids[1], max(modseqs)))
    assert lines[-1].startswith(b"u OK [MODIFIED %d]" % uids[1])
    lines = r.cmd(b"q", b"SEARCH MODSEQ %d" % new)
    assert lines[0].startswith(b"* SEARCH 1 2 (MODSEQ ")
    lines = r.cmd(b"st", b"STATUS Sent (HIGHESTMODSEQ MESSAGES)")
    assert re.match(rb'\* STATUS "Sent" \(HIGHESTMODSEQ \d+ MESSAGES 0\)', lines[0])
    other = raw_login(srv)
    other.cmd(b"s", b"SELECT INBOX")
    other.cmd(b"t", b"STORE 3 +FLAGS.SILENT (\\Answered)")
    lines = r.cmd(b"n", b"NOOP")
    assert re.match(rb"\* 3 FETCH \(UID %d FLAGS \(\\Answered( \\Recent)?\) MODSEQ \(\d+\)\)" % uids[2], lines[0]), lines
    assert r.cmd(b"e", b"ENABLE CONDSTORE")[0] == b"* ENABLED CONDSTORE"
    other.close(), r.close()


def test_login_throttling(server_factory):
    srv = server_factory(listeners=LISTENERS, extra="[auth]\nmax_failures = 2\nfailure_delay = 0.01\n").start()
    r = Raw(srv.port("imap"))
    assert r.cmd(b"a", b"LOGIN bob@example.test wrong1")[-1].startswith(b"a NO [AUTHENTICATIONFAILED]")
    assert r.cmd(b"b", b"LOGIN bob@example.test wrong2")[-1].startswith(b"b NO [AUTHENTICATIONFAILED]")
    # the address is locked out now: even the right password gets a temporary refusal
    assert r.cmd(b"c", f'LOGIN {BOB} "{PASSWORDS[BOB]}"'.encode())[-1].startswith(b"c NO [UNAVAILABLE]")
    r.close()


# -- other clients ---------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (apt-get install curl)")
def test_curl_imaps_and_starttls(srv):
    uids = deliver(srv, message(1), message(2, body=b"the second body\r\n"))
    base = ["curl", "-sS", "--cacert", srv.ca_file, "--user", f"{BOB}:{PASSWORDS[BOB]}"]
    url = f"imaps://127.0.0.1:{srv.port('imaps')}/INBOX"
    got = subprocess.run(base + [f"{url};UID={uids[1]}"], capture_output=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout == message(2, body=b"the second body\r\n")
    found = subprocess.run(base + [url, "-X", "SEARCH SUBJECT \"message 1\""], capture_output=True, timeout=30)
    assert found.returncode == 0 and found.stdout.strip() == b"* SEARCH 1", found
    stls = subprocess.run(base + ["--ssl-reqd", f"imap://127.0.0.1:{srv.port('imap')}/INBOX;UID={uids[0]}"],
                          capture_output=True, timeout=30)
    assert stls.returncode == 0, stls.stderr
    assert stls.stdout == message(1)


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail not installed (apt-get install fetchmail)")
def test_fetchmail_imap_fetches_unseen_once(srv, tmp_path):
    deliver(srv, message(1), message(2))
    fm = Fetchmail(srv, tmp_path / "fm", "IMAP")
    first = fm.run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert fm.fetched() == 2
    assert "STARTTLS" in first.stdout + first.stderr
    second = fm.run()
    assert second.returncode == 1, second.stdout + second.stderr  # 1: no new mail (the two are \Seen)
    deliver(srv, message(3))
    third = fm.run()
    assert third.returncode == 0, third.stdout + third.stderr
    assert fm.fetched() == 3
    flags = [m.flags for m in store(srv).mailbox(BOB).folder("INBOX").snapshot().messages]
    assert len(flags) == 3 and all("\\Seen" in f for f in flags)  # keep: still there, now \Seen


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync not installed (apt-get install isync)")
def test_mbsync_two_way_sync(srv, tmp_path):
    uids = deliver(srv, message(1), message(2))
    deliver(srv, message(3, "filed"), folder="Archive")
    local = tmp_path / "mail"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount acct\nHost localhost\nPort {srv.port('imaps')}\nUser {BOB}\nPass \"{PASSWORDS[BOB]}\"\n"
        f"SSLType IMAPS\nCertificateFile {srv.ca_file}\n\n"
        "IMAPStore remote\nAccount acct\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel ch\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\n"
    )

    def run():
        r = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    def norm(data: bytes) -> bytes:
        """mbsync stores LF line ends locally and tags messages with X-TUID while it works."""
        return re.sub(rb"X-TUID: [^\n]*\n", b"", data.replace(b"\r\n", b"\n"))

    def local_files(folder: str) -> dict[str, bytes]:
        return {p.name: norm(p.read_bytes()) for sub in ("new", "cur") for p in (local / folder / sub).iterdir()}

    run()
    assert sorted(local_files("INBOX").values()) == sorted([norm(message(1)), norm(message(2))])
    assert list(local_files("Archive").values()) == [norm(message(3, "filed"))]
    # local changes go up: a flag, and a new message in a folder
    cur = local / "INBOX" / "cur"
    for sub in ("new", "cur"):
        for p in (local / "INBOX" / sub).iterdir():
            if norm(p.read_bytes()) == norm(message(1)):
                p.rename(cur / (p.name.split(":2,")[0] + ":2,FS"))
    (local / "Archive" / "new" / "1700000000.local.test").write_bytes(message(4, "written offline"))
    run()
    inbox = {m.uid: m for m in store(srv).mailbox(BOB).folder("INBOX").snapshot().messages}
    assert inbox[uids[0]].flags == {"\\Seen", "\\Flagged"}
    archive = store(srv).mailbox(BOB).folder("Archive")
    bodies = sorted(norm(archive.read_message(m.uid)) for m in archive.snapshot().messages)
    assert bodies == sorted([norm(message(3, "filed")), norm(message(4, "written offline"))])
    # a message removed on the server disappears locally
    folder = store(srv).mailbox(BOB).folder("INBOX")
    folder.expunge([uids[1]])
    run()
    assert list(local_files("INBOX").values()) == [norm(message(1))]
    assert "Traceback" not in srv.log_text()


def test_starttls_discards_pipelined_plaintext(srv):
    """CVE-2011-0411 class: a command sent in the clear behind STARTTLS must not run after it."""
    r = Raw(srv.port("imap"))
    r.send(b"s1 STARTTLS\r\ns2 LOGIN bob@example.test x\r\n")
    assert r.until(b"s1")[-1].startswith(b"s1 OK")
    r.sock = srv.ssl_context().wrap_socket(r.sock, server_hostname="localhost")
    r.buf = b""
    lines = r.cmd(b"s3", b"NOOP")
    assert not any(line.startswith(b"s2 ") for line in lines), lines  # s2 was thrown away
    assert lines[-1].startswith(b"s3 OK")


def test_imap4rev2_searchres_and_esort_through_imaplib(srv):
    # RFC 9051 6.3.1 (ENABLE IMAP4rev2), 6.4.4 (SEARCH answers ESEARCH), RFC 5182 ($), RFC 5267 3
    # (ESORT), against the real twistd: the replies as imaplib hands them over.
    deliver(srv, message(subject="pear"), message(subject="apple"), message(subject="fig"))
    m = login(srv)
    assert "IMAP4REV2" in m.capabilities
    assert m.enable("IMAP4rev2") == ("OK", [b"ENABLE completed"]) and untagged(m, "ENABLED") == [b"IMAP4rev2"]
    assert m.select("INBOX")[0] == "OK"
    assert untagged(m, "LIST") == [b'(\\HasNoChildren) "/" "INBOX"'] and untagged(m, "RECENT") == []
    typ, _ = m._simple_command("SEARCH", "SUBJECT", "p")
    assert typ == "OK" and untagged(m, "ESEARCH")[0].endswith(b") ALL 1:2")
    assert m._simple_command("UID", "SORT", "RETURN", "(SAVE ALL)", "(SUBJECT)", "UTF-8", "ALL")[0] == "OK"
    assert untagged(m, "ESEARCH")[0].endswith(b") UID ALL 2:3,1")
    typ, data = m.fetch("$", "(UID)")
    assert typ == "OK" and data == [b"1 (UID 1)", b"2 (UID 2)", b"3 (UID 3)"]
    m.logout()
