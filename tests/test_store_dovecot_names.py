"""Mail files that Dovecot (or qmail) wrote, found in a folder (issue 18, item 3): their
INTERNALDATE is the file's mtime, and their UIDs follow arrival order whatever the form of
the name."""

from __future__ import annotations

import os

from mailstack.store import MaildirStore
from mailstack.store.files import arrival_key

ADDR = "alice@example.test"


def drop(folder_path: str, name: str, mtime: int, body: bytes = b"Subject: x\r\n\r\nx\r\n") -> None:
    path = os.path.join(folder_path, "new", name)
    with open(path, "wb") as f:
        f.write(body)
    os.utime(path, (mtime, mtime))


def test_internaldate_is_the_mtime_not_the_name(tmp_path):
    store = MaildirStore(str(tmp_path / "mail"), fsync=False)
    inbox = store.mailbox(ADDR).folder("INBOX")
    imported = 1_500_000_000  # 2017: the date the message really arrived, kept by rsync -t
    drop(inbox.path, "1769130000.M1P2.oldhost", imported)  # named when it was copied in, 2026
    (entry,) = inbox.snapshot().messages
    assert entry.internaldate == imported


def test_dovecot_names_get_uids_in_arrival_order(tmp_path):
    store = MaildirStore(str(tmp_path / "mail"), fsync=False)
    inbox = store.mailbox(ADDR).folder("INBOX")
    # As text "M176913" < "M26687"; as numbers 26687 µs comes first.  All four in one second.
    names = ["1769130000.M26687P100.host", "1769130000.M176913P100.host",
             "1769130000.P100Q2M200000.host", "1769130000.P100Q3M900000.host"]
    for i, name in enumerate(reversed(names)):
        drop(inbox.path, name, 1769130000, f"Subject: {name}\r\n\r\n{i}\r\n".encode())
    snapshot = inbox.snapshot()
    assert [m.base for m in sorted(snapshot.messages, key=lambda m: m.uid)] == names


def test_arrival_key_reads_each_form_of_name():
    assert arrival_key("1700000000.M98765P1Q9Rab.h,S=10", 0) < arrival_key("1700000000.M123456P1Q1Rab.h,S=10", 0)
    assert arrival_key("1700000000.P7Q10M5.h", 0) > arrival_key("1700000000.P7Q9M5.h", 0)
    assert arrival_key("1700000000.12_3.h", 0) < arrival_key("1700000000.12_10.h", 0)  # qmail: numbers, not text
    assert arrival_key("1699999999.M999999P1.h", 0) < arrival_key("1700000000.M0P1.h", 0)  # seconds first
    assert arrival_key("weird-name", 5) < arrival_key("weird-name-2", 6)  # otherwise: the internal date
