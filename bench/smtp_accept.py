"""Messages per second accepted over SMTP and durably stored in a Maildir.

Runs mailstack (a real twistd process, MX port, the configuration ``mailstack init`` writes:
SPF, DKIM and DMARC checks on, fsync on) and, as the reference, aiosmtpd with a handler that
stores each message the same durable way (write to tmp/, fsync, link into new/, fsync the
directory, all off the event loop) and checks nothing, both on loopback, one after the other
in the same run.  Every check really runs: DNS is served on loopback (tests/tools/dnsserver.py)
with SPF (``ip4:127.0.0.1``), DMARC (``p=reject``) and a DKIM key for the sender's domain,
and every message carries a valid DKIM signature, so each one costs an SPF evaluation, an RSA
verification and a DMARC evaluation.  The one default raised is
``[limits] connections_per_address`` (1000: every client comes from 127.0.0.1).  A separate load process drives N concurrent clients, each on its own
connection sending messages back to back (EHLO once, then MAIL/RCPT/DATA per message).
Prints messages/s for each server and the ratio mailstack / aiosmtpd.

    python bench/smtp_accept.py                      # the default grid: 1/10/50 clients x 4 KB/100 KB
    python bench/smtp_accept.py --clients 50 --size 4096 --seconds 10
    python bench/smtp_accept.py --checks off         # diagnosis only: a server nobody runs
    python bench/smtp_accept.py --dnsbl on           # plus [antispam]: a DNS list and iprev, on the local DNS
    python bench/smtp_accept.py --rspamd             # also mailstack with the rspamd content filter
    python bench/smtp_accept.py --body attachment    # large messages as text plus an attachment
    python bench/smtp_accept.py --sieve              # also mailstack with a 20-rule Sieve script for bob

With ``--rspamd`` a real rspamd (and redis) is started the way the tests start it
(tests/support/rspamd.py: Debian's configuration, network modules off, on loopback) and a
second mailstack, the same configuration plus ``[rspamd] url``, is measured in each cell
too: the accept rate with rspamd, and its ratio to the rate without it in the same run.
With the checks on, SPF, DKIM and DMARC are then rspamd's (``[rspamd] checks = "rspamd"``,
the default), against the same local DNS (rspamd's SPF and DKIM modules cache what they
look up; its DMARC lookup asks each time), and mailstack writes the header from its answer.

With ``--sieve`` a second mailstack, the same configuration, has a 20-rule Sieve script
active for the recipient (:data:`SIEVE_SCRIPT`: header :contains / address :is tests with
fileinto and addflag; the last rule files every benchmark message into a folder), measured
in each cell the same way: its rate and the ratio to the rate without a script (issue 19
asks for at least 0.8), the mailstack without a script measured again right after it and
the ratio taken to the mean of its two runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket
import statistics
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


def _sieve_rules() -> str:
    rules = []
    for i in range(19):
        test = (f'header :contains "subject" "project-{i}"' if i % 2 else f'address :is "from" "list{i}@lists.test"')
        rules.append(f'if {test} {{\n  fileinto :create "Rule{i}";\n  addflag "$Rule{i}";\n  stop;\n}}')
    rules.append('if header :contains "subject" "benchmark" {\n  fileinto :create "Bench";\n}')
    return 'require ["fileinto", "imap4flags", "mailbox"];\n' + "\n".join(rules) + "\n"


#: The 20-rule script of ``--sieve`` (none of the first 19 rules matches the benchmark's message);
#: $BENCH_SIEVE_SCRIPT (a file) replaces it, to see what the rules cost against a bare "keep;".
SIEVE_SCRIPT = Path(os.environ["BENCH_SIEVE_SCRIPT"]).read_text() if os.environ.get("BENCH_SIEVE_SCRIPT") else _sieve_rules()


def install_sieve(store_root: Path, address: str, text: str) -> None:
    """Make ``text`` the active script of ``address``, the way ManageSieve lays it out."""
    from mailstack.store import MaildirStore

    user_dir = MaildirStore(str(store_root)).mailbox(address).path
    os.makedirs(os.path.join(user_dir, "sieve"), exist_ok=True)
    with open(os.path.join(user_dir, "sieve", "bench.sieve"), "w") as f:
        f.write(text)
    os.symlink("sieve/bench.sieve", os.path.join(user_dir, ".dovecot.sieve"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SENDER_DOMAIN = "remote.test"
DKIM_SELECTOR = "bench"


def dkim_key() -> tuple[bytes, str]:
    """An RSA-2048 key: its PEM and its DKIM TXT record (RFC 6376 3.6.1)."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def zone_records(dkim_txt: str) -> list[str]:
    def txt(name: str, value: str) -> str:  # twisted.names TXT strings: 255 octets each at most
        parts = [value[i:i + 250] for i in range(0, len(value), 250)]
        return f"TXT('{name}', " + ", ".join(repr(p.encode()) for p in parts) + ")"

    d = SENDER_DOMAIN
    return [txt(d, "v=spf1 ip4:127.0.0.1 -all"), txt(f"_dmarc.{d}", "v=DMARC1; p=reject"),
            txt(f"{DKIM_SELECTOR}._domainkey.{d}", dkim_txt)]


def make_message(size: int, key_pem: bytes | None = None, body_kind: str = "text") -> bytes:
    """A message of about ``size`` octets from load@remote.test, DKIM-signed when given a key.

    ``body_kind`` "text": all of it plain text (the default, what earlier runs measured);
    "attachment": a few lines of text and the rest a base64 attachment, the shape most large
    mail has (a content filter tokenizes text, not attachments: rspamd spends ~10 ms on 100 KB
    of text and ~1 ms on the same size as an attachment)."""
    head = (f"From: Load <load@{SENDER_DOMAIN}>\r\nTo: bob@example.test\r\nSubject: benchmark\r\n"
            f"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench@{SENDER_DOMAIN}>\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuvwxyz.\r\n"
    if body_kind == "attachment" and size > 4096:
        import base64
        import random

        head += b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        text = b"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + line * 10
        part = b"--b1\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        room = max(0, size - len(head) - len(text) - len(part) - 8)
        data = base64.encodebytes(random.Random(size).randbytes(room * 3 // 4)).replace(b"\n", b"\r\n")
        message = head + text + part + data + b"--b1--\r\n"
    else:
        head += b"\r\n"
        body = line * max(1, (size - len(head)) // len(line))
        message = head + body[: size - len(head)]
    if key_pem is None:
        return message
    import dkim

    return dkim.sign(message, DKIM_SELECTOR.encode(), SENDER_DOMAIN.encode(), key_pem,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + message


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


def _load(port: int, clients: int, message: bytes, seconds: float, out) -> None:
    async def main():
        counts = [0] * clients
        latencies: list[float] = []
        stop_at = time.monotonic() + seconds
        t0 = time.monotonic()
        await asyncio.gather(*[_client(port, message, stop_at, counts, i, latencies) for i in range(clients)])
        elapsed = time.monotonic() - t0
        latencies.sort()
        out.put((sum(counts), elapsed, latencies[len(latencies) // 2] if latencies else 0,
                 latencies[int(len(latencies) * 0.99)] if latencies else 0))

    asyncio.run(main())


def run_load(port: int, clients: int, message: bytes, seconds: float) -> tuple[int, float, float, float]:
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=_load, args=(port, clients, message, seconds, q))
    p.start()
    result = q.get(timeout=seconds + 120)
    p.join()
    return result


async def _scan_client(port: int, request: bytes, stop_at: float, counts: list, idx: int) -> None:
    while time.monotonic() < stop_at:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        answer = await reader.read()
        writer.close()
        if not answer.startswith(b"HTTP/1.") or b" 200 " not in answer.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"rspamd answered {answer[:200]!r}")
        counts[idx] += 1


def _scan_load(port: int, clients: int, message: bytes, seconds: float, out) -> None:
    async def main():
        counts = [0] * clients
        request = (b"POST /checkv2 HTTP/1.0\r\nHost: 127.0.0.1\r\nIP: 127.0.0.1\r\nHelo: load.example\r\n"
                   b"From: load@remote.test\r\nRcpt: bob@example.test\r\nContent-Length: "
                   + str(len(message)).encode() + b"\r\n\r\n" + message)
        t0 = time.monotonic()
        await asyncio.gather(*[_scan_client(port, request, t0 + seconds, counts, i) for i in range(clients)])
        out.put((sum(counts), time.monotonic() - t0))

    asyncio.run(main())


def rspamd_alone(port: int, clients: int, message: bytes, seconds: float) -> float:
    """Scans a second rspamd manages on its own, ``clients`` at once, the way mailstack sends
    them (one HTTP/1.0 connection a scan, the envelope as headers): the ceiling no MTA in
    front of this rspamd can pass on this machine."""
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=_scan_load, args=(port, clients, message, seconds, q))
    p.start()
    n, elapsed = q.get(timeout=seconds + 120)
    p.join()
    return n / elapsed


def run_smtp_source(port: int, clients: int, message_file: Path, messages: int) -> tuple[int, float, float, float]:
    """Drive the server with Postfix's smtp-source (C; costs the machine far less than Python),
    sending the (signed) message of ``message_file`` (its -F)."""
    t0 = time.monotonic()
    out = subprocess.run(["smtp-source", "-d", "-s", str(clients), "-m", str(messages), "-F", str(message_file),
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


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its direct children (rspamd's workers; mailstack's [server] workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid] + [int(p) for p in children.read_text().split()] if children.exists() else [pid]
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except FileNotFoundError:
            pass
    return total


def stored_verdict(root: Path) -> str:
    """The Authentication-Results of one stored message: proof the checks ran and passed."""
    for d, _, files in os.walk(root):
        if d.endswith("/new") and files:
            head = (Path(d) / files[0]).read_bytes().split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
            found = [l for l in head.replace("\r\n\t", " ").replace("\r\n ", " ").splitlines()
                     if l.lower().startswith("authentication-results:")]
            return found[0] if found else "no Authentication-Results header"
    return "no message stored"


def count_files(root: Path) -> int:
    return sum(len(files) for d, _, files in os.walk(root) if d.endswith(("/new", "/cur")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 10, 50])
    parser.add_argument("--size", type=int, nargs="*", default=[4096, 102400])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="mailstack and aiosmtpd take turns this many times per cell, in the order "
                             "A B B A A B ...; the figures are the medians, the ratio the median of the "
                             "rounds' ratios (the machine's other tenants come and go)")
    parser.add_argument("--no-fsync", action="store_true", help="run mailstack without fsync (diagnosis only)")
    parser.add_argument("--load", choices=["smtp-source", "python"], default="smtp-source" if shutil.which("smtp-source") else "python",
                        help="load generator: Postfix's smtp-source (default when installed: apt-get install postfix) or a Python asyncio client")
    parser.add_argument("--messages", type=int, default=0, help="with smtp-source: messages per cell (default: about --seconds worth)")
    parser.add_argument("--checks", choices=["on", "off"], default="on",
                        help="SPF/DKIM/DMARC on the MX (default on, as mailstack init writes it; off for diagnosis only)")
    parser.add_argument("--dnsbl", choices=["on", "off"], default="off",
                        help="[antispam]: one DNS list (the client not listed) and iprev recorded, served by the local DNS")
    parser.add_argument("--body", choices=["text", "attachment"], default="text",
                        help="body of the messages over 4 KB: all plain text (default) or text plus a base64 attachment")
    parser.add_argument("--rspamd", action="store_true",
                        help="also measure mailstack with [rspamd] url set (needs apt-get install rspamd redis-server)")
    parser.add_argument("--sieve", action="store_true",
                        help="also measure mailstack with a 20-rule Sieve script active for the recipient")
    parser.add_argument("--workers", type=int, default=None,
                        help="mailstack's [server] workers (default: not written, so one process per CPU as "
                             "mailstack init leaves it; 1 shows what the second process gives)")
    parser.add_argument("--rspamd-workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="rspamd normal worker processes (default: half the cores)")
    args = parser.parse_args()

    from support.dns import serve_zones
    from support.servers import MailServer

    work = Path(tempfile.mkdtemp(prefix="mailstack-bench-"))
    (work / "mailstack").mkdir()
    key_pem, dkim_txt = dkim_key()
    extra = "[limits]\nconnections_per_address = 1000\n"
    dns_server, dns_port = None, None
    if args.checks == "on" or args.dnsbl == "on":
        zones = {SENDER_DOMAIN: zone_records(dkim_txt)}
        if args.dnsbl == "on":  # the load's 127.0.0.1 is not listed, and its PTR leads back to it
            zones.update({"bl.test": ["A('2.0.0.127.bl.test', '127.0.0.2')"],
                          "127.in-addr.arpa": ["PTR('1.0.0.127.in-addr.arpa', 'load.example')"],
                          "load.example": ["A('load.example', '127.0.0.1')"]})
            extra += '[antispam]\ndnsbl = ["bl.test"]\niprev = "record"\n'
        dns_server = serve_zones(work, zones)
        dns_port = next(dns_server)
        extra += f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\ntimeout = 5.0\n'
    srv = MailServer(work / "mailstack", listeners=["smtp"], extra=extra, checks=args.checks == "on",
                     workers=args.workers)
    if args.no_fsync:  # only to see where the time goes; the reference still fsyncs
        srv.config_path.write_text(srv.config_path.read_text().replace('root = "mail"', 'root = "mail"\nfsync = false'))
    srv.start(all_workers=True)
    scanned, rspamd = None, None
    if args.rspamd:
        from support import rspamd as rspamd_support

        # With the checks on, rspamd does them ([rspamd] checks = "rspamd", the default), asking
        # the same local DNS; the "rspamd alone" column then includes them too.
        rspamd, why = rspamd_support.start(work / "rspamd", args.rspamd_workers,
                                           dns_port if args.checks == "on" else None)
        if rspamd is None:
            srv.stop()
            sys.exit(f"--rspamd: {why}")
        (work / "mailstack-rspamd").mkdir()
        scanned = MailServer(work / "mailstack-rspamd", listeners=["smtp"], checks=args.checks == "on",
                             extra=extra + f'[rspamd]\nurl = "{rspamd.url}"\n', workers=args.workers).start(all_workers=True)
    sieved = None
    if args.sieve:
        (work / "mailstack-sieve").mkdir()
        sieved = MailServer(work / "mailstack-sieve", listeners=["smtp"], checks=args.checks == "on", extra=extra,
                            workers=args.workers)
        if args.no_fsync:
            sieved.config_path.write_text(sieved.config_path.read_text().replace('root = "mail"', 'root = "mail"\nfsync = false'))
        install_sieve(sieved.store_root, "bob@example.test", SIEVE_SCRIPT)
        sieved.start(all_workers=True)
    ref_dir = work / "aiosmtpd" / "Maildir"
    ref_port = free_port()
    ref = subprocess.Popen([sys.executable, "-c", REFERENCE, str(ref_dir), str(ref_port)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert ref.stdout.readline().strip() == "ready"

    print(f"SMTP accept benchmark: mailstack with SPF/DKIM/DMARC checks {args.checks}, DNSBL and iprev {args.dnsbl} "
          f"(aiosmtpd checks nothing), "
          f"fsync on, load from {args.load}, bodies {args.body}, {os.cpu_count()} cores")
    print(f"columns: messages/s, latency per message (p50/p99 ms), server CPU ms per message; "
          f"medians of {max(1, args.rounds)} rounds, taking turns"
          + (" (+rspamd: mailstack's, then rspamd's)" if scanned else ""))
    print(f"{'clients':>7} {'size':>7} | {'mailstack msg/s':>15} {'p50':>6} {'p99':>6} {'cpu':>5} | "
          f"{'aiosmtpd msg/s':>14} {'p50':>6} {'p99':>6} {'cpu':>5} | {'ratio':>5}"
          + (f" | {'+rspamd msg/s':>13} {'p50':>6} {'p99':>6} {'cpu':>5} {'rspamd':>6} | {'vs without':>10}"
             f" | {'rspamd alone':>12} {'of alone':>8}"
             if scanned else "")
          + (f" | {'+sieve msg/s':>12} {'p50':>6} {'p99':>6} {'cpu':>5} | {'vs without':>10}" if sieved else ""))
    try:
        for size in args.size:
            for clients in args.clients:
                before_m, before_r = count_files(srv.store_root), count_files(ref_dir)
                message = make_message(size, key_pem if args.checks == "on" else None, args.body)
                if args.load == "smtp-source":
                    message_file = work / f"message-{size}.eml"
                    message_file.write_bytes(message.replace(b"\r\n", b"\n"))  # smtp-source sends lines with CRLF
                    count = args.messages or max(clients * 4, int(args.seconds * (400 if size <= 8192 else 100)))
                    load = lambda port: run_smtp_source(port, clients, message_file, count)  # noqa: E731
                else:
                    load = lambda port: run_load(port, clients, message, args.seconds)  # noqa: E731
                ours, theirs = [], []
                for turn in range(max(1, args.rounds)):
                    for side in ((0, 1) if turn % 2 == 0 else (1, 0)):
                        if side == 0:
                            c0 = tree_cpu_seconds(srv.proc.pid)
                            n, t, p50, p99 = load(srv.port("smtp"))
                            ours.append((n, t, p50, p99, (tree_cpu_seconds(srv.proc.pid) - c0) / max(n, 1) * 1000))
                        else:
                            c0 = cpu_seconds(ref.pid)
                            n, t, p50, p99 = load(ref_port)
                            theirs.append((n, t, p50, p99, (cpu_seconds(ref.pid) - c0) / max(n, 1) * 1000))
                ratio = statistics.median((a[0] / a[1]) / (b[0] / b[1]) for a, b in zip(ours, theirs))
                n_m = sum(r[0] for r in ours)
                n_r = sum(r[0] for r in theirs)
                t_m = n_m / statistics.median(r[0] / r[1] for r in ours)
                t_r = n_r / statistics.median(r[0] / r[1] for r in theirs)
                p50_m, p99_m, cpu_m = (statistics.median(r[i] for r in ours) for i in (2, 3, 4))
                p50_r, p99_r, cpu_r = (statistics.median(r[i] for r in theirs) for i in (2, 3, 4))
                with_rspamd = ""
                if scanned is not None:
                    before_s = count_files(scanned.store_root)
                    c3, r3 = tree_cpu_seconds(scanned.proc.pid), tree_cpu_seconds(rspamd.proc.pid)
                    n_s, t_s, p50_s, p99_s = load(scanned.port("smtp"))
                    cpu_s = (tree_cpu_seconds(scanned.proc.pid) - c3) / max(n_s, 1) * 1000
                    cpu_rs = (tree_cpu_seconds(rspamd.proc.pid) - r3) / max(n_s, 1) * 1000
                    assert count_files(scanned.store_root) - before_s == n_s, "mailstack+rspamd stored fewer than it accepted"
                    with_rspamd = (f" | {n_s / t_s:>13.1f} {p50_s * 1000:>6.1f} {p99_s * 1000:>6.1f} {cpu_s:>5.2f} "
                                   f"{cpu_rs:>6.2f} | "
                                   f"{(n_s / t_s) / (n_m / t_m):>10.2f}")
                    alone = rspamd_alone(rspamd.normal_port, clients, message, args.seconds)
                    with_rspamd += f" | {alone:>12.1f} {(n_s / t_s) / alone:>8.2f}"
                with_sieve = ""
                if sieved is not None:
                    before_v = count_files(sieved.store_root)
                    c4 = cpu_seconds(sieved.proc.pid)
                    n_v, t_v, p50_v, p99_v = load(sieved.port("smtp"))
                    cpu_v = (cpu_seconds(sieved.proc.pid) - c4) / max(n_v, 1) * 1000
                    assert count_files(sieved.store_root) - before_v == n_v, "mailstack+sieve stored fewer than it accepted"
                    # Without a script once more, after: the ratio is to the mean of the runs
                    # before and after, so a machine getting busier or quieter does not skew it.
                    before_again = count_files(srv.store_root)
                    n_a, t_a, _, _ = load(srv.port("smtp"))
                    assert count_files(srv.store_root) - before_again == n_a, "mailstack stored fewer than it accepted"
                    with_sieve = (f" | {n_v / t_v:>12.1f} {p50_v * 1000:>6.1f} {p99_v * 1000:>6.1f} {cpu_v:>5.2f} | "
                                  f"{(n_v / t_v) / ((n_m / t_m + n_a / t_a) / 2):>10.2f}")
                    before_m += n_a
                assert count_files(srv.store_root) - before_m == n_m, "mailstack stored fewer than it accepted"
                assert count_files(ref_dir) - before_r == n_r, "aiosmtpd stored fewer than it accepted"
                rate_m, rate_r = n_m / t_m, n_r / t_r
                print(f"{clients:>7} {size // 1024:>5}KB | {rate_m:>15.1f} {p50_m * 1000:>6.1f} {p99_m * 1000:>6.1f} {cpu_m:>5.2f} | "
                      f"{rate_r:>14.1f} {p50_r * 1000:>6.1f} {p99_r * 1000:>6.1f} {cpu_r:>5.2f} | {ratio:>5.2f}"
                      + with_rspamd + with_sieve, flush=True)
        print("a stored message says:", stored_verdict(srv.store_root))
        if scanned is not None:
            print("with rspamd, a stored message says:", stored_verdict(scanned.store_root))
        if sieved is not None:
            bench = sieved.store_root / "example.test" / "bob" / ".Bench"
            print("with --sieve, filed into Bench by the script:", count_files(bench), "of", count_files(sieved.store_root))
        if rspamd is not None:
            stat = rspamd.stat()
            print("rspamd scanned:", stat.get("scanned"), "actions:", stat.get("actions"))
    finally:
        srv.stop()
        if scanned is not None:
            scanned.stop()
        if sieved is not None:
            sieved.stop()
        if rspamd is not None:
            rspamd.stop()
        ref.stdin.close()
        ref.wait(10)
        if dns_server is not None:
            next(dns_server, None)


if __name__ == "__main__":
    main()
