"""The Maildir store in one process, on real temporary directories (no mocks)."""

from __future__ import annotations

import io
import os
import re
import time

import pytest

from mailstack.store.dovecot import read_uidlist

from mailstack.errors import FolderExists, FolderNotFound, InvalidFolderName, KeywordLimit, MessageGone, StoreError, UnknownUser
from mailstack.store import SPECIAL_FOLDERS, MaildirStore
from mailstack.store import uidlist as uidlist_mod
from mailstack.store.check import check_folder, check_user
from mailstack.store.files import base_of, size_of
from mailstack.store.maildir import split_address
from support.messages import message as build_message

ADDR = "alice@example.test"
NAME_RE = re.compile(r"^\d+\.M\d+P\d+Q\d+R[0-9a-f]+\.[^/:]+,S=(\d+),W=(\d+)$")


def message(i: int, extra: bytes = b"") -> bytes:
    return build_message(i, body=f"Body of message {i}.\r\n".encode() + extra, sender="a@example.test", to="b@example.test",
                         date=None, message_id="<{n}@example.test>")


@pytest.fixture
def store(tmp_path) -> MaildirStore:
    return MaildirStore(str(tmp_path / "mail"), fsync=False)


@pytest.fixture
def mailbox(store):
    return store.mailbox(ADDR)


@pytest.fixture
def inbox(mailbox):
    return mailbox.folder("INBOX")


def files_in(folder, sub: str) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(folder.path, sub)) if not n.startswith("."))


def fresh(store: MaildirStore, folder: str = "INBOX", address: str = ADDR):
    """The same folder through a new store object: what a restarted server sees."""
    return MaildirStore(store.root, fsync=False).mailbox(address, create=False).folder(folder)


def uid_map(folder) -> dict[int, str]:
    return {m.uid: m.base for m in folder.snapshot().messages}


# -- mailbox layout ----------------------------------------------------------------------


def test_new_mailbox_layout_and_special_folders(store, tmp_path):
    mb = store.mailbox("Alice@Example.TEST")
    assert mb.path == str(tmp_path / "mail" / "example.test" / "alice")
    for sub in ("cur", "new", "tmp"):
        assert os.path.isdir(os.path.join(mb.path, sub))
    infos = {f.name: f for f in mb.list_folders()}
    assert set(infos) == {"INBOX", *SPECIAL_FOLDERS}
    for name, use in SPECIAL_FOLDERS.items():
        assert infos[name].special_use == use
        assert infos[name].selectable
        assert os.path.isfile(os.path.join(mb.path, "." + name, "maildirfolder"))
    assert infos["INBOX"].special_use is None
    assert mb.list_folders()[0].name == "INBOX"
    assert sorted(mb.subscriptions()) == sorted(["INBOX", *SPECIAL_FOLDERS])
    assert store.exists(ADDR)
    assert list(store.users()) == [ADDR]
    assert not store.exists("bob@example.test")
    with pytest.raises(UnknownUser):
        store.mailbox("bob@example.test", create=False)


@pytest.mark.parametrize(
    "address",
    [
        "../x@example.test",
        "a/b@example.test",
        "..@example.test",
        ".hidden@example.test",
        "a\\b@example.test",
        "nul\x00@example.test",
        "sp ace@example.test",
        "@example.test",
        "noatsign",
        "x@../etc",
        "x@exa/mple.test",
        "x@.example.test",
        "x@",
        "a:b@example.test",
        "x" * 65 + "@example.test",
    ],
)
def test_refuses_addresses_that_escape_the_root(store, tmp_path, address):
    with pytest.raises(UnknownUser):
        store.mailbox(address)
    with pytest.raises(UnknownUser):
        store.deliver(address, b"Subject: x\r\n\r\nx\r\n")
    # nothing was created anywhere
    leftovers = [os.path.join(d, f) for d, ds, fs in os.walk(tmp_path) for f in ds + fs]
    assert leftovers == [] or all(p.startswith(store.root) for p in leftovers)
    assert not os.path.exists(os.path.join(str(tmp_path), "x"))


def test_split_address_lowercases():
    assert split_address("Alice.Smith+tag@Example.Test") == ("alice.smith+tag", "example.test")


# -- append / read -------------------------------------------------------------------------


def test_append_returns_increasing_uids(inbox):
    uids = [inbox.append(message(i)) for i in range(20)]
    assert uids == list(range(1, 21))
    snap = inbox.snapshot()
    assert [m.uid for m in snap.messages] == uids
    assert snap.uidnext == 21
    assert snap.uidvalidity >= 1
    assert all(snap.is_recent(m) for m in snap.messages)  # unclaimed: \\Recent for the first session


def test_deliver_into_folder(store):
    store.deliver(ADDR, message(1))
    store.deliver(ADDR, message(2), folder="Sent", flags=["\\Seen"])
    inbox = store.mailbox(ADDR).folder("INBOX")
    assert [m.uid for m in inbox.snapshot().messages] == [1]
    assert inbox.read_message(1) == message(1)
    sent = store.mailbox(ADDR).folder("Sent")
    assert [(m.uid, m.flags) for m in sent.snapshot().messages] == [(1, frozenset({"\\Seen"}))]
    assert sent.read_message(1) == message(2)
    assert sent.append(message(3)) == 2


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\r\n",
        bytes(range(256)) * 4,
        b"Subject: 8bit \xc3\xa9\xff\xfe\r\n\r\nbare\rcr and bare\nlf\r\n\x00nul\r\n.\r\n..\r\n",
        b"no trailing newline",
    ],
)
def test_bytes_round_trip(inbox, payload):
    """Every byte is kept on disk; what is read is the CRLF form (a bare LF as CRLF, a bare
    CR kept), and the name says both sizes."""
    uid = inbox.append(payload)
    served = payload.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with inbox.open_message(uid) as f:
        assert f.read() == served
    assert inbox.read_message(uid) == served
    info = inbox.snapshot().by_uid()[uid]
    assert info.size == len(served)
    assert info.base.endswith(f",S={len(payload)},W={len(served)}")
    (name,) = files_in(inbox, "cur")
    with open(os.path.join(inbox.path, "cur", name), "rb") as f:
        assert f.read() == payload


def test_five_megabyte_message_from_a_stream(inbox):
    chunk = bytes((i * 7 + 3) % 256 for i in range(1000)).replace(b"\n", b"") + b"\r\n"  # CRLF: read as it is
    payload = chunk * (5 * 1024 * 1024 // len(chunk) + 1)
    assert len(payload) > 5 * 1024 * 1024
    uid = inbox.append(io.BytesIO(payload))
    with inbox.open_message(uid) as f:
        got = f.read()
    assert got == payload
    # also from an iterable of chunks
    uid2 = inbox.append(iter([payload[:1000], memoryview(payload[1000:])]))
    assert inbox.read_message(uid2) == payload
    assert {m.size for m in inbox.snapshot().messages} == {len(payload)}


def test_internaldate_is_kept_as_mtime(inbox):
    when = 1_000_000_000
    uid = inbox.append(message(1), internaldate=when)
    info = inbox.snapshot().by_uid()[uid]
    assert info.internaldate == when
    assert int(os.stat(os.path.join(inbox.path, info.filename)).st_mtime) == when
    before = int(time.time())
    uid2 = inbox.append(message(2))
    assert before - 1 <= inbox.snapshot().by_uid()[uid2].internaldate <= int(time.time()) + 1


def test_file_names_carry_size_and_dovecot_flag_letters(inbox):
    body = message(1)
    uid = inbox.append(body)
    (name,) = files_in(inbox, "cur")  # an APPEND goes to cur/, with no flags yet
    assert name.endswith(":2,")
    m = NAME_RE.match(base_of(name))
    assert m, name
    assert int(m.group(1)) == int(m.group(2)) == len(body)
    assert size_of(base_of(name)) == len(body)
    assert files_in(inbox, "tmp") == [] and files_in(inbox, "new") == []

    uid2 = inbox.append(message(2), flags=["\\Seen", "\\Flagged", "\\Answered", "\\Draft", "\\Deleted", "\\Recent"])
    cur = [n for n in files_in(inbox, "cur") if n != name]
    assert len(cur) == 1 and cur[0].endswith(":2,DFRST")
    assert NAME_RE.match(base_of(cur[0]))
    snap = inbox.snapshot().by_uid()
    assert snap[uid2].flags == {"\\Seen", "\\Flagged", "\\Answered", "\\Draft", "\\Deleted"}
    assert snap[uid2].filename == "cur/" + cur[0]
    assert not snap[uid2].recent
    assert snap[uid].flags == frozenset()


def test_keywords_use_dovecot_keywords_file(inbox):
    uid = inbox.append(message(1), flags=["$Forwarded", "\\Seen", "work"])
    (name,) = files_in(inbox, "cur")
    assert name.endswith(":2,Sab")
    with open(os.path.join(inbox.path, "dovecot-keywords")) as f:
        assert f.read() == "0 $Forwarded\n1 work\n"
    assert inbox.snapshot().by_uid()[uid].flags == {"$Forwarded", "\\Seen", "work"}
    # same keyword, different case: the same letter
    inbox.set_flags([uid], ["WORK"], mode="add")
    assert files_in(inbox, "cur")[0].endswith(":2,Sab")
    inbox.set_flags([uid], ["$Junk"], mode="add")
    assert files_in(inbox, "cur")[0].endswith(":2,Sabc")
    with open(os.path.join(inbox.path, "dovecot-keywords")) as f:
        assert f.read() == "0 $Forwarded\n1 work\n2 $Junk\n"


def test_reads_flags_of_files_written_by_dovecot(inbox):
    with open(os.path.join(inbox.path, "dovecot-keywords"), "w") as f:
        f.write("0 Junk\n2 $Label1\n")
    body = message(9)
    name = f"1700000000.M1P2Q3.otherhost,S={len(body)}:2,FScP"
    with open(os.path.join(inbox.path, "cur", name), "wb") as f:
        f.write(body)
    os.utime(os.path.join(inbox.path, "cur", name), (1690000000, 1690000000))  # Dovecot's received date
    (info,) = inbox.snapshot().messages
    assert info.flags == {"\\Flagged", "\\Seen", "$Label1"}  # "P" (passed) is not an IMAP flag
    assert info.internaldate == 1690000000  # the mtime, as Dovecot reads it (issue 18), not the name's 1700000000
    # Changing flags keeps letters we do not understand ("P") and does not lose keyword a/c mapping
    inbox.set_flags([info.uid], ["Junk"], mode="add")
    (name2,) = files_in(inbox, "cur")
    assert name2.endswith(":2,FPSac")
    assert inbox.snapshot().messages[0].flags == {"\\Flagged", "\\Seen", "$Label1", "Junk"}


def test_keyword_limit(inbox):
    uid = inbox.append(message(1))
    inbox.set_flags([uid], [f"kw{i}" for i in range(26)], mode="add")
    assert len(inbox.snapshot().by_uid()[uid].flags) == 26
    with pytest.raises(KeywordLimit):
        inbox.set_flags([uid], ["one-too-many"], mode="add")
    assert len(inbox.snapshot().by_uid()[uid].flags) == 26


# -- flags, modseq, recent, expunge -------------------------------------------------------------


def test_set_flags_modes_and_modseq(inbox):
    a, b = inbox.append(message(1)), inbox.append(message(2))
    snap0 = inbox.snapshot()
    ms0 = snap0.by_uid()[a].modseq
    hm0 = snap0.highestmodseq

    changed, refused = inbox.set_flags([a], ["\\Seen", "\\Flagged"], mode="replace")
    assert refused == []
    assert set(changed) == {a}
    flags, ms1 = changed[a]
    assert flags == {"\\Seen", "\\Flagged"}
    assert ms1 > ms0 and ms1 > hm0
    snap1 = inbox.snapshot()
    assert snap1.by_uid()[a].flags == {"\\Seen", "\\Flagged"}
    assert snap1.by_uid()[a].modseq == ms1
    assert snap1.highestmodseq == ms1
    assert snap1.by_uid()[a].filename.startswith("cur/") and snap1.by_uid()[a].filename.endswith(":2,FS")
    assert snap1.by_uid()[b].modseq == snap0.by_uid()[b].modseq  # untouched

    changed, _ = inbox.set_flags([a], ["\\Answered"], mode="add")
    assert changed[a][0] == {"\\Seen", "\\Flagged", "\\Answered"}
    ms2 = changed[a][1]
    assert ms2 > ms1

    changed, _ = inbox.set_flags([a], ["\\Flagged", "\\Draft"], mode="remove")
    assert changed[a][0] == {"\\Seen", "\\Answered"}
    assert changed[a][1] > ms2

    # no change: no new modseq
    hm = inbox.snapshot().highestmodseq
    changed, _ = inbox.set_flags([a], ["\\Seen"], mode="add")
    assert changed == {}
    assert inbox.snapshot().highestmodseq == hm

    changed, _ = inbox.set_flags([a], [], mode="replace")
    assert changed[a][0] == frozenset()
    assert inbox.snapshot().by_uid()[a].filename.endswith(":2,")

    with pytest.raises(ValueError):
        inbox.set_flags([a], ["\\Seen"], mode="toggle")


def test_set_flags_unchangedsince(inbox):
    a, b = inbox.append(message(1)), inbox.append(message(2))
    snap = inbox.snapshot().by_uid()
    changed, _ = inbox.set_flags([a], ["\\Seen"])
    ms_a = changed[a][1]
    # a changed after snap[a].modseq: refused; b did not: changed
    changed, refused = inbox.set_flags([a, b], ["\\Flagged"], mode="add", unchangedsince=snap[b].modseq)
    assert refused == [a]
    assert set(changed) == {b}
    assert inbox.snapshot().by_uid()[a].flags == {"\\Seen"}
    changed, refused = inbox.set_flags([a], ["\\Flagged"], mode="add", unchangedsince=ms_a)
    assert refused == [] and set(changed) == {a}


def test_set_flags_skips_expunged_and_unknown_uids(inbox):
    a = inbox.append(message(1))
    inbox.expunge([a])
    assert inbox.set_flags([a, 999], ["\\Seen"]) == ({}, [])


def test_modseq_survives_restart(store, inbox):
    a = inbox.append(message(1))
    _, _ = inbox.set_flags([a], ["\\Seen"])
    snap = inbox.snapshot()
    again = fresh(store).snapshot()
    assert again.highestmodseq == snap.highestmodseq
    assert again.by_uid()[a].modseq == snap.by_uid()[a].modseq


def test_an_append_goes_to_cur_and_is_recent_until_claimed(inbox):
    # Issue 16 item 6: APPEND writes into cur/ so new/ stays small (it is listed at each
    # APPEND to number waiting deliveries); \\Recent is kept in mailstack-recent meanwhile.
    uids = [inbox.append(message(i)) for i in range(3)]
    assert files_in(inbox, "new") == [] and len(files_in(inbox, "cur")) == 3
    snap = inbox.snapshot()
    assert [snap.is_recent(m) for m in snap.messages] == [True, True, True]
    assert inbox.take_recent() == uids and inbox.take_recent() == []
    snap = inbox.snapshot()
    assert not any(snap.is_recent(m) for m in snap.messages)


def test_take_recent_moves_new_to_cur(inbox):
    for i in range(3):  # delivered: into new/, numbered by the next snapshot
        assert inbox.append(message(i), assign_uid=False) is None
    uids = [m.uid for m in inbox.snapshot().messages]
    flagged = inbox.append(message(9), flags=["\\Seen"])
    assert len(files_in(inbox, "new")) == 3
    assert inbox.take_recent() == uids + [flagged]  # stored into cur/, unclaimed all the same
    assert files_in(inbox, "new") == []
    assert len(files_in(inbox, "cur")) == 4
    snap = inbox.snapshot()
    assert not any(snap.is_recent(m) for m in snap.messages)
    assert [m.uid for m in snap.messages] == uids + [flagged]
    assert all(m.filename.endswith(":2,") for m in snap.messages if m.uid != flagged)
    assert inbox.take_recent() == []  # already taken


def test_expunge_removes_file_and_uid(store, inbox):
    uids = [inbox.append(message(i)) for i in range(4)]
    snap = inbox.snapshot().by_uid()
    victim = snap[uids[1]]
    assert inbox.expunge([uids[1], uids[1], 999]) == [uids[1]]
    assert not os.path.exists(os.path.join(inbox.path, victim.filename))
    after = inbox.snapshot()
    assert [m.uid for m in after.messages] == [uids[0], uids[2], uids[3]]
    assert after.highestmodseq > max(m.modseq for m in snap.values())
    with pytest.raises(MessageGone):
        inbox.open_message(uids[1])
    assert inbox.expunge([uids[1]]) == []
    # the expunged UID is never handed out again, also after a restart
    inbox.expunge([uids[3]])
    assert fresh(store).append(message(99)) == uids[3] + 1


def test_open_message_unknown_uid(inbox):
    with pytest.raises(MessageGone):
        inbox.open_message(1)


def test_open_message_after_flags_changed_elsewhere(store, inbox):
    uid = inbox.append(message(1))
    inbox.snapshot()
    other = fresh(store)
    other.set_flags([uid], ["\\Seen"])  # renames the file behind inbox's cached listing
    assert inbox.read_message(uid) == message(1)


# -- copy / move ----------------------------------------------------------------------------------


def test_copy_keeps_bytes_flags_date(mailbox, inbox):
    dest = mailbox.folder("Archive")
    dest.append(message(100), flags=["other-keyword"])  # dest's letter "a" is taken by another word
    when = 1_234_567_890
    a = inbox.append(message(1, b"\xff8bit"), flags=["\\Seen", "project"], internaldate=when)
    b = inbox.append(message(2), internaldate=when + 1)
    pairs = inbox.copy([a, b, 777], dest)
    assert [p[0] for p in pairs] == [a, b]
    new_uids = [p[1] for p in pairs]
    assert new_uids == [2, 3]
    src = inbox.snapshot().by_uid()
    got = dest.snapshot().by_uid()
    for old, new in pairs:
        assert dest.read_message(new) == inbox.read_message(old)
        assert got[new].flags == src[old].flags
        assert got[new].internaldate == src[old].internaldate
        assert got[new].size == src[old].size
        assert got[new].base != src[old].base
        assert got[new].filename.startswith("cur/")
    assert got[2].flags == {"\\Seen", "project"}
    assert got[1].flags == {"other-keyword"}
    assert len(inbox.snapshot().messages) == 2  # source untouched


def test_move_keeps_bytes_and_removes_source(mailbox, inbox):
    dest = mailbox.folder("Trash")
    a = inbox.append(message(1), flags=["\\Flagged"], internaldate=1_100_000_000)
    b = inbox.append(message(2))
    body_a = inbox.read_message(a)
    pairs = inbox.move([a], dest)
    assert pairs == [(a, 1)]
    assert [m.uid for m in inbox.snapshot().messages] == [b]
    info = dest.snapshot().by_uid()[1]
    assert dest.read_message(1) == body_a
    assert info.flags == {"\\Flagged"}
    assert info.internaldate == 1_100_000_000
    assert files_in(dest, "tmp") == [] and files_in(inbox, "tmp") == []


# -- restart, foreign changes ------------------------------------------------------------------


def test_uids_and_uidvalidity_survive_restart(store, inbox, mailbox):
    uids = [inbox.append(message(i)) for i in range(5)]
    inbox.expunge([uids[4]])
    inbox.set_flags([uids[0]], ["\\Seen"])
    before = inbox.snapshot()
    sent = mailbox.folder("Sent")
    sent.append(message(50))
    sent_before = sent.snapshot()

    again = fresh(store)
    after = again.snapshot()
    assert after.uidvalidity == before.uidvalidity
    assert after.uidnext == before.uidnext == 6
    assert [(m.uid, m.base, m.flags) for m in after.messages] == [(m.uid, m.base, m.flags) for m in before.messages]
    assert again.append(message(7)) == 6
    sent_after = fresh(store, "Sent").snapshot()
    assert (sent_after.uidvalidity, [m.uid for m in sent_after.messages]) == (
        sent_before.uidvalidity,
        [m.uid for m in sent_before.messages],
    )


def test_file_dropped_into_new_gets_next_uid(inbox):
    inbox.append(message(1))
    inbox.append(message(2))
    body = message(3)
    # another delivery agent: write in tmp/, rename into new/
    name = f"{int(time.time())}.M5P99999Q1.mda,S={len(body)}"
    with open(os.path.join(inbox.path, "tmp", name), "wb") as f:
        f.write(body)
    os.rename(os.path.join(inbox.path, "tmp", name), os.path.join(inbox.path, "new", name))
    snap = inbox.snapshot()
    assert [m.uid for m in snap.messages] == [1, 2, 3]
    assert snap.by_uid()[3].base == name
    assert snap.uidnext == 4
    assert inbox.read_message(3) == body
    # a name without ,S= still works: size from stat
    name2 = "1700000001.M6P99999Q2.mda"
    with open(os.path.join(inbox.path, "new", name2), "wb") as f:
        f.write(b"12345")
    info = inbox.snapshot().by_uid()[4]
    assert info.base == name2 and info.size == 5
    assert inbox.append(message(5)) == 5


def test_file_removed_by_hand_disappears(inbox):
    uids = [inbox.append(message(i)) for i in range(3)]
    info = inbox.snapshot().by_uid()[uids[1]]
    os.unlink(os.path.join(inbox.path, info.filename))
    snap = inbox.snapshot()
    assert [m.uid for m in snap.messages] == [uids[0], uids[2]]
    with pytest.raises(MessageGone):
        inbox.open_message(uids[1])
    assert inbox.append(message(9)) == uids[2] + 1


def test_many_flag_changes_compact_the_log(store, inbox):
    """Enough records trigger a rewrite of the log; other store objects follow the new inode."""
    a, b = inbox.append(message(1)), inbox.append(message(2))
    inbox.expunge([b])
    reader = fresh(store)
    reader.snapshot()
    path = os.path.join(inbox.path, uidlist_mod.UIDLIST)
    ino = os.stat(path).st_ino
    for i in range(1100):
        inbox.set_flags([a], ["\\Seen"] if i % 2 == 0 else [])
    assert os.stat(path).st_ino != ino  # rewritten
    with open(path) as f:
        assert len(f.read().splitlines()) < 200
    snap = reader.snapshot()
    assert [m.uid for m in snap.messages] == [a]
    assert snap.highestmodseq == inbox.snapshot().highestmodseq
    assert fresh(store).append(message(3)) == b + 1
    assert check_folder(fresh(store)).problems == []


def test_snapshot_does_not_read_message_files(inbox):
    bodies = [message(i, b"x" * i * 100) for i in range(5)]
    uids = [inbox.append(body) for body in bodies]
    inbox.set_flags(uids[:2], ["\\Seen"])
    # Empty the files on disk: sizes must still come from the ,S= in the names.
    for sub in ("new", "cur"):
        for name in files_in(inbox, sub):
            os.truncate(os.path.join(inbox.path, sub, name), 0)
    for folder in (inbox, fresh(inbox.store)):
        snap = folder.snapshot()
        assert [m.size for m in snap.messages] == [len(b) for b in bodies]
        assert [m.uid for m in snap.messages] == uids
        assert snap.by_uid()[uids[0]].flags == {"\\Seen"}


# -- folders -------------------------------------------------------------------------------------


def test_create_folder_with_parents_and_list(mailbox):
    mailbox.create_folder("Work/Projects/2024")
    infos = {f.name: f.selectable for f in mailbox.list_folders()}
    assert infos["Work"] and infos["Work/Projects"] and infos["Work/Projects/2024"]
    assert os.path.isdir(os.path.join(mailbox.path, ".Work.Projects.2024", "cur"))
    with pytest.raises(FolderExists):
        mailbox.create_folder("Work/Projects")
    with pytest.raises(FolderExists):
        mailbox.create_folder("inbox")
    with pytest.raises(InvalidFolderName):
        mailbox.create_folder("../escape")
    with pytest.raises(InvalidFolderName):
        mailbox.create_folder("a.b")
    f = mailbox.create_folder("日本語/台北")
    assert os.path.isdir(os.path.join(mailbox.path, ".&ZeVnLIqe-.&U,BTFw-"))
    assert f.append(message(1)) == 1
    assert "日本語/台北" in {i.name for i in mailbox.list_folders()}
    with pytest.raises(FolderNotFound):
        mailbox.folder("Nope")


def test_list_folders_shows_implicit_parents_as_not_selectable(mailbox):
    # Another tool (or Dovecot) made only the child directory.
    child = os.path.join(mailbox.path, ".Lists.twisted")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(child, sub))
    # Junk that is not a folder must not show up
    os.makedirs(os.path.join(mailbox.path, ".bad&AGE-", "cur"))
    os.makedirs(os.path.join(mailbox.path, ".nocur"))
    infos = {f.name: f for f in mailbox.list_folders()}
    assert infos["Lists/twisted"].selectable
    assert infos["Lists"].selectable is False
    assert infos["Lists"].special_use is None
    assert "nocur" not in infos and not any("AGE" in n for n in infos)
    with pytest.raises(FolderNotFound):
        mailbox.folder("Lists")
    assert mailbox.folder("Lists/twisted").append(message(1)) == 1


def test_delete_folder_keeps_children(mailbox):
    mailbox.create_folder("A/B")
    mailbox.folder("A").append(message(1))
    mailbox.subscribe("A")
    mailbox.delete_folder("A")
    infos = {f.name: f.selectable for f in mailbox.list_folders()}
    assert infos["A"] is False and infos["A/B"] is True
    assert "A" in mailbox.subscriptions()  # RFC 3501 6.3.6: never removed unilaterally
    assert not os.path.exists(os.path.join(mailbox.path, ".A"))
    assert [n for n in os.listdir(os.path.join(mailbox.path, "tmp")) if n.startswith("deleted-")] == []
    with pytest.raises(FolderNotFound):
        mailbox.delete_folder("A")
    with pytest.raises(StoreError):
        mailbox.delete_folder("INBOX")
    # re-created: empty, new UIDs from 1
    again = mailbox.create_folder("A")
    assert again.snapshot().messages == ()


def test_recreated_folder_gets_new_uidvalidity(mailbox):
    """RFC 3501 2.3.1.1: a folder re-created under an old name must not reuse UIDVALIDITY."""
    f = mailbox.create_folder("Tmp")
    f.append(message(1))
    v1 = f.snapshot().uidvalidity
    mailbox.delete_folder("Tmp")
    g = mailbox.create_folder("Tmp")
    assert g.append(message(2)) == 1
    assert g.snapshot().uidvalidity != v1


def test_rename_folder_with_children(mailbox):
    mailbox.create_folder("Work/Projects")
    mailbox.create_folder("Workshop")  # same prefix, not a child
    w = mailbox.folder("Work")
    uid = w.append(message(1), flags=["\\Seen"])
    before = w.snapshot()
    mailbox.folder("Work/Projects").append(message(2))
    mailbox.subscribe("Work")
    mailbox.subscribe("Work/Projects")
    mailbox.rename_folder("Work", "Job/Old")
    names_now = {f.name: f.selectable for f in mailbox.list_folders()}
    assert "Work" not in names_now and "Work/Projects" not in names_now
    assert names_now["Workshop"] and names_now["Job/Old"] and names_now["Job/Old/Projects"]
    assert names_now["Job"] is False
    moved = mailbox.folder("Job/Old")
    after = moved.snapshot()
    assert after.uidvalidity == before.uidvalidity
    assert [(m.uid, m.flags) for m in after.messages] == [(uid, {"\\Seen"})]
    assert moved.read_message(uid) == message(1)
    assert mailbox.folder("Job/Old/Projects").read_message(1) == message(2)
    subs = mailbox.subscriptions()
    assert "Job/Old" in subs and "Job/Old/Projects" in subs and "Work" not in subs
    with pytest.raises(FolderNotFound):
        mailbox.folder("Work")
    with pytest.raises(FolderExists):
        mailbox.rename_folder("Workshop", "Job/Old")
    with pytest.raises(FolderNotFound):
        mailbox.rename_folder("Nothing", "Else")
    with pytest.raises(StoreError):
        mailbox.rename_folder("Job", "Job/Inside")


def test_rename_inbox_moves_the_mail(mailbox, inbox):
    uids = [inbox.append(message(i)) for i in range(3)]
    inbox.set_flags([uids[0]], ["\\Seen"])
    bodies = [inbox.read_message(u) for u in uids]
    mailbox.rename_folder("INBOX", "Old Inbox")
    assert inbox.snapshot().messages == ()
    assert mailbox.folder("INBOX").append(message(9)) == uids[-1] + 1  # INBOX's UIDs go on
    old = mailbox.folder("Old Inbox").snapshot()
    assert [m.uid for m in old.messages] == [1, 2, 3]
    assert [mailbox.folder("Old Inbox").read_message(m.uid) for m in old.messages] == bodies
    assert old.messages[0].flags == {"\\Seen"}


def test_subscriptions(mailbox):
    mailbox.subscribe("inbox")
    mailbox.subscribe("Nonexistent/Folder")  # allowed (RFC 3501 6.3.6)
    mailbox.subscribe("Nonexistent/Folder")
    subs = mailbox.subscriptions()
    assert subs.count("INBOX") == 1 and subs.count("Nonexistent/Folder") == 1
    mailbox.unsubscribe("Nonexistent/Folder")
    mailbox.unsubscribe("never-subscribed")
    assert "Nonexistent/Folder" not in mailbox.subscriptions()
    with pytest.raises(InvalidFolderName):
        mailbox.subscribe("../x")
    # persistent
    store2 = MaildirStore(mailbox.store.root, fsync=False)
    assert "INBOX" in store2.mailbox(ADDR).subscriptions()


# -- fsync on: the same basics still work ----------------------------------------------------------


def test_with_fsync(tmp_path):
    store = MaildirStore(str(tmp_path / "m"), fsync=True)
    inbox = store.mailbox(ADDR).folder("INBOX")
    uids = [inbox.append(message(i)) for i in range(3)]
    inbox.set_flags(uids[:1], ["\\Seen"])
    inbox.expunge(uids[1:2])
    assert [m.uid for m in fresh(store).snapshot().messages] == [uids[0], uids[2]]


# -- checker -------------------------------------------------------------------------------------


def uidlist_path(folder) -> str:
    return os.path.join(folder.path, uidlist_mod.UIDLIST)


def read_lines(folder) -> list[str]:
    with open(uidlist_path(folder), "rb") as f:
        return f.read().decode().split("\n")


def write_lines(folder, lines: list[str]) -> None:
    with open(uidlist_path(folder), "w") as f:
        f.write("\n".join(lines))


@pytest.fixture
def five(store, inbox):
    """An INBOX with five messages; returns (uid -> base, uidnext, uidvalidity)."""
    for i in range(5):
        inbox.append(message(i))
    inbox.set_flags([2], ["\\Seen"])
    snap = inbox.snapshot()
    return {m.uid: m.base for m in snap.messages}, snap.uidnext, snap.uidvalidity


def test_checker_healthy(store, five):
    reports = check_user(store, ADDR)
    assert {r.folder for r in reports} == {"INBOX", *SPECIAL_FOLDERS}
    assert all(r.problems == [] and not r.repaired for r in reports)
    assert {r.folder: r.messages for r in reports}["INBOX"] == 5


def test_checker_duplicate_uid_lines(store, five):
    uids, uidnext, _ = five
    inbox = fresh(store)
    lines = read_lines(inbox)
    # UID 4's record now also claims UID 2: two files, one UID
    bad = [ln for ln in lines if ln.startswith("+4 ")][0]
    lines = [("+2 " + bad[3:]) if ln == bad else ln for ln in lines]
    write_lines(inbox, lines)
    rep = check_folder(inbox)
    assert any("UID 2 given to both" in p for p in rep.problems), rep.problems
    assert any("file without UID" in p and uids[4] in p for p in rep.problems), rep.problems
    rep = check_folder(inbox, repair=True)
    assert rep.repaired
    got = uid_map(fresh(store))
    assert {u: got[u] for u in (1, 2, 3, 5)} == {u: uids[u] for u in (1, 2, 3, 5)}
    (new_uid,) = [u for u, b in got.items() if b == uids[4]]
    assert new_uid >= uidnext
    assert check_folder(fresh(store)).problems == []


def test_checker_missing_file(store, five):
    uids, uidnext, _ = five
    inbox = fresh(store)
    for sub in ("new", "cur"):
        for name in files_in(inbox, sub):
            if base_of(name) == uids[3]:
                os.unlink(os.path.join(inbox.path, sub, name))
    rep = check_folder(inbox)
    assert rep.messages == 4
    # Deleted by another program: an expunge, which the next opening (or --repair) forgets.
    assert rep.problems == [] and rep.expunged_elsewhere == 1, rep
    inbox.snapshot()
    f = fresh(store)
    assert uid_map(f) == {u: b for u, b in uids.items() if u != 3}
    assert check_folder(f).problems == []
    assert f.append(message(9)) == uidnext  # the lost UID is not reused


def test_checker_uidnext_too_low(store, five):
    uids, uidnext, validity = five
    inbox = fresh(store)
    lines = read_lines(inbox)
    # a rewritten log whose header claims UIDNEXT 2 although UIDs up to 5 are recorded
    modseq = inbox.snapshot().highestmodseq
    header = f"{uidlist_mod.MAGIC} {uidlist_mod.VERSION} V{validity} N2 M{modseq}"
    body = [ln for ln in lines[1:] if ln.startswith("+")]
    write_lines(inbox, [header, *body, ""])
    rep = check_folder(inbox)
    assert any("UIDNEXT" in p for p in rep.problems), rep.problems
    check_folder(inbox, repair=True)
    f = fresh(store)
    assert uid_map(f) == uids
    assert f.snapshot().uidnext == uidnext
    assert f.append(message(9)) == uidnext
    assert check_folder(fresh(store)).problems == []


def test_checker_truncated_line(store, five):
    uids, uidnext, _ = five
    inbox = fresh(store)
    lines = read_lines(inbox)
    lines = [ln[:4] if ln.startswith("+2 ") else ln for ln in lines]  # "+2 N" : cut mid-way
    write_lines(inbox, lines)
    rep = check_folder(inbox)
    assert any("unreadable record" in p for p in rep.problems), rep.problems
    assert any("file without UID" in p for p in rep.problems), rep.problems
    check_folder(inbox, repair=True)
    got = uid_map(fresh(store))
    assert {u: got[u] for u in (1, 3, 4, 5)} == {u: uids[u] for u in (1, 3, 4, 5)}
    (new_uid,) = [u for u, b in got.items() if b == uids[2]]
    assert new_uid >= uidnext
    assert fresh(store).snapshot().by_uid()[new_uid].flags == {"\\Seen"}
    assert check_folder(fresh(store)).problems == []


def test_checker_accepts_a_folder_with_only_dovecot_uidlist(store, five):
    """Issue 18 item 7: Dovecot's file alone is a folder's UID state, taken over on repair."""
    uids, _, validity = five
    inbox = fresh(store)
    os.unlink(uidlist_path(inbox))
    rep = check_folder(inbox)
    assert rep.problems == [] and rep.from_dovecot == 5, rep
    assert check_folder(inbox, repair=True).repaired
    snap = fresh(store).snapshot()
    assert snap.uidvalidity == validity and {m.uid: m.base for m in snap.messages} == uids
    assert check_folder(fresh(store)).problems == []


def test_checker_reports_and_repairs_a_dovecot_uidlist_out_of_step(store, five):
    uids, _, validity = five
    inbox = fresh(store)
    path = os.path.join(inbox.path, "dovecot-uidlist")
    lines = open(path).read().splitlines()
    with open(path, "w") as f:  # UIDs 1 and 2 swapped
        f.write("\n".join([lines[0], lines[2].replace("2 ", "1 ", 1), lines[1].replace("1 ", "2 ", 1)] + lines[3:]) + "\n")
    assert check_folder(inbox).problems == ["dovecot-uidlist disagrees on 2 of 5 UIDs"]
    os.unlink(path)
    assert check_folder(inbox).problems == ["no dovecot-uidlist (Dovecot would give every message a new UID)"]
    check_folder(inbox, repair=True)
    assert check_folder(fresh(store)).problems == []
    assert read_uidlist(inbox.path).uids == {base: uid for uid, base in uids.items()}


def test_checker_deleted_uidlist(store, five):
    uids, _, validity = five
    inbox = fresh(store)
    os.unlink(uidlist_path(inbox))
    os.unlink(os.path.join(inbox.path, "dovecot-uidlist"))
    rep = check_folder(inbox)
    assert "no UID state file" in rep.problems
    assert sum("file without UID" in p for p in rep.problems) == 5
    check_folder(inbox, repair=True)
    snap = fresh(store).snapshot()
    assert sorted(m.base for m in snap.messages) == sorted(uids.values())
    assert len({m.uid for m in snap.messages}) == 5
    # the UIDs were given anew, so UIDVALIDITY must change (RFC 3501 2.3.1.1)
    assert snap.uidvalidity != validity
    assert check_folder(fresh(store)).problems == []


def test_opening_folder_with_both_uid_files_deleted_changes_uidvalidity(store, five):
    _, _, validity = five
    inbox = fresh(store)
    os.unlink(uidlist_path(inbox))
    os.unlink(os.path.join(inbox.path, "dovecot-uidlist"))
    snap = inbox.snapshot()
    assert len(snap.messages) == 5
    assert snap.uidvalidity != validity


def test_a_lost_uid_log_is_rebuilt_from_dovecot_uidlist(store, five):
    """dovecot-uidlist, kept with every UID given (issue 18 item 1), is also the copy the log is
    rebuilt from: same UIDVALIDITY and UIDs, and HIGHESTMODSEQ does not go down (RFC 7162 3.1.2.1)."""
    uids, _, validity = five
    inbox = fresh(store)
    inbox.set_flags([1], ["\\Seen"], "add")
    before = inbox.snapshot()
    os.unlink(uidlist_path(inbox))
    after = fresh(store).snapshot()
    assert after.uidvalidity == validity
    assert {m.uid: m.base for m in after.messages} == uids
    assert after.highestmodseq > before.highestmodseq
    assert all(m.modseq > before.highestmodseq for m in after.messages)


def test_checker_repairs_file_in_new_and_cur(store, five):
    uids, _, _ = five
    inbox = fresh(store)
    (name,) = [n for n in files_in(inbox, "cur") if base_of(n) == uids[1]]
    os.rename(os.path.join(inbox.path, "cur", name), os.path.join(inbox.path, "new", uids[1]))
    os.link(os.path.join(inbox.path, "new", uids[1]), os.path.join(inbox.path, "cur", uids[1] + ":2,S"))
    rep = check_folder(inbox)
    assert any("present 2 times" in p for p in rep.problems), rep.problems
    check_folder(inbox, repair=True)
    assert [n for n in files_in(inbox, "new") if base_of(n) == uids[1]] == []
    assert fresh(store).snapshot().by_uid()[1].flags == {"\\Seen"}


def test_torn_final_line_is_ignored_and_cut(store, five):
    uids, uidnext, _ = five
    inbox = fresh(store)
    path = uidlist_path(inbox)
    with open(path, "ab") as f:
        # crash mid-append: no newline; longer than the next record, so it must be cut, not overwritten
        f.write(b"+99 77 1700000000 1700000000.M1P1Q1.torn" + b"x" * 300)
    reader = fresh(store)
    snap = reader.snapshot()
    assert uid_map(reader) == uids
    assert snap.uidnext == uidnext
    assert 99 not in snap.by_uid()
    assert check_folder(reader).problems == []
    uid = reader.append(message(42))
    assert uid == uidnext
    with open(path, "rb") as f:
        data = f.read()
    assert b"torn" not in data
    assert data.endswith(b"\n")
    last = data.rstrip(b"\n").split(b"\n")[-1].decode()
    assert last.startswith(f"+{uid} ")
    assert fresh(store).read_message(uid) == message(42)
    assert check_folder(fresh(store)).problems == []


def test_uids_follow_arrival_order_within_one_second(tmp_path):
    """Files named in one second with fewer microsecond digits arrived earlier."""
    from mailstack.store import MaildirStore

    store = MaildirStore(str(tmp_path))
    folder = store.mailbox("bob@example.test").folder("INBOX")
    names = ["1700000000.M98765P1Q1.host,S=1", "1700000000.M123456P1Q2.host,S=1", "1700000000.M5P2Q1.host,S=1"]
    for name in names:
        (tmp_path / "example.test" / "bob" / "new" / name).write_bytes(b"x")
    order = [m.base for m in folder.snapshot().messages]
    assert order == [names[2], names[0], names[1]]


def test_append_after_unnumbered_deliveries_keeps_arrival_order(store, mailbox):
    """SMTP deliveries get their UID lazily; an APPEND or COPY that comes first must not jump
    ahead of them (RFC 3501 2.3.1.1)."""
    inbox = mailbox.folder("INBOX")
    store.deliver(ADDR, message(1))
    store.deliver(ADDR, message(2))
    appended = inbox.append(message(3))
    copied = mailbox.folder("Sent").append(message(4))
    (_, new_uid), = mailbox.folder("Sent").copy([copied], inbox)
    store.deliver(ADDR, message(5))
    order = [(m.uid, inbox.read_message(m.uid)) for m in inbox.snapshot().messages]
    assert [body for _, body in order] == [message(1), message(2), message(3), message(4), message(5)]
    assert [uid for uid, _ in order][2:4] == [appended, new_uid]


def other_server_renames_first(monkeypatch, letters: str) -> list:
    """Make the store's next rename of a file in cur/ lose a race: just before it, "Dovecot"
    renames the same file to the flag ``letters`` (its own change); returns what was raced."""
    from mailstack.store import flags as flags_mod

    real_rename = os.rename
    raced: list = []

    def rename(src, dst):
        if not raced and "/cur/" in src:
            raced.append(src)
            real_rename(src, src.split(":2,")[0] + ":2," + letters)
        return real_rename(src, dst)

    monkeypatch.setattr(flags_mod.os, "rename", rename)
    return raced


def test_a_flag_change_racing_another_servers_rename_is_not_lost(store, inbox, monkeypatch):
    """Dovecot renames a file (its own flag change) between our listing and our rename: ours
    must start again from the new name, not give up (issue 18, both servers at once)."""
    uid = inbox.append(message(0))
    raced = other_server_renames_first(monkeypatch, "R")  # the other server: \Answered
    changed, _ = inbox.set_flags([uid], ["\\Flagged"], "add")
    assert raced
    assert changed[uid][0] == {"\\Flagged", "\\Answered"}
    assert fresh(store).snapshot().by_uid()[uid].flags == {"\\Flagged", "\\Answered"}


def test_flags_another_server_changed_while_we_were_down_get_new_modseqs(store, inbox):
    """RFC 7162 3.1.1: a change of flags is a change of MODSEQ, also one Dovecot made while
    mailstack was not running: found against the listing the saved index holds (review of
    issue 18); a change another mailstack process logged gets no second one."""
    a, b = inbox.append(message(1)), inbox.append(message(2))
    past = time.time() - 100  # directories unchanged for long: the listing may be saved
    for sub in ("new", "cur"):
        os.utime(os.path.join(inbox.path, sub), (past, past))
    folder = fresh(store)
    before = folder.snapshot()
    assert folder.save_index()
    target = before.by_uid()[a]
    os.rename(os.path.join(folder.path, target.filename), os.path.join(folder.path, "cur", target.base + ":2,S"))
    fresh(store).set_flags([b], ["\\Flagged"], "add")  # another mailstack process, which finds Dovecot's too
    logged = fresh(store).snapshot()
    assert logged.highestmodseq == before.highestmodseq + 2  # one for Dovecot's change, one for its own
    assert logged.by_uid()[a].flags == {"\\Seen"} and logged.by_uid()[a].modseq > before.highestmodseq
    after = fresh(store).snapshot()  # a third process: both changes are logged already
    assert [(m.uid, m.modseq) for m in after.messages] == [(m.uid, m.modseq) for m in logged.messages]


def test_unchangedsince_refuses_when_another_server_changed_the_flags_meanwhile(store, inbox, monkeypatch):
    """RFC 7162 3.1.3: Dovecot's rename between our check and our rename is a change after the
    client's MODSEQ: the conditional STORE is refused, Dovecot's flag kept (review of issue 18)."""
    uid = inbox.append(message(0))
    modseq = inbox.snapshot().by_uid()[uid].modseq
    other_server_renames_first(monkeypatch, "F")  # the other server: \Flagged
    changed, refused = inbox.set_flags([uid], ["\\Seen"], "add", unchangedsince=modseq)
    assert (changed, refused) == ({}, [uid])
    after = inbox.snapshot().by_uid()[uid]  # Dovecot's change gets its MODSEQ at the next listing
    assert after.flags == {"\\Flagged"} and after.modseq > modseq


def test_clearing_tmp_skips_the_files_beside_the_folders(tmp_path):
    """A user's directory holds Sieve's .dovecot.sieve (a link to a file) and other dot-files
    that are not folders (interface.py): start-up's tmp/ clearing passes them by."""
    store = MaildirStore(str(tmp_path), fsync=False)
    path = store.mailbox(ADDR).path
    os.makedirs(os.path.join(path, "sieve"))
    open(os.path.join(path, "sieve", "main.sieve"), "w").close()
    os.symlink("sieve/main.sieve", os.path.join(path, ".dovecot.sieve"))
    open(os.path.join(path, ".mailstack-vacation"), "w").close()
    assert store.clear_tmp() == 0


def test_a_keyword_letter_another_server_just_gave_survives_our_flag_change(inbox):
    # Dovecot writes dovecot-keywords, then renames the message with the new letter; if our
    # listing shows the letter before we read the file, the letter must not be dropped.
    a = inbox.append(message(1))
    inbox.set_flags([a], ["mine"])  # letter a
    path = inbox.path
    (name,) = os.listdir(os.path.join(path, "cur"))
    os.rename(os.path.join(path, "cur", name), os.path.join(path, "cur", name.replace(":2,a", ":2,ab")))
    inbox.set_flags([a], ["\\Flagged"], mode="add")  # b means nothing here yet
    (name,) = os.listdir(os.path.join(path, "cur"))
    assert name.endswith(":2,Fab"), name
    with open(os.path.join(path, "dovecot-keywords"), "a") as f:
        f.write("1 theirs\n")  # now it does
    os.utime(os.path.join(path, "dovecot-keywords"), (time.time() + 5, time.time() + 5))
    assert inbox.snapshot().by_uid()[a].flags == {"\\Flagged", "mine", "theirs"}
