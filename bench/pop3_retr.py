"""POP3 RETR throughput: mailstack against Dovecot's POP3 server, same maildrop, same client.

    python bench/pop3_retr.py [--messages 10000] [--seed 1] [--rounds 3] [--keep DIR]

Builds one maildrop of N messages (2-20 KB of text each), copies it for Dovecot, starts
mailstack (tests/support/servers.py's MailServer, a real twistd process) and Dovecot (``dovecot -F``
with a throw-away configuration, when installed: apt-get install dovecot-pop3d), and RETRs
every message with poplib over one loopback session each, the two servers taking turns
``--rounds`` times (A B B A A B: a busy neighbour on the shared machine skews a round, not
the result).  Prints every round, the median round of each, and the median of the rounds'
ratios.  Dovecot needs the dovecot and dovenull users its Debian package makes.
"""

from __future__ import annotations

import argparse
import os
import poplib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.dovecot import run_dovecot  # noqa: E402
from support.servers import PASSWORDS  # noqa: E402
from support.servers import MailServer  # noqa: E402
from mailstack.store import MaildirStore  # noqa: E402

USER = "bob@example.test"
WORDS = ("the of and to in is that for it as with was on be by this are or from at have an but not "
         "mail server message queue delivery folder header body line twisted maildir protocol").split()


def text_lines(rnd: random.Random, count: int = 4000) -> list[bytes]:
    """A pool of plain-text body lines, 40-76 characters; 1% start with a dot."""
    lines = []
    for _ in range(count):
        words, width = [], rnd.randint(40, 76)
        while sum(len(w) + 1 for w in words) < width:
            words.append(rnd.choice(WORDS))
        line = " ".join(words)
        if rnd.random() < 0.01:
            line = "." + line  # the odd line that needs dot-stuffing
        lines.append(line.encode() + b"\r\n")
    return lines


def make_message(rnd: random.Random, n: int, pool: list[bytes]) -> bytes:
    size = rnd.randint(2 * 1024, 20 * 1024)
    head = (f"Return-Path: <alice@example.test>\r\nFrom: Alice <alice@example.test>\r\nTo: Bob <{USER}>\r\n"
            f"Subject: benchmark message {n}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            f"Message-ID: <bench-{n}@example.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    lines, total = [], len(head)
    while total < size:
        lines.append(rnd.choice(pool))
        total += len(lines[-1])
    return head + b"".join(lines)


def build_maildrop(root: Path, count: int, seed: int) -> int:
    folder = MaildirStore(str(root), fsync=False).mailbox(USER).folder("INBOX")
    rnd = random.Random(seed)
    pool = text_lines(rnd)
    total = 0
    for n in range(1, count + 1):
        data = make_message(rnd, n, pool)
        total += len(data)
        folder.append(data)
    return total


def retr_all(host: str, port: int, user: str, password: str) -> dict:
    for attempt in range(5):  # a server just started may answer -ERR [SYS/TEMP] for a moment
        t0 = time.perf_counter()
        p = poplib.POP3(host, port, timeout=60)
        try:
            p.user(user)
            p.pass_(password)
            break
        except poplib.error_proto as e:
            p.close()
            if b"[SYS/TEMP]" not in e.args[0] or attempt == 4:
                raise
            time.sleep(1)
    t_login = time.perf_counter() - t0
    count, _ = p.stat()
    octets = 0
    t1 = time.perf_counter()
    for i in range(1, count + 1):
        _, lines, size = p.retr(i)
        octets += size
    elapsed = time.perf_counter() - t1
    p.quit()
    return {"messages": count, "octets": octets, "seconds": elapsed, "login": t_login,
            "msg_per_s": count / elapsed, "mb_per_s": octets / elapsed / 1e6}


def report(name: str, r: dict) -> None:
    print(f"{name:<10} {r['messages']:>6} messages  {r['octets'] / 1e6:8.1f} MB  {r['seconds']:7.2f} s  "
          f"{r['msg_per_s']:8.0f} msg/s  {r['mb_per_s']:7.1f} MB/s  (login {r['login'] * 1000:.0f} ms)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3,
                    help="the two servers take turns this many times (A B B A A B ...); the ratio is the median round's")
    ap.add_argument("--keep", help="work in this directory and leave it (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="pop3-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # Dovecot's auth (user dovecot) and mail (nobody) processes look inside
    password = PASSWORDS[USER]
    try:
        t0 = time.perf_counter()
        ms_base = work / "mailstack"
        ms_base.mkdir(exist_ok=True)
        total = build_maildrop(ms_base / "mail", args.messages, args.seed)
        print(f"maildrop: {args.messages} messages, {total / 1e6:.1f} MB, built in {time.perf_counter() - t0:.1f} s")
        local, domain = USER.split("@")
        dovecot_maildir = work / "dovecot" / "Maildir"
        shutil.copytree(ms_base / "mail" / domain / local, dovecot_maildir,
                        ignore=shutil.ignore_patterns("mailstack-uidlist*", "*.lock"))

        srv = MailServer(ms_base, listeners=["pop3"])
        srv.start(all_workers=True)
        proc = None
        try:
            proc, port, why = run_dovecot(work / "dovecot", dovecot_maildir, USER, password, "pop3")
            if proc is None:
                report("mailstack", retr_all("127.0.0.1", srv.port("pop3"), USER, password))
                print(f"dovecot    not run: {why}")
                return 0
            runs = {"mailstack": [], "dovecot": []}
            for turn in range(max(1, args.rounds)):  # taking turns: A B B A A B ...
                for name in (("mailstack", "dovecot") if turn % 2 == 0 else ("dovecot", "mailstack")):
                    runs[name].append(retr_all("127.0.0.1", srv.port("pop3") if name == "mailstack" else port,
                                               USER, password))
        finally:
            srv.stop()
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for name in ("mailstack", "dovecot"):
            for i, r in enumerate(runs[name], 1):
                report(f"{name[:7]} #{i}", r)
        ms, dv = (sorted(runs[n], key=lambda r: r["seconds"])[len(runs[n]) // 2]
                  for n in ("mailstack", "dovecot"))
        ratios = sorted(a["msg_per_s"] / b["msg_per_s"] for a, b in zip(runs["mailstack"], runs["dovecot"]))
        report("mailstack", ms)
        report("dovecot", dv)
        print(f"rounds     mailstack/dovecot per round: {', '.join(f'{r:.2f}' for r in ratios)}")
        print(f"ratio      mailstack/dovecot: {ratios[len(ratios) // 2]:.2f}x messages/s (the median round; "
              f"medians {ms['msg_per_s'] / dv['msg_per_s']:.2f}x messages/s, {ms['mb_per_s'] / dv['mb_per_s']:.2f}x MB/s)")
        if ms["octets"] != dv["octets"]:
            print(f"note: octet counts differ (mailstack {ms['octets']}, dovecot {dv['octets']})")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
