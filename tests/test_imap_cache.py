"""The IMAP server's use of the store's message cache, and FETCH memory, against a real twistd
process: cached ENVELOPE/BODYSTRUCTURE/header answers equal the computed ones and survive a
restart, SEARCH on cached headers finds what decoding finds, and a client that FETCHes every
body, or one 50 MB message, but does not read them does not make the server buffer them."""

from __future__ import annotations

import os
import socket
import sqlite3
import time

import imapclient

from support.servers import PASSWORDS
from mailstack.store import MaildirStore
from mailstack.store.cache import CACHE_FILE
from test_imap import BOB, MULTIPART, client, deliver, message

TB_FIELDS = ("From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups "
             "In-Reply-To Content-Type Reply-To")
ITEMS = ["ENVELOPE", "BODYSTRUCTURE", "BODY", f"BODY.PEEK[HEADER.FIELDS ({TB_FIELDS})]", "RFC822.SIZE"]  # FLAGS differ: \\Recent


def kinds(srv) -> dict[str, int]:
    db = sqlite3.connect(os.path.join(srv.maildir(BOB), CACHE_FILE))
    try:
        return dict(db.execute("SELECT kind, count(*) FROM entries GROUP BY kind").fetchall())
    finally:
        db.close()


def test_cached_fetch_answers_equal_computed_ones_across_restart(server_factory):
    srv = server_factory(listeners=["imaps"]).start()
    folded = message(2, subject="a folded\r\n subject line")
    uids = deliver(srv, MULTIPART, folded, message(3))
    c = client(srv)
    c.select_folder("INBOX")
    first = c.fetch(uids, ITEMS)  # computed, then kept
    second = c.fetch(uids, ITEMS)  # from the cache
    assert first == second
    assert first[uids[0]][b"BODYSTRUCTURE"][0][0][:2] == (b"TEXT", b"PLAIN")
    headers = c.fetch(uids, [f"BODY.PEEK[HEADER.FIELDS ({TB_FIELDS})]"])  # now from the cached section
    assert all(headers[u][b"BODY[HEADER.FIELDS (%s)]" % TB_FIELDS.upper().encode()] ==
               first[u][b"BODY[HEADER.FIELDS (%s)]" % TB_FIELDS.upper().encode()] for u in uids)
    c.logout()
    kept = kinds(srv)
    fields = [k for k in kept if k.startswith("imap.fields.")]
    assert len(fields) == 1  # the header fields section, kept per field list
    assert kept == {"imap.envelope": 3, "imap.bodystructure": 3, "imap.body": 3, fields[0]: 3}
    srv.stop()
    srv.start()
    c = client(srv)
    c.select_folder("INBOX")
    assert c.fetch(uids, ITEMS) == first
    # Expunged messages leave the cache with them.
    c.delete_messages([uids[1]])
    c.expunge()
    c.logout()
    assert kinds(srv) == {"imap.envelope": 2, "imap.bodystructure": 2, "imap.body": 2, fields[0]: 2}


def test_search_on_cached_headers_matches_decoded_values(server_factory):
    srv = server_factory(listeners=["imaps"]).start()
    uids = deliver(
        srv,
        MULTIPART,  # Subject: =?utf-8?q?caf=C3=A9?= report
        message(2, subject="quarterly\r\n figures"),  # folded: "quarterly figures" once unfolded
        message(3, subject="PLACEHOLDER").replace(b"PLACEHOLDER", "Stra\u00dfe".encode()),  # raw 8-bit UTF-8
        message(4, subject="nothing to see"),
    )
    c = client(srv)
    c.select_folder("INBOX")
    for _ in range(2):  # the first search fills the cache, the second reads it
        assert c.search(["HEADER", "Subject", "caf\u00e9"], charset="UTF-8") == [uids[0]]
        assert c.search(["SUBJECT", "quarterly figures"]) == [uids[1]]
        assert c.search(["SUBJECT", "FIGURES"]) == [uids[1]]
        assert c.search(["SUBJECT", "strasse"], charset="UTF-8") == [uids[2]]
        assert c.search(["SUBJECT", "REPORT"]) == [uids[0]]
        assert c.search(["HEADER", "X-Trace", ""]) == [uids[0]]
        assert c.search(["SUBJECT", "absent"]) == []
        assert c.search(["NOT", "SUBJECT", "see"]) == uids[:3]
    c.logout()
    assert kinds(srv)["header"] == 4


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def slow_reader(srv):
    """A logged-in client with INBOX selected and a small receive buffer, that reads only
    when the test says so."""
    sock = socket.create_connection(("127.0.0.1", srv.port("imap")), timeout=60)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(f'a LOGIN {BOB} "{PASSWORDS[BOB]}"\r\nb SELECT INBOX\r\n'.encode())
    while not f.readline().startswith(b"b OK"):
        pass
    return sock, f


def test_fetch_of_every_body_to_a_client_that_does_not_read_stays_bounded(server_factory):
    """2,000 messages of 50 KB (100 MB): the server must not build and buffer them all."""
    srv = server_factory(listeners=["imap"]).start()
    store = MaildirStore(str(srv.store_root), fsync=False)
    folder = store.mailbox(BOB).folder("INBOX")
    body = b"".join(b"line %05d of a fifty kilobyte message, padded out to a realistic width\r\n" % i
                    for i in range(700))
    count = 2000
    for n in range(count):
        folder.append(message(n, body=body), assign_uid=False)
    total = sum(m.size for m in folder.snapshot().messages)
    assert total > 100_000_000
    sock, f = slow_reader(srv)
    before = rss_kb(srv.proc.pid)
    sock.sendall(b"c UID FETCH 1:* BODY.PEEK[]\r\n")
    time.sleep(4)  # the server works while the client reads nothing
    during = rss_kb(srv.proc.pid)
    received = literals = 0
    while True:
        line = f.readline()
        if line.startswith(b"c "):
            assert line.startswith(b"c OK"), line
            break
        if line.endswith(b"}\r\n"):
            size = int(line[line.rindex(b"{") + 1 : -3])
            received += len(f.read(size))
            literals += 1
    sock.close()
    assert literals == count and received == total
    grew_mb = (during - before) / 1024
    assert grew_mb < 40, f"server RSS grew {grew_mb:.0f} MB while the client did not read ({total / 1e6:.0f} MB fetched)"


def test_fetch_of_a_50_mb_message_to_a_client_that_does_not_read_stays_bounded(server_factory):
    srv = server_factory(listeners=["imap"]).start()
    store = MaildirStore(str(srv.store_root), fsync=False)
    line = b"a line of a very large message, the kind an attachment makes, base64 or not......\r\n"
    big = message(1, body=line * (50_000_000 // len(line)))
    uid = store.mailbox(BOB).folder("INBOX").append(big)
    sock, f = slow_reader(srv)
    before = rss_kb(srv.proc.pid)
    sock.sendall(b"c UID FETCH %d (BODY.PEEK[] RFC822.SIZE)\r\n" % uid)
    time.sleep(3)
    during = rss_kb(srv.proc.pid)
    head = f.readline()
    size = int(head[head.rindex(b"{") + 1 : -3])
    data = f.read(size)
    rest = f.readline()
    while not rest.startswith(b"c "):
        rest = f.readline()
    sock.close()
    assert size == len(big) and data == big and rest.startswith(b"c OK")
    grew_mb = (during - before) / 1024
    assert grew_mb < 20, f"server RSS grew {grew_mb:.0f} MB while a 50 MB message waited to be read"
