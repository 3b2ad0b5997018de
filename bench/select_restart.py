#!/usr/bin/env python3
"""SELECT right after a restart of the IMAP server, for a big INBOX of small messages.

imap_vs_dovecot.py has the same row, but at 100,000 of its messages it writes 1.2 GB per
server; this one writes N tiny messages (as store_open.py does: proper Maildir names with
``,S=`` and ``,W=``, a third in new/, the rest in cur/ flagged) and measures only mailstack:
a real twistd (tests/support/servers.py) is started, the INBOX is SELECTed once (UIDs given,
new/ moved to cur/) and the server stopped, which writes ``mailstack-index``; then, --repeat
times, the server is started again and the wall time of the first SELECT in a new session is
printed, with a second SELECT in another session ("warm").

Run:  .venv/bin/python bench/select_restart.py --messages 100000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from imap_vs_dovecot import Client  # noqa: E402
from support.servers import PASSWORDS, MailServer  # noqa: E402

USER = "bob@example.test"


def build(base: Path, n: int) -> None:
    from mailstack.store import MaildirStore

    folder = MaildirStore(str(base / "mail"), fsync=False).mailbox(USER).folder("INBOX")
    now, pid = int(time.time()) - n, os.getpid()
    for i in range(n):
        body = f"From: s{i % 97}@example.test\r\nTo: {USER}\r\nSubject: m {i}\r\n\r\nHello {i}.\r\n".encode()
        name = f"{now + i}.M{i % 1_000_000}P{pid}Q{i}.benchhost,S={len(body)},W={len(body)}"
        rel = f"new/{name}" if i % 3 == 0 else f"cur/{name}:2,{'S' if i % 2 else 'FS'}"
        path = os.path.join(folder.path, rel)
        with open(path, "wb") as f:
            f.write(body)
        os.utime(path, (now + i, now + i))


def select(srv: MailServer) -> tuple[float, int]:
    c = Client(srv.port("imap"))
    c.login(USER, PASSWORDS[USER])
    t0 = time.perf_counter()
    lines, _, _ = c.command("SELECT INBOX")
    took = time.perf_counter() - t0
    c.close()
    exists = next(int(l.split()[1]) for l in lines if l.endswith(b" EXISTS\r\n"))
    return took, exists


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="restarts measured")
    ap.add_argument("--dir", help="work there and keep it (default: a temporary directory)")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="mailstack-select-bench-"))
    try:
        if not (base / "mail").exists():
            base.mkdir(parents=True, exist_ok=True)
            build(base, args.messages)
            time.sleep(2.2)  # past the listing-reuse window (see store_open.py's notes)
        srv = MailServer(base, listeners=["imap"])
        srv.start(all_workers=True)
        try:
            first, exists = select(srv)
            time.sleep(2.5)  # new/ was moved to cur/: let the listing age so the index is saved
            select(srv)
        finally:
            srv.stop()
        print(f"{exists} messages; first SELECT ever (gives UIDs, moves new/): {first:.3f} s")
        for _ in range(args.repeat):
            srv.start(all_workers=True)
            try:
                cold, _ = select(srv)
                warm, _ = select(srv)
            finally:
                srv.stop()
            print(f"SELECT after a restart {cold:.3f} s   the next SELECT {warm:.3f} s")
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
