"""The Maildir store shared by several real processes, and surviving SIGKILL mid-delivery."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mailstack.store import MaildirStore
from mailstack.store.check import check_folder

ROOT = Path(__file__).resolve().parent.parent
ADDR = "alice@example.test"


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["PYTHONUNBUFFERED"] = "1"
    return e


def spawn(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


# -- (a) two deliverers and a lister ---------------------------------------------------------

DELIVERER = """
    import sys, time
    from mailstack.store import MaildirStore
    root, tag, count, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    store = MaildirStore(root)
    while time.time() < start_at:
        time.sleep(0.001)
    inbox = store.mailbox("alice@example.test").folder("INBOX")
    uids = []
    for i in range(count):
        body = f"Subject: {tag} {i}\\r\\nX-Tag: {tag}-{i}\\r\\n\\r\\nunique body {tag}-{i}\\r\\n".encode()
        uids.append(inbox.append(body))
    print(" ".join(map(str, uids)))
"""

LISTER = """
    import json, os, sys
    from mailstack.store import MaildirStore
    root, stop_file = sys.argv[1], sys.argv[2]
    store = MaildirStore(root)
    seen = {}  # uid -> base
    problems = []
    snapshots = 0
    max_count = 0
    validity = None
    inbox = None
    while True:
        stopping = os.path.exists(stop_file)
        if inbox is None:
            if store.exists("alice@example.test"):
                try:
                    inbox = store.mailbox("alice@example.test", create=False).folder("INBOX")
                except Exception as e:  # special folders still being made by a deliverer
                    inbox = None
        if inbox is not None:
            snap = inbox.snapshot()
            snapshots += 1
            uids = [m.uid for m in snap.messages]
            if uids != sorted(set(uids)):
                problems.append(f"UIDs not ascending/unique: {uids[:20]}")
            if uids and snap.uidnext <= uids[-1]:
                problems.append(f"UIDNEXT {snap.uidnext} not above {uids[-1]}")
            if validity is None:
                validity = snap.uidvalidity
            elif validity != snap.uidvalidity:
                problems.append(f"UIDVALIDITY changed {validity} -> {snap.uidvalidity}")
            for m in snap.messages:
                old = seen.setdefault(m.uid, m.base)
                if old != m.base:
                    problems.append(f"UID {m.uid} was {old}, now {m.base}")
            if len(uids) < max_count:
                problems.append(f"message count went down from {max_count} to {len(uids)}")
            max_count = max(max_count, len(uids))
        if stopping:
            break
    print(json.dumps({"snapshots": snapshots, "problems": problems[:50], "seen": len(seen)}))
"""


@pytest.mark.slow  # several Python processes: the full suite's, not the fast loop's
def test_two_deliverers_and_a_lister(tmp_path):
    root = str(tmp_path / "mail")
    n = 500
    stop_file = str(tmp_path / "stop")
    start_at = time.time() + 1.0  # both deliverers create the mailbox and start at once
    lister = spawn(LISTER, root, stop_file)
    deliverers = [spawn(DELIVERER, root, tag, str(n), repr(start_at)) for tag in ("one", "two")]
    outs = []
    try:
        for p in deliverers:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
            outs.append([int(u) for u in out.split()])
    finally:
        Path(stop_file).touch()
        lout, lerr = lister.communicate(timeout=60)
    assert lister.returncode == 0, lerr.decode()
    report = json.loads(lout)
    assert report["problems"] == []
    assert report["snapshots"] >= 3, report

    # each deliverer got increasing UIDs; together 1000 distinct ones
    for uids in outs:
        assert len(uids) == n and uids == sorted(uids)
    all_uids = outs[0] + outs[1]
    assert len(set(all_uids)) == 2 * n

    inbox = MaildirStore(root).mailbox(ADDR, create=False).folder("INBOX")
    files = os.listdir(os.path.join(inbox.path, "new")) + os.listdir(os.path.join(inbox.path, "cur"))
    assert len(files) == len(set(files)) == 2 * n
    snap = inbox.snapshot()
    assert sorted(m.uid for m in snap.messages) == sorted(all_uids)
    assert snap.uidnext > max(all_uids)
    bodies = {}
    for m in snap.messages:
        data = inbox.read_message(m.uid)
        assert len(data) == m.size
        tag = re.search(rb"unique body (\w+-\d+)\r\n$", data).group(1).decode()
        assert tag not in bodies, f"{tag} stored twice"
        bodies[tag] = m.uid
    assert set(bodies) == {f"{t}-{i}" for t in ("one", "two") for i in range(n)}
    # the UID each deliverer was told is the UID of its own message
    for t, uids in zip(("one", "two"), outs):
        assert [bodies[f"{t}-{i}"] for i in range(n)] == uids
    assert check_folder(inbox).problems == []
    assert os.listdir(os.path.join(inbox.path, "tmp")) == []


MAKER = """
    import sys, time
    from mailstack.store import MaildirStore
    root, start_at = sys.argv[1], float(sys.argv[2])
    while time.time() < start_at:
        pass
    MaildirStore(root).mailbox("bob@example.test")
    print("ok")
"""


@pytest.mark.slow  # several Python processes: the full suite's, not the fast loop's
def test_concurrent_first_use_of_a_mailbox(tmp_path):
    """Several processes making the same new mailbox at once: all succeed, one layout results."""
    for attempt in range(4):
        root = str(tmp_path / f"m{attempt}")
        start_at = time.time() + 0.7
        procs = [spawn(MAKER, root, repr(start_at)) for _ in range(4)]
        for p in procs:
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0 and out.strip() == b"ok", err.decode()
        mb = MaildirStore(root).mailbox("bob@example.test", create=False)
        assert {f.name for f in mb.list_folders()} == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
        assert sorted(mb.subscriptions()) == sorted(["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"])


# -- (b) SIGKILL mid-delivery -------------------------------------------------------------------

KILLED = """
    import random, sys
    from mailstack.store import MaildirStore
    root, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    inbox = MaildirStore(root, fsync=True).mailbox("alice@example.test").folder("INBOX")
    i = 0
    while True:
        pad = rng.randrange(0, 300_000)
        trailer = f"\\r\\n--END {seed}-{i}--\\r\\n".encode()
        head = f"X-Seq: {seed}-{i}\\r\\nX-Len: ".encode()
        total = len(head) + 10 + 4 + pad + len(trailer)
        body = head + f"{total:010d}\\r\\n\\r\\n".encode() + b"x" * pad + trailer
        assert len(body) == total
        flags = ["\\\\Seen"] if i % 3 == 0 else []
        uid = inbox.append(body, flags=flags)
        sys.stdout.write(f"{uid} {seed}-{i}\\n")
        sys.stdout.flush()
        i += 1
"""

_HEAD_RE = re.compile(rb"^X-Seq: (\d+-\d+)\r\nX-Len: (\d{10})\r\n\r\n")


def check_complete(data: bytes) -> str:
    m = _HEAD_RE.match(data)
    assert m, data[:80]
    seq, total = m.group(1).decode(), int(m.group(2))
    assert len(data) == total, f"{seq}: {len(data)} bytes of {total}"
    assert data.endswith(f"\r\n--END {seq}--\r\n".encode()), seq
    return seq


@pytest.mark.slow  # several Python processes: the full suite's, not the fast loop's
def test_sigkill_mid_delivery(tmp_path):
    root = str(tmp_path / "mail")
    rng = random.Random()
    promised: dict[int, str] = {}  # uid -> seq, for every append() that returned
    for round_ in range(3):
        seed = rng.randrange(1, 10**6) * 10 + round_
        child = spawn(KILLED, root, str(seed))
        first = child.stdout.readline()  # at least one delivery done
        assert first, child.stderr.read().decode()
        time.sleep(rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        # read through the same buffered pipe as readline() (communicate() would skip its buffer)
        out = child.stdout.read()
        child.stderr.read()
        assert child.wait(timeout=30) == -signal.SIGKILL
        lines = (first + out).decode().split("\n")
        for line in lines[:-1]:  # the last may be cut off
            uid_s, seq = line.split()
            assert int(uid_s) not in promised
            promised[int(uid_s)] = seq

        inbox = MaildirStore(root).mailbox(ADDR, create=False).folder("INBOX")
        # every file in new/ and cur/ is a whole message
        seqs_on_disk = []
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(inbox.path, sub)):
                with open(os.path.join(inbox.path, sub, name), "rb") as f:
                    seqs_on_disk.append(check_complete(f.read()))
        assert len(seqs_on_disk) == len(set(seqs_on_disk))
        snap = inbox.snapshot()
        assert check_folder(inbox).problems == []
        by_uid = snap.by_uid()
        for uid, seq in promised.items():
            assert uid in by_uid, f"UID {uid} ({seq}) was promised but is gone"
            assert check_complete(inbox.read_message(uid)) == seq
        assert snap.uidnext > max(promised)
        # at most one per kill whose append() did not return (killed between link and print)
        assert 0 <= len(snap.messages) - len(promised) <= round_ + 1
        assert set(seqs_on_disk) >= set(promised.values())
    # after all that, delivery still works and the log is well-formed
    inbox = MaildirStore(root).mailbox(ADDR, create=False).folder("INBOX")
    uid = inbox.append(b"Subject: after\r\n\r\nafter\r\n")
    assert uid > max(promised)
    assert check_folder(inbox).problems == []
