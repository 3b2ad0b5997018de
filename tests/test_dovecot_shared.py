"""One Maildir, two servers: mailstack and a real Dovecot (Debian's dovecot-imapd and
dovecot-pop3d), both running as one unprivileged user, the service user (issue 18, done-when).

* A store populated through mailstack and then read through Dovecot, and the reverse, look the
  same through both: folder names, subscriptions, UIDVALIDITY, UIDNEXT, UIDs, flags, keywords,
  INTERNALDATE, RFC822.SIZE and the bytes of every message as served, and POP3 UIDLs, sizes and
  bytes.
* With both running at once, deliveries, flag changes, new keywords and subscriptions from both
  sides: nothing lost, duplicated or stalled for more than a second.

mailstack runs from its wheel, installed into a venv the service user can run (the way
test_service_user.py installs it), started as that user; Dovecot's mail processes run as the
same user, with ``/`` as its separator, as README's "Moving from Dovecot" says to set.
"""

from __future__ import annotations

import datetime
import os
import poplib
import shutil
import smtplib
import threading
import time
from pathlib import Path

import pytest
from imapclient import IMAPClient

from support.ci import on_ci
from support.dovecot import run_dovecot_protocols, stop
from support.install import SERVICE_USER, installed_venv, public_dir
from test_service_user import DOMAIN, Install

pytestmark = pytest.mark.slow

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
PASSWORD = {ALICE: "alice-password-1", BOB: "bob-password-2"}
STALL = 1.0  # seconds: the longest any one operation may take while both servers run


class Pair:
    """The installed mailstack (not started) and, on demand, a Dovecot over one user's Maildir."""

    def __init__(self, inst: Install):
        self.inst = inst
        self.ports: dict = {}
        self.dovecot = None
        self.dovecot_ports: dict[str, int] = {}

    def maildir(self, address: str) -> Path:
        local, domain = address.split("@")
        return self.inst.lib / "mail" / domain / local

    def start_mailstack(self) -> None:
        self.ports = self.inst.start(as_service_user=True)["listeners"]

    def stop_mailstack(self) -> None:
        self.inst.stop()

    def start_dovecot(self, address: str) -> None:
        base = self.inst.base / f"dovecot-{address.split('@')[0]}"
        proc, ports, why = run_dovecot_protocols(base, self.maildir(address), address, PASSWORD[address],
                                                 ("imap", "pop3"), mail_user=SERVICE_USER, separator="/")
        if proc is None:
            if on_ci():
                pytest.fail(why, pytrace=False)
            pytest.skip(why)
        self.dovecot, self.dovecot_ports = proc, ports
        self.dovecot_log = base / "dovecot.log"

    def stop_dovecot(self) -> None:
        if self.dovecot is not None:
            stop(self.dovecot)
            self.dovecot = None

    def imap(self, which: str, address: str) -> IMAPClient:
        port = self.ports["imap"]["port"] if which == "mailstack" else self.dovecot_ports["imap"]
        client = IMAPClient("127.0.0.1", port, ssl=False, timeout=30)
        client.login(address, PASSWORD[address])
        return client

    def pop3(self, which: str, address: str) -> poplib.POP3:
        port = self.ports["pop3"]["port"] if which == "mailstack" else self.dovecot_ports["pop3"]
        client = poplib.POP3("127.0.0.1", port, timeout=30)
        client.user(address)
        client.pass_(PASSWORD[address])
        return client

    def dovecot_errors(self) -> list[str]:
        text = self.dovecot_log.read_text(errors="replace") if self.dovecot_log.exists() else ""
        return [line for line in text.splitlines() if "Error:" in line or "Panic:" in line or "Warning:" in line]


@pytest.fixture
def pair():
    if os.getuid() != 0 and not on_ci():
        pytest.skip("needs root: both servers run as the service user")
    inst = Install(public_dir("mailstack-shared-"), installed_venv())
    config = inst.config.read_text().replace(
        'imaps = "tcp:0:interface=127.0.0.1"',
        'imaps = "tcp:0:interface=127.0.0.1"\nimap = "tcp:0:interface=127.0.0.1"\npop3 = "tcp:0:interface=127.0.0.1"')
    inst.config.write_text(config)
    for address, password in PASSWORD.items():
        inst.admin("user", "add", address, "--password-file", "-", stdin=password + "\n")
    both = Pair(inst)
    yield both
    both.stop_dovecot()
    if inst.proc is not None and inst.proc.poll() is None:
        inst.proc.kill()
        inst.proc.wait()
    shutil.rmtree(inst.base, ignore_errors=True)


def view(client: IMAPClient) -> dict:
    """Everything a client can see of the mailbox over IMAP, in comparable form."""
    listed = client.list_folders()
    seen = {"folders": sorted(name for _flags, _sep, name in listed),
            "subscribed": sorted(name for _flags, _sep, name in client.list_sub_folders()), "boxes": {}}
    for flags, _sep, name in listed:
        if b"\\Noselect" in flags or b"\\NonExistent" in flags:
            continue
        status = client.folder_status(name, [b"UIDVALIDITY", b"UIDNEXT", b"MESSAGES"])
        client.select_folder(name, readonly=True)
        fetched = client.fetch(client.search("ALL"), ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[]"]) \
            if status[b"MESSAGES"] else {}
        messages = {uid: (sorted(f for f in m[b"FLAGS"] if f != b"\\Recent"), m[b"INTERNALDATE"],
                          m[b"RFC822.SIZE"], m[b"BODY[]"]) for uid, m in fetched.items()}  # UID FETCH: keyed by UID
        seen["boxes"][name] = (status[b"UIDVALIDITY"], status[b"UIDNEXT"], messages)
    client.logout()
    return seen


def pop3_view(client: poplib.POP3) -> list[tuple[bytes, int, bytes]]:
    """(UIDL, listed size, bytes of RETR) of every message, in order."""
    uidls = [line.split()[1] for line in client.uidl()[1]]
    sizes = [int(line.split()[1]) for line in client.list()[1]]
    bodies = [b"\r\n".join(client.retr(i + 1)[1]) + b"\r\n" for i in range(len(uidls))]
    client.rset()
    client.quit()
    return list(zip(uidls, sizes, bodies))


def message(subject: str, body: str = "hello", size: int = 0) -> bytes:
    text = f"From: someone@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\n{body}\r\n"
    if size:
        text += "".join(f"line {i:07d} of a long message\r\n" for i in range(size // 32))
    return text.encode()


def populate(client: IMAPClient, origin: str) -> None:
    """Folders, subscriptions, mail with flags, keywords and dates, expunges: what a client
    leaves in a mailbox after a while."""
    for name in ("Work", "Work/Projects", "Lists/python", "Ärchiv/2024"):  # the last in modified UTF-7
        client.create_folder(name)
    client.subscribe_folder("Work/Projects")
    client.subscribe_folder("Lists/python")
    client.subscribe_folder("Ärchiv/2024")
    day = datetime.datetime(2024, 3, 5, 10, 30, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    for i in range(50):
        flags = [[], [b"\\Seen"], [b"\\Seen", b"\\Flagged"], [b"$Label1"], [b"\\Answered", f"{origin}-kw".encode()]][i % 5]
        client.append("INBOX", message(f"{origin}-{i}", size=300_000 if i == 7 else 0), flags,
                      day + datetime.timedelta(days=i))
    client.append("Work/Projects", message(f"{origin}-work"), [b"\\Seen"], day)
    client.append("Lists/python", "Subject: no final newline\r\n\r\nbody with a bare\nLF and a bare\rCR".encode(), [],
                  day)
    client.select_folder("INBOX")
    client.delete_messages([2, 9, 31])  # UIDs 2, 9 and 31 gone: the UIDs are not 1..N
    client.expunge()
    client.logout()


def summary(seen: dict) -> str:
    """The counts the closing note quotes: what was compared, item by item."""
    messages = [m for _v, _n, box in seen["boxes"].values() for m in box.values()]
    keywords = sum(1 for flags, *_ in messages for f in flags if not f.startswith(b"\\"))
    return (f"{len(seen['folders'])} folders, {len(seen['subscribed'])} subscriptions, {len(seen['boxes'])} "
            f"UIDVALIDITY/UIDNEXT pairs, {len(messages)} messages (UID, flags, INTERNALDATE, RFC822.SIZE, bytes), "
            f"{keywords} keywords set, {sum(len(m[3]) for m in messages)} bytes")


def assert_same(first: dict, second: dict, what: str) -> None:
    assert first["folders"] == second["folders"], what
    assert first["subscribed"] == second["subscribed"], (what, first["subscribed"], second["subscribed"])
    assert sorted(first["boxes"]) == sorted(second["boxes"]), what
    for name, (validity, uidnext, messages) in first["boxes"].items():
        other_validity, other_next, others = second["boxes"][name]
        assert (validity, uidnext) == (other_validity, other_next), f"{what}: {name} UIDVALIDITY/UIDNEXT"
        assert sorted(messages) == sorted(others), f"{what}: {name} UIDs"
        for uid, (flags, date, size, body) in messages.items():
            assert (flags, date, size) == others[uid][:3], f"{what}: {name} UID {uid} flags, INTERNALDATE, RFC822.SIZE"
            assert body == others[uid][3], f"{what}: {name} UID {uid} bytes"
            assert size == len(body), f"{what}: {name} UID {uid} RFC822.SIZE is not the size served"
    print(f"{what}: the same through both servers: {summary(first)}")


def test_a_store_populated_through_mailstack_reads_the_same_through_dovecot(pair):
    pair.start_mailstack()
    populate(pair.imap("mailstack", ALICE), "ms")
    with smtplib.SMTP("127.0.0.1", pair.ports["smtp"]["port"], timeout=30) as s:  # left in new/, unnumbered
        s.sendmail("someone@remote.test", [ALICE], message("ms-delivered"))
    ours = view(pair.imap("mailstack", ALICE))
    assert len(ours["boxes"]["INBOX"][2]) == 48  # 50 appended, 3 expunged, 1 delivered
    with smtplib.SMTP("127.0.0.1", pair.ports["smtp"]["port"], timeout=30) as s:  # Dovecot numbers this one
        s.sendmail("someone@remote.test", [ALICE], message("ms-delivered-later"))
    pair.stop_mailstack()

    pair.start_dovecot(ALICE)
    theirs = view(pair.imap("dovecot", ALICE))
    late = [uid for uid, m in theirs["boxes"]["INBOX"][2].items() if b"ms-delivered-later" in m[3]]
    assert late == [ours["boxes"]["INBOX"][1]]  # the next UID, as mailstack would have given it
    validity, uidnext, messages = theirs["boxes"]["INBOX"]
    theirs["boxes"]["INBOX"] = (validity, uidnext - 1, {u: m for u, m in messages.items() if u not in late})
    assert_same(ours, theirs, "mailstack -> Dovecot")
    theirs_pop3 = pop3_view(pair.pop3("dovecot", ALICE))  # RETR sets \Seen: after the IMAP views
    assert pair.dovecot_errors() == []
    pair.stop_dovecot()

    # And back: the UID Dovecot gave the late delivery is mailstack's too; POP3 is the same.
    pair.start_mailstack()
    again = view(pair.imap("mailstack", ALICE))
    assert [uid for uid, m in again["boxes"]["INBOX"][2].items() if b"ms-delivered-later" in m[3]] == late
    assert pop3_view(pair.pop3("mailstack", ALICE)) == theirs_pop3
    assert len(theirs_pop3) == 49
    print(f"mailstack -> Dovecot: POP3 {len(theirs_pop3)}/{len(theirs_pop3)} UIDLs, sizes and RETR bytes the same")


def test_a_store_populated_through_dovecot_reads_the_same_through_mailstack(pair):
    shutil.rmtree(pair.maildir(BOB))  # the Maildir as Dovecot makes it, with none of mailstack's files
    pair.maildir(BOB).mkdir(mode=0o700)
    os.chown(pair.maildir(BOB), pair.inst.user.pw_uid, pair.inst.gid)
    pair.start_dovecot(BOB)
    populate(pair.imap("dovecot", BOB), "dc")
    theirs = view(pair.imap("dovecot", BOB))
    assert pair.dovecot_errors() == []
    pair.stop_dovecot()
    lf_files = [p for p in pair.maildir(BOB).glob("cur/*") if b"\r\n" not in p.read_bytes()]
    assert lf_files, "Dovecot stores LF line ends: the CRLF serving is not tested"

    pair.start_mailstack()
    ours = view(pair.imap("mailstack", BOB))
    assert_same(theirs, ours, "Dovecot -> mailstack")
    check = pair.inst.admin("store", "check", BOB)
    assert "PROBLEMS" not in check.stdout, check.stdout
    ours_pop3 = pop3_view(pair.pop3("mailstack", BOB))  # RETR sets \Seen: after the IMAP views
    pair.stop_mailstack()
    pair.start_dovecot(BOB)
    assert pop3_view(pair.pop3("dovecot", BOB)) == ours_pop3
    assert len(ours_pop3) == 47
    print(f"Dovecot -> mailstack: POP3 {len(ours_pop3)}/{len(ours_pop3)} UIDLs, sizes and RETR bytes the same")


def test_both_servers_at_once_lose_duplicate_and_stall_nothing(pair):
    pair.start_mailstack()
    setup = pair.imap("mailstack", ALICE)
    for i in range(12):  # 12 x 2 new keywords: within the 26 letters a Maildir folder has
        setup.append("INBOX", message(f"base-{i}"))
    for i in range(20):  # expunged by Dovecot while the rest goes on (its compaction drops their records)
        setup.append("INBOX", message(f"doomed-{i}"))
    setup.logout()
    pair.start_dovecot(ALICE)
    before = view(pair.imap("dovecot", ALICE))["boxes"]["INBOX"][2]
    base_uids = sorted(uid for uid, m in before.items() if b"Subject: base-" in m[3])
    doomed_uids = sorted(uid for uid, m in before.items() if b"Subject: doomed-" in m[3])
    durations: list[tuple[float, str]] = []
    create_races: list[str] = []
    errors: list[str] = []

    def timed(label, fn, *args):
        start = time.monotonic()
        fn(*args)
        durations.append((time.monotonic() - start, label))

    def appends(which):
        client = pair.imap(which, ALICE)
        for i in range(30):
            timed(f"{which} APPEND", client.append, "INBOX", message(f"{which}-append-{i}"))
        client.logout()

    def deliveries():
        with smtplib.SMTP("127.0.0.1", pair.ports["smtp"]["port"], timeout=30) as s:
            for i in range(30):
                timed("mailstack SMTP", s.sendmail, "someone@remote.test", [ALICE], message(f"smtp-{i}"))

    def flags(which, flag):
        client = pair.imap(which, ALICE)
        client.select_folder("INBOX")
        for i, uid in enumerate(base_uids):
            timed(f"{which} STORE", client.add_flags, [uid], [flag, f"{which}-kw-{i}".encode()], True)
            timed(f"{which} NOOP", client.noop)
        client.logout()

    def expunges():
        client = pair.imap("dovecot", ALICE)
        client.select_folder("INBOX")
        for uid in doomed_uids:
            timed("dovecot STORE", client.add_flags, [uid], [b"\\Deleted"], True)
            timed("dovecot EXPUNGE", client.expunge)
        client.logout()

    def subscriptions(which):
        client = pair.imap(which, ALICE)
        for i in range(5):
            try:
                timed(f"{which} CREATE", client.create_folder, f"{which}/f{i}")
            except IMAPClient.Error as e:
                # Dovecot 2.3 now and then answers its own CREATE with NO [ALREADYEXISTS] while
                # the other server changes the Maildir (about 1 run in 15; its log says nothing);
                # the folder is then there, which the checks below see.  mailstack never does.
                if which != "dovecot" or "ALREADYEXISTS" not in str(e):
                    raise
                create_races.append(f"{which}/f{i}")
            timed(f"{which} SUBSCRIBE", client.subscribe_folder, f"{which}/f{i}")
        client.logout()

    def guarded(fn, *args):
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - reported below, with which side failed
            errors.append(f"{fn.__name__}{args}: {e!r}")

    jobs = [(appends, "mailstack"), (appends, "dovecot"), (deliveries,), (flags, "mailstack", b"\\Flagged"),
            (flags, "dovecot", b"\\Answered"), (subscriptions, "mailstack"), (subscriptions, "dovecot"), (expunges,)]
    threads = [threading.Thread(target=guarded, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []

    ours, theirs = view(pair.imap("mailstack", ALICE)), view(pair.imap("dovecot", ALICE))
    assert_same(ours, theirs, "both at once")
    messages = ours["boxes"]["INBOX"][2]
    subjects = sorted(body.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for _f, _d, _s, body in messages.values())
    expected = sorted([f"base-{i}" for i in range(12)] + [f"{w}-append-{i}" for w in ("mailstack", "dovecot")
                                                          for i in range(30)] + [f"smtp-{i}" for i in range(30)])
    assert subjects == expected  # nothing lost, nothing twice
    for i, uid in enumerate(base_uids):
        want = sorted([b"\\Answered", b"\\Flagged", f"mailstack-kw-{i}".encode(), f"dovecot-kw-{i}".encode()])
        assert messages[uid][0] == want, f"UID {uid}"
    others = [m[0] for uid, m in messages.items() if uid not in base_uids]
    assert all(flags == [] for flags in others)
    created = {f"{w}/f{i}" for w in ("mailstack", "dovecot") for i in range(5)}
    assert set(ours["folders"]) >= created and set(ours["subscribed"]) >= created
    slowest = max(durations)
    print(f"both at once: {len(messages)}/{len(expected)} messages, {len(durations)} operations, "
          f"slowest {slowest[0] * 1000:.0f} ms ({slowest[1]}); Dovecot CREATE said ALREADYEXISTS: {create_races}")
    assert slowest[0] < STALL, sorted(durations)[-5:]
    assert pair.dovecot_errors() == []
