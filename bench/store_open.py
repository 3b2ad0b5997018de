#!/usr/bin/env python3
"""How long does opening a big Maildir folder take, and how much memory does it hold?

For each N it builds a folder of N small messages, writing the files directly with proper
Maildir names (``<time>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<size>[:2,<flags>]``, 1/3 in new/, the rest
in cur/ with flags), then measures, each in a fresh Python process:

* first open (assign UIDs): the first ``snapshot()``, which finds N files without UIDs and
  records them in ``mailstack-uidlist`` (fsync on, as in production);
* cold open: a new process, a new ``MaildirStore``, one ``snapshot()`` (the OS page cache is
  warm; only the Python side starts from nothing);
* warm re-open: a second ``snapshot()`` on the same folder object, nothing changed on disk;
* RSS: growth of the process's resident set from before the store object is made to after the
  first snapshot, with the snapshot still referenced.

With ``--strace`` the cold open also runs under ``strace -f -e trace=open,openat`` and reports
how many message files were opened (must be 0: sizes come from the ``,W=`` in the names).

Run:  /tmp/venv/bin/python bench/store_open.py --messages 1000 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = "bench@example.test"
SCAN_CACHE_AGE = 2.1  # MaildirFolder reuses a listing only when new/ and cur/ are older than 2 s

CHILD = r"""
import json, os, sys, time
from mailstack.store import MaildirStore

def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

root, address, fsync = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
save = len(sys.argv) > 4 and sys.argv[4] == "save"
rss0 = rss_kb()
t0 = time.perf_counter()
store = MaildirStore(root, fsync=fsync)
folder = store.mailbox(address, create=False).folder("INBOX")
snap = folder.snapshot()
t1 = time.perf_counter()
rss1 = rss_kb()
snap2 = folder.snapshot()
t2 = time.perf_counter()
assert len(snap2.messages) == len(snap.messages)
if save:  # as the server does at shutdown (and every few minutes)
    assert folder.save_index(), "mailstack-index not written"
print(json.dumps({"open": t1 - t0, "warm": t2 - t1, "rss_mb": (rss1 - rss0) / 1024,
                  "messages": len(snap.messages), "uidnext": snap.uidnext}))
"""


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def build(root: str, n: int) -> float:
    """Make the mailbox through the store, then N message files by hand. Returns seconds."""
    sys.path.insert(0, str(ROOT))
    from mailstack.store import MaildirStore

    t0 = time.perf_counter()
    folder = MaildirStore(root, fsync=False).mailbox(ADDRESS).folder("INBOX")
    now = int(time.time()) - n
    pid = os.getpid()
    for i in range(n):
        body = (
            f"From: sender{i % 97}@example.test\r\nTo: {ADDRESS}\r\nSubject: bench message {i}\r\n"
            f"Message-ID: <{i}.bench@example.test>\r\n\r\nHello number {i}.\r\n"
        ).encode()
        base = f"{now + i}.M{i % 1_000_000}P{pid}Q{i}.benchhost,S={len(body)},W={len(body)}"  # CRLF: W = S
        rel = f"new/{base}" if i % 3 == 0 else f"cur/{base}:2,{'S' if i % 2 else 'FS'}"
        path = os.path.join(folder.path, rel)
        with open(path, "wb") as f:
            f.write(body)
        os.utime(path, (now + i, now + i))
    return time.perf_counter() - t0


def child(root: str, fsync: bool = True, strace: str | None = None, save: bool = False) -> dict:
    cmd = [sys.executable, "-c", CHILD, root, ADDRESS, "1" if fsync else "0"] + (["save"] if save else [])
    if strace:
        cmd = ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", strace] + cmd
    out = subprocess.run(cmd, env=env(), check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def wait_until_listing_cacheable(folder_path: str) -> None:
    newest = max(os.stat(os.path.join(folder_path, d)).st_mtime for d in ("new", "cur"))
    delay = newest + SCAN_CACHE_AGE - time.time()
    if delay > 0:
        time.sleep(delay)


def message_file_opens(trace_file: str, folder_path: str) -> tuple[int, int]:
    """(opens of message files in new/ or cur/, all open calls) in an strace log."""
    msg, total = 0, 0
    prefixes = (os.path.join(folder_path, "new") + "/", os.path.join(folder_path, "cur") + "/")
    with open(trace_file) as f:
        for line in f:
            if "open" not in line:
                continue
            total += 1
            start = line.find('"')
            path = line[start + 1 : line.find('"', start + 1)] if start >= 0 else ""
            if path.startswith(prefixes) and len(path) > len(prefixes[0]):
                msg += 1
    return msg, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, nargs="+", default=[1000, 10000, 100000], help="folder sizes to test")
    ap.add_argument("--repeat", type=int, default=3, help="cold opens per size (the median is shown)")
    ap.add_argument("--dir", default=None, help="where to build the folders (default: a temp dir, removed after)")
    ap.add_argument("--strace", action="store_true", help="count message files opened by a cold open (needs strace)")
    ap.add_argument("--keep", action="store_true", help="keep the folders")
    args = ap.parse_args()
    if args.strace and not shutil.which("strace"):
        ap.error("strace not found")

    base = args.dir or tempfile.mkdtemp(prefix="mailstack-bench-")
    rows = []
    try:
        for n in args.messages:
            root = os.path.join(base, f"n{n}")
            shutil.rmtree(root, ignore_errors=True)
            built = build(root, n)
            folder_path = os.path.join(root, "example.test", "bench")
            first = child(root)
            assert first["messages"] == n, first
            wait_until_listing_cacheable(folder_path)
            colds = [child(root) for _ in range(args.repeat)]
            child(root, save=True)  # write mailstack-index, as a server does at shutdown
            indexed = [child(root) for _ in range(args.repeat)]
            row = {
                "n": n,
                "build": built,
                "first": first["open"],
                "cold": statistics.median(c["open"] for c in colds),
                "warm": statistics.median(c["warm"] for c in colds),
                "indexed": statistics.median(c["open"] for c in indexed),
                "rss": statistics.median(c["rss_mb"] for c in colds),
            }
            if args.strace:
                trace = os.path.join(base, f"strace-{n}.log")
                child(root, strace=trace)
                row["msg_opens"], row["opens"] = message_file_opens(trace, folder_path)
            rows.append(row)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    head = f"{'messages':>9} {'build s':>8} {'first open (assign UIDs) s':>27} {'cold open s':>12} {'from index s':>13} {'warm re-open s':>15} {'RSS MB':>8} {'bytes/msg':>10}"
    if args.strace:
        head += f" {'msg files opened':>17}"
    print(head)
    for r in rows:
        line = (
            f"{r['n']:>9} {r['build']:>8.2f} {r['first']:>27.3f} {r['cold']:>12.3f} {r['indexed']:>13.3f} {r['warm']:>15.4f}"
            f" {r['rss']:>8.1f} {r['rss'] * 1024 * 1024 / r['n']:>10.0f}"
        )
        if args.strace:
            line += f" {r['msg_opens']:>6} of {r['opens']:>5} opens"
        print(line)
    print(f"(cold/warm/RSS: median of {args.repeat} fresh processes; OS page cache warm; fsync on)")


if __name__ == "__main__":
    main()
