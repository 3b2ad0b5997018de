"""End-to-end tests of the POP3 server (mailstack.pop3) against a real twistd process.

Clients: Python's poplib, a raw socket for malformed input and pipelining, and (when installed)
fetchmail and curl.  Mail is put in with the store from this process, as another writer would.
"""

from __future__ import annotations

import base64
import hashlib
import os
import poplib
import random
import shutil
import socket
import subprocess
import time

import pytest

from support.clients import Fetchmail, Pop3Client as Raw, pop3_login as raw_login
from support.messages import message as build_message
from support.servers import PASSWORDS
from support.waiting import wait_for
from mailstack.pop3.capabilities import CAPABILITIES
from mailstack.pop3.transfer import DotStuffer
from mailstack.store import MaildirStore

BOB = "bob@example.test"
LISTENERS = ["pop3", "pop3s"]
CAPA_BEFORE_TLS = ["TOP", "UIDL", "USER", "SASL PLAIN", "STLS", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                   "IMPLEMENTATION mailstack"]
CAPA_TLS = [c for c in CAPA_BEFORE_TLS if c != "STLS"]


def message(n: int, body: bytes = b"") -> bytes:
    return build_message(n, body=body, sender="alice@example.test", date=None, message_id=None)


@pytest.fixture
def srv(server_factory):
    return server_factory(listeners=LISTENERS).start()


def store(srv) -> MaildirStore:
    return MaildirStore(str(srv.store_root))


def deliver(srv, *messages: bytes, user: str = BOB) -> list[int]:
    return srv.deliver(*messages, user=user)


def login(srv, user: str = BOB, tls: str | None = None) -> poplib.POP3:
    if tls == "implicit":
        p = poplib.POP3_SSL("127.0.0.1", srv.port("pop3s"), context=srv.ssl_context(), timeout=20)
    else:
        p = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=20)
        if tls == "stls":
            p.stls(srv.ssl_context())
    p.user(user)
    p.pass_(PASSWORDS[user])
    return p


def capa_lines(p: poplib.POP3) -> list[str]:
    resp, lines, _ = p._longcmd("CAPA")
    assert resp.startswith(b"+OK")
    return [line.decode() for line in lines]


def maildir_files(srv, user: str = BOB) -> list[str]:
    d = srv.maildir(user)
    return sorted(f"{sub}/{name}" for sub in ("new", "cur") for name in os.listdir(d / sub))


# -- the encoder, in process ----------------------------------------------------------------


def reference_stuffing(data: bytes, top: int | None = None) -> bytes:
    """RFC 1939 by the book, on whole lines: what DotStuffer must produce."""
    if not data:
        return b".\r\n"
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    if top is not None:
        out, body = [], None
        for line in lines:
            if body is None:
                out.append(line)
                body = 0 if line == b"" else None
            elif body < top:
                out.append(line)
                body += 1
            else:
                break
        lines = out
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


@pytest.mark.parametrize("seed", range(30))
def test_dot_stuffer_matches_reference_for_any_chunking(seed):
    rnd = random.Random(seed)
    pieces = [b".", b"..", b"\r\n", b"\n", b"\r", b"a", b"\xe9\xff", b"\r\n.\r\n", b"Subject: x", b" "]
    data = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 200)))
    if b"\r" in data.replace(b"\r\n", b""):
        data = data.replace(b"\r", b"")  # bare CRs are covered below; the reference has no notion of them
    for top in (None, 0, 1, 3):
        stuffer, out, pos = DotStuffer(top), [], 0
        while pos < len(data):
            step = rnd.randint(1, 7)
            out.append(stuffer.feed(data[pos : pos + step]))
            pos += step
        out.append(stuffer.finish())
        assert b"".join(out) == reference_stuffing(data, top), (data, top)


def test_dot_stuffer_keeps_bare_cr_and_8bit():
    s = DotStuffer()
    assert s.feed(b"a\rb\r") + s.feed(b"\n.x\xff\r") + s.finish() == b"a\rb\r\n..x\xff\r\r\n.\r\n"


def test_capability_table_cites_an_rfc_for_each_entry():
    assert all(c.rfc.startswith("RFC ") for c in CAPABILITIES)


# -- CAPA, TLS, authentication --------------------------------------------------------------


def test_capa_lists_exactly_the_capabilities(srv):
    p = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=10)
    assert p.getwelcome().startswith(b"+OK")
    assert capa_lines(p) == CAPA_BEFORE_TLS
    p.stls(srv.ssl_context())
    assert capa_lines(p) == CAPA_TLS
    p.user(BOB)
    p.pass_(PASSWORDS[BOB])
    assert capa_lines(p) == CAPA_TLS
    p.quit()
    s = poplib.POP3_SSL("127.0.0.1", srv.port("pop3s"), context=srv.ssl_context(), timeout=10)
    assert capa_lines(s) == CAPA_TLS
    with pytest.raises(poplib.error_proto):
        s._shortcmd("STLS")
    s.quit()


def test_stls_then_login_and_pop3s(srv):
    deliver(srv, message(1))
    for tls in ("stls", "implicit"):
        p = login(srv, tls=tls)
        assert p.stat() == (1, len(message(1)))
        assert b"\r\n".join(p.retr(1)[1]) + b"\r\n" == message(1)
        p.quit()
    p = login(srv, tls="stls")
    with pytest.raises(poplib.error_proto, match="STLS"):
        p._shortcmd("STLS")  # not in TRANSACTION state
    p.quit()


def test_stls_discards_input_pipelined_before_the_handshake(srv):
    r = Raw(srv.port("pop3"))
    r.send(b"STLS\r\nUSER injected@example.test\r\n")
    assert r.line().startswith(b"+OK")
    tls = srv.ssl_context().wrap_socket(r.sock, server_hostname="localhost")
    tls.sendall(b"PASS x\r\n")
    assert tls.recv(1000).startswith(b"-ERR USER first")
    tls.close()


def test_plaintext_login_refused_without_tls_when_configured(server_factory):
    srv = server_factory(listeners=LISTENERS, extra="[auth]\nplaintext_on_loopback = false\n").start()
    deliver(srv, message(1))
    r = Raw(srv.port("pop3"))
    r.send(b"CAPA\r\n")
    assert r.line().startswith(b"+OK")
    assert [line.strip().decode() for line in r.multiline()] == ["TOP", "UIDL", "STLS", "RESP-CODES", "AUTH-RESP-CODE",
                                                           "PIPELINING", "IMPLEMENTATION mailstack"]
    assert r.cmd(f"USER {BOB}").startswith(b"-ERR [AUTH]")
    plain = base64.b64encode(f"\0{BOB}\0{PASSWORDS[BOB]}".encode()).decode()
    assert r.cmd(f"AUTH PLAIN {plain}").startswith(b"-ERR [AUTH]")
    assert r.cmd("STAT").startswith(b"-ERR")
    r.close()
    p = login(srv, tls="stls")
    assert p.stat()[0] == 1
    p.quit()
    p = login(srv, tls="implicit")
    assert capa_lines(p) == CAPA_TLS
    p.quit()


def test_auth_plain_both_forms_and_failures(srv):
    plain = base64.b64encode(f"\0{BOB}\0{PASSWORDS[BOB]}".encode())
    r = Raw(srv.port("pop3"))
    assert r.cmd(b"AUTH PLAIN " + plain).startswith(b"+OK")  # RFC 5034 initial response
    assert r.cmd("AUTH PLAIN").startswith(b"-ERR")  # not in TRANSACTION state
    assert r.cmd("QUIT").startswith(b"+OK")
    r.close()

    r = Raw(srv.port("pop3"))
    assert r.cmd("AUTH PLAIN") == b"+ \r\n"
    assert r.cmd("*").startswith(b"-ERR")  # cancelled
    assert r.cmd("AUTH PLAIN") == b"+ \r\n"
    assert r.cmd(base64.b64encode(f"{BOB}\0{BOB}\0wrong".encode())) == b"-ERR [AUTH] authentication failed\r\n"
    assert r.cmd("AUTH PLAIN") == b"+ \r\n"
    assert r.cmd("not base64!").startswith(b"-ERR")
    assert r.cmd("AUTH CRAM-MD5").startswith(b"-ERR")
    assert r.cmd("AUTH") == b"+OK SASL mechanisms follow\r\n" and r.multiline() == [b"PLAIN\r\n"]
    assert r.cmd("AUTH PLAIN") == b"+ \r\n"
    assert r.cmd(plain).startswith(b"+OK maildrop has")
    r.close()

    p = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=10)
    p.user(BOB)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong password")
    with pytest.raises(poplib.error_proto, match="USER first"):
        p.pass_(PASSWORDS[BOB])
    p.user("nobody@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("whatever")
    p.quit()
    # the exact line: the throttle's own line naming nobody@ can come first (a worker's lines
    # reach the main log through a pipe)
    log = wait_for(lambda: "authentication failed for nobody@example.test" in srv.log_text() and srv.log_text())
    assert "authentication failed for bob@example.test from 127.0.0.1" in log
    assert "authentication failed for nobody@example.test from 127.0.0.1" in log
    assert "pop3 login bob@example.test from 127.0.0.1" in log
    assert PASSWORDS[BOB] not in log and "wrong password" not in log


def test_too_many_auth_failures_disconnect(srv):
    r = Raw(srv.port("pop3"))
    for _ in range(2):
        r.cmd(f"USER {BOB}")
        assert r.cmd("PASS nope").startswith(b"-ERR [AUTH]")
    r.cmd(f"USER {BOB}")
    assert r.cmd("PASS nope").startswith(b"-ERR [AUTH]")
    assert r.line().startswith(b"-ERR too many")
    assert r.line() == b""


def test_connection_limit_answers_busy(server_factory):
    from mailstack.pop3.server import BUSY

    srv = server_factory(listeners=LISTENERS, extra="[limits]\nconnections = 1\n").start()
    first = Raw(srv.port("pop3"))
    second = socket.create_connection(("127.0.0.1", srv.port("pop3")), timeout=10)
    assert second.makefile("rb").readline() == BUSY
    assert BUSY.startswith(b"-ERR [SYS/TEMP]")
    second.close()
    first.close()


# -- the commands -----------------------------------------------------------------------------


def test_transaction_commands(srv):
    msgs = [message(i) for i in range(1, 4)]
    deliver(srv, *msgs)
    p = login(srv)
    sizes = [len(m) for m in msgs]
    assert p.stat() == (3, sum(sizes))
    resp, lines, _ = p.list()
    assert resp.startswith(b"+OK 3 messages")
    assert lines == [b"%d %d" % (i + 1, s) for i, s in enumerate(sizes)]
    assert p.list(2) == b"+OK 2 %d" % sizes[1]
    uidls = [line.split()[1] for line in p.uidl()[1]]
    assert len(set(uidls)) == 3 and all(len(u) == 16 for u in uidls)  # Dovecot's default, "%08Xu%08Xv"
    assert p.uidl(3).split()[-1] == uidls[2]
    assert b"\r\n".join(p.retr(2)[1]) + b"\r\n" == msgs[1]
    top = p.top(1, 1)[1]
    assert top == [b"From: alice@example.test", f"To: {BOB}".encode(), b"Subject: message 1", b"", b"body of message 1"]
    assert p.top(1, 0)[1][-1] == b""
    assert p.noop().startswith(b"+OK")
    assert p.dele(1).startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match="already deleted"):
        p.dele(1)
    with pytest.raises(poplib.error_proto):
        p.retr(1)
    with pytest.raises(poplib.error_proto):
        p.list(1)
    assert p.stat() == (2, sizes[1] + sizes[2])
    assert [line.split()[0] for line in p.list()[1]] == [b"2", b"3"]
    assert p.rset().startswith(b"+OK")
    assert p.stat() == (3, sum(sizes))
    for bad in ("LIST 0", "LIST 4", "LIST x", "RETR", "RETR 99", "TOP 1", "TOP 1 x", "DELE -1", "UIDL 1 2", "STAT 1"):
        with pytest.raises(poplib.error_proto):
            p._shortcmd(bad)
    for wrong_state in ("USER x", "PASS x", "STLS"):
        with pytest.raises(poplib.error_proto, match="not valid"):
            p._shortcmd(wrong_state)
    assert p.quit().startswith(b"+OK")
    assert len(maildir_files(srv)) == 3  # RSET undid the DELE


def test_bad_input_gets_err_not_a_traceback(srv):
    r = Raw(srv.port("pop3"))
    for line in (b"FOO", b"", b"STAT", b"LIST", b"RETR 1", b"\xff\xfe", b"US\x00ER x", b"X" * 300, b"USER " + b"a" * 260,
                 b"NOOP", b"PASS"):
        reply = r.cmd(line)
        assert reply.startswith(b"-ERR"), (line, reply)
        assert b"Traceback" not in reply and b"Error:" not in reply
    r.send(b"Y" * 100_000 + b"\r\n")  # one huge line: one -ERR, then the session goes on
    assert r.line().startswith(b"-ERR command line too long")
    assert r.cmd(f"USER {BOB}").startswith(b"+OK")
    assert r.cmd(f"PASS {PASSWORDS[BOB]}").startswith(b"+OK")
    assert r.cmd("QUIT").startswith(b"+OK")
    assert "Traceback" not in srv.log_text()


def test_pipelining(srv):
    deliver(srv, message(1), message(2))
    r = Raw(srv.port("pop3"))
    r.send(f"CAPA\r\nUSER {BOB}\r\nPASS {PASSWORDS[BOB]}\r\nSTAT\r\nRETR 1\r\nUIDL 2\r\nDELE 2\r\nQUIT\r\n".encode())
    assert r.line().startswith(b"+OK")
    assert [line.strip() for line in r.multiline()][-1] == b"IMPLEMENTATION mailstack"
    assert r.line().startswith(b"+OK")
    assert r.line().startswith(b"+OK maildrop has 2")
    assert r.line() == b"+OK 2 %d\r\n" % (2 * len(message(1)))
    assert r.line().startswith(b"+OK")
    assert b"".join(r.multiline()) == message(1)
    assert r.line().startswith(b"+OK 2 ")
    assert r.line().startswith(b"+OK message 2 deleted")
    assert r.line().startswith(b"+OK")
    assert r.line() == b""
    assert len(maildir_files(srv)) == 1


# -- the maildrop -----------------------------------------------------------------------------


def test_dele_quit_removes_and_dropped_connection_keeps(srv):
    deliver(srv, message(1), message(2), message(3))
    p = login(srv)
    p.dele(1)
    p.dele(3)
    p.close()  # dropped: no QUIT, no UPDATE
    time.sleep(0.3)
    assert len(maildir_files(srv)) == 3
    p = wait_for(lambda: _try_login(srv))  # the maildrop lock goes with the connection
    assert p.stat()[0] == 3
    p.dele(1)
    p.dele(3)
    assert b"2 messages deleted" in p.quit()
    files = maildir_files(srv)
    assert len(files) == 1
    assert (srv.maildir(BOB) / files[0]).read_bytes() == message(2)


def _try_login(srv):
    try:
        return login(srv)
    except poplib.error_proto:
        return None


def test_second_session_gets_in_use(srv):
    deliver(srv, message(1))
    first = login(srv, tls="implicit")
    other = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=10)
    other.user(BOB)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        other.pass_(PASSWORDS[BOB])
    alice = login(srv, "alice@example.test")  # other maildrops are not locked
    alice.quit()
    first.quit()
    other.user(BOB)
    assert other.pass_(PASSWORDS[BOB]).startswith(b"+OK")
    other.quit()


def test_retr_marks_seen_top_does_not(srv):
    deliver(srv, message(1), message(2))
    p = login(srv)
    p.top(2, 0)
    p.retr(1)

    def seen():
        files = maildir_files(srv)
        return [f for f in files if ":2," in f and "S" in f.split(":2,")[1]]

    assert len(wait_for(seen)) == 1
    assert "message 1" in (srv.maildir(BOB) / seen()[0]).read_text()
    p.quit()
    assert len(seen()) == 1
    snapshot = store(srv).mailbox(BOB).folder("INBOX").snapshot()
    assert ["\\Seen" in m.flags for m in snapshot.messages] == [True, False]


def test_uidl_is_dovecots_default_and_stable_across_restart(srv):
    uids = deliver(srv, message(1), message(2), message(3))
    uidvalidity = store(srv).mailbox(BOB).folder("INBOX").snapshot().uidvalidity
    p = login(srv)
    before = p.uidl()[1]
    p.dele(2)
    p.quit()
    assert before == [f"{i + 1} {uid:08x}{uidvalidity:08x}".encode() for i, uid in enumerate(uids)]
    srv.stop()
    srv.start()
    p = login(srv)
    assert [line.split()[1] for line in p.uidl()[1]] == [before[0].split()[1], before[2].split()[1]]
    p.quit()


def test_8bit_body_and_dot_lines_round_trip_byte_exact(srv):
    body = (b".starts with a dot\r\n..two dots\r\n.\r\n. \r\n\xe9t\xe9 \xff\x80\xc3\xa9\r\nlast line without a dot\r\n")
    crlf = message(1, body)
    lf_only = message(2, b".x\n\xe9\nend").replace(b"\r\n", b"\n")
    no_final_newline = message(3, b"no newline at the end")
    deliver(srv, crlf, lf_only, no_final_newline)
    p = login(srv)
    assert b"\r\n".join(p.retr(1)[1]) + b"\r\n" == crlf
    assert b"\r\n".join(p.retr(2)[1]) == lf_only.replace(b"\n", b"\r\n")
    assert b"\r\n".join(p.retr(3)[1]) == no_final_newline
    p.quit()
    r = raw_login(srv)
    assert r.cmd("RETR 1").startswith(b"+OK")
    raw = b"".join(r.multiline())
    assert b"\r\n..starts with a dot\r\n...two dots\r\n..\r\n.. \r\n" in raw  # RFC 1939 3 byte-stuffing
    r.close()


def test_snapshot_survives_expunge_and_delivery_by_others(srv):
    uids = deliver(srv, message(1), message(2), message(3))
    p = login(srv)
    folder = store(srv).mailbox(BOB).folder("INBOX")
    assert folder.expunge([uids[1]]) == [uids[1]]
    deliver(srv, message(4))
    assert p.stat() == (3, 3 * len(message(1)))  # numbering is the login snapshot's
    with pytest.raises(poplib.error_proto, match="removed"):
        p.retr(2)
    assert b"\r\n".join(p.retr(3)[1]) + b"\r\n" == message(3)
    p.dele(2)  # deleting what is already gone is harmless
    assert p.quit().startswith(b"+OK")
    p = login(srv)
    assert p.stat()[0] == 3  # 1, 3 and the new one
    p.quit()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_50mb_message_streams_without_loading_it(srv):
    line = b"".join(bytes([33 + (i % 90)]) for i in range(998)) + b"\r\n"
    count = 50 * 1024 * 1024 // len(line)
    header = f"From: alice@example.test\r\nTo: {BOB}\r\nSubject: big\r\n\r\n".encode()

    def chunks():
        yield header
        for _ in range(count // 1000):
            yield line * 1000

    expected = hashlib.sha256(header + line * (count // 1000 * 1000)).hexdigest()
    store(srv).deliver(BOB, chunks())
    p = login(srv)
    baseline = peak = _rss_kb(srv.proc.pid)
    p._putcmd("RETR 1")
    assert p._getresp().startswith(b"+OK")
    digest, received, n = hashlib.sha256(), 0, 0
    while (got := p.file.readline()) != b".\r\n":
        assert got, "connection closed"
        if got.startswith(b".."):
            got = got[1:]
        digest.update(got)
        received += len(got)
        n += 1
        if n % 2000 == 0:
            peak = max(peak, _rss_kb(srv.proc.pid))
            if n % 10000 == 0:
                time.sleep(0.05)  # a slow reader: the server must hold back, not buffer
    assert digest.hexdigest() == expected
    assert received > 50_000_000
    print(f"server RSS {baseline} kB before, peak {peak} kB")
    assert peak - baseline < 20 * 1024, f"server RSS grew by {(peak - baseline) // 1024} MB"
    p.quit()


# -- other clients ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail not installed (apt-get install fetchmail)")
def test_fetchmail_keep_uidl_fetches_each_message_once(srv, tmp_path):
    deliver(srv, message(1), message(2))
    home = tmp_path / "fm"
    fm = Fetchmail(srv, home, "POP3", extra="uidl", args=("-i", str(home / "ids")))
    first = fm.run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert fm.fetched() == 2
    assert "STLS" in first.stdout + first.stderr
    second = fm.run()
    assert second.returncode == 1, second.stdout + second.stderr  # 1: no new mail
    assert fm.fetched() == 2
    deliver(srv, message(3))
    third = fm.run()
    assert third.returncode == 0, third.stdout + third.stderr
    assert fm.fetched(b"Subject: message 3") == 1
    assert fm.fetched() == 3
    assert len(maildir_files(srv)) == 3  # keep


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (apt-get install curl)")
def test_curl_pop3s_lists_and_retrieves(srv):
    deliver(srv, message(1), message(2, b"the second body\r\n"))
    base = ["curl", "-sS", "--cacert", srv.ca_file, "--user", f"{BOB}:{PASSWORDS[BOB]}"]
    url = f"pop3s://127.0.0.1:{srv.port('pop3s')}/"
    listing = subprocess.run(base + [url], capture_output=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == b"1 %d\r\n2 %d\r\n" % (len(message(1)), len(message(2, b"the second body\r\n")))
    got = subprocess.run(base + [url + "2"], capture_output=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout == message(2, b"the second body\r\n")
    stls = subprocess.run(base + ["--ssl-reqd", f"pop3://127.0.0.1:{srv.port('pop3')}/1"], capture_output=True, timeout=30)
    assert stls.returncode == 0, stls.stderr
    assert stls.stdout == message(1)
