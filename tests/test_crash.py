"""Crash safety: SIGKILL the server while 20 clients deliver; nothing that got 250 is lost,
nothing is stored twice, no partial message is visible, and the UID state is consistent."""

from __future__ import annotations

import imaplib
import random
import re
import smtplib
import threading
import time

from support.messages import message as build_message
from support.servers import PASSWORDS
from mailstack.store import MaildirStore
from mailstack.store.check import check_user

BOB = "bob@example.test"
CLIENTS, PER_CLIENT, ROUNDS = 20, 100, 3


def message(seq: int) -> bytes:
    filler = b"x" * (200 + seq % 3000)
    return build_message(seq, subject=f"crash test {seq}", extra=f"X-Seq: {seq}\r\n", body=filler + f"\r\nEND-{seq}\r\n".encode(),
                         sender=None, to=None, date=None, message_id=None)


def drive(port: int, first: int, accepted: list, stop: threading.Event):
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            for seq in range(first, first + PER_CLIENT):
                if stop.is_set():
                    return
                s.sendmail("load@remote.test", [BOB], message(seq))
                accepted.append(seq)  # only after the 250
    except (smtplib.SMTPException, OSError):
        return  # the server died under us


def test_sigkill_during_deliveries_loses_nothing(server_factory):
    srv = server_factory(listeners=["smtp", "imaps"], extra="[limits]\nconnections_per_address = 100\n")
    accepted: list[int] = []
    rng = random.Random(20261123)
    for round_ in range(ROUNDS):
        srv.start()
        stop = threading.Event()
        base = round_ * CLIENTS * PER_CLIENT
        threads = [threading.Thread(target=drive, args=(srv.port("smtp"), base + i * PER_CLIENT, accepted, stop))
                   for i in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.5, 2.0))
        srv.kill()
        stop.set()
        for t in threads:
            t.join(30)
        assert accepted, "no message was accepted before the kill; the test proves nothing"

    srv.start()  # a last restart, then look at what is on disk
    seen: dict[int, int] = {}
    maildir = srv.maildir(BOB)
    for sub in ("new", "cur"):
        for path in (maildir / sub).iterdir():
            data = path.read_bytes()
            seq = int(re.search(rb"X-Seq: (\d+)", data).group(1))
            assert data.endswith(f"END-{seq}\r\n".encode()), f"partial message {path.name}"
            seen[seq] = seen.get(seq, 0) + 1
    missing = [seq for seq in accepted if seq not in seen]
    assert not missing, f"{len(missing)} messages that got 250 are gone"
    assert all(n == 1 for n in seen.values()), "a message is stored twice"
    # Every message got a UID, no UID twice, UIDNEXT above them all, and the checker agrees.
    store = MaildirStore(str(srv.store_root))
    snap = store.mailbox(BOB).folder("INBOX").snapshot()
    uids = [m.uid for m in snap.messages]
    assert len(uids) == len(set(uids)) == len(seen)
    assert snap.uidnext > max(uids)
    assert all(not report.problems for report in check_user(store, BOB))
    # and IMAP serves all of it, in the server that restarted on this store
    with imaplib.IMAP4_SSL("127.0.0.1", srv.port("imaps"), ssl_context=srv.ssl_context()) as imap:
        imap.login(BOB, PASSWORDS[BOB])
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK" and int(data[0]) == len(seen)
        typ, data = imap.uid("SEARCH", "HEADER", "X-Seq", '""')  # every message has one
        assert sorted(int(u) for u in data[0].split()) == sorted(uids)
    print(f"{len(accepted)} accepted over {ROUNDS} kills, {len(seen)} stored")
