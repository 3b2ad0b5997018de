"""IMAP under concurrent load: N clients looping a session's usual commands on one mailbox,
against mailstack and Dovecot in the same run (issue 16 item 5).

Each client loops for --seconds: LOGIN, LIST "" *, STATUS INBOX (MESSAGES UNSEEN), SELECT
INBOX, UID FETCH of the newest ten (FLAGS RFC822.SIZE BODY.PEEK[HEADER]), STORE +FLAGS (\\Seen)
on one of them, APPEND of a 1-20 KB message, UID STORE +FLAGS (\\Deleted) and UID EXPUNGE of
the message it appended (so the mailbox keeps its size), LOGOUT.  Every client logs in as the
same user and works on the same INBOX, which starts with --messages messages.  Reported:
commands a second over all clients, per-command latency percentiles, and errors (any
answer but OK, or a dropped connection).

Both servers run their defaults but for what the load needs, said here: mailstack's
``[limits] connections_per_address`` (1000: every client comes from 127.0.0.1); Dovecot's
``mail_max_userip_connections`` (1000, same reason).  Dovecot's password is {PLAIN} (it is
the reference for IMAP work, not for hashing); mailstack's is the Argon2id hash ``mailstack
user add`` writes, so its first LOGIN pays the hash and later ones its authentication cache.

    python bench/imap_load.py                        # 5 and 50 clients, 30 s each
    python bench/imap_load.py --clients 5 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import shutil
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
COMMANDS = ["LOGIN", "LIST", "STATUS", "SELECT", "FETCH", "STORE", "APPEND", "EXPUNGE", "LOGOUT"]
_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


class Failed(Exception):
    pass


class Session:
    """One IMAP connection: commands in, (untagged lines, tagged line) out."""

    def __init__(self, reader, writer):
        self.reader, self.writer, self.n = reader, writer, 0

    async def line(self) -> bytes:
        """One response line, literals included in it."""
        out = await self.reader.readline()
        if not out:
            raise Failed("connection closed")
        while (m := _LITERAL.search(out)) is not None:
            out += await self.reader.readexactly(int(m.group(1)))
            more = await self.reader.readline()
            if not more:
                raise Failed("connection closed")
            out += more
        return out

    async def command(self, text: bytes, literal: bytes | None = None) -> list[bytes]:
        self.n += 1
        tag = b"t%d" % self.n
        if literal is None:
            self.writer.write(tag + b" " + text + b"\r\n")
        else:  # LITERAL+ (RFC 7888): both servers offer it
            self.writer.write(tag + b" " + text + b" {%d+}\r\n" % len(literal) + literal + b"\r\n")
        lines = []
        while True:
            line = await self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise Failed(line[:200].decode("utf-8", "replace"))
                return lines


def count_after(lines: list[bytes]) -> int:
    """Messages in the mailbox as the client knows it after these responses: other clients
    expunge meanwhile, and the servers say so (EXISTS, EXPUNGE) in any response."""
    exists = 0
    for line in lines:
        m = re.match(rb"\* (\d+) (EXISTS|EXPUNGE)\r\n\Z", line)
        if m:
            exists = int(m.group(1)) if m.group(2) == b"EXISTS" else exists - 1
    return exists


def message(rnd: random.Random, n: int) -> bytes:
    size = rnd.randint(1024, 20 * 1024)
    head = (f"From: Load <load{n}@remote.test>\r\nTo: {USER}\r\nSubject: load message {n}\r\n"
            f"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <load{n}.{rnd.random()}@remote.test>\r\n\r\n").encode()
    line = b"All work and no play makes a benchmark a dull benchmark 0123456789.\r\n"
    return head + (line * (size // len(line) + 1))[:size]


async def client(port: int, password: str, stop_at: float, seed: int, latencies: dict, errors: list) -> int:
    rnd = random.Random(seed)
    done = 0

    async def timed(name: str, coro):
        nonlocal done
        t0 = time.perf_counter()
        result = await coro
        latencies[name].append(time.perf_counter() - t0)
        done += 1
        return result

    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            s = Session(reader, writer)
            await s.line()  # greeting
            await timed("LOGIN", s.command(f'LOGIN {USER} "{password}"'.encode()))
            await timed("LIST", s.command(b'LIST "" "*"'))
            await timed("STATUS", s.command(b"STATUS INBOX (MESSAGES UNSEEN)"))
            lines = await timed("SELECT", s.command(b"SELECT INBOX"))
            nextuid = int(re.search(rb"UIDNEXT (\d+)", b"".join(lines)).group(1))
            lines += await timed("FETCH", s.command(b"UID FETCH %d:* (FLAGS RFC822.SIZE BODY.PEEK[HEADER])" % max(1, nextuid - 10)))
            exists = count_after(lines)
            if exists:
                await timed("STORE", s.command(b"STORE %d +FLAGS (\\Seen)" % rnd.randint(max(1, exists - 9), exists)))
            lines = await timed("APPEND", s.command(b"APPEND INBOX", message(rnd, seed)))
            uid = int(re.search(rb"APPENDUID \d+ (\d+)", lines[-1]).group(1))
            await timed("STORE", s.command(b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid))
            await timed("EXPUNGE", s.command(b"UID EXPUNGE %d" % uid))
            await timed("LOGOUT", s.command(b"LOGOUT"))
            writer.close()
        except (Failed, OSError, asyncio.IncompleteReadError, AttributeError) as e:
            errors.append(f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.1)
    return done


def _load(port: int, password: str, clients: int, seconds: float, out) -> None:
    async def main():
        latencies = {name: [] for name in COMMANDS}
        errors: list[str] = []
        stop_at = time.monotonic() + seconds
        t0 = time.monotonic()
        counts = await asyncio.gather(*[client(port, password, stop_at, i, latencies, errors) for i in range(clients)])
        out.put((sum(counts), time.monotonic() - t0, latencies, errors))

    asyncio.run(main())


def run_load(port: int, password: str, clients: int, seconds: float):
    """The load runs in its own process, as a client machine would."""
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=_load, args=(port, password, clients, seconds, q))
    p.start()
    result = q.get(timeout=seconds + 300)
    p.join()
    return result


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def report(name: str, result) -> float:
    count, elapsed, latencies, errors = result
    rate = count / elapsed
    print(f"  {name:<9} {rate:8.1f} commands/s, {len(errors)} errors" + (f" (first: {errors[0]})" if errors else ""))
    print("            " + "  ".join(f"{c} p50/p99 {percentile(latencies[c], .5):.1f}/{percentile(latencies[c], .99):.1f} ms"
                                     for c in COMMANDS[:5]))
    print("            " + "  ".join(f"{c} p50/p99 {percentile(latencies[c], .5):.1f}/{percentile(latencies[c], .99):.1f} ms"
                                     for c in COMMANDS[5:]))
    return rate


def fill(srv: MailServer, count: int) -> Path:
    """INBOX with ``count`` messages; returns its Maildir."""
    from mailstack.store import MaildirStore

    rnd = random.Random(1)
    store = MaildirStore(str(srv.store_root), fsync=False)
    store.deliver_batch([(USER, message(rnd, 100000 + n)) for n in range(count)])
    return Path(store.mailbox(USER).folder("INBOX").path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[5, 50])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--messages", type=int, default=1000, help="messages in INBOX at the start (default 1000)")
    args = ap.parse_args()
    password = PASSWORDS[USER]
    work = Path(tempfile.mkdtemp(prefix="imap-load-bench-"))
    os.chmod(work, 0o755)  # Dovecot's processes look inside
    print(f"IMAP load: {args.messages} messages in INBOX, {args.seconds:.0f} s a run, {os.cpu_count()} cores; "
          "mailstack in its default configuration (connections_per_address raised to 1000)")
    try:
        for clients in args.clients:
            run = work / f"c{clients}"
            (run / "mailstack").mkdir(parents=True)
            os.chmod(run, 0o755)
            srv = MailServer(run / "mailstack", listeners=["imap"], extra="[limits]\nconnections_per_address = 1000\n")
            inbox = fill(srv, args.messages)
            maildir = run / "dovecot" / "Maildir"
            shutil.copytree(inbox, maildir, ignore=shutil.ignore_patterns("mailstack-*", "*.lock", "dovecot*"))
            srv.start(all_workers=True)
            try:
                ms = run_load(srv.port("imap"), password, clients, args.seconds)
            finally:
                srv.stop()
            proc, port, why = run_dovecot(run / "dovecot", maildir, USER, password, "imap",
                                          "mail_max_userip_connections = 1000\n")
            print(f"\n{clients} clients:")
            ms_rate = report("mailstack", ms)
            if proc is None:
                print(f"  dovecot not run: {why}")
                continue
            try:
                dv = run_load(port, password, clients, args.seconds)
            finally:
                stop(proc)
            dv_rate = report("dovecot", dv)
            print(f"  ratio mailstack/dovecot: {ms_rate / dv_rate:.2f}")
            shutil.rmtree(run, ignore_errors=True)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
