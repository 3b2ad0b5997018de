"""Dovecot's dot-locks (issue 18, item 5): a new keyword is added only under Dovecot's
``dovecot-uidlist.lock``, with the keywords file read again under it, so two servers never
give one letter two meanings; stale locks are taken over, live ones waited for."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from mailstack.store import MaildirStore
from mailstack.store.dotlock import DotLock, LockTimeout

ADDR = "alice@example.test"


@pytest.fixture
def dovecot_pid():
    """A live process that is not this one, standing for a Dovecot holding a lock."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def hold(lock_path: str, pid: int) -> None:
    """A lock as Dovecot leaves it: ``<pid>:<host>`` in ``<file>.lock``."""
    with open(lock_path, "x") as f:
        f.write(f"{pid}:{socket.gethostname()}")


def test_a_keyword_added_while_dovecot_holds_the_lock_waits_and_takes_the_next_letter(tmp_path, dovecot_pid):
    inbox = MaildirStore(str(tmp_path / "mail"), fsync=False).mailbox(ADDR).folder("INBOX")
    lock_path = os.path.join(inbox.path, "dovecot-uidlist.lock")
    hold(lock_path, dovecot_pid)  # alive: must be waited for

    def dovecot_adds_its_keyword_then_unlocks():
        time.sleep(0.3)
        with open(os.path.join(inbox.path, "dovecot-keywords"), "w") as f:
            f.write("0 $FromDovecot\n")
        os.unlink(lock_path)

    other = threading.Thread(target=dovecot_adds_its_keyword_then_unlocks)
    other.start()
    started = time.monotonic()
    with inbox.locked():
        letters = inbox.keywords.letters(["$FromMailstack"])
    other.join()
    assert time.monotonic() - started >= 0.25  # it waited for the lock
    assert letters == "b"  # "a" is Dovecot's now
    with open(os.path.join(inbox.path, "dovecot-keywords")) as f:
        assert f.read() == "0 $FromDovecot\n1 $FromMailstack\n"
    assert not os.path.exists(lock_path) and not os.path.exists(lock_path.replace("uidlist", "keywords"))
    assert not [n for n in os.listdir(inbox.path) if n.startswith(".temp.")]


def test_the_first_free_letter_is_taken_as_dovecot_does(tmp_path):
    inbox = MaildirStore(str(tmp_path / "mail"), fsync=False).mailbox(ADDR).folder("INBOX")
    with open(os.path.join(inbox.path, "dovecot-keywords"), "w") as f:
        f.write("0 Junk\n2 $Label1\n")
    with inbox.locked():
        assert inbox.keywords.letters(["NonJunk"]) == "b"
        assert inbox.keywords.letters(["junk", "$label1"]) == "ac"  # case-insensitive, known ones


def test_a_lock_left_by_a_dead_process_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = str(tmp_path / "dovecot-uidlist")
    hold(target + ".lock", int(dead.stdout))
    started = time.monotonic()
    with DotLock(target, timeout=5):
        with open(target + ".lock") as f:
            assert f.read() == f"{os.getpid()}:{socket.gethostname()}"
    assert time.monotonic() - started < 2
    assert not os.path.exists(target + ".lock")


def test_a_live_lock_times_out_and_an_old_one_is_stale(tmp_path, dovecot_pid):
    target = str(tmp_path / "subscriptions")
    hold(target + ".lock", dovecot_pid)
    with pytest.raises(LockTimeout):
        DotLock(target, timeout=0.2).acquire()
    old = time.time() - 300
    os.utime(target + ".lock", (old, old))  # untouched for longer than stale_after
    with DotLock(target, stale_after=120, timeout=1) as lock:
        lock.replace(b"V\t2\n\n", fsync=False)  # the new file, and the release, in one rename
    with open(target, "rb") as f:
        assert f.read() == b"V\t2\n\n"
    assert not os.path.exists(target + ".lock")


def test_a_lock_naming_this_pid_that_this_process_does_not_hold_is_stale(tmp_path):
    """Left by an earlier process with the same pid (pid 1 in a container, restarted)."""
    target = str(tmp_path / "dovecot-uidlist")
    hold(target + ".lock", os.getpid())
    started = time.monotonic()
    with DotLock(target, timeout=5):
        pass
    assert time.monotonic() - started < 2


def test_replace_refuses_when_the_lock_was_taken_over(tmp_path):
    target = str(tmp_path / "subscriptions")
    lock = DotLock(target, timeout=1).acquire()
    os.unlink(lock.lock_path)  # broken by another waiter that judged it stale ...
    hold(lock.lock_path, os.getpid() + 100000)  # ... and taken by it
    with pytest.raises(LockTimeout):
        lock.replace(b"V\t2\n\nmine\n", fsync=False)
    assert not os.path.exists(target)  # nothing written over the other's work
