"""POP3 UIDL from ``[pop3] uidl_format`` (issue 18, item 6): Dovecot's ``pop3_uidl_format``.

The expected values are the ones Dovecot's documentation gives ("Config Variables",
modifiers and substrings; 20-pop3.conf for the variables and the default) and, where the
documentation leaves a case open, what Dovecot 2.3.19 answered to UIDL for the same file
name, UID and UIDVALIDITY; the last test asks a real Dovecot over the same Maildir.
"""

from __future__ import annotations

import hashlib
import os
import poplib
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from support.clients import Pop3Client, pop3_login
from support.servers import PASSWORDS
from mailstack import config
from mailstack.errors import ConfigError
from mailstack.pop3.maildrop import Maildrop
from mailstack.pop3.uidl import DEFAULT, UidlFormat, UidlFormatError
from mailstack.store import MaildirFolder

BOB = "bob@example.test"
BASE = "1796409598.M967086P18619.vm,S=25,W=29"  # a Dovecot Maildir base name
V = 1796409598
M1 = b"From: alice@example.test\r\nSubject: one\r\n\r\nbody one\r\n"
M2 = b"From: alice@example.test\r\nSubject: two\r\n\r\nbody two\r\n"


def pop3_extra(fmt: str) -> str:
    return f"[pop3]\nuidl_format = '{fmt}'\n"  # a TOML literal string: no escapes


# -- the format engine ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt, uid, expected", [
    (DEFAULT, 1, "000000016b1308fe"),  # Dovecot's default: hex UID, hex UIDVALIDITY, 8 digits each
    ("%08Xu%08Xv", 0xABCDEF12, "abcdef126b1308fe"),  # %X is lowercase hex, as Dovecot sends it
    ("%v.%u", 3, "1796409598.3"),  # mailstack's old UIDLs, Cyrus >= 2.1.4, Dovecot 0.99
    ("%08Xv%08Xu", 3, "6b1308fe00000003"),  # UW ipop3d
    ("%v-%u", 3, "1796409598-3"),  # Courier
    ("%u", 3, "3"),  # Cyrus <= 2.1.3
    ("%f", 1, BASE),
    ("%g", 1, BASE),  # Maildir without a G extension: the base name
    ("%Mf", 1, hashlib.md5(BASE.encode()).hexdigest()),  # tpop3d
    ("%{uid}-%{uidvalidity}", 7, "7-1796409598"),
    ("%{filename}|%{guid}", 1, f"{BASE}|{BASE}"),
    ("%XUv%04u", 5, "6B1308FE0005"),  # modifiers left to right: hex, then uppercase
    ("%UXv%u", 5, "6b1308fe5"),  # uppercase first (no effect on digits), then hex
    ("%MXu", 1, "0"),  # MD5 then hex of its leading decimal digits: none
    ("%Lf", 1, BASE.lower()),
    ("%Uf", 1, BASE.upper()),
    ("%Rf", 1, BASE[::-1]),
    ("%Df", 1, "1796409598,dc=M967086P18619,dc=vm,S=25,W=29"),
    ("%%%u", 4, "%4"),
    ("%3f", 1, "179"),  # a width keeps the first characters
    ("%2.3f", 1, "964"),  # offset 2, width 3
    ("%.3u", 1, "1"),
    ("%-2.2f", 1, "29"),  # a negative offset counts from the end
    ("%0.-4f", 1, BASE[:-4]),  # a negative width drops that many from the end
    ("%012u", 1, "000000000001"),  # zero padding
    ("%04u", 12345, "12345"),  # zero padding never cuts
    ("%1.04u", 1, "0000"),  # the substring first, then the padding (Dovecot 2.3.19)
    ("%5.2Xv%u", 1, "8f1"),
    ("%10Mf", 1, hashlib.md5(BASE.encode()).hexdigest()[:10]),
    ("%100f", 1, BASE),
])
def test_expansions(fmt, uid, expected):
    assert UidlFormat(fmt).expand(uid, V, BASE) == expected


@pytest.mark.parametrize("fmt, problem", [
    ("", "must not be empty"),
    ("%u%", "ends with a lone %"),
    ("%xu", "unknown variable %x"),  # Dovecot refuses it too: only %X exists
    ("%q", "unknown variable %q"),
    ("%Qu", "unknown variable or modifier %Q"),
    ("%{bogus}", "unknown variable %{bogus}"),
    ("%{uid", "no closing }"),
    ("%X", "has no variable"),
    ("%m", "%m is the MD5 of an mbox message's headers"),
    ("%{md5}", "%m is the MD5 of an mbox message's headers"),
    ("%Hf", "modifier %H"),
    ("%256Nu", "modifier %N"),
    ("msg %u", "' ' cannot be in a UIDL"),
    ("%u\u00e9", "cannot be in a UIDL"),
    ("abc", "needs %u, %f or %g"),
    ("%v", "needs %u, %f or %g"),
    ("%-4f", "a negative width needs an offset"),
    ("%0.-04u", "zero padding takes a positive width"),
    ("%Mf%Mf%Mf", "expands to at least 96 characters"),
    ("%v%v%v%v%v%v%v%u", "can expand to 80 characters"),
    ("%0.0u", "always expands to nothing"),
])
def test_formats_refused(fmt, problem):
    with pytest.raises(UidlFormatError) as e:
        UidlFormat(fmt)
    assert problem in str(e.value)


@pytest.mark.parametrize("base", ["1796409598.M1P2.host with space", "1796409598.M1P2.h\udcff" , "x" * 71])
def test_a_uidl_rfc_1939_forbids_becomes_the_md5_of_uidvalidity_and_uid(base):
    substitute = hashlib.md5(b"1796409598.9").hexdigest()
    assert UidlFormat("%f").uidl(9, V, base) == (substitute, True)
    assert UidlFormat("%f").uidl(9, V, "x" * 70) == ("x" * 70, False)
    assert UidlFormat("%5.3u").uidl(9, V, BASE) == (substitute, True)  # empty
    assert UidlFormat(DEFAULT).uidl(9, V, BASE, stored="bad uidl") == (substitute, True)


# -- the configuration ---------------------------------------------------------------------


@pytest.fixture
def base(inproc_server_factory):
    return inproc_server_factory(listeners=["pop3"])  # its files and config; not started


@pytest.mark.parametrize("fmt, problem", [
    ("%m", "'%m': %m is the MD5 of an mbox message's headers, which a Maildir store does not have"),
    ("%xu", "'%xu': unknown variable %x"),
    ("%Hf", "'%Hf': modifier %H"),
    ("%u %v", "'%u %v': ' ' cannot be in a UIDL: 1-70 characters 0x21-0x7E (RFC 1939 section 7)"),
    ("%040Mf%040Mf", "at least 80 characters; a UIDL has at most 70"),
])
def test_config_errors_name_file_key_and_problem(base, fmt, problem):
    path = str(base.config_path)
    base.config_path.write_text(base.config_path.read_text() + pop3_extra(fmt))
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(e.value).startswith(f"{path}: [pop3] uidl_format: ")
    assert problem in str(e.value)


def test_default_and_restart_only(base):
    cfg = config.load(str(base.config_path))
    assert cfg.pop3_uidl_format == "%08Xu%08Xv"
    from mailstack import reconfigure

    base.config_path.write_text(base.config_path.read_text() + pop3_extra("%v.%u"))
    new = config.load(str(base.config_path))
    assert new.pop3_uidl_format == "%v.%u"
    assert reconfigure.changed_keys(cfg, new) == [("pop3", "uidl_format")]
    assert not reconfigure.is_live(cfg, new, "pop3", "uidl_format")  # logged as waiting for a restart


# -- POP3 sessions, in process -------------------------------------------------------------


def uidvalidity_of(srv) -> int:
    from mailstack.store import MaildirStore

    return MaildirStore(str(srv.store_root), fsync=False).mailbox(BOB).folder("INBOX").uidvalidity()


def uidl_replies(srv) -> tuple[bytes, list[bytes], bytes]:
    c = pop3_login(srv)
    head, listing = c.cmd("UIDL"), c.multiline()
    one = c.cmd("UIDL 2")
    assert c.cmd("QUIT").startswith(b"+OK")
    c.close()
    return head, listing, one


def test_default_format_on_the_wire(inproc_server_factory):
    srv = inproc_server_factory(listeners=["pop3"]).start()
    uids = srv.deliver(M1, M2)
    v = uidvalidity_of(srv)
    head, listing, one = uidl_replies(srv)
    assert head == b"+OK unique-id listing follows\r\n"
    assert listing == [b"1 %08x%08x\r\n" % (uids[0], v), b"2 %08x%08x\r\n" % (uids[1], v)]
    assert one == b"+OK 2 %08x%08x\r\n" % (uids[1], v)


def test_the_old_mailstack_uidls_with_v_dot_u(inproc_server_factory):
    """The upgrade path: "%v.%u" is what mailstack sent before the option existed."""
    srv = inproc_server_factory(listeners=["pop3"], extra=pop3_extra("%v.%u")).start()
    uids = srv.deliver(M1, M2)
    v = uidvalidity_of(srv)
    head, listing, one = uidl_replies(srv)
    assert listing == [b"1 %d.%d\r\n" % (v, uids[0]), b"2 %d.%d\r\n" % (v, uids[1])]
    assert one == b"+OK 2 %d.%d\r\n" % (v, uids[1])


def test_file_names_with_f(inproc_server_factory):
    srv = inproc_server_factory(listeners=["pop3"], extra=pop3_extra("%f")).start()
    srv.deliver(M1, M2)
    from mailstack.store import MaildirStore

    snapshot = MaildirStore(str(srv.store_root), fsync=False).mailbox(BOB).folder("INBOX").snapshot()
    bases = [m.base.encode() for m in snapshot.messages]
    assert all(b":2," not in base and b"new/" + base in {m.filename.encode() for m in snapshot.messages} for base in bases)
    head, listing, one = uidl_replies(srv)
    assert listing == [b"1 %s\r\n" % bases[0], b"2 %s\r\n" % bases[1]]


def test_a_stored_uidl_is_sent_instead(inproc_server_factory, monkeypatch):
    """A folder that says another server gave UID 2 a UIDL (Dovecot's P extension): that one."""
    srv = inproc_server_factory(listeners=["pop3"]).start()
    uids = srv.deliver(M1, M2)
    v = uidvalidity_of(srv)
    monkeypatch.setattr(MaildirFolder, "pop3_uidls", lambda self: {uids[1]: "UID2-from-the-old-server"})
    head, listing, one = uidl_replies(srv)
    assert listing == [b"1 %08x%08x\r\n" % (uids[0], v), b"2 UID2-from-the-old-server\r\n"]
    assert one == b"+OK 2 UID2-from-the-old-server\r\n"


class FakeFolder:
    def __init__(self, snapshot, stored):
        self._snapshot, self._stored = snapshot, stored

    def snapshot(self):
        return self._snapshot

    def pop3_uidls(self):
        return self._stored

    def pop3_order(self):
        return {}


def test_the_maildrop_over_a_fake_folder():
    from mailstack.store import FolderSnapshot, MessageInfo

    messages = tuple(MessageInfo(uid, f"17000000{uid}.M1P1.host", f"cur/17000000{uid}.M1P1.host:2,", frozenset(), 10, 0, 1)
                     for uid in (3, 5, 8))
    folder = FakeFolder(FolderSnapshot("INBOX", 42, 9, 1, messages), {5: "old-5", 8: "bad uidl"})

    class Store:
        root = "/nonexistent"

        def mailbox(self, address):
            return type("Mailbox", (), {"folder": lambda self, name: folder})()

    drop = Maildrop(Store(), BOB, UidlFormat("%u@%v"))
    drop.load()
    assert [drop.uidl(i) for i in range(3)] == ["3@42", "old-5", hashlib.md5(b"42.8").hexdigest()]


# -- the same Maildir served by Dovecot --------------------------------------------------------

DOVECOT_FORMATS = ["%08Xu%08Xv", "%v.%u", "%f", "%g", "%Mf", "%XUu-%2.4Xv", "%08Xv%08Xu"]


@pytest.mark.slow
def test_uidls_are_the_ones_dovecot_sends(inproc_server_factory):
    """Dovecot makes the folder and its messages (so both have the same UIDs, which mailstack
    takes over from dovecot-uidlist), then lists UIDLs by POP3 with each format; mailstack,
    over a copy of that Maildir, must send the same lines."""
    from support.ci import on_ci
    from support.dovecot import fill_through_dovecot, run_dovecot, stop

    root = Path(tempfile.mkdtemp(prefix="mailstack-uidl-"))  # Dovecot's processes must enter it
    try:
        os.chmod(root, 0o755)
        maildir = root / "maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        proc, port, why = run_dovecot(root / "imap", maildir, "u@x.test", "pw", "imap")
        if proc is None:
            pytest.fail(why, pytrace=False) if on_ci() else pytest.skip(why)
        try:
            fill_through_dovecot(port, 4).logout()  # UIDs 1 3 4: the message numbers and the UIDs differ
        finally:
            stop(proc)
        dovecot: dict[str, list[bytes]] = {}
        for n, fmt in enumerate(DOVECOT_FORMATS):
            proc, port, why = run_dovecot(root / f"pop3-{n}", maildir, "u@x.test", "pw", "pop3",
                                          extra_config=f"pop3_uidl_format = {fmt}\n")
            assert proc is not None, why
            try:
                p = poplib.POP3("127.0.0.1", port, timeout=20)
                p.user("u@x.test")
                p.pass_("pw")
                dovecot[fmt] = p.uidl()[1]
                p.quit()
            finally:
                stop(proc)
        assert re.fullmatch(rb"1 000000016[0-9a-f]{7}", dovecot["%08Xu%08Xv"][0])
        assert [line.split()[0] for line in dovecot["%v.%u"]] == [b"1", b"2", b"3"]
        for fmt in DOVECOT_FORMATS:
            srv = inproc_server_factory(listeners=["pop3"], extra=pop3_extra(fmt))
            shutil.copytree(maildir, srv.maildir(BOB), dirs_exist_ok=True)
            srv.start()
            p = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=20)
            p.user(BOB)
            p.pass_(PASSWORDS[BOB])
            assert p.uidl()[1] == dovecot[fmt], fmt
            p.quit()
            srv.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
