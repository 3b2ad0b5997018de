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
