"""Authentication throttling shared by SMTP AUTH and POP3: growing delays, address lockout,
no delay for a right password from elsewhere."""

from __future__ import annotations

import base64
import poplib
import smtplib
import time

from support.clients import SmtpClient as Raw
from support.servers import PASSWORDS


ALICE = "alice@example.test"
THROTTLE = "[auth]\nmax_failures = 5\nfailure_delay = 0.05\nmax_failure_delay = 0.4\nlockout = 60\n"


def plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_two_hundred_wrong_guesses(inproc_server_factory):
    srv = inproc_server_factory(listeners=["submission", "pop3"], extra=THROTTLE).start()
    c = Raw(srv.port("submission"))
    c.cmd("EHLO attacker.example")
    timings, codes = [], []
    for i in range(200):
        t0 = time.monotonic()
        code, text = c.cmd(plain(ALICE, f"guess-{i}"))
        timings.append(time.monotonic() - t0)
        codes.append(code)
        if i == 2:
            # Meanwhile the real alice, from another address, logs in at once.
            s = smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=10, source_address=("127.0.0.2", 0))
            s.starttls(context=srv.ssl_context())
            t_ok = time.monotonic()
            s.login(ALICE, PASSWORDS[ALICE])
            assert time.monotonic() - t_ok < 0.5
            s.quit()
    assert codes[:5] == [535] * 5 and set(codes[5:]) == {454}
    # the delay grows with each failure: 0.05, 0.1, 0.2, 0.4, 0.4 s (capped)
    assert timings[0] < timings[2] < timings[3]
    assert timings[1] >= 0.09 and timings[3] >= 0.35
    # once locked out, answers come at once, without checking the password
    assert max(timings[10:]) < 0.2
    # the lockout is per address and shared with POP3
    p = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=10)
    p.user(ALICE)
    try:
        p.pass_(PASSWORDS[ALICE])
        raise AssertionError("a locked-out address logged in")
    except poplib.error_proto as e:
        assert b"[SYS/TEMP]" in e.args[0]
    log = srv.log_text()
    assert "auth failed submission from 127.0.0.1 for alice@example.test (failure 1;" in log
    assert "address locked out" in log
    assert "guess-" not in log  # never the password


def test_gates_sharing_a_journal_share_failures_lockouts_and_restarts(tmp_path):
    # [server] workers: each process has its own LoginGate; the attacker gains nothing by
    # reaching another one, nor from a restart.
    from twisted.cred import credentials, error
    from twisted.internet import defer, task

    from mailstack.throttle import LoginGate, LoginThrottled

    class Portal:
        def login(self, creds, mind, *interfaces):
            if creds.password == b"right":
                return defer.succeed("avatar")
            return defer.fail(error.UnauthorizedLogin())

    clock, journal = task.Clock(), str(tmp_path / "auth-failures.log")
    clock.advance(1_000_000)

    def gate():
        return LoginGate(Portal(), clock, max_failures=4, lockout=60, delay=0.1, max_delay=0.1, window=900,
                         journal=journal)

    def attempt(g, password=b"wrong", peer="192.0.2.7", user="alice@example.test"):
        results = []
        g.login(credentials.UsernamePassword(user.encode(), password), peer, "imap").addBoth(results.append)
        clock.advance(1)
        return results[0]

    first, second = gate(), gate()
    for g in (first, second, first):  # failures 1 to 3, from two processes
        assert attempt(g).check(error.UnauthorizedLogin)
    second._follow()
    assert second.by_address["192.0.2.7"].failures == 3 and second.by_account["alice@example.test"].failures == 3
    failure = attempt(second)  # the fourth, from any process, locks the address out everywhere
    assert failure.check(error.UnauthorizedLogin)
    for g in (first, second, gate()):  # the third: a process started later (a restart)
        assert attempt(g, b"right").check(LoginThrottled)
    assert attempt(first, b"right", peer="192.0.2.8") == "avatar"  # another address is not locked
    # A rewrite by one process (start-up, here) keeps what counts; the others read it again.
    clock.advance(61)
    third = gate()
    assert third.by_address["192.0.2.7"].failures == 4
    assert attempt(first, b"right") == "avatar"  # the lockout is over everywhere
    with open(journal) as f:
        assert all(len(line.split()) in (3, 4, 5) for line in f)
