"""Filling one folder by APPEND, against Dovecot in the same run (issue 16 item 6).

One client APPENDs --messages messages (2-6 KB each) into an empty INBOX, as imapsync or a
Thunderbird upload does, and the rate is printed for each block of --block messages: it must
not fall as the folder grows.  Both servers run their defaults (mailstack's fsync on).

    python bench/imap_append.py                     # 10,000 messages, blocks of 1,000
    python bench/imap_append.py --messages 3000 --block 500
    python bench/imap_append.py --quota 10G         # with a storage limit: maildirsize kept
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.dovecot import run_dovecot, stop  # noqa: E402
from support.servers import PASSWORDS, MailServer  # noqa: E402

USER = "bob@example.test"


def message(rnd: random.Random, n: int) -> bytes:
    size = rnd.randint(2048, 6144)
    head = (f"From: Someone <s{n % 97}@remote.test>\r\nTo: {USER}\r\nSubject: upload {n}\r\n"
            f"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <up{n}@remote.test>\r\n\r\n").encode()
    line = b"Uploaded by the benchmark, line after line after line, 0123456789.\r\n"
    return head + (line * (size // len(line) + 1))[:size]


def fill(port: int, password: str, count: int, block: int) -> list[float]:
    """APPEND ``count`` messages; the rate (messages/s) of each block."""
    rnd = random.Random(7)
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    f.readline()

    def command(tag: bytes, data: bytes) -> None:
        s.sendall(data)
        while True:
            line = f.readline()
            if not line:
                raise SystemExit("connection closed")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise SystemExit(f"{line!r}")
                return

    command(b"l", f'l LOGIN {USER} "{password}"\r\n'.encode())
    rates, t0 = [], time.perf_counter()
    for n in range(count):
        m = message(rnd, n)
        command(b"a", b"a APPEND INBOX {%d+}\r\n" % len(m) + m + b"\r\n")
        if (n + 1) % block == 0:
            t1 = time.perf_counter()
            rates.append(block / (t1 - t0))
            t0 = t1
    command(b"o", b"o LOGOUT\r\n")
    s.close()
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--block", type=int, default=1000)
    ap.add_argument("--quota", help='a [quota] storage limit for mailstack, e.g. "10G" (default: none)')
    args = ap.parse_args()
    password = PASSWORDS[USER]
    work = Path(tempfile.mkdtemp(prefix="imap-append-bench-"))
    os.chmod(work, 0o755)
    try:
        (work / "mailstack").mkdir()
        extra = f'[quota]\nstorage = "{args.quota}"\nwarning_percent = 0\n' if args.quota else ""
        srv = MailServer(work / "mailstack", listeners=["imap"], extra=extra)
        srv.start(all_workers=True)
        try:
            ms = fill(srv.port("imap"), password, args.messages, args.block)
        finally:
            srv.stop()
        maildir = work / "dovecot" / "Maildir"
        maildir.mkdir(parents=True)
        proc, port, why = run_dovecot(work / "dovecot", maildir, USER, password, "imap")
        dv = None
        if proc is not None:
            try:
                dv = fill(port, password, args.messages, args.block)
            finally:
                stop(proc)
        print(f"APPEND into one folder, {args.messages} messages of 2-6 KB, rate per block of {args.block} (messages/s)")
        print(f"{'messages':>9} | {'mailstack':>9} | {'dovecot':>8} | ratio")
        for i, rate in enumerate(ms):
            other = dv[i] if dv else float("nan")
            print(f"{(i + 1) * args.block:>9} | {rate:>9.1f} | {other:>8.1f} | {rate / other:5.2f}")
        total_ms = args.messages / sum(args.block / r for r in ms)
        line = f"{'all':>9} | {total_ms:>9.1f} |"
        if dv:
            total_dv = args.messages / sum(args.block / r for r in dv)
            line += f" {total_dv:>8.1f} | {total_ms / total_dv:5.2f}"
        else:
            line += f" dovecot not run: {why}"
        print(line)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
