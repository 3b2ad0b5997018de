"""The saved folder index (mailstack/store/index.py): used after a restart only while it still
describes the folder exactly, ignored as soon as anything it was taken from changed."""

from __future__ import annotations

import os
import time

import pytest

from mailstack.store import MaildirStore
from mailstack.store import uidlist as uidlist_mod
from mailstack.store.index import INDEX_FILE
from support.messages import message as build_message
from support.servers import PASSWORDS

ADDR = "alice@example.test"


def message(i: int) -> bytes:
    return build_message(i, body=f"Body {i}\r\n".encode(), sender="a@example.test", to=None, date=None, message_id=None)


def age(folder, seconds: float = 10) -> None:
    """Make the last change of new/ and cur/ lie in the past, as it does a while after mail came."""
    when = time.time() - seconds
    for sub in ("new", "cur"):
        os.utime(os.path.join(folder.path, sub), (when, when))


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "mail")


def open_inbox(root):
    return MaildirStore(root, fsync=False).mailbox(ADDR).folder("INBOX")


def seeded(root, n=20):
    inbox = open_inbox(root)
    for i in range(n):
        inbox.append(message(i), flags=["\\Seen"] if i % 3 == 0 else ())
    inbox.store.deliver(ADDR, message(100))  # one without a UID yet, in new/
    inbox.set_flags([inbox.snapshot().messages[1].uid], ["$Label1"], "add")
    age(inbox)
    return inbox


def no_log_reading(monkeypatch):
    def refuse(self, data, header):
        raise AssertionError("the UID log was read although the index was valid")
    monkeypatch.setattr(uidlist_mod.UidList, "_consume", refuse)


def test_a_valid_index_replaces_reading_the_log_and_the_directories(root, monkeypatch):
    inbox = seeded(root)
    expected = inbox.snapshot()
    assert inbox.save_index() is True
    assert inbox.save_index() is False  # nothing changed since
    no_log_reading(monkeypatch)
    monkeypatch.setattr(os, "listdir", lambda *a: (_ for _ in ()).throw(AssertionError("listed")))
    again = open_inbox(root)
    snap = again.snapshot()
    assert snap.messages == expected.messages
    assert (snap.uidvalidity, snap.uidnext, snap.highestmodseq) == (expected.uidvalidity, expected.uidnext,
                                                                      expected.highestmodseq)


@pytest.mark.parametrize("change", ["delivery", "flags", "keyword file", "uid log", "expunge"])
def test_any_change_makes_the_index_ignored(root, change):
    inbox = seeded(root)
    inbox.snapshot()
    assert inbox.save_index()
    other = open_inbox(root)  # another process changes the folder
    uid = other.snapshot().messages[2].uid
    if change == "delivery":
        other.store.deliver(ADDR, message(200))
    elif change == "flags":
        other.set_flags([uid], ["\\Flagged"], "add")
    elif change == "keyword file":
        os.utime(os.path.join(inbox.path, "dovecot-keywords"), (1, 1))
    elif change == "uid log":
        with other.locked():
            other.uidlist.refresh()
            other.uidlist.append([f"N{other.uidlist.state.uidnext + 5}"])
            other.uidlist.state.uidnext += 5
    else:
        other.expunge([uid])
    truth = open_inbox(root)
    truth._index_tried = True  # read the long way
    expected = truth.snapshot()
    fresh = open_inbox(root)
    assert fresh.snapshot().messages == expected.messages
    assert fresh.snapshot().uidnext == expected.uidnext


def test_no_index_from_a_listing_inside_the_timestamp_window(root):
    inbox = open_inbox(root)
    inbox.append(message(1))
    inbox.snapshot()
    assert inbox.save_index() is False  # new/ changed just now: the listing may miss a change
    assert not os.path.exists(os.path.join(inbox.path, INDEX_FILE))


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"v": 1}', b'{"v": 99}', b"[1, 2]",
                                    b'mailstack-index 2\n{"v": 2}\n', b'mailstack-index 2\n{"v": 2, "n": 5}', None])
def test_a_damaged_index_is_ignored(root, damage):
    inbox = seeded(root)
    expected = inbox.snapshot()
    assert inbox.save_index()
    path = os.path.join(inbox.path, INDEX_FILE)
    if damage is None:  # a whole header, but columns shorter than it says
        damage = open(path, "rb").read()[:-1]
    with open(path, "wb") as f:
        f.write(damage)
    fresh = open_inbox(root)
    assert fresh.snapshot().messages == expected.messages
    assert fresh.save_index()  # and it is made again


def test_the_server_saves_indexes_at_shutdown_and_uses_them(server_factory):
    import imaplib

    srv = server_factory(listeners=["imap"]).start()
    bob = "bob@example.test"
    uids = srv.deliver(*(message(i) for i in range(5)), user=bob)
    inbox = MaildirStore(str(srv.store_root)).mailbox(bob).folder("INBOX")
    age(inbox)
    m = imaplib.IMAP4("127.0.0.1", srv.port("imap"), timeout=20)
    m.login(bob, PASSWORDS[bob])
    m.select("INBOX", readonly=True)  # EXAMINE: nothing moves, the listing stays reusable
    before = m.fetch("1:*", "(UID FLAGS)")[1]
    m.logout()
    srv.stop()
    assert os.path.exists(os.path.join(inbox.path, INDEX_FILE))
    srv.start()
    m = imaplib.IMAP4("127.0.0.1", srv.port("imap"), timeout=20)
    m.login(bob, PASSWORDS[bob])
    m.select("INBOX", readonly=True)
    assert m.fetch("1:*", "(UID FLAGS)")[1] == before
    assert [int(x) for x in m.uid("SEARCH", "ALL")[1][0].split()] == uids
    m.logout()


@pytest.mark.parametrize("column, value", [("bases", "someone-else"), ("suffix_of", None), ("sizes", 7)])
def test_checker_reports_an_index_that_disagrees_and_repair_removes_it(root, column, value):
    from mailstack.store import index

    from mailstack.store.check import check_folder

    inbox = seeded(root)
    inbox.snapshot()
    assert inbox.save_index()
    assert check_folder(inbox).problems == []
    path = os.path.join(inbox.path, INDEX_FILE)
    stamp = os.stat(path)
    doc = index.read(inbox.path)
    if column == "suffix_of":  # another of the flag-letter strings in the table
        value = (doc["suffix_of"][0] + 1) % len(doc["suffixes"])
    doc[column][0] = value  # valid by every stamp, wrong inside
    index.write(inbox.path, doc)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    report = check_folder(inbox)
    assert "the folder index disagrees with the UID log or the files" in report.problems
    assert check_folder(inbox, repair=True).repaired
    assert not os.path.exists(path)
    assert check_folder(inbox).problems == []


def test_an_adopted_uid_state_reads_only_what_was_appended_after_it(tmp_path, monkeypatch):
    """UidList.adopt, as the index restore uses it: the mirror continues from the adopted
    position instead of re-reading the log from its start."""
    import copy

    writer = uidlist_mod.UidList(str(tmp_path), fsync=False)
    writer.create(7)
    records: list[str] = []
    writer.add("first", 1, records)
    writer.append(records)
    inode, offset = writer.position
    reader = uidlist_mod.UidList(str(tmp_path), fsync=False)
    reader.adopt(copy.deepcopy(writer.state), inode, offset)
    assert reader.position == writer.position
    records = []
    writer.add("second", 2, records)
    writer.append(records)
    consumed = []
    real = uidlist_mod.UidList._consume
    monkeypatch.setattr(uidlist_mod.UidList, "_consume",
                        lambda self, data, header: consumed.append(data) or real(self, data, header))
    reader.refresh()
    assert consumed == [records[0].encode() + b"\n"]
    assert sorted(reader.state.by_base) == ["first", "second"] and reader.position == writer.position


def test_after_a_restart_select_claims_what_the_index_lists_in_new(root, monkeypatch):
    # The index says how many of its files are in new/: none, and SELECT looks no further;
    # some, and SELECT claims them as \Recent, as without an index.
    inbox = seeded(root)  # message 100 waits in new/
    in_new = [m.uid for m in inbox.snapshot().messages if m.filename.startswith("new/")]
    assert len(in_new) == 1
    assert inbox.save_index() is True
    snap, taken = open_inbox(root).select(take_recent=True)
    assert in_new[0] in taken and not any(m.filename.startswith("new/") for m in snap.messages)  # the APPENDed too
    again = open_inbox(root)  # the index describes new/ no more: read the directories again
    snap, taken = again.select(take_recent=True)
    assert taken == [] and len(snap.messages) == 21
    age(again)
    assert again.save_index() is True
    import mailstack.store.flags as flags_mod

    monkeypatch.setattr(flags_mod, "repeat", lambda *a: (_ for _ in ()).throw(AssertionError("looked in new/")))
    snap, taken = open_inbox(root).select(take_recent=True)
    assert taken == [] and len(snap.messages) == 21


def test_a_listing_is_trusted_sooner_where_the_file_system_keeps_nanoseconds():
    from mailstack.store.index import settled

    second = 1_700_000_000 * 10**9
    assert not settled(second + 10**9, second)  # whole seconds: a change may hide for a second
    assert settled(second + 2 * 10**9 + 1, second)
    assert not settled(second + 50_000_000 + 7, second + 7)  # nanoseconds: the tick is milliseconds
    assert settled(second + 100_000_001 + 7, second + 7)
    assert not settled(second + 10**9, second, second)  # one nanosecond time is enough, none here


def test_a_folder_changed_by_us_is_not_listed_again_once_the_tick_has_passed(root, monkeypatch):
    inbox = open_inbox(root)
    for i in range(3):
        inbox.append(message(i))
    inbox.snapshot()
    mtimes = [os.stat(os.path.join(inbox.path, d)).st_mtime_ns for d in ("new", "cur")]
    if not any(m % 10**9 for m in mtimes):
        pytest.skip("this file system keeps whole seconds")
    time.sleep(0.15)
    inbox.snapshot()  # listed once more: the last listing was taken within the tick
    monkeypatch.setattr(os, "listdir", lambda *a: (_ for _ in ()).throw(AssertionError("listed")))
    assert len(inbox.snapshot().messages) == 3
