"""Quotas in the store (mailstack/store/quota.py): the Maildir++ ``maildirsize`` counter,
kept incrementally, rebuilt when the Maildir++ rules say, checked by ``store check``."""

from __future__ import annotations

import os

import pytest

from mailstack.errors import OverQuota, StoreError
from mailstack.store import Limits, MaildirStore, QuotaPolicy, check_quota
from mailstack.store.quota import MAILDIRSIZE, WARNED, parse_maildirsize, walk

USER = "alice@example.test"
MSG = b"Subject: hi\r\n\r\n" + b"x" * 85  # 100 bytes


def make_store(tmp_path, storage=0, messages=0, warning=0, **kw):
    store = MaildirStore(str(tmp_path / "mail"), fsync=False)
    limits = {USER: Limits(storage, messages)}
    store.quota = QuotaPolicy(lambda a: limits.get(a, Limits()), warning_percent=warning, hostname="mx.example.test",
                              fsync=False, **kw)
    store.limits = limits
    return store


def size_file(store):
    return os.path.join(store.mailbox(USER).path, MAILDIRSIZE)


def test_deliveries_are_counted_by_appending(tmp_path):
    store = make_store(tmp_path, storage=10_000, messages=50)
    for _ in range(3):
        store.deliver(USER, MSG)
    data = open(size_file(store), "rb").read()
    lines = data.decode().splitlines()
    assert lines[0] == "10000S,50C"
    assert lines[1:] == ["0 0", "100 1", "100 1", "100 1"]
    usage = store.quota_usage(USER)
    assert (usage.bytes, usage.messages) == (300, 3)


def test_dovecot_maildirsize_is_read_as_it_is(tmp_path):
    store = make_store(tmp_path, storage=1 << 30, messages=0)
    path = size_file(store)
    # Dovecot writes the definition, then "bytes count" lines, padded or not, negative for expunges.
    with open(path, "w") as f:
        f.write("1073741824S,0C\n   4500     3\n-1500 -1\n100 1\n")
    assert parse_maildirsize(open(path, "rb").read())[1:] == (3100, 3)
    usage = store.quota_usage(USER)
    assert (usage.bytes, usage.messages) == (3100, 3)  # the file is trusted: no walk


def test_a_missing_invalid_or_big_file_is_rebuilt_from_a_walk(tmp_path):
    store = make_store(tmp_path, storage=10_000)
    store.deliver(USER, MSG)
    path = size_file(store)
    os.unlink(path)
    assert store.quota_usage(USER).bytes == 100
    with open(path, "w") as f:
        f.write("10000S,0C\n100 1\n12 ab\n")
    assert store.quota_usage(USER).bytes == 100
    with open(path, "a") as f:
        f.write("1 0\n-1 0\n" * 600)  # over 5120 bytes
    assert store.quota_usage(USER).bytes == 100
    assert os.path.getsize(path) < 100
    with open(path, "a") as f:
        f.write("7 1")  # an unfinished line
    assert store.quota_usage(USER).messages == 1


def test_changed_limits_rewrite_the_definition(tmp_path):
    store = make_store(tmp_path, storage=10_000)
    store.deliver(USER, MSG)
    store.limits[USER] = Limits(20_000, 5)
    assert store.quota_usage(USER).bytes == 100
    assert open(size_file(store)).readline() == "20000S,5C\n"


def test_storage_limit_refuses_append_and_delivery(tmp_path):
    store = make_store(tmp_path, storage=250)
    inbox = store.mailbox(USER).folder("INBOX")
    inbox.append(MSG)
    inbox.append(MSG)
    with pytest.raises(OverQuota) as e:
        inbox.append(MSG)
    assert (e.value.code, e.value.enhanced) == (452, "4.2.2")
    assert isinstance(e.value, StoreError)
    with pytest.raises(OverQuota):
        store.deliver(USER, MSG)
    assert len(inbox.snapshot().messages) == 2
    assert store.quota_usage(USER).bytes == 200
    assert os.listdir(os.path.join(inbox.path, "tmp")) == []


def test_permanent_reply_is_552(tmp_path):
    store = make_store(tmp_path, messages=1, permanent=True)
    store.deliver(USER, MSG)
    with pytest.raises(OverQuota) as e:
        store.deliver(USER, MSG)
    assert (e.value.code, e.value.enhanced) == (552, "5.2.2")


def test_message_limit_and_expunge_gives_room_back(tmp_path):
    store = make_store(tmp_path, messages=2)
    inbox = store.mailbox(USER).folder("INBOX")
    uids = [inbox.append(MSG), inbox.append(MSG)]
    with pytest.raises(OverQuota):
        inbox.append(MSG)
    inbox.expunge(uids[:1])
    assert (store.quota_usage(USER).bytes, store.quota_usage(USER).messages) == (100, 1)
    inbox.append(MSG)


def test_copy_is_all_or_nothing_and_move_within_the_user_is_free(tmp_path):
    store = make_store(tmp_path, messages=3)
    mailbox = store.mailbox(USER)
    inbox, archive = mailbox.folder("INBOX"), mailbox.folder("Archive")
    uids = [inbox.append(MSG), inbox.append(MSG)]
    with pytest.raises(OverQuota):
        inbox.copy(uids, archive)  # 2 + 2 > 3: nothing copied
    assert archive.snapshot().messages == ()
    assert store.quota_usage(USER).messages == 2
    inbox.append(MSG)  # now full: 3 of 3
    pairs = inbox.move(uids, archive)
    assert len(pairs) == 2 and store.quota_usage(USER).messages == 3
    assert walk(mailbox.path) == (300, 3)


def test_trash_counts_and_deleting_a_folder_frees_its_mail(tmp_path):
    store = make_store(tmp_path, storage=1000)
    mailbox = store.mailbox(USER)
    trash = mailbox.folder("Trash")
    trash.append(MSG)
    trash.append(MSG)
    assert store.quota_usage(USER).bytes == 200
    work = mailbox.create_folder("Work")
    work.append(MSG)
    mailbox.delete_folder("Work")
    assert (store.quota_usage(USER).bytes, store.quota_usage(USER).messages) == (200, 2)


def test_copy_to_another_user_counts_there(tmp_path):
    store = make_store(tmp_path, messages=1)
    bob = store.mailbox("bob@example.test").folder("INBOX")
    uids = [bob.append(MSG), bob.append(MSG)]
    with pytest.raises(OverQuota):
        bob.copy(uids, store.mailbox(USER).folder("INBOX"))
    bob.move(uids[:1], store.mailbox(USER).folder("INBOX"))
    assert store.quota_usage(USER).messages == 1


def test_batch_delivery_refuses_per_item_and_grace_lets_one_through(tmp_path):
    store = make_store(tmp_path, messages=1)
    results = store.deliver_batch([(USER, MSG), (USER, MSG), ("bob@example.test", MSG)])
    assert results[0] is None and isinstance(results[1], OverQuota) and results[2] is None
    assert store.deliver_batch([(USER, MSG, "INBOX", (), True)]) == [None]  # (address, source, folder, flags, grace)
    assert store.quota_usage(USER).messages == 2


def test_check_quota_for_smtp(tmp_path):
    store = make_store(tmp_path, storage=250)
    store.check_quota(USER)
    store.check_quota("nobody@example.test")  # no mailbox yet, no limits: fine
    store.deliver(USER, MSG)
    store.check_quota(USER, 150)
    with pytest.raises(OverQuota):
        store.check_quota(USER, 151)
    store.deliver(USER, MSG, flags=())
    store.limits[USER] = Limits(200, 0)
    with pytest.raises(OverQuota):
        store.check_quota(USER)  # at the limit: full


def test_users_without_limits_keep_no_file(tmp_path):
    store = make_store(tmp_path)
    store.deliver(USER, MSG)
    assert not os.path.exists(size_file(store))
    assert store.quota_usage(USER) is None


def test_store_check_reports_and_repairs_a_disagreement(tmp_path):
    store = make_store(tmp_path, storage=10_000)
    inbox = store.mailbox(USER).folder("INBOX")
    inbox.append(MSG)
    inbox.append(MSG)
    report = check_quota(store, USER)
    assert report.problems == [] and report.actual == (200, 2)
    # Another program (Dovecot without the quota plugin) deletes a file behind our back.
    cur = os.path.join(inbox.path, "cur")
    os.unlink(os.path.join(cur, sorted(os.listdir(cur))[0]))
    report = check_quota(store, USER)
    assert report.problems == ["maildirsize says 200 bytes in 2 messages, the Maildir holds 100 bytes in 1"]
    assert not report.repaired
    report = check_quota(store, USER, repair=True)
    assert report.repaired
    assert check_quota(store, USER).problems == []
    assert open(size_file(store)).read() == "10000S,0C\n100 1\n"


def test_the_warning_is_delivered_once_per_crossing(tmp_path):
    store = make_store(tmp_path, messages=10, warning=50, postmaster="postmaster@example.test")
    inbox = store.mailbox(USER).folder("INBOX")
    uids = [inbox.append(MSG) for _ in range(4)]
    assert len(inbox.snapshot().messages) == 4
    uids.append(inbox.append(MSG))  # 5 of 10: 50%
    messages = inbox.snapshot().messages
    assert len(messages) == 6
    warning = [inbox.read_message(m.uid) for m in messages if m.uid not in uids]
    assert len(warning) == 1
    text = warning[0].decode()
    assert "From: Mail System <postmaster@example.test>" in text
    assert "Subject: Your mailbox is 50% full" in text and "Content-Type: text/plain" in text
    assert os.path.exists(os.path.join(inbox.path, WARNED))
    uids.append(inbox.append(MSG))
    assert len(inbox.snapshot().messages) == 7  # not again
    inbox.expunge([m.uid for m in inbox.snapshot().messages][:4])  # 3 of 10: below
    assert not os.path.exists(os.path.join(inbox.path, WARNED))
    inbox.append(MSG)
    inbox.append(MSG)  # 5 of 10 again: a second warning
    assert len(inbox.snapshot().messages) == 6


def test_a_big_file_is_compacted_between_walks(tmp_path):
    """Past 5 KB: a walk at most every 15 minutes, else the file's own sum written back (a
    walk costs O(Maildir); the sum is what the walk would find when nothing else wrote)."""
    store = make_store(tmp_path, storage=1 << 30)
    inbox = store.mailbox(USER).folder("INBOX")
    uids = [inbox.append(MSG) for _ in range(3)]  # the first use walked (no file yet)
    path = size_file(store)
    with open(path, "a") as f:
        f.write("1 0\n-1 0\n" * 600)
    os.unlink(os.path.join(inbox.path, "cur", sorted(os.listdir(os.path.join(inbox.path, "cur")))[0]))
    inbox.expunge(uids[1:2])  # compacted (no walk: the file still counts the deleted file), then -100 -1
    assert open(path).read() == "1073741824S,0C\n300 3\n-100 -1\n"
    counter = store.quota.counter(store.mailbox(USER).path)
    counter._walked_at -= 16 * 60  # the last walk is older than 15 minutes
    with open(path, "a") as f:
        f.write("1 0\n-1 0\n" * 600)
    assert (store.quota_usage(USER).bytes, store.quota_usage(USER).messages) == (100, 1)  # walked


def test_concurrent_deliveries_and_expunges_keep_the_count(tmp_path):
    import threading

    store = make_store(tmp_path, storage=1 << 30, messages=10_000)
    inbox = store.mailbox(USER).folder("INBOX")

    def work():
        uids = [inbox.append(MSG) for _ in range(40)]
        inbox.expunge(uids[::4])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = store.quota_usage(USER)
    assert (usage.bytes, usage.messages) == walk(store.mailbox(USER).path) == (12_000, 120)
    assert check_quota(store, USER).problems == []


def test_a_delivery_report_reaches_a_full_mailbox(tmp_path):
    """A DSN about the user's own mail is stored past the quota: refused, it would be lost."""
    from types import SimpleNamespace

    from mailstack.outbound.bounce import BounceSender

    store = make_store(tmp_path, messages=1)
    store.deliver_batch([(USER, MSG)])
    accounts = SimpleNamespace(resolve=lambda address: SimpleNamespace(local=[USER]))
    bounces = BounceSender("mx.example.test", None, accounts, store)
    assert bounces.deliver_locally(USER, b"Subject: Undelivered Mail\r\n\r\nreport\r\n")
    assert store.quota_usage(USER).messages == 2
    assert isinstance(store.deliver_batch([(USER, MSG)])[0], OverQuota)  # ordinary mail is still refused


def test_a_negative_total_is_rebuilt_from_a_walk(tmp_path):
    """Removals counted twice (another process rebuilt the file between an expunge's unlink
    and its append) or a hostile file can sum below zero: that is no usage (RFC 9208's
    number64 cannot even say it, and a full mailbox would look empty), so it is recounted."""
    store = make_store(tmp_path, storage=10_000, messages=5)
    store.deliver(USER, MSG)
    with open(size_file(store), "w") as f:
        f.write("10000S,5C\n100 1\n-100000 -10\n")
    usage = store.quota_usage(USER)
    assert (usage.bytes, usage.messages) == (100, 1)
    with open(size_file(store), "a") as f:  # a tail read incrementally
        f.write("-100000 -10\n")
    usage = store.quota_usage(USER)
    assert (usage.bytes, usage.messages) == (100, 1)


def test_a_new_file_on_a_reused_inode_is_read_whole(tmp_path):
    """ext4 hands a freed inode number straight to the next file, so a maildirsize that
    another process (or Dovecot) rebuilt twice can have the inode this process remembered,
    with other content: its remembered offset then pointed into a stranger's lines.  Shown
    here by rewriting the file in place (same inode): usage must be the new file's sum."""
    from mailstack.store.quota import UserCounter

    store = make_store(tmp_path, storage=100_000, messages=500)
    store.deliver(USER, MSG)
    counter = store.quota.counter(store.mailbox(USER).path)
    limits = store.limits[USER]
    for _ in range(10):
        counter.change(limits, 100, 1)
    assert counter.usage(limits).messages == 11
    with open(size_file(store), "r+") as f:  # another writer's rebuild, on the same inode number
        f.truncate(0)
        f.write("100000S,500C\n100 1\n" + "7 0\n" * 60)
    assert isinstance(counter, UserCounter)
    usage = counter.usage(limits)
    assert (usage.bytes, usage.messages) == (100 + 7 * 60, 1)


def test_rcpt_rechecks_an_old_full_file_before_refusing(tmp_path):
    """Mail removed by a program that does not append to maildirsize (Dovecot without its
    quota plugin): a refusal from a file older than 15 minutes is checked by a walk first.
    The SMTP check (RCPT, DATA) skipped that, and as nothing is delivered past a refusal,
    the user stayed refused for good."""
    store = make_store(tmp_path, messages=2)
    store.deliver(USER, MSG)
    store.deliver(USER, MSG)
    with pytest.raises(OverQuota):
        store.check_quota(USER, 100)
    new = os.path.join(store.mailbox(USER).path, "new")
    os.unlink(os.path.join(new, sorted(os.listdir(new))[0]))  # removed behind the counter's back
    old = os.path.getmtime(size_file(store)) - 16 * 60
    os.utime(size_file(store), (old, old))
    store.check_quota(USER, 100)  # no OverQuota: one message left
    assert store.quota_usage(USER).messages == 1
