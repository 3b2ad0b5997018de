"""Messages per second accepted over SMTP and durably stored in a Maildir.

Runs mailstack (a real twistd process, MX port, fsync on) and, as the reference, aiosmtpd
with a handler that stores each message the same durable way (write to tmp/, fsync, link into
new/, fsync the directory, all off the event loop), both on loopback, one after the other in
the same run.  A separate load process drives N concurrent clients, each on its own
connection sending messages back to back (EHLO once, then MAIL/RCPT/DATA per message).
Prints messages/s for each server and the ratio mailstack / aiosmtpd.

    python bench/smtp_accept.py                      # the default grid: 1/10/50 clients x 4 KB/100 KB
    python bench/smtp_accept.py --clients 50 --size 4096 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

REFERENCE = r'''
import asyncio, os, sys, secrets, socket
from aiosmtpd.controller import Controller

root = sys.argv[1]
for d in ("tmp", "new", "cur"):
    os.makedirs(os.path.join(root, d), exist_ok=True)

def store(data: bytes) -> None:
    name = f"{secrets.token_hex(12)}.{socket.gethostname()},S={len(data)}"
    tmp = os.path.join(root, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.link(tmp, os.path.join(root, "new", name))
    os.unlink(tmp)
    fd = os.open(os.path.join(root, "new"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        await asyncio.get_running_loop().run_in_executor(None, store, envelope.original_content)
        return "250 OK"

controller = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[2]), data_size_limit=200 * 1024 * 1024,
                        decode_data=False)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_message(size: int) -> bytes:
    head = b"From: load@remote.test\r\nTo: bob@example.test\r\nSubject: benchmark\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuvwxyz.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body[: size - len(head)]


async def _client(port: int, message: bytes, stop_at: float, counts: list, idx: int, latencies: list):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    await reply()
    writer.write(b"EHLO load.example\r\n")
    await reply()
    payload = message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        writer.write(b"MAIL FROM:<load@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        for _ in range(3):
            line = await reply()
        if not line.startswith(b"354"):
            raise RuntimeError(f"unexpected {line!r}")
        writer.write(payload)
        line = await reply()
        if not line.startswith(b"250"):
            raise RuntimeError(f"unexpected {line!r}")
        counts[idx] += 1
        latencies.append(time.monotonic() - t0)
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


def _load(port: int, clients: int, size: int, seconds: float, out) -> None:
    async def main():
        counts = [0] * clients
        latencies: list[float] = []
        stop_at = time.monotonic() + seconds
        t0 = time.monotonic()
        await asyncio.gather(*[_client(port, make_message(size), stop_at, counts, i, latencies) for i in range(clients)])
        elapsed = time.monotonic() - t0
        latencies.sort()
        out.put((sum(counts), elapsed, latencies[len(latencies) // 2] if latencies else 0,
                 latencies[int(len(latencies) * 0.99)] if latencies else 0))

    asyncio.run(main())


def run_load(port: int, clients: int, size: int, seconds: float) -> tuple[int, float, float, float]:
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=_load, args=(port, clients, size, seconds, q))
    p.start()
    result = q.get(timeout=seconds + 120)
    p.join()
    return result


def run_smtp_source(port: int, clients: int, size: int, messages: int) -> tuple[int, float, float, float]:
    """Drive the server with Postfix's smtp-source (C; costs the machine far less than Python)."""
    t0 = time.monotonic()
    out = subprocess.run(["smtp-source", "-d", "-s", str(clients), "-m", str(messages), "-l", str(size),
                          "-f", "load@remote.test", "-t", "bob@example.test", "-M", "load.example", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {out.stderr}")
    return messages, elapsed, float("nan"), float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_files(root: Path) -> int:
    return sum(len(files) for d, _, files in os.walk(root) if d.endswith(("/new", "/cur")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 10, 50])
    parser.add_argument("--size", type=int, nargs="*", default=[4096, 102400])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--no-fsync", action="store_true", help="run mailstack without fsync (diagnosis only)")
    parser.add_argument("--load", choices=["smtp-source", "python"], default="smtp-source" if shutil.which("smtp-source") else "python",
                        help="load generator: Postfix's smtp-source (default when installed: apt-get install postfix) or a Python asyncio client")
    parser.add_argument("--messages", type=int, default=0, help="with smtp-source: messages per cell (default: about --seconds worth)")
    args = parser.parse_args()

    from support.servers import MailServer

    work = Path(tempfile.mkdtemp(prefix="mailstack-bench-"))
    (work / "mailstack").mkdir()
    srv = MailServer(work / "mailstack", listeners=["smtp"], extra="[limits]\nconnections_per_address = 1000\n")
    if args.no_fsync:  # only to see where the time goes; the reference still fsyncs
        srv.config_path.write_text(srv.config_path.read_text().replace('root = "mail"', 'root = "mail"\nfsync = false'))
    srv.start()
    ref_dir = work / "aiosmtpd" / "Maildir"
    ref_port = free_port()
    ref = subprocess.Popen([sys.executable, "-c", REFERENCE, str(ref_dir), str(ref_port)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert ref.stdout.readline().strip() == "ready"

    print(f"SMTP accept benchmark: fsync on, load from {args.load}, {os.cpu_count()} cores")
    print("columns: messages/s, latency per message (p50/p99 ms), server CPU ms per message")
    print(f"{'clients':>7} {'size':>7} | {'mailstack msg/s':>15} {'p50':>6} {'p99':>6} {'cpu':>5} | "
          f"{'aiosmtpd msg/s':>14} {'p50':>6} {'p99':>6} {'cpu':>5} | {'ratio':>5}")
    ref_cpu = cpu_seconds(ref.pid)
    try:
        for size in args.size:
            for clients in args.clients:
                before_m, before_r = count_files(srv.store_root), count_files(ref_dir)
                if args.load == "smtp-source":
                    count = args.messages or max(clients * 4, int(args.seconds * (400 if size <= 8192 else 100)))
                    load = lambda port: run_smtp_source(port, clients, size, count)  # noqa: E731
                else:
                    load = lambda port: run_load(port, clients, size, args.seconds)  # noqa: E731
                c0 = cpu_seconds(srv.proc.pid)
                n_m, t_m, p50_m, p99_m = load(srv.port("smtp"))
                c1 = cpu_seconds(srv.proc.pid)
                n_r, t_r, p50_r, p99_r = load(ref_port)
                c2 = cpu_seconds(ref.pid)
                cpu_m, cpu_r = (c1 - c0) / max(n_m, 1) * 1000, (c2 - ref_cpu) / max(n_r, 1) * 1000
                ref_cpu = c2
                assert count_files(srv.store_root) - before_m == n_m, "mailstack stored fewer than it accepted"
                assert count_files(ref_dir) - before_r == n_r, "aiosmtpd stored fewer than it accepted"
                rate_m, rate_r = n_m / t_m, n_r / t_r
                print(f"{clients:>7} {size // 1024:>5}KB | {rate_m:>15.1f} {p50_m * 1000:>6.1f} {p99_m * 1000:>6.1f} {cpu_m:>5.2f} | "
                      f"{rate_r:>14.1f} {p50_r * 1000:>6.1f} {p99_r * 1000:>6.1f} {cpu_r:>5.2f} | {rate_m / rate_r:>5.2f}", flush=True)
    finally:
        srv.stop()
        ref.stdin.close()
        ref.wait(10)


if __name__ == "__main__":
    main()
