"""Memory of idle sessions (issue 16 item 4): N IMAP clients logged in, INBOX selected, in
IDLE; or (--smtp) N SMTP clients on the MX port after EHLO.

Starts mailstack (a real twistd process, its default configuration but for the connection
limits, raised to let N sessions in from 127.0.0.1: ``[limits] connections`` and
``connections_per_address``), fills INBOX with --messages messages, then opens the sessions
from a separate process (LOGIN, SELECT INBOX, IDLE) and reads the server's resident memory
(/proc/<pid>/status VmRSS) before the first and after the last.  Target: 10,000 sessions in
under 1 GiB in total.

    python bench/idle_sessions.py                 # 10,000 sessions, 1,000 messages
    python bench/idle_sessions.py --sessions 2000
    python bench/idle_sessions.py --smtp          # idle SMTP sessions instead
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.servers import PASSWORDS, MailServer  # noqa: E402

USER = "bob@example.test"


def rss_kib(pid: int) -> int:
    """RSS of the server: the process and its children (the processes of [server] workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid] + ([int(p) for p in children.read_text().split()] if children.exists() else [])
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


async def open_smtp_session(port: int, password: str, ready: list, failures: list) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        writer.write(b"EHLO idle.example\r\n")
        while (line := await reader.readline())[3:4] == b"-":
            pass
        if not line.startswith(b"250"):
            raise ConnectionError(line.decode(errors="replace").strip())
        ready.append((reader, writer))
    except (OSError, ConnectionError) as e:
        failures.append(str(e))


async def open_session(port: int, password: str, ready: list, failures: list) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        for tag, command in ((b"a", f'LOGIN {USER} "{password}"'.encode()), (b"b", b"SELECT INBOX")):
            writer.write(tag + b" " + command + b"\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("closed")
                if line.startswith(tag + b" "):
                    if not line.startswith(tag + b" OK"):
                        raise ConnectionError(line.decode(errors="replace").strip())
                    break
        writer.write(b"c IDLE\r\n")
        line = await reader.readline()
        if not line.startswith(b"+"):
            raise ConnectionError(line.decode(errors="replace").strip())
        ready.append((reader, writer))
    except (OSError, ConnectionError) as e:
        failures.append(str(e))


def _clients(port: int, password: str, sessions: int, concurrency: int, pipe, smtp: bool = False) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main():
        ready, failures = [], []
        t0 = time.monotonic()
        for start in range(0, sessions, concurrency):
            opener = open_smtp_session if smtp else open_session
            await asyncio.gather(*[opener(port, password, ready, failures)
                                   for _ in range(min(concurrency, sessions - start))])
        pipe.send((len(ready), failures[:3], len(failures), time.monotonic() - t0))
        pipe.recv()  # hold the sessions open while the server's memory is read
        for _, writer in ready:
            writer.close()

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=50, help="sessions opened at a time")
    ap.add_argument("--smtp", action="store_true", help="idle SMTP sessions (after EHLO) on the MX port instead")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imap-idle-bench-"))
    try:
        limit = args.sessions + 100
        srv = MailServer(work, listeners=["smtp" if args.smtp else "imap"],
                         extra=f"[limits]\nconnections = {limit}\nconnections_per_address = {limit}\n")
        from mailstack.store import MaildirStore

        rnd = random.Random(1)
        body = b"x" * 2000
        MaildirStore(str(srv.store_root), fsync=False).deliver_batch(
            [(USER, f"Subject: m{n} {rnd.random()}\r\nFrom: a@b.test\r\n\r\n".encode() + body) for n in range(args.messages)])
        srv.start(all_workers=True)
        try:
            before = rss_kib(srv.proc.pid)
            mine, theirs = multiprocessing.Pipe()
            port = srv.port("smtp" if args.smtp else "imap")
            p = multiprocessing.Process(target=_clients, args=(port, PASSWORDS[USER], args.sessions,
                                                               args.concurrency, theirs, args.smtp))
            p.start()
            opened, first_failures, failed, elapsed = mine.recv()
            time.sleep(2)  # let the last IDLE settle
            after = rss_kib(srv.proc.pid)
            mine.send("done")
            p.join(60)
        finally:
            srv.stop()
        what = "SMTP sessions (after EHLO)" if args.smtp else f"IMAP sessions (INBOX of {args.messages} selected, in IDLE)"
        print(f"{opened} idle {what} opened in {elapsed:.0f} s, "
              f"{failed} failed{' ' + str(first_failures) if failed else ''}")
        print(f"server RSS: {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after: "
              f"{(after - before) / max(opened, 1):.1f} KiB a session; total {after / 1024 / 1024:.2f} GiB "
              f"(target: 10,000 sessions under 1 GiB)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
