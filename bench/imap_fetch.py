"""IMAP FETCH throughput and memory: what a mail client's first sync costs mailstack.

    python bench/imap_fetch.py [--messages 5000] [--large-mb 50] [--seed 1]

Builds one INBOX of N messages (2-20 KB of text each) plus one large message, starts mailstack
(tests/support/servers.py's MailServer, a real twistd process) and, over one imaps session with
imaplib, times what Thunderbird does on a first sync:

* SELECT INBOX;
* UID FETCH 1:* (FLAGS);
* UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (...)]) (the message list);
* UID FETCH <uid> (BODY.PEEK[]) for every message, one command each (reading them all);
* BODY.PEEK[] of the large message, with the server's peak resident memory (VmHWM) before
  and after: the message is streamed from its file, so the peak should grow by far less
  than the message's size.
"""

from __future__ import annotations

import argparse
import imaplib
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.servers import PASSWORDS  # noqa: E402
from support.servers import MailServer  # noqa: E402
from mailstack.store import MaildirStore  # noqa: E402

USER = "bob@example.test"
HEADERS = "From To Cc Bcc Subject Date Message-ID Priority X-Priority References In-Reply-To Content-Type Reply-To"


def make_message(rnd: random.Random, n: int) -> bytes:
    head = (f"From: Alice <alice@example.test>\r\nTo: Bob <{USER}>\r\nSubject: benchmark message {n}\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <bench-{n}@example.test>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    size = rnd.randint(2 * 1024, 20 * 1024)
    line = b"the quick brown fox jumps over the lazy dog, again and again and again\r\n"
    return head + line * (size // len(line))


def vm_hwm_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def timed(label: str, fn, count: int | None = None):
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    rate = f"  ({count / dt:,.0f} messages/s)" if count else ""
    print(f"{label:<42} {dt:8.3f} s{rate}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--large-mb", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="imap-bench-"))
    try:
        srv = MailServer(base, listeners=["imaps"])
        store = MaildirStore(str(srv.store_root), fsync=False)
        t0 = time.perf_counter()
        for n in range(args.messages):
            store.deliver(USER, make_message(rnd, n))
        large = make_message(rnd, -1) + b"x" * 76 + b"\r\n"
        large = large[: large.index(b"\r\n\r\n") + 4] + (b"y" * 998 + b"\r\n") * (args.large_mb * 1024)
        store.deliver(USER, large)
        store.mailbox(USER).folder("INBOX").snapshot()  # UIDs assigned before the clock starts
        print(f"built {args.messages} messages + one of {len(large) / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")
        srv.start(all_workers=True)
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.port("imaps"), ssl_context=srv.ssl_context(), timeout=600)
        m.login(USER, PASSWORDS[USER])
        timed("SELECT INBOX", lambda: m.select("INBOX"))
        typ, data = timed("UID FETCH 1:* (FLAGS)", lambda: m.uid("FETCH", "1:*", "(FLAGS)"), args.messages)
        uids = [int(x.split(b"UID ")[1].split()[0].rstrip(b")")) for x in data if isinstance(x, bytes)]
        timed("UID FETCH 1:* (... BODY.PEEK[HEADER.FIELDS])",
              lambda: m.uid("FETCH", "1:*", f"(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS ({HEADERS})])"),
              args.messages)
        total = [0]

        def read_all():
            for uid in uids[:-1]:
                typ, d = m.uid("FETCH", str(uid), "(BODY.PEEK[])")
                total[0] += len(d[0][1])

        timed("UID FETCH <uid> (BODY.PEEK[]) one by one", read_all, len(uids) - 1)
        before = vm_hwm_kb(srv.proc.pid)
        typ, d = timed(f"BODY.PEEK[] of the {len(large) / 1e6:.0f} MB message", lambda: m.uid("FETCH", str(uids[-1]), "(BODY.PEEK[])"))
        assert d[0][1] == large
        after = vm_hwm_kb(srv.proc.pid)
        print(f"server peak RSS {before / 1024:.0f} MB -> {after / 1024:.0f} MB (message {len(large) / 1e6:.0f} MB)")
        m.logout()
        srv.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
