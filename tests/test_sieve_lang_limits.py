"""Hostile scripts and messages end in a clear error within a bounded time, and an
ordinary 20-rule script stays cheap (issue 19: the MX accept rate with Sieve active)."""

from __future__ import annotations

import time

import pytest

from mailstack.sieve import Envelope, SieveSyntaxError, compile_script, run
from mailstack.sieve.actions import Keep

ENV = Envelope(sender="a@example.org", recipient="b@example.net")


def syntax_error(script: str) -> SieveSyntaxError:
    with pytest.raises(SieveSyntaxError) as info:
        compile_script(script)
    return info.value


def test_deep_block_nesting_is_refused():
    e = syntax_error("if true {" * 1000 + "}" * 1000)
    assert (e.line, e.column, e.message) == (1, 3 + 9 * 32 + 1, "nesting deeper than 32 levels")  # 33rd "true"


def test_deep_test_nesting_is_refused():
    e = syntax_error("if " + "not " * 5000 + "true { }")
    assert e.message == "nesting deeper than 32 levels"


def test_deep_test_list_nesting_is_refused():
    e = syntax_error("if " + "anyof(" * 5000 + "true" + ")" * 5000 + " { }")
    assert e.message == "nesting deeper than 32 levels"


def test_huge_string_literal_is_refused():
    e = syntax_error('require "reject"; reject "' + "x" * 300_000 + '";')
    assert (e.line, e.column, e.message) == (1, 26, "string longer than 262144 bytes")


def test_huge_multiline_literal_is_refused():
    e = syntax_error('require "reject"; reject text:\n' + "x" * 100 + "\n" * 3000 + ("y" * 100 + "\n") * 3000 + ".\n;")
    assert e.message == "string longer than 262144 bytes"


def test_huge_script_is_refused():
    assert syntax_error("#" * (2 << 20)).message == "script larger than 1048576 bytes"


def test_long_string_list_is_refused():
    e = syntax_error('if header :is "a" [' + ",".join(['"x"'] * 2000) + '] { }')
    assert e.message == "string list longer than 1024"


def _timed(script: str, message: bytes, **kw):
    start = time.monotonic()
    outcome = run(compile_script(script), message, ENV, **kw)
    return outcome, time.monotonic() - start


def test_catastrophic_regex_ends_in_an_error():
    msg = b"Subject: " + b"a" * 40 + b"x" * 40 + b"!\r\n\r\n"
    script = 'require "regex"; if header :regex "subject" "(a|aa)+$" { discard; }'
    outcome, took = _timed(script, msg, deadline=time.monotonic() + 0.1)
    assert outcome.actions == [Keep()]
    assert outcome.errors and ("took too long" in outcome.errors[0] or "time limit" in outcome.errors[0])
    assert took < 2.0


def test_catastrophic_wildcard_ends_in_an_error():
    msg = b"Subject: " + b"a" * 3000 + b"\r\n\r\n"
    script = 'if header :matches "subject" "*a*a*a*a*a*a*a*a*a*a*a*b" { discard; }'
    outcome, took = _timed(script, msg, deadline=time.monotonic() + 0.1)
    assert outcome.actions == [Keep()] and outcome.errors
    assert took < 2.0


def test_deadline_passed_keeps_with_an_error():
    script = 'if header :contains "subject" "x" { discard; }'
    outcome, _ = _timed(script, b"Subject: x\r\n\r\n", deadline=time.monotonic() - 1)
    assert outcome.actions == [Keep()]
    assert outcome.errors == ["the script ran past its time limit"]


def test_body_of_a_large_message_respects_the_deadline():
    msg = b"Content-Type: text/plain\r\n\r\n" + b"line of text\r\n" * 400_000  # ~5.6 MB
    script = 'require "body"; if body :contains "needle" { discard; }'
    outcome, took = _timed(script, msg, deadline=time.monotonic() + 0.05)
    assert outcome.actions == [Keep()] and outcome.errors == ["the script ran past its time limit"]
    assert took < 1.0


def test_too_many_redirects():
    script = "".join(f'redirect "user{i}@example.com";' for i in range(33))
    outcome = run(compile_script(script), b"\r\n", ENV)
    assert outcome.actions == [Keep()] and outcome.errors == ["more than 32 redirects"]


def test_huge_variable_values_are_truncated():
    script = ('require ["variables", "reject"]; set "a" "' + "x" * 60000 + '";'
              'set "b" "${a}${a}${a}"; set :length "n" "${b}"; reject "${n}";')
    assert run(compile_script(script), b"\r\n", ENV).actions[0].reason == str(64 * 1024)


def test_a_message_without_a_header_or_body_is_fine():
    script = compile_script('require "body"; if anyof(header :contains "a" "b", body :contains "x", '
                            'address :is "from" "x") { discard; }')
    for msg in (b"", b"\r\n", b"no header at all", b"Subject: x", b"\x00\xff\xfe: \x80\r\n\r\n\xff"):
        outcome = run(script, msg, ENV)
        assert outcome.actions == [Keep()] and not outcome.errors, msg


def test_twenty_rules_on_a_4k_message_cost_well_under_a_millisecond():
    rules = []
    for i in range(20):
        if i % 2:
            rules.append(f'if header :contains "Subject" "topic{i}" {{ addflag "\\\\Flagged"; fileinto "F{i}"; }}')
        else:
            rules.append(f'if address :is "from" "user{i}@example.com" {{ addflag "$L{i}"; fileinto "F{i}"; }}')
    script = compile_script('require ["fileinto", "imap4flags"];\n' + "\n".join(rules))
    head = b"".join(b"Received: from h%d.example by mx.example; Mon, 1 Jan 2007 00:00:00 +0000\r\n" % i
                    for i in range(12))
    head += (b"From: Someone <someone@example.org>\r\nTo: me@example.net\r\nSubject: hello there\r\n"
             b"Message-ID: <x@y.example>\r\nDate: Mon, 1 Jan 2007 00:00:00 +0000\r\n")
    msg = head + b"\r\n" + b"body line of text here\r\n" * ((4096 - len(head)) // 24)
    assert 4000 < len(msg) <= 4096
    runs = 300
    start = time.perf_counter()
    for _ in range(runs):
        outcome = run(script, msg, ENV)
    per_run = (time.perf_counter() - start) / runs
    assert outcome.actions == [Keep()]
    assert per_run < 0.001, f"{per_run * 1e6:.0f} us per run"


def test_header_tests_on_a_large_message_do_not_walk_its_body():
    msg = b"Subject: big\r\nFrom: a@example.org\r\n\r\n" + b"x" * (30 << 20)
    script = compile_script('if allof(header :is "subject" "big", address :is "from" "a@example.org",'
                            ' size :over 20M) { discard; }')
    start = time.perf_counter()
    outcome = run(script, msg, ENV)
    assert outcome.actions == [] and not outcome.errors
    assert time.perf_counter() - start < 0.1


def test_a_string_full_of_escapes_is_read_in_linear_time():
    start = time.perf_counter()
    script = compile_script('require "reject"; reject "' + "\\a" * 120_000 + '";')
    assert time.perf_counter() - start < 1.0
    assert run(script, b"\r\n", ENV).actions[0].reason == "a" * 120_000
