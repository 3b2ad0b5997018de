"""IMAP: mailstack against Dovecot's IMAP server, same Maildir, same client, same run.

    python bench/imap_vs_dovecot.py [--sizes 1000 10000] [--seed 1] [--keep DIR]

For every folder size N it writes one INBOX of N realistic messages (2-20 KB, varied headers,
about a quarter multipart) straight into mailstack's store as Maildir files with ",S=<size>,W=<size>"
names (a third in new/, the rest in cur/ with ":2,S" or ":2,FS"), so mailstack gives them UIDs
at the first SELECT; it copies that Maildir for Dovecot.  It then starts mailstack
(tests/support/servers.py's MailServer, a real twistd process) and, after it, Dovecot (``dovecot -F``
with a throw-away configuration: apt-get install dovecot-imapd), and with one plain-socket
IMAP client over plaintext loopback measures, as client wall time:

* SELECT INBOX, cold (the first SELECT after the server started; both servers index the
  folder then) and warm (SELECT in a second session on the same server process);
* Thunderbird's first-sync message list:
  UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To ... Reply-To)]);
* the same message list again (mailstack answers it from its message cache);
* UID SEARCH HEADER Subject <word> and UID SEARCH BODY <word>;
* UID SORT (DATE), again, (SUBJECT), (REVERSE ARRIVAL); UID THREAD REFERENCES, ORDEREDSUBJECT
  (the digest of each answer is compared: both servers must sort and thread alike);
* UID FETCH 1:* BODY.PEEK[] (all bodies, MB/s);
* after restarting the server: SELECT and the message list once more (both servers then work
  from what they keep on disk: Dovecot's index and cache, mailstack's UID log and cache).

Ratios are mailstack time / Dovecot time (above 1: mailstack slower).  The client is the
same Python code for both servers, so its own cost is in both figures.
"""

from __future__ import annotations

import argparse
import os
import random
import re
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
from support.servers import PASSWORDS  # noqa: E402
from support.servers import MailServer  # noqa: E402
from mailstack.store import MaildirStore  # noqa: E402

USER = "bob@example.test"
HOST = "127.0.0.1"
TB_HEADERS = ("From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups "
              "In-Reply-To Content-Type Reply-To")
SUBJECT_WORD = "quarterly"   # in about 5% of subjects
BODY_WORD = "xylophone"      # in about 3% of bodies (text parts only)

WORDS = ("the of and to in is that for it as with was on be by this are or from at have an but not "
         "mail server message queue delivery folder header body line twisted maildir protocol "
         "meeting report budget release patch review schedule update notes draft plan agenda").split()
SUBJECT_WORDS = ("re fwd meeting report budget release patch review schedule update notes draft "
                 "plan agenda lunch friday monday invoice question help urgent project team").split()
NAMES = ["Alice Archer", "Bruno Blanc", "Chloe Chen", "Dmitri Dvorak", "Eve Evans", "Farah Fadel",
         "Gustav Gross", "Hana Hoshino", "Ivan Ivanov", "Julia Jones", "Kofi Kone", "Lena Lindqvist"]
DOMAINS = ["example.org", "example.com", "lists.example.net", "corp.example", "mail.example.io"]


# -- building the folder ---------------------------------------------------------------------------

def addr(rnd: random.Random) -> str:
    name = rnd.choice(NAMES)
    local = name.split()[0].lower() + rnd.choice(["", ".", "_"]) + name.split()[1].lower()
    return f'"{name}" <{local}@{rnd.choice(DOMAINS)}>' if rnd.random() < 0.5 else f"{name} <{local}@{rnd.choice(DOMAINS)}>"


def text_lines(rnd: random.Random, count: int = 4000) -> list[bytes]:
    lines = []
    for _ in range(count):
        words, width = [], rnd.randint(40, 76)
        while sum(len(w) + 1 for w in words) < width:
            words.append(rnd.choice(WORDS))
        lines.append(" ".join(words).encode() + b"\r\n")
    return lines


def text_body(rnd: random.Random, pool: list[bytes], size: int, word: bool) -> bytes:
    lines, total = [], 0
    while total < size:
        lines.append(rnd.choice(pool))
        total += len(lines[-1])
    if word and lines:
        i = rnd.randrange(len(lines))
        lines[i] = lines[i][:-2] + f" {BODY_WORD}\r\n".encode()
    return b"".join(lines)


def make_message(rnd: random.Random, n: int, pool: list[bytes], when: int) -> tuple[bytes, bool, bool]:
    """One message of 2-20 KB; also whether the subject and the body carry the search words."""
    target = rnd.randint(2 * 1024, 20 * 1024)
    subj_hit, body_hit = rnd.random() < 0.05, rnd.random() < 0.03
    subject = " ".join(rnd.choice(SUBJECT_WORDS) for _ in range(rnd.randint(2, 7)))
    if subj_hit:
        subject += f" {SUBJECT_WORD} figures"
    if rnd.random() < 0.3:
        subject = "Re: " + subject
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    head = [f"Return-Path: <sender{n}@example.org>",
            f"Received: from mx{rnd.randint(1, 9)}.example.org (mx.example.org [192.0.2.{rnd.randint(1, 254)}])\r\n"
            f"\tby mail.example.test with ESMTPS id {rnd.getrandbits(48):012x}\r\n\tfor <{USER}>; {date}",
            f"From: {addr(rnd)}", f"To: Bob <{USER}>" + (f", {addr(rnd)}" if rnd.random() < 0.3 else "")]
    if rnd.random() < 0.25:
        head.append(f"Cc: {addr(rnd)}, {addr(rnd)}")
    if rnd.random() < 0.1:
        head.append(f"Reply-To: {addr(rnd)}")
    head += [f"Subject: {subject}", f"Date: {date}", f"Message-ID: <{n}.{rnd.getrandbits(32):08x}@bench.example.org>"]
    if rnd.random() < 0.3 and n > 1:
        refs = " ".join(f"<{rnd.randint(1, n - 1)}.ref@bench.example.org>" for _ in range(rnd.randint(1, 4)))
        head += [f"In-Reply-To: {refs.split()[-1]}", f"References: {refs}"]
    if rnd.random() < 0.1:
        head += ["X-Priority: 1 (Highest)", "Priority: urgent"]
    if rnd.random() < 0.2:
        head += [f"List-Id: <list{rnd.randint(1, 5)}.lists.example.net>", "Precedence: list"]
    head.append("MIME-Version: 1.0")
    kind = rnd.random()
    if kind < 0.75:
        head.append("Content-Type: text/plain; charset=utf-8")
        body = text_body(rnd, pool, target, body_hit)
    else:
        boundary = f"=_bench_{rnd.getrandbits(64):016x}"
        head.append(f'Content-Type: multipart/{"alternative" if kind < 0.88 else "mixed"}; boundary="{boundary}"')
        text = text_body(rnd, pool, target // 2, body_hit)
        parts = [b"This is a multi-part message in MIME format.\r\n",
                 f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 "Content-Transfer-Encoding: 7bit\r\n\r\n".encode() + text]
        if kind < 0.88:
            html = b"<html><body><p>" + text.replace(b"\r\n", b"</p>\r\n<p>") + b"</p></body></html>\r\n"
            parts.append(f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n"
                         "Content-Transfer-Encoding: 7bit\r\n\r\n".encode() + html)
        else:
            raw = rnd.randbytes(max(256, (target // 2) * 3 // 4))
            import base64
            b64 = base64.encodebytes(raw).replace(b"\n", b"\r\n")
            parts.append(f"--{boundary}\r\nContent-Type: application/octet-stream; name=\"data{n}.bin\"\r\n"
                         f"Content-Disposition: attachment; filename=\"data{n}.bin\"\r\n"
                         "Content-Transfer-Encoding: base64\r\n\r\n".encode() + b64)
        body = b"".join(p if p.endswith(b"\r\n") else p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body, subj_hit, body_hit


def build_folder(store_root: Path, count: int, seed: int) -> dict:
    """Write ``count`` message files straight into bob's INBOX under ``store_root``."""
    MaildirStore(str(store_root), fsync=False).mailbox(USER)  # the directories and special folders
    local, domain = USER.split("@")
    inbox = store_root / domain / local
    rnd = random.Random(seed)
    pool = text_lines(rnd)
    start = int(time.time()) - count * 60 - 86400
    total = subj = body = 0
    for n in range(1, count + 1):
        when = start + n * 60
        data, s_hit, b_hit = make_message(rnd, n, pool, when)
        subj += s_hit
        body += b_hit
        total += len(data)
        base = f"{when}.M{n % 1000000}P{os.getpid()}Q{n}.bench,S={len(data)},W={len(data)}"  # CRLF: W = S
        r = rnd.random()
        rel = f"new/{base}" if r < 1 / 3 else f"cur/{base}:2,S" if r < 0.9 else f"cur/{base}:2,FS"
        path = inbox / rel
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (when, when))
    return {"path": inbox, "octets": total, "subject_hits": subj, "body_hits": body}


# -- the client ------------------------------------------------------------------------------------

class IMAPError(Exception):
    pass


class Client:
    """A minimal IMAP4rev1 client on a plain socket: commands, literals, tagged completion."""

    LITERAL = re.compile(rb"\{(\d+)\}\r\n$")

    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port), timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb", buffering=1 << 16)
        self.n = 0
        greeting = self.f.readline()
        if not greeting.startswith(b"* OK"):
            raise IMAPError(f"greeting: {greeting!r}")

    def command(self, text: str) -> tuple[list[bytes], int, int]:
        """Run one command; (untagged lines with literals inlined as b"", literal octets, literal count)."""
        self.n += 1
        tag = f"B{self.n:04d}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        untagged, octets, literals = [], 0, 0
        readline, read = self.f.readline, self.f.read
        prefix = tag + b" "
        while True:
            line = readline()
            if not line:
                raise IMAPError(f"connection closed during {text!r}")
            if line.startswith(prefix):
                if not line[len(prefix):].startswith(b"OK"):
                    raise IMAPError(f"{text!r}: {line!r}")
                return untagged, octets, literals
            parts = [line]
            while line.endswith(b"}\r\n"):
                m = self.LITERAL.search(line)
                if m is None:
                    break
                size = int(m.group(1))
                data = read(size)
                if len(data) != size:
                    raise IMAPError("short literal")
                octets += size
                literals += 1
                line = readline()
                parts.append(line)
            untagged.append(parts[0] if len(parts) == 1 else b"".join(parts))

    def login(self, user: str, password: str) -> None:
        for attempt in range(5):
            try:
                self.command(f'LOGIN "{user}" "{password}"')
                return
            except IMAPError as e:
                if "UNAVAILABLE" not in str(e) or attempt == 4:
                    raise
                time.sleep(1)

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (IMAPError, OSError):
            pass
        self.f.close()
        self.sock.close()


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


#: Steady-state rows (the same command again gives the same work) are timed this many times
#: and the median kept: one run is tens of milliseconds on a shared machine, within its noise.
REPEAT = 3


def timed_median(fn):
    """The median time of REPEAT runs and the first run's result (the others are dropped at
    once: three copies of every body held would weigh on the runs being timed)."""
    times, result = [], None
    for _ in range(REPEAT):
        elapsed, value = timed(fn)
        times.append(elapsed)
        if result is None:
            result = value
        del value
    return sorted(times)[len(times) // 2], result


def search_uids(lines: list[bytes]) -> list[int]:
    out = []
    for line in lines:
        if line.startswith(b"* SEARCH"):
            out += [int(x) for x in line.split()[2:]]
    return out


def sort_order(lines: list[bytes]) -> str:
    """A short digest of a SORT answer, to check both servers sorted alike."""
    import hashlib

    return hashlib.sha256(b"".join(l for l in lines if l.startswith(b"* SORT"))).hexdigest()[:12]


def exists_of(lines: list[bytes]) -> int:
    for line in lines:
        m = re.match(rb"\* (\d+) EXISTS", line)
        if m:
            return int(m.group(1))
    return -1


def measure(port: int, password: str) -> dict:
    r: dict = {}
    c = Client(port)
    c.login(USER, password)
    r["select_cold"], (lines, _, _) = timed(lambda: c.command("SELECT INBOX"))
    r["exists"] = exists_of(lines)
    c.close()
    c = Client(port)
    c.login(USER, password)
    r["select_warm"], _ = timed(lambda: c.command("SELECT INBOX"))
    r["tb_fetch"], (lines, r["tb_octets"], r["tb_count"]) = timed(
        lambda: c.command(f"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS ({TB_HEADERS})])"))
    r["tb_fetch_again"], _ = timed(
        lambda: c.command(f"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS ({TB_HEADERS})])"))
    r["search_subject"], (lines, _, _) = timed_median(lambda: c.command(f"UID SEARCH HEADER Subject {SUBJECT_WORD}"))
    r["subject_hits"] = len(search_uids(lines))
    r["search_body"], (lines, _, _) = timed(lambda: c.command(f"UID SEARCH BODY {BODY_WORD}"))
    r["body_hits"] = len(search_uids(lines))
    r["sort_date"], (lines, _, _) = timed(lambda: c.command("UID SORT (DATE) UTF-8 ALL"))
    r["sort_date_order"] = sort_order(lines)
    r["sort_date_again"], _ = timed(lambda: c.command("UID SORT (DATE) UTF-8 ALL"))
    r["sort_subject"], (lines, _, _) = timed(lambda: c.command("UID SORT (SUBJECT) UTF-8 ALL"))
    r["sort_subject_order"] = sort_order(lines)
    r["sort_reverse_arrival"], _ = timed(lambda: c.command("UID SORT (REVERSE ARRIVAL) UTF-8 ALL"))
    r["thread_refs"], (lines, _, _) = timed(lambda: c.command("UID THREAD REFERENCES UTF-8 ALL"))
    r["thread_refs_order"] = sort_order([b"* SORT" + l[8:] for l in lines if l.startswith(b"* THREAD")])
    r["thread_subject"], _ = timed(lambda: c.command("UID THREAD ORDEREDSUBJECT UTF-8 ALL"))
    r["fetch_bodies"], (lines, r["body_octets"], r["body_count"]) = timed_median(
        lambda: c.command("UID FETCH 1:* BODY.PEEK[]"))
    r["body_mb_s"] = r["body_octets"] / r["fetch_bodies"] / 1e6
    c.close()
    return r


def measure_restarted(port: int, password: str, r: dict) -> None:
    """After a restart of the server: SELECT and the message list again (indexes and caches
    are on disk now, nothing in memory)."""
    c = Client(port)
    c.login(USER, password)
    r["select_restart"], _ = timed(lambda: c.command("SELECT INBOX"))
    r["tb_fetch_restart"], _ = timed(
        lambda: c.command(f"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS ({TB_HEADERS})])"))
    c.close()


# -- Dovecot ---------------------------------------------------------------------------------------

# -- report ----------------------------------------------------------------------------------------

ROWS = [  # (label, key, unit)
    ("SELECT INBOX cold", "select_cold", "s"),
    ("SELECT INBOX warm", "select_warm", "s"),
    ("UID FETCH 1:* Thunderbird list", "tb_fetch", "s"),
    ("  the same again", "tb_fetch_again", "s"),
    ("SELECT INBOX after a restart", "select_restart", "s"),
    ("  Thunderbird list after a restart", "tb_fetch_restart", "s"),
    (f"UID SEARCH HEADER Subject {SUBJECT_WORD} (median)", "search_subject", "s"),
    (f"UID SEARCH BODY {BODY_WORD}", "search_body", "s"),
    ("UID SORT (DATE) UTF-8 ALL", "sort_date", "s"),
    ("  the same again", "sort_date_again", "s"),
    ("UID SORT (SUBJECT) UTF-8 ALL", "sort_subject", "s"),
    ("UID SORT (REVERSE ARRIVAL) UTF-8 ALL", "sort_reverse_arrival", "s"),
    ("UID THREAD REFERENCES UTF-8 ALL", "thread_refs", "s"),
    ("UID THREAD ORDEREDSUBJECT UTF-8 ALL", "thread_subject", "s"),
    ("UID FETCH 1:* BODY.PEEK[] (median)", "fetch_bodies", "s"),
]


def print_table(n: int, ms: dict, dv: dict | None) -> None:
    print(f"{'N = ' + str(n):<46} {'mailstack':>12} {'dovecot':>12} {'ms/dovecot':>11}")
    for label, key, unit in ROWS:
        a = ms[key]
        b = dv[key] if dv else None
        print(f"{label:<46} {a:>10.3f} {unit} " + (f"{b:>10.3f} {unit} {a / b:>10.2f}x" if dv else f"{'-':>12} {'-':>11}"))
    a, b = ms["body_mb_s"], dv["body_mb_s"] if dv else None
    print(f"{'  all bodies, throughput':<46} {a:>7.1f} MB/s " + (f"{b:>7.1f} MB/s {a / b:>10.2f}x" if dv else ""))
    checks, differ = [], False
    for key, what in (("exists", "EXISTS"), ("tb_count", "header literals"), ("tb_octets", "header octets"),
                      ("subject_hits", "subject hits"), ("body_hits", "body hits"),
                      ("sort_date_order", "SORT (DATE)"), ("sort_subject_order", "SORT (SUBJECT)"),
                      ("thread_refs_order", "THREAD REFERENCES"),
                      ("body_count", "bodies"), ("body_octets", "body octets")):
        checks.append(f"{what} {ms[key]}" + (f"/{dv[key]}" if dv and dv[key] != ms[key] else ""))
        differ = differ or bool(dv and dv[key] != ms[key])
    note = "" if dv is None else "; a/b = mailstack/dovecot where they differ" if differ else "; same on both servers"
    print("  (" + ", ".join(checks) + note + ")")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="folder sizes (default 1000 10000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", help="work in this directory and leave it (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="imap-dovecot-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # Dovecot's auth (user dovecot) and mail (nobody) processes look inside
    password = PASSWORDS[USER]
    try:
        for n in args.sizes:
            run = work / f"n{n}"
            ms_base = run / "mailstack"
            ms_base.mkdir(parents=True, exist_ok=True)
            os.chmod(run, 0o755)
            t0 = time.perf_counter()
            built = build_folder(ms_base / "mail", n, args.seed)
            dovecot_maildir = run / "dovecot" / "Maildir"
            shutil.copytree(built["path"], dovecot_maildir,
                            ignore=shutil.ignore_patterns("mailstack-*", "*.lock"))
            print(f"\nfolder: {n} messages, {built['octets'] / 1e6:.1f} MB, built and copied in "
                  f"{time.perf_counter() - t0:.1f} s (expected hits: subject {built['subject_hits']}, "
                  f"body {built['body_hits']})")
            time.sleep(2.1)  # let new/ and cur/ age past mailstack's listing-reuse window, as in use

            srv = MailServer(ms_base, listeners=["imap"])
            srv.start(all_workers=True)
            try:
                ms = measure(srv.port("imap"), password)
            finally:
                srv.stop()
            srv.start(all_workers=True)
            try:
                measure_restarted(srv.port("imap"), password, ms)
            finally:
                srv.stop()

            dv, why = None, ""
            proc, port, why = run_dovecot(run / "dovecot", dovecot_maildir, USER, password, "imap")
            if proc is not None:
                try:
                    dv = measure(port, password)
                finally:
                    stop(proc)
                proc, port, why = run_dovecot(run / "dovecot", dovecot_maildir, USER, password, "imap")
                if proc is None:
                    raise SystemExit(f"dovecot did not restart: {why}")
                try:
                    measure_restarted(port, password, dv)
                finally:
                    stop(proc)
            print_table(n, ms, dv)
            if dv is None:
                print(f"dovecot not run: {why}")
            if not args.keep:
                shutil.rmtree(run, ignore_errors=True)
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
