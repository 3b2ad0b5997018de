"""A Maildir that Dovecot served, opened by mailstack (issue 18, item 1, the direction from
Dovecot): UIDVALIDITY, every UID and UIDNEXT carry over from ``dovecot-uidlist``, so a client's
cache stays valid.  Dovecot itself (Debian's dovecot-imapd) makes the folder, by IMAP."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from mailstack.store import MaildirStore
from mailstack.store.dovecot import read_uidlist

ADDR = "alice@example.test"


def test_both_versions_of_the_file_are_read(tmp_path):
    (tmp_path / "dovecot-uidlist").write_text("3 V1700000000 N9 G0123abcd\n"
                                              "3 :1700000001.M1P2.host,S=10,W=11\n"
                                              "5 W1234 S1200 :1700000002.P3Q1M5.host\n"
                                              "7 :1700000003.M9P2.host:2,S\n")
    got = read_uidlist(str(tmp_path))
    assert (got.uidvalidity, got.uidnext) == (1700000000, 9)
    assert got.uids == {"1700000001.M1P2.host,S=10,W=11": 3, "1700000002.P3Q1M5.host": 5, "1700000003.M9P2.host": 7}
    (tmp_path / "dovecot-uidlist").write_text("1 1600000000 4\n2 0 1600000001.M1P2.host\n")
    got = read_uidlist(str(tmp_path))
    assert (got.uidvalidity, got.uidnext, got.uids) == (1600000000, 4, {"1600000001.M1P2.host": 2})
    (tmp_path / "dovecot-uidlist").write_text("garbage\n")
    assert read_uidlist(str(tmp_path)) is None


@pytest.mark.slow
def test_uids_of_a_folder_dovecot_served_carry_over(tmp_path):
    from support.dovecot import dovecot_on_store_maildir, fill_through_dovecot, stop

    root = Path(tempfile.mkdtemp(prefix="mailstack-from-dovecot-"))  # Dovecot's processes must enter it
    os.chmod(root, 0o755)
    store = MaildirStore(str(root / "mail"), fsync=False)
    maildir = Path(store.user_path(ADDR))
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    proc, port = dovecot_on_store_maildir(root, maildir)
    try:
        client = fill_through_dovecot(port, 5)  # UID 2 gone: the UIDs are 1 3 4 5, not 1..4
        typ, data = client.status("INBOX", "(UIDVALIDITY UIDNEXT)")
        status = data[0].decode()
        uidvalidity = int(re.search(r"UIDVALIDITY (\d+)", status).group(1))
        uidnext = int(re.search(r"UIDNEXT (\d+)", status).group(1))
        typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        by_uid = {int(re.search(rb"UID (\d+)", item[0]).group(1)): item[1].strip() for item in data if isinstance(item, tuple)}
        client.logout()
    finally:
        stop(proc)
    assert sorted(by_uid) == [1, 3, 4, 5]
    snapshot = MaildirStore(str(root / "mail"), fsync=False).mailbox(ADDR).folder("INBOX").snapshot()
    assert snapshot.uidvalidity == uidvalidity
    assert snapshot.uidnext == uidnext
    assert [m.uid for m in snapshot.messages] == [1, 3, 4, 5]
    folder = MaildirStore(str(root / "mail"), fsync=False).mailbox(ADDR).folder("INBOX")
    for m in folder.snapshot().messages:  # each UID names the same message on both servers
        with folder.open_message(m.uid) as f:
            assert f.read().split(b"\n", 1)[0].rstrip(b"\r") == by_uid[m.uid].splitlines()[0]  # Dovecot wrote LF
    shutil.rmtree(root, ignore_errors=True)


def test_pop3_uidls_dovecot_kept_from_a_migration_are_served_and_survive_a_rewrite(tmp_path):
    """Dovecot's ``P`` extension (a UIDL kept from an older server) is what POP3 sends, and
    mailstack's own rewrite of dovecot-uidlist keeps it."""
    store = MaildirStore(str(tmp_path / "mail"), fsync=False)
    maildir = Path(store.user_path(ADDR))
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    names = ["1700000001.M1P2.host,S=20,W=21", "1700000002.M1P2.host,S=20,W=21"]
    for name in names:
        (maildir / "cur" / (name + ":2,S")).write_bytes(b"Subject: x\n\nbody\n")
    (maildir / "dovecot-uidlist").write_text(f"3 V1700000000 N8 G0123\n4 P0000abcd.old W21 :{names[0]}:2,S\n"
                                             f"7 :{names[1]}\n")
    inbox = store.mailbox(ADDR).folder("INBOX")
    assert [m.uid for m in inbox.snapshot().messages] == [4, 7]
    assert inbox.pop3_uidls() == {4: "0000abcd.old"}
    inbox.append(b"Subject: new\r\n\r\nhi\r\n")
    with inbox.locked(), inbox.dovecot.lock() as lock:
        inbox._rewrite_dovecot(lock, inbox.dovecot.refresh())
    assert read_uidlist(str(maildir)).pop3_uidls == {4: "0000abcd.old"}
    assert sorted(read_uidlist(str(maildir)).uids.values()) == [4, 7, 8]


def test_dovecot_pop3_order_and_crlf_sizes_from_its_extensions(tmp_path):
    """``O`` (a migrated POP3 order) orders the POP3 listing; ``W`` gives the CRLF size of a
    file whose name lacks ``,W=``, without reading the file."""
    from mailstack.pop3.maildrop import Maildrop
    from mailstack.pop3.uidl import UidlFormat

    store = MaildirStore(str(tmp_path / "mail"), fsync=False)
    maildir = Path(store.user_path(ADDR))
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    names = [f"170000000{i}.M{i}P2.host" for i in range(3)]
    for name in names:
        (maildir / "cur" / (name + ":2,")).write_bytes(b"Subject: x\n\nbody\n")  # 17 bytes, 20 in CRLF
    (maildir / "dovecot-uidlist").write_text(f"3 V1700000000 N4 G0123\n1 O3 W999 :{names[0]}\n2 O1 :{names[1]}\n"
                                             f"3 :{names[2]}\n")
    inbox = store.mailbox(ADDR).folder("INBOX")
    assert {m.uid: m.size for m in inbox.snapshot().messages} == {1: 999, 2: 20, 3: 20}  # 999: Dovecot's word
    drop = Maildrop(store, ADDR, UidlFormat("%u"))
    drop.load()
    assert [m.uid for m in drop.messages] == [2, 1, 3]


# -- sharing the folder with Dovecot: its numbering and compaction (review of issue 18) ----------

def _shared_inbox(tmp_path, n):
    store = MaildirStore(str(tmp_path / "mail"), fsync=False)
    inbox = store.mailbox(ADDR).folder("INBOX")
    for i in range(n):
        inbox.append(b"Subject: %d\r\n\r\nbody\r\n" % i)
    snap = inbox.snapshot()
    return store, inbox, snap, os.path.join(inbox.path, "dovecot-uidlist")


def _dovecot_rewrites(path, header_uidnext, records):
    """What Dovecot's compaction does: the file anew, through its lock file, renamed over."""
    header = open(path).readline().split()
    header = [h if not h.startswith("N") else f"N{header_uidnext}" for h in header]
    with open(path + ".lock", "w") as f:
        f.write(" ".join(header) + "\n" + "".join(f"{uid} :{name}\n" for uid, name in records))
    os.rename(path + ".lock", path)


def test_dovecot_expunges_and_compacts_then_numbers_a_new_file(tmp_path):
    """Dovecot expunged UID 1, gave 5 to a message it expunged too, 6 to Y, and dropped the
    dead records: Y keeps 6, and mailstack's next UID is 7, not a reused 5."""
    store, inbox, snap, path = _shared_inbox(tmp_path, 4)
    os.unlink(os.path.join(inbox.path, snap.messages[0].filename))
    y = "1700000000.M1P1.dovecothost,S=20,W=21"
    (Path(inbox.path) / "cur" / (y + ":2,S")).write_bytes(b"Subject: Y\n\nbody\n")
    _dovecot_rewrites(path, 7, [(m.uid, m.base) for m in snap.messages[1:]] + [(6, y)])
    z = inbox.append(b"Subject: Z\r\n\r\nbody\r\n")
    assert z == 7
    got = {m.base: m.uid for m in inbox.snapshot().messages}
    assert got[y] == 6 and sorted(got.values()) == [2, 3, 4, 6, 7]
    assert read_uidlist(inbox.path).uids == got | {}  # Dovecot's file says the same, no more
    assert MaildirStore(str(tmp_path / "mail"), fsync=False).mailbox(ADDR).folder("INBOX").snapshot().uidnext == 8


def test_an_append_does_not_jump_ahead_of_what_dovecot_numbered_in_cur(tmp_path):
    """Dovecot APPENDed X with \\Seen (into cur/, UID 3): mailstack's APPEND, which lists only
    new/, still sees X in Dovecot's file, takes 3 for it and 4 for its own."""
    store, inbox, snap, path = _shared_inbox(tmp_path, 2)
    x = "1700000000.M1P1.dovecothost,S=20,W=21"
    (Path(inbox.path) / "cur" / (x + ":2,S")).write_bytes(b"Subject: X\n\nbody\n")
    with open(path, "a") as f:
        f.write(f"3 :{x}:2,S\n")
    assert inbox.append(b"Subject: Z\r\n\r\nbody\r\n") == 4
    assert {m.base: m.uid for m in inbox.snapshot().messages}[x] == 3
    assert sorted(read_uidlist(inbox.path).uids.values()) == [1, 2, 3, 4]


def test_a_rewritten_dovecot_uidlist_on_a_reused_inode_is_read_afresh(tmp_path):
    """ext4 gives a renamed-in file the inode number of the one it replaced: the mirror must
    not read on from its old offset (it appended records twice, and Dovecot then threw its
    file away: 'UIDs not ordered')."""
    store, inbox, snap, path = _shared_inbox(tmp_path, 3)
    inbox.dovecot.refresh()
    records = [(m.uid, m.base) for m in snap.messages[1:]]
    os.unlink(os.path.join(inbox.path, snap.messages[0].filename))
    ys = [f"170000000{i}.M1P1.dovecothost,S=20,W=21" for i in range(2)]
    for y in ys:
        (Path(inbox.path) / "cur" / (y + ":2,S")).write_bytes(b"Subject: Y\n\nbody\n")
    for _ in range(2):  # twice: the second file may well get the first inode back
        _dovecot_rewrites(path, 6, records + [(4, ys[0]), (5, ys[1])])
    got = {m.base: m.uid for m in inbox.snapshot().messages}
    assert got[ys[0]] == 4 and got[ys[1]] == 5
    uids = [int(line.split()[0]) for line in open(path).read().splitlines()[1:]]
    assert uids == sorted(set(uids)), uids  # ascending, no record twice


def test_a_folder_whose_dovecot_uidlist_cannot_be_written_still_opens(tmp_path, monkeypatch):
    """An older mailstack's folder gets dovecot-uidlist at its first opening; on a read-only
    store (or with Dovecot holding its lock) that fails, and the folder is still read."""
    import errno

    from mailstack.store.folder import MaildirFolder

    store, inbox, snap, path = _shared_inbox(tmp_path, 2)
    os.unlink(path)

    def read_only(self):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(MaildirFolder, "_dovecot_file_kept", read_only)
    again = MaildirStore(str(tmp_path / "mail"), fsync=False).mailbox(ADDR).folder("INBOX").snapshot()
    assert [m.uid for m in again.messages] == [m.uid for m in snap.messages]
