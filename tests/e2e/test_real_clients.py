"""End to end with real client programs: swaks, curl, fetchmail, mbsync and imapclient against a
real ``twistd`` process in a temporary directory, on loopback only.

Every client runs with a bounded timeout.  The programs are checked with the ``require``
fixture (tests/e2e/conftest.py): missing ones skip a test, or fail it when ``CI`` is set.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from support.servers import PASSWORDS

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
OUTSIDE = "someone@example.com"
CLIENT_TIMEOUT = 60  # seconds for any one client program run


# -- helpers ---------------------------------------------------------------------------------


def run(cmd: list[str], timeout: float = CLIENT_TIMEOUT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def out(p: subprocess.CompletedProcess) -> str:
    """Everything a client printed, for assertion messages and transcript checks."""
    return (p.stdout.decode("utf-8", "replace") if isinstance(p.stdout, bytes) else p.stdout) + \
        (p.stderr.decode("utf-8", "replace") if isinstance(p.stderr, bytes) else p.stderr)


def compose(tag: str, subject: str, body: str = "") -> bytes:
    """A message with the parts that break careless code: dot lines, 8-bit text, a long line."""
    return (
        f"From: Alice <{ALICE}>\r\nTo: Bob <{BOB}>\r\nSubject: {subject}\r\n"
        f"Date: Tue, 02 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{tag}@e2e.example.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        f"Hello Bob,\r\n{body}"
        ".a line that starts with a dot\r\n..and one with two\r\n.\r\n"
        "Grüße aus Köln, ½ € – ok\r\n"
        + "0123456789" * 90 + "\r\n"
        "-- \r\nAlice\r\n"
    ).encode("utf-8")


def message_id(data: bytes) -> str:
    m = re.search(rb"^Message-ID: <([^>]+)>\r?$", data, re.M | re.I)
    assert m, data[:500]
    return m.group(1).decode()


def swaks(srv, *, to: str, sender: str = ALICE, port: str = "submission", tls: str | None = "--tls",
          auth: tuple[str, str] | None = (ALICE, PASSWORDS[ALICE]), data: Path | None = None,
          extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = ["swaks", "--server", "127.0.0.1", "--port", str(srv.port(port)), "--helo", "client.e2e.example",
           "--timeout", "20", "--from", sender, "--to", to, *extra]
    if tls:
        cmd += [tls, "--tls-verify", "--tls-ca-path", srv.ca_file]
    if auth:
        cmd += ["--auth", "PLAIN", "--auth-user", auth[0], "--auth-password", auth[1]]
    if data:
        cmd += ["--data", f"@{data}"]
    return run(cmd, text=True)


def smtp_reply(transcript: str, command: str) -> str:
    """The server's reply line to the first client line starting with ``command`` in a swaks
    transcript (``" -> RCPT TO:<x>"`` then ``"<** 554 ..."``; ``~`` in place of ``-`` under TLS)."""
    lines = transcript.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^ [-~]> " + re.escape(command), line):
            for reply in lines[i + 1:]:
                if reply.startswith("<"):
                    return re.sub(r"^<[-~*]{1,2}\s+", "", reply)
    raise AssertionError(f"no {command!r} in the swaks transcript:\n{transcript}")


def curl(*args: str) -> subprocess.CompletedProcess:
    return run(["curl", "-sS", "--max-time", "30", *args])


def imap(srv, user: str = BOB, password: str | None = None):
    import imapclient

    c = imapclient.IMAPClient("127.0.0.1", port=srv.port("imaps"), ssl=True, ssl_context=srv.ssl_context(),
                              timeout=20)
    c.login(user, PASSWORDS[user] if password is None else password)
    return c


def fetchmail(srv, home: Path, *, port: str = "pop3", user: str = BOB):
    """fetchmail over POP3 with STLS required (``port="pop3"``) or implicit TLS (``"pop3s"``),
    certificate checked against the dev CA, each message piped to its own file in ``home/got``."""
    home.mkdir(exist_ok=True)
    got = home / "got"
    got.mkdir(exist_ok=True)
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f'poll localhost via 127.0.0.1 with proto POP3 service {srv.port(port)}\n'
        f'  user "{user}" there with password "{PASSWORDS[user]}" is root here\n'
        f'  keep no rewrite no stripcr {"ssl " if port == "pop3s" else ""}sslproto TLS1.2+ sslcertck\n'
        f'  sslcertfile "{srv.ca_file}" sslcommonname localhost\n'
        f'  mda "cat > {got}/msg.$$"\n'  # the shell fetchmail runs the MDA with: one file a message
    )
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))
    p = run(["fetchmail", "-f", str(rc), "--nodetach", "-v"], env=env, text=True)
    return p, [f.read_bytes() for f in sorted(got.iterdir())]


FETCHMAIL_RECEIVED = re.compile(rb"Received: from 127\.0\.0\.1 \[127\.0\.0\.1\]\r\n\tby [^\r\n]* with POP3 "
                                rb"\(fetchmail-[^\r\n]*\r\n(?:\t[^\r\n]*\r\n)*")


# -- 1. one message, the same bytes through every client ----------------------------------------


def test_same_bytes_through_every_client(require, e2e_server, tmp_path):
    """alice sends with swaks (STARTTLS + AUTH) and curl (smtp:// --ssl-reqd); bob's copy reads back
    byte-identical with the store through imapclient, curl imaps:// and imap:// (STARTTLS), curl
    pop3s:// and pop3:// (STLS) and fetchmail.  The store holds exactly what was sent below the
    delivery headers (Return-Path, Delivered-To, Received)."""
    require("swaks", "curl", "fetchmail", modules=["imapclient"])
    srv = e2e_server().start()

    # a client that does not know the dev CA is refused: the checks below really verify it
    untrusting = run(["swaks", "--server", "127.0.0.1", "--port", str(srv.port("submission")), "--timeout", "20",
                      "--tls", "--tls-verify", "--from", ALICE, "--to", BOB, "--quit-after", "TLS"], text=True)
    assert untrusting.returncode == 29 and "certificate verify failed" in out(untrusting), out(untrusting)
    assert curl(f"smtp://127.0.0.1:{srv.port('submission')}/client.e2e.example", "--ssl-reqd").returncode == 60

    sent_swaks = compose("by-swaks", "sent with swaks", "swaks wrote this.\r\n").removesuffix(b"\r\n")
    (tmp_path / "swaks.eml").write_bytes(sent_swaks)  # swaks ends the last line itself
    p = swaks(srv, to=BOB, data=tmp_path / "swaks.eml")
    assert p.returncode == 0, out(p)
    assert "=== TLS started" in p.stdout and smtp_reply(p.stdout, "AUTH PLAIN").startswith("235 ")
    sent_swaks += b"\r\n"

    sent_curl = compose("by-curl", "sent with curl", "curl wrote this.\r\n")
    (tmp_path / "curl.eml").write_bytes(sent_curl)
    p = curl(f"smtp://127.0.0.1:{srv.port('submission')}/client.e2e.example", "--ssl-reqd", "--cacert", srv.ca_file,
             "--user", f"{ALICE}:{PASSWORDS[ALICE]}", "--mail-from", ALICE, "--mail-rcpt", BOB,
             "--upload-file", str(tmp_path / "curl.eml"))
    assert p.returncode == 0, out(p)

    sent = {"by-swaks@e2e.example.test": sent_swaks, "by-curl@e2e.example.test": sent_curl}
    stored = {message_id(m): m for m in srv.wait_for_messages(BOB, 2)}
    assert stored.keys() == sent.keys()
    for mid, data in sent.items():
        assert stored[mid].endswith(data), (mid, stored[mid])
        added = stored[mid][: -len(data)]
        assert re.fullmatch(rb"Return-Path: <alice@example\.test>\r\nDelivered-To: bob@example\.test\r\n"
                            rb"Received: from client\.e2e\.example \(\[127\.0\.0\.1\]\)\r\n(?:\t[^\r\n]*\r\n)+",
                            added), added
        assert b" with ESMTPSA " in added and b"(authenticated as alice@example.test)" in added, added

    # IMAP: imapclient, then curl over implicit TLS and over STARTTLS
    with imap(srv) as c:
        c.select_folder("INBOX", readonly=True)
        fetched = c.fetch(c.search("ALL"), ["BODY.PEEK[]", "RFC822.SIZE"])
    by_imapclient = {message_id(d[b"BODY[]"]): (uid, d[b"BODY[]"], d[b"RFC822.SIZE"]) for uid, d in fetched.items()}
    assert {mid: body for mid, (_, body, _) in by_imapclient.items()} == stored
    assert all(size == len(body) for _, body, size in by_imapclient.values())
    user = ["--cacert", srv.ca_file, "--user", f"{BOB}:{PASSWORDS[BOB]}"]
    for mid, (uid, _, _) in by_imapclient.items():
        p = curl(*user, f"imaps://127.0.0.1:{srv.port('imaps')}/INBOX;UID={uid}")
        assert p.returncode == 0, out(p)
        assert p.stdout == stored[mid]
        p = curl(*user, "--ssl-reqd", f"imap://127.0.0.1:{srv.port('imap')}/INBOX;UID={uid}")
        assert p.returncode == 0, out(p)
        assert p.stdout == stored[mid]

    # POP3: curl over implicit TLS (and STLS), then fetchmail with STLS into one file a message
    p = curl(*user, f"pop3s://127.0.0.1:{srv.port('pop3s')}/")
    assert p.returncode == 0, out(p)
    listing = dict(line.split() for line in p.stdout.decode().splitlines())
    assert sorted(int(size) for size in listing.values()) == sorted(len(m) for m in stored.values())
    for number, size in listing.items():
        p = curl(*user, f"pop3s://127.0.0.1:{srv.port('pop3s')}/{number}")
        assert p.returncode == 0, out(p)
        assert p.stdout == stored[message_id(p.stdout)] and len(p.stdout) == int(size)
    p = curl(*user, "--ssl-reqd", f"pop3://127.0.0.1:{srv.port('pop3')}/1")
    assert p.returncode == 0, out(p)
    assert p.stdout == stored[message_id(p.stdout)]

    p, mails = fetchmail(srv, tmp_path / "fetchmail")
    assert p.returncode == 0, out(p)
    assert "STLS" in out(p) and "2 messages for bob@example.test" in out(p), out(p)
    by_fetchmail = {}
    for m in mails:
        unwrapped, n = FETCHMAIL_RECEIVED.subn(b"", m, count=1)  # the one header fetchmail adds
        assert n == 1, m[:600]
        by_fetchmail[message_id(unwrapped)] = unwrapped
    assert by_fetchmail == stored

    # reading changed nothing but flags (file names): the store still holds the same bytes
    assert sorted(srv.messages(BOB)) == sorted(stored.values())
    assert srv.messages(ALICE) == [] and srv.messages(CAROL) == []


# -- 2. IDLE -----------------------------------------------------------------------------------


def test_idle_is_woken_by_a_swaks_delivery(require, e2e_server):
    """An imapclient IDLE on bob's INBOX stays quiet while carol gets mail, and reports the new
    message within 2 seconds of swaks delivering one to bob."""
    require("swaks", modules=["imapclient"])
    srv = e2e_server(listeners=["submission", "imaps"]).start()
    with imap(srv) as c:
        assert c.select_folder("INBOX")[b"EXISTS"] == 0
        c.idle()
        assert c.idle_check(timeout=0.3) == []
        p = swaks(srv, to=CAROL, extra=("--header", "Subject: for carol"))
        assert p.returncode == 0, out(p)
        assert srv.wait_for_messages(CAROL, 1)
        assert c.idle_check(timeout=1.0) == []  # not bob's folder: nothing to say

        p = swaks(srv, to=BOB, extra=("--header", "Subject: wake up, bob"))
        delivered = time.monotonic()  # the 250 after DATA came before swaks exited
        assert p.returncode == 0, out(p)
        responses = []
        while (1, b"EXISTS") not in responses and time.monotonic() - delivered < 2.0:
            responses += c.idle_check(timeout=max(0.05, 2.0 - (time.monotonic() - delivered)))
        waited = time.monotonic() - delivered
        assert (1, b"EXISTS") in responses, responses
        assert waited <= 2.0, f"IDLE woke {waited:.2f} s after the delivery"
        c.idle_done()
        [(uid, data)] = c.fetch("1", ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).items()
        assert data[b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() == b"Subject: wake up, bob"
    print(f"IDLE woke {waited:.3f} s after swaks finished")


# -- 3. restart ----------------------------------------------------------------------------------


def imap_state(srv, user: str = BOB) -> dict:
    """Folders with their attributes; per folder UIDVALIDITY, UIDNEXT, FLAGS and uid -> (flags,
    digest of the message).  \\Recent belongs to a session, so it is left out."""
    with imap(srv, user) as c:
        folders = sorted((name, tuple(sorted(flags))) for flags, _, name in c.list_folders())
        state: dict = {"folders": folders}
        for name, flags in folders:
            if b"\\Noselect" in flags:
                continue
            info = c.select_folder(name, readonly=True)
            msgs = c.fetch(c.search("ALL"), ["FLAGS", "BODY.PEEK[]"]) if info[b"EXISTS"] else {}
            state[name] = {
                "uidvalidity": info[b"UIDVALIDITY"], "uidnext": info[b"UIDNEXT"],
                "flags": sorted(info[b"FLAGS"]),
                "messages": {uid: (sorted(f for f in d[b"FLAGS"] if f != b"\\Recent"),
                                   hashlib.sha256(d[b"BODY[]"]).hexdigest()) for uid, d in msgs.items()},
            }
    return state


def local_maildir(root: Path) -> dict[str, bytes]:
    """Every file under mbsync's local store (messages by name, with their flags, and its state)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_restart_keeps_uids_flags_folders_and_mbsync_finds_nothing_new(require, e2e_server, tmp_path):
    """Flags, keywords, a new folder with a moved message, and what mbsync pushed survive a restart
    with the same UIDs and UIDVALIDITY; mbsync's sync after the restart changes nothing locally."""
    require("swaks", "mbsync", modules=["imapclient"])
    srv = e2e_server(listeners=["submission", "imaps"]).start()
    p = swaks(srv, to=BOB, extra=("--header", "Subject: restart one"))
    assert p.returncode == 0, out(p)
    assert srv.wait_for_messages(BOB, 1)
    folder = "Projects/Übersicht 2024"
    with imap(srv) as c:
        for n in (2, 3):
            c.append("INBOX", compose(f"restart-{n}", f"restart {n}"), flags=[b"\\Seen"])
        c.create_folder(folder)
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] == 3 and info[b"UIDNEXT"] == 4
        uid = {d[b"ENVELOPE"].subject.decode(): u for u, d in c.fetch(c.search("ALL"), ["ENVELOPE"]).items()}
        assert sorted(uid.values()) == [1, 2, 3], uid
        c.add_flags([uid["restart one"]], [b"\\Flagged"])
        c.add_flags([uid["restart 2"]], [b"ProjectX", b"$Label1"])
        c.move([uid["restart 3"]], folder)
        assert sorted(c.search("ALL")) == sorted([uid["restart one"], uid["restart 2"]])

    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"

    def mbsync(*flags: str) -> str:
        rc.write_text(  # the port changes with each start
            f"IMAPAccount bob\nHost localhost\nPort {srv.port('imaps')}\nUser {BOB}\nPass \"{PASSWORDS[BOB]}\"\n"
            f"SSLType IMAPS\nCertificateFile {srv.ca_file}\nTimeout 20\n\n"
            "IMAPStore remote\nAccount bob\n\n"
            f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
            "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\n")
        r = run(["mbsync", *flags, "-c", str(rc), "-a"], text=True)
        assert r.returncode == 0, out(r)
        return out(r)

    mbsync()
    inbox = local / "INBOX"
    moved_dir = next(p for p in (local / "Projects").iterdir() if p.name.endswith(" 2024"))  # mUTF-7 name
    files = sorted(p.name for p in (inbox / "cur").iterdir()) + sorted(p.name for p in (inbox / "new").iterdir())
    assert len(files) == 2 and sum(name.endswith(":2,F") for name in files) == 1, files
    assert len(list(moved_dir.glob("*/*"))) == 1
    # two-way: a flag set and a message written on the local side go up
    [seen] = [p for p in (inbox / "cur").iterdir() if p.name.endswith(":2,S")]
    seen.rename(seen.with_name(seen.name.removesuffix(":2,S") + ":2,RS"))
    (moved_dir / "new" / "1700000000.written.offline").write_bytes(compose("offline", "written offline"))
    mbsync()

    before = imap_state(srv)
    names = [name for name, _ in before["folders"]]
    assert folder in names and "Projects" in names and "Archive" in names
    inbox_flags = {u: flags for u, (flags, _) in before["INBOX"]["messages"].items()}
    assert before["INBOX"]["uidnext"] == 4 and before["INBOX"]["uidvalidity"] > 0
    assert inbox_flags == {uid["restart one"]: [b"\\Flagged"],
                           uid["restart 2"]: sorted([b"$Label1", b"ProjectX", b"\\Seen", b"\\Answered"])}
    assert {b"ProjectX", b"$Label1"} <= set(before["INBOX"]["flags"])
    assert sorted(before[folder]["messages"]) == [1, 2]  # the moved one, and mbsync's upload
    local_before = local_maildir(local)

    srv.stop()
    srv.start()
    assert imap_state(srv) == before
    log = mbsync("-Dn")  # with the IMAP dialogue: nothing fetched, stored or appended
    # what mbsync sends (">>> n ...") never fetches, stores, appends or expunges
    assert "SELECT \"INBOX\"" in log and not re.search(r"^>>> \d+ .*(BODY\.PEEK\[|UID STORE|APPEND|EXPUNGE)", log,
                                                          re.M), log
    assert local_maildir(local) == local_before, log
    assert imap_state(srv) == before
    assert "Traceback" not in srv.log_text()


def test_uids_follow_arrival_order_across_smtp_and_append(require, e2e_server):
    """RFC 3501 2.3.1.1: each message added to a mailbox gets a higher UID than those added
    before it.  A message delivered by SMTP and then one APPENDed by a client (no session
    looked at the folder in between) must keep that order in UIDs, and APPENDUID must say so."""
    require("swaks", modules=["imapclient"])
    srv = e2e_server(listeners=["submission", "imaps"]).start()
    p = swaks(srv, to=BOB, extra=("--header", "Subject: first, by smtp"))
    assert p.returncode == 0, out(p)
    assert len(srv.wait_for_messages(BOB, 1)) == 1  # the 250 came after it was in new/
    with imap(srv) as c:
        appended = c.append("INBOX", compose("second", "second, by append"))
        appenduid = int(re.search(rb"\[APPENDUID \d+ (\d+)\]", appended).group(1))
        c.select_folder("INBOX", readonly=True)
        order = [d[b"ENVELOPE"].subject.decode()
                 for _, d in sorted(c.fetch(c.search("ALL"), ["ENVELOPE"]).items())]
        first_uid = min(c.search(["SUBJECT", "first, by smtp"]))
    assert order == ["first, by smtp", "second, by append"]
    assert first_uid < appenduid


# -- 4. no open relay -----------------------------------------------------------------------------


def queue_files(srv) -> list[str]:
    q = srv.base / "queue"
    return sorted(str(p.relative_to(q)) for p in q.rglob("*") if p.is_file()) if q.exists() else []


def test_no_open_relay(require, e2e_server):
    """The MX port takes mail for local users from anyone, but refuses outside recipients at
    RCPT with 5xx, whatever the sender claims; submission without AUTH refuses them too.
    Nothing reaches the outbound queue."""
    require("swaks")
    srv = e2e_server(listeners=["smtp", "submission", "submissions"]).start()

    for sender in ("stranger@elsewhere.example", ALICE):
        p = swaks(srv, port="smtp", tls=None, auth=None, sender=sender, to=OUTSIDE)
        assert p.returncode == 24, out(p)  # swaks: the RCPT failed
        assert re.match(r"5\d\d 5\.7\.1 ", smtp_reply(p.stdout, f"RCPT TO:<{OUTSIDE}>")), p.stdout
    p = swaks(srv, port="smtp", tls="--tls", auth=None, sender="stranger@elsewhere.example", to=OUTSIDE)
    assert p.returncode == 24 and smtp_reply(p.stdout, "RCPT TO:").startswith("5"), out(p)
    # the same stranger may write to bob: the refusal above is about relaying
    p = swaks(srv, port="smtp", tls=None, auth=None, sender="stranger@elsewhere.example", to=BOB)
    assert p.returncode == 0, out(p)
    assert len(srv.wait_for_messages(BOB, 1)) == 1

    for port, tls in (("submission", "--tls"), ("submission", None), ("submissions", "--tlsc")):
        p = swaks(srv, port=port, tls=tls, auth=None, to=OUTSIDE)
        assert p.returncode in (23, 24), (port, tls, out(p))  # refused at MAIL or at RCPT
        reply = smtp_reply(p.stdout, "MAIL FROM:" if p.returncode == 23 else "RCPT TO:")
        assert re.match(r"5\d\d 5\.7\.\d ", reply), (port, tls, reply)

    time.sleep(0.5)  # anything accepted would be in the queue by now (it is fsynced before the 250)
    assert queue_files(srv) == []
    assert srv.messages(ALICE) == [] and srv.messages(CAROL) == [] and len(srv.messages(BOB)) == 1


# -- 5. wrong passwords ------------------------------------------------------------------------


THROTTLE = ("[auth]\nmax_failures = 6\nlockout = 6.0\nfailure_delay = 0.05\nmax_failure_delay = 0.2\n"
            "failure_window = 60.0\n")


def test_wrong_passwords_refused_everywhere_then_throttled(require, e2e_server):
    """A wrong password is refused by SMTP AUTH (swaks), IMAP (curl imap:// and imaps://,
    imapclient) and POP3 (curl pop3:// and pop3s://); failures are answered later and later,
    the sixth locks the address out (the right password then gets each protocol's temporary
    error), and once the lockout is over the right passwords work on every protocol."""
    require("swaks", "curl", modules=["imapclient"])
    import imapclient.exceptions

    srv = e2e_server(extra=THROTTLE).start()
    ca = ["--cacert", srv.ca_file]

    p = swaks(srv, to=BOB, auth=(ALICE, "not-alices-password"))
    assert p.returncode == 28, out(p)  # swaks: AUTH failed
    assert smtp_reply(p.stdout, "AUTH PLAIN").startswith("535 5.7.8 "), p.stdout
    wrong = ["--user", f"{BOB}:not-bobs-password", "-v"]
    for url, answer in ((f"imap://127.0.0.1:{srv.port('imap')}/INBOX", "NO [AUTHENTICATIONFAILED]"),
                        (f"imaps://127.0.0.1:{srv.port('imaps')}/INBOX", "NO [AUTHENTICATIONFAILED]"),
                        (f"pop3://127.0.0.1:{srv.port('pop3')}/", "-ERR [AUTH]"),
                        (f"pop3s://127.0.0.1:{srv.port('pop3s')}/", "-ERR [AUTH]")):
        p = curl(*ca, "--ssl-reqd", *wrong, url)
        assert p.returncode == 67, (url, out(p))  # curl: login denied
        assert re.search(r"^< \S* ?" + re.escape(answer), out(p), re.M), (url, out(p))
        assert p.stdout == b""
    with pytest.raises(imapclient.exceptions.LoginError, match="AUTHENTICATIONFAILED"):
        imap(srv, BOB, "not-bobs-password")
    locked_at = time.monotonic()

    # the address is locked out: the right passwords get a temporary refusal, unchecked
    with pytest.raises(imapclient.exceptions.LoginError, match="UNAVAILABLE"):
        imap(srv, BOB)
    p = curl(*ca, "-v", "--user", f"{BOB}:{PASSWORDS[BOB]}", f"pop3s://127.0.0.1:{srv.port('pop3s')}/")
    assert p.returncode == 67 and "-ERR [SYS/TEMP]" in out(p), out(p)
    p = swaks(srv, to=BOB)
    assert p.returncode == 28 and smtp_reply(p.stdout, "AUTH PLAIN").startswith("454 4.7.0 "), out(p)
    assert time.monotonic() - locked_at < 6.0, "too slow to see the lockout: raise lockout in THROTTLE"

    # each failure was one throttled refusal, answered after a growing (capped) delay
    failures = re.findall(r"auth failed (\w+) from 127\.0\.0\.1 for (\S+) \(failure (\d+); answering in ([\d.]+) s"
                          r"(; address locked out)?\)", srv.log_text())
    assert [(proto, user, int(n), float(delay)) for proto, user, n, delay, _ in failures] == [
        ("submission", ALICE, 1, 0.05), ("imap", BOB, 2, 0.1), ("imaps", BOB, 3, 0.2), ("pop3", BOB, 4, 0.2),
        ("pop3s", BOB, 5, 0.2), ("imaps", BOB, 6, 0.2)], failures
    assert [locked for *_, locked in failures] == [""] * 5 + ["; address locked out"]
    assert srv.messages(BOB) == []

    time.sleep(max(0.0, locked_at + 6.2 - time.monotonic()))
    p = swaks(srv, to=BOB, extra=("--header", "Subject: after the lockout"))
    assert p.returncode == 0, out(p)
    assert len(srv.wait_for_messages(BOB, 1)) == 1
    p = curl(*ca, "--ssl-reqd", "--user", f"{BOB}:{PASSWORDS[BOB]}", f"imap://127.0.0.1:{srv.port('imap')}/INBOX",
             "-X", "SEARCH SUBJECT \"after the lockout\"")
    assert p.returncode == 0 and p.stdout.strip() == b"* SEARCH 1", out(p)
    p = curl(*ca, "--user", f"{BOB}:{PASSWORDS[BOB]}", f"pop3s://127.0.0.1:{srv.port('pop3s')}/")
    assert p.returncode == 0 and re.fullmatch(rb"1 \d+\r\n", p.stdout), out(p)
    with imap(srv, CAROL) as c:
        assert c.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0
