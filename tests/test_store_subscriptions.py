"""Subscriptions in Dovecot's own format and with Dovecot's locking (issue 18, item 4): the file
is version 2 (``V<TAB>2``, a TAB between hierarchy levels, modified UTF-7), versions 1 and
mailstack's old one-name-a-line file are read, and the ``subscriptions.lock`` dot-lock is
taken and gone again after each change.  The last test hands the file to a real Dovecot and
back."""

from __future__ import annotations

import imaplib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mailstack.store import MaildirStore
from mailstack.store.mailbox import read_subscriptions

ADDR = "alice@example.test"
#: What Dovecot 2.3 wrote after CREATE and SUBSCRIBE of "&ANw-ber", "&ANw-ber.Sub", INBOX, "Plain".
DOVECOT_V2 = b"V\t2\n\n&ANw-ber\n&ANw-ber\tSub\nINBOX\nPlain\n"


@pytest.fixture
def mailbox(tmp_path):
    box = MaildirStore(str(tmp_path / "mail"), fsync=False).mailbox(ADDR)
    for name in ("Über", "Über/Sub", "Plain"):
        box.create_folder(name)
    return box


def subscriptions_file(box) -> bytes:
    with open(os.path.join(box.path, "subscriptions"), "rb") as f:
        return f.read()


def test_written_exactly_as_dovecot_writes_it(mailbox):
    for name in mailbox.subscriptions():  # the special folders, subscribed when the account was made
        mailbox.unsubscribe(name)
    for name in ("Über", "Über/Sub", "INBOX", "Plain"):
        mailbox.subscribe(name)
    assert subscriptions_file(mailbox) == DOVECOT_V2
    assert not os.path.exists(os.path.join(mailbox.path, "subscriptions.lock"))  # none left behind
    mailbox.unsubscribe("Über")
    assert subscriptions_file(mailbox) == b"V\t2\n\n&ANw-ber\tSub\nINBOX\nPlain\n"


def test_every_known_form_is_read():
    assert read_subscriptions(DOVECOT_V2) == ["Über", "Über/Sub", "INBOX", "Plain"]
    assert read_subscriptions(b"V\t2\n\nA\x01tB\tC\n") == ["A\tB/C"]  # a TAB inside a level, escaped
    assert read_subscriptions(b"&ANw-ber.Sub\nWork\ninbox\n") == ["Über/Sub", "Work", "INBOX"]  # Dovecot v1
    assert read_subscriptions("Über/Sub\nR&D\n".encode()) == ["Über/Sub", "R&D"]  # mailstack's old file


def test_a_change_waits_for_dovecots_lock(mailbox):
    lock = os.path.join(mailbox.path, "subscriptions.lock")
    dovecot = subprocess.Popen(["sleep", "60"])  # a live holder that is not this process
    with open(lock, "x") as f:
        f.write(f"{dovecot.pid}:{socket.gethostname()}")

    def dovecot_finishes():
        time.sleep(0.3)
        with open(os.path.join(mailbox.path, "subscriptions"), "wb") as f:
            f.write(b"V\t2\n\nPlain\n")
        os.unlink(lock)

    other = threading.Thread(target=dovecot_finishes)
    other.start()
    mailbox.subscribe("Über/Sub")
    other.join()
    dovecot.kill()
    dovecot.wait()
    assert mailbox.subscriptions() == ["Plain", "Über/Sub"]  # read again under the lock: nothing lost


@pytest.mark.slow
def test_dovecot_reads_ours_and_we_read_dovecots(tmp_path):
    from support.dovecot import dovecot_on_store_maildir, stop

    root = Path(tempfile.mkdtemp(prefix="mailstack-subs-"))  # Dovecot's auth process must enter it
    os.chmod(root, 0o755)
    box = MaildirStore(str(root / "mail"), fsync=False).mailbox(ADDR)
    for name in ("Über", "Über/Sub", "Plain", "Archive/2024"):
        box.create_folder(name)
    for name in box.subscriptions():
        box.unsubscribe(name)
    box.subscribe("Über/Sub")
    box.subscribe("Archive/2024")
    proc, port = dovecot_on_store_maildir(root, Path(box.path))
    try:
        client = imaplib.IMAP4("127.0.0.1", port)
        client.login("u@x.test", "pw")
        typ, lines = client.lsub()
        assert sorted(line.split(b'"." ')[1] for line in lines) == [b"&ANw-ber.Sub", b"Archive.2024"], lines
        assert client.subscribe('"Plain"')[0] == "OK"
        assert client.unsubscribe('"Archive.2024"')[0] == "OK"
        client.logout()
    finally:
        stop(proc)
    assert box.subscriptions() == ["Über/Sub", "Plain"]
    shutil.rmtree(root, ignore_errors=True)
