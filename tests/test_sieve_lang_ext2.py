"""Sieve extensions, from their RFCs' examples: body (RFC 5173), vacation (5230, 6131),
date/index (5260), include (6609), regex (draft-ietf-sieve-regex-01), editheader (5293)."""

from __future__ import annotations

import base64
import calendar

import pytest

from support.sieve import sieve_helpers

from mailstack.sieve import Envelope
from mailstack.sieve.actions import FileInto, Keep, Redirect, Reject, Vacation

ENV = Envelope(sender="coyote@desert.example.org", recipient="roadrunner@acme.example.com")
MSG = (b"Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)\r\n"
       b"From: coyote@desert.example.org\r\n"
       b"To: roadrunner@acme.example.com\r\n"
       b"Subject: I have a present for you\r\n"
       b"\r\n"
       b"Look, I'm sorry about the whole anvil thing.\r\n")


outcome, actions, syntax_error = sieve_helpers(MSG, ENV)


# -- RFC 5173 body -----------------------------------------------------------------------------

MIME = (b"From: a@example.com\r\n"
        b"Subject: parts\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
        b"\r\n"
        b"preamble\r\n"
        b"--b1\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"The missile coordinates are secret. Caf=E9 at noon.\r\n"
        b"--b1\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        + base64.encodebytes("<p>project <b>schedule</b> &uuml;ber</p><style>p {}</style>".encode("utf-8")) +
        b"--b1\r\n"
        b"Content-Type: audio/mp3\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        b"SUQzAwAAAAAA\r\n"
        b"--b1--\r\n")


@pytest.mark.parametrize("test, expected", [
    ('body :raw :contains "MAKE MONEY FAST"', False),
    ('body :raw :contains "Caf=E9"', True),  # :raw: not decoded
    ('body :contains "Caf\u00e9"', True),  # :text is the default, decoded, charset applied
    ('body :content "text" :contains ["missile", "coordinates"]', True),
    ('body :content "audio/mp3" :contains ""', True),
    ('body :content "image" :contains ""', False),
    ('body :text :contains "project schedule"', True),  # RFC 5173's example: the markup is gone
    ('body :text :contains "<b>"', False),
    ('body :text :contains "\u00fcber"', True),
    ('body :content "text/html" :contains "<b>schedule</b>"', True),
    ('body :text :contains "p {}"', False),
    ('body :text :contains "preamble"', False),
    ('body :content "" :contains "SUQz"', False),  # decoded, so the base64 text is gone
])
def test_body(test, expected):
    script = f'require "body"; if {test} {{ discard; }}'
    assert (actions(script, MIME) == []) is expected


def test_body_of_a_plain_message():
    assert actions('require "body"; if body :contains "anvil" { discard; }') == []


def test_body_searches_only_max_body_bytes_of_a_part():
    msg = b"Subject: big\r\n\r\n" + b"x" * 5000 + b"needle\r\n"
    script = 'require "body"; if body :contains "needle" { discard; }'
    assert actions(script, msg, max_body=4096) == [Keep()]
    assert actions(script, msg, max_body=8192) == []


# -- RFC 5230 vacation -------------------------------------------------------------------------

def test_rfc5230_example_if_else():
    script = ('require "vacation";\nif header :contains "subject" "cyrus" {\n'
              '  vacation "I\'m out -- send mail to cyrus-bugs";\n} else {\n'
              '  vacation "I\'m out -- call me at +1 304 555 0123";\n}\n')
    result = actions(script)
    assert result[1] == Keep()
    assert result[0].reason == "I'm out -- call me at +1 304 555 0123"
    assert result[0].seconds == 7 * 86400
    assert result[0].handle.startswith("auto-")


def test_rfc5230_example_subject_from_variable():
    script = ('require ["vacation", "variables"];\nif header :matches "subject" "*" {\n'
              '  vacation :subject "Automatic response to: ${1}" "I\'m away";\n}\n')
    (vacation, keep) = actions(script)
    assert vacation.subject == "Automatic response to: I have a present for you"
    assert vacation.reason == "I'm away"


def test_rfc5230_example_days_and_addresses():
    script = ('require "vacation";\nvacation :days 23 :addresses ["tjs@example.edu",\n'
              '  "ts4z@landru.example.edu"]\n'
              '  "I\'m away until October 19.  If it\'s an emergency, call 911, I guess." ;\n')
    (vacation, keep) = actions(script)
    assert vacation == Vacation(
        reason="I'm away until October 19.  If it's an emergency, call 911, I guess.",
        seconds=23 * 86400, addresses=("tjs@example.edu", "ts4z@landru.example.edu"),
        handle=vacation.handle)


def test_rfc5230_example_redirect_or_vacation():
    script = ('require "vacation";\nif header :contains "from" "boss@example.edu" {\n'
              '  redirect "pleeb@xanadu.example.edu";\n} else {\n'
              '  vacation "Sorry, I\'m away, I\'ll read your message when I get around to it.";\n}\n')
    boss = b"From: boss@example.edu\r\n\r\n"
    assert actions(script, boss) == [Redirect("pleeb@xanadu.example.edu")]
    assert [type(a) for a in actions(script)] == [Vacation, Keep]


def test_rfc5230_handle_and_mime():
    script = ('require "vacation";\nvacation :mime :handle "ran-away" :from "me@example.com" text:\n'
              'Content-Type: text/plain; charset=utf-8\n\nI\'m out.\n.\n;\n')
    (vacation, keep) = actions(script)
    assert (vacation.mime, vacation.handle, vacation.from_addr) == (True, "ran-away", "me@example.com")
    assert vacation.reason == "Content-Type: text/plain; charset=utf-8\r\n\r\nI'm out.\r\n"


def test_vacation_handle_stand_in_depends_on_the_reply():  # RFC 5230 4.2
    def handle(script):
        return actions('require "vacation"; ' + script)[0].handle
    assert handle('vacation "a";') == handle('vacation :days 3 "a";')
    assert handle('vacation "a";') != handle('vacation "b";')
    assert handle('vacation "a";') != handle('vacation :subject "s" "a";')


@pytest.mark.parametrize("args, seconds", [
    (":days 0", 86400), (":days 1", 86400), (":days 30", 30 * 86400), (":days 1000", 90 * 86400),
    (":seconds 0", 0), (":seconds 600", 600), (":seconds 99999999", 90 * 86400),
])
def test_vacation_period_clamped(args, seconds):
    script = f'require ["vacation", "vacation-seconds"]; vacation {args} "away";'
    assert actions(script)[0].seconds == seconds


def test_days_and_seconds_exclude_each_other():
    assert syntax_error('require ["vacation", "vacation-seconds"]; vacation :days 1 :seconds 5 "x";') == (
        "tag :seconds conflicts with :days")


def test_two_vacations_are_a_run_time_error():
    result = outcome('require "vacation"; vacation "a"; vacation "b";')
    assert result.actions == [Keep()] and result.errors == ["only one vacation per run"]


# -- RFC 5260 date, index ------------------------------------------------------------------------

def test_rfc5260_originalzone_example():
    script = ('require ["date", "relational", "fileinto"];\n'
              'if allof(header :is "from" "coyote@desert.example.org",\n'
              '         date :value "ge" :originalzone "date" "hour" "09",\n'
              '         date :value "lt" :originalzone "date" "hour" "17")\n'
              '{ fileinto "urgent"; }\n')
    assert actions(script) == [FileInto("urgent")]
    late = MSG.replace(b"09:06:31", b"18:06:31")
    assert actions(script, late) == [Keep()]


@pytest.mark.parametrize("part, zone, expected", [
    ("year", ":originalzone", "1997"),
    ("month", ":originalzone", "04"),
    ("day", ":originalzone", "01"),
    ("date", ":originalzone", "1997-04-01"),
    ("julian", ":originalzone", "50539"),
    ("hour", ":originalzone", "09"),
    ("minute", ":originalzone", "06"),
    ("second", ":originalzone", "31"),
    ("time", ":originalzone", "09:06:31"),
    ("iso8601", ":originalzone", "1997-04-01T09:06:31-08:00"),
    ("std11", ":originalzone", "Tue, 01 Apr 1997 09:06:31 -0800"),
    ("zone", ":originalzone", "-0800"),
    ("weekday", ":originalzone", "2"),
    ("hour", ':zone "+0000"', "17"),
    ("zone", ':zone "+0530"', "+0530"),
    ("time", ':zone "+0530"', "22:36:31"),
    ("date", ':zone "+1000"', "1997-04-02"),
])
def test_date_parts(part, zone, expected):
    script = (f'require ["date", "variables", "reject"];\n'
              f'if date {zone} :matches "date" "{part}" "*" {{ reject "${{0}}"; }}')
    assert actions(script) == [Reject(expected)]


def test_currentdate_rfc5260_examples():
    now = calendar.timegm((2007, 7, 3, 12, 0, 0))
    script = ('require ["date", "relational", "vacation"];\n'
              'if allof(currentdate :zone "+0000" :value "ge" "date" "2007-06-30",\n'
              '         currentdate :zone "+0000" :value "le" "date" "2007-07-07")\n'
              '{ vacation :days 7  "I\'m away during the first week in July."; }\n')
    assert [type(a) for a in actions(script, now=now)] == [Vacation, Keep]
    assert actions(script, now=now + 30 * 86400) == [Keep()]
    script = ('require ["date", "variables", "fileinto"];\n'
              'if currentdate :zone "+0000" :matches "month" "*" { set "month" "${1}"; }\n'
              'if currentdate :zone "+0000" :matches "year"  "*" { set "year" "${1}"; }\n'
              'fileinto "${month}-${year}";\n')
    assert actions(script, now=now) == [FileInto("07-2007")]


def test_date_of_received_uses_the_part_after_the_semicolon():
    msg = b"Received: from a by b; Wed, 2 Apr 1997 10:00:00 +0000\r\n\r\n"
    script = 'require ["date"]; if date :zone "+0000" :is "received" "date" "1997-04-02" { discard; }'
    assert actions(script, msg) == []


def test_date_on_an_unparsable_header_is_false():
    msg = b"Date: not a date\r\n\r\n"
    assert actions('require "date"; if date :matches "date" "year" "*" { discard; }', msg) == [Keep()]


def test_bad_date_part_and_zone_are_syntax_errors():
    assert syntax_error('require "date"; if date "date" "fortnight" "1" { }') == "unknown date part 'fortnight'"
    assert syntax_error('require "date"; if date :zone "0100" "date" "hour" "1" { }').startswith("bad time zone")


def test_index():
    msg = (b"Received: from first.example by x; Mon, 1 Jan 2007 00:00:00 +0000\r\n"
           b"Received: from second.example by x; Mon, 1 Jan 2007 00:00:00 +0000\r\n"
           b"Received: from third.example by x; Mon, 1 Jan 2007 00:00:00 +0000\r\n\r\n")
    def hit(test):
        return actions(f'require ["index"]; if {test} {{ discard; }}', msg) == []
    assert hit('header :index 2 :contains "received" "second"')
    assert not hit('header :index 1 :contains "received" "second"')
    assert hit('header :index 1 :last :contains "received" "third"')
    assert not hit('header :index 4 :contains "received" ""')
    assert syntax_error('require "index"; if header :last :is "a" "b" { }') == ":last needs :index (RFC 5260 6)"


# -- RFC 6609 include ----------------------------------------------------------------------------

SCRIPTS = {
    ("personal", "always_allow"): 'if address :is "from" "boss@example.com" { keep; stop; }',
    ("global", "spam_tests"): ('require ["reject"];\n'
                               'if header :contains "Subject" "XXXX" { reject "Subject XXXX is unacceptable."; }'),
    ("personal", "spam_tests"): ('require ["fileinto"];\n'
                                 'if header :contains "Subject" "$$$" { fileinto "Junk"; }'),
    ("personal", "mailing_lists"): ('require ["fileinto"];\n'
                                    'if exists "List-Id" { fileinto "Lists"; }'),
    ("personal", "loop_a"): 'require "include"; include "loop_b";',
    ("personal", "loop_b"): 'require "include"; include "loop_a";',
    ("personal", "broken"): "frob;",
    ("personal", "returns"): 'require ["include", "fileinto"]; fileinto "A"; return; fileinto "B";',
}


def loader(name, location):
    return SCRIPTS.get((location, name))


RFC6609 = ('require ["include"];\n'
           'include :personal "always_allow";\n'
           'include :global "spam_tests";\n'
           'include :personal "spam_tests";\n'
           'include :personal "mailing_lists";\n')


def test_rfc6609_example():
    assert actions(RFC6609, b"From: boss@example.com\r\nSubject: XXXX\r\n\r\n", loader=loader) == [Keep()]
    assert actions(RFC6609, b"From: x@example.com\r\nSubject: XXXX\r\n\r\n", loader=loader) == [
        Reject("Subject XXXX is unacceptable.")]
    assert actions(RFC6609, b"Subject: win $$$\r\nList-Id: <l.example>\r\n\r\n", loader=loader) == [
        FileInto("Junk"), FileInto("Lists")]


def test_rfc6609_global_variables():
    scripts = {("personal", "sub"): ('require ["variables", "include", "fileinto"];\n'
                                     'global "test";\nfileinto "got-${test}";\nset "test" "changed";\n'
                                     'set "local" "x";')}
    script = ('require ["variables", "include", "fileinto"];\nglobal "test";\nset "test" "value";\n'
              'set "local" "mine";\ninclude "sub";\nfileinto "${test}-${local}-${global.test}";\n')
    assert actions(script, loader=lambda n, l: scripts.get((l, n))) == [
        FileInto("got-value"), FileInto("changed-mine-changed")]


def test_include_once_and_optional():
    script = ('require ["include"];\ninclude :once "mailing_lists";\ninclude :once "mailing_lists";\n'
              'include :optional "missing";\n')
    assert actions(script, b"List-Id: x\r\n\r\n", loader=loader) == [FileInto("Lists")]


def test_include_missing_is_a_run_time_error():
    result = outcome('require "include"; include "missing";', loader=loader)
    assert result.actions == [Keep()]
    assert result.errors == ["included personal script 'missing' does not exist"]


def test_include_loop_is_a_run_time_error():
    result = outcome('require "include"; include "loop_a";', loader=loader)
    assert result.actions == [Keep()]
    assert result.errors == ["include loop: personal script 'loop_a' includes itself"]


def test_include_of_a_broken_script_is_a_run_time_error():
    result = outcome('require "include"; include "broken";', loader=loader)
    assert result.errors == ["included personal script 'broken': line 1, column 1: unknown command 'frob'"]


def test_return_ends_only_the_included_script():
    script = 'require ["include", "fileinto"]; include "returns"; fileinto "C";'
    assert actions(script, loader=loader) == [FileInto("A"), FileInto("C")]


def test_include_name_may_not_hold_a_slash():
    assert syntax_error('require "include"; include "../x";') == "invalid script name '../x' (RFC 6609 3.2)"


# -- regex ---------------------------------------------------------------------------------------

def test_regex_match_variables():
    script = ('require ["regex", "variables", "fileinto"];\n'
              'if header :regex "subject" "^I (have|had) a ([a-z]+)" { fileinto "${1}-${2}"; }')
    assert actions(script) == [FileInto("have-present")]


def test_regex_is_case_insensitive_under_ascii_casemap():
    script = 'require "regex"; if header :regex "subject" "PRESENT" { discard; }'
    assert actions(script) == []
    octet = 'require "regex"; if header :regex :comparator "i;octet" "subject" "PRESENT" { discard; }'
    assert actions(octet) == [Keep()]


def test_invalid_regex_is_a_syntax_error():
    assert syntax_error('require "regex"; if header :regex "subject" "(" { }').startswith("invalid regex '('")


def test_quoteregex():
    script = ('require ["regex", "variables", "reject"]; set :quoteregex "a" "a.b*c"; reject "${a}";')
    assert actions(script) == [Reject("a\\.b\\*c")]


# -- RFC 5293 editheader ---------------------------------------------------------------------------

def test_addheader_first_and_last():
    result = outcome('require "editheader"; addheader "X-Source" "list@example.com";'
                     ' addheader :last "X-Sieve-Filtered" "<kim@job.example.com>";')
    assert result.actions == [Keep()]
    assert result.header == (b"X-Source: list@example.com\r\n" + MSG.split(b"\r\n\r\n")[0] + b"\r\n"
                             b"X-Sieve-Filtered: <kim@job.example.com>\r\n")


def test_tests_see_added_headers():
    script = ('require ["editheader", "fileinto"]; addheader "X-Hello" "World";'
              ' if header :is "x-hello" "World" { fileinto "Seen"; }')
    assert actions(script) == [FileInto("Seen")]


def test_deleteheader_forms():
    msg = (b"X-A: one\r\nX-A: two\r\nX-A: three\r\nSubject: s\r\n\r\nbody\r\n")
    def header(script):
        return outcome('require "editheader"; ' + script, msg).header
    assert header('deleteheader "x-a";') == b"Subject: s\r\n"
    assert header('deleteheader :index 2 "X-A";') == b"X-A: one\r\nX-A: three\r\nSubject: s\r\n"
    assert header('deleteheader :index 1 :last "X-A";') == b"X-A: one\r\nX-A: two\r\nSubject: s\r\n"
    assert header('deleteheader :matches "X-A" "t*";') == b"X-A: one\r\nSubject: s\r\n"
    assert header('deleteheader :contains "X-A" ["ne", "hr"];') == b"X-A: two\r\nSubject: s\r\n"
    assert header('deleteheader "X-None";') is None  # nothing deleted: the header is unchanged


def test_protected_fields_are_left_alone():
    msg = b"Received: from a by b\r\nAuto-Submitted: auto-replied\r\n\r\n"
    result = outcome('require "editheader"; deleteheader "Received"; deleteheader "auto-submitted";'
                     ' addheader "Received" "forged";', msg)
    assert result.header is None and result.actions == [Keep()]


def test_addheader_encodes_non_ascii():
    result = outcome('require "editheader"; addheader "X-Note" "caf\u00e9";', b"Subject: s\r\n\r\n")
    assert result.header == b"X-Note: =?utf-8?b?Y2Fmw6k=?=\r\nSubject: s\r\n"


def test_addheader_cannot_inject_a_field_or_end_the_header():
    script = ('require ["editheader", "variables"]; set "v" "a\r\nBcc: evil@example.com\r\n\r\nbody";'
              ' addheader "X-A" "${v}"; if header :is "X-A" "a Bcc: evil@example.com body" { addheader "X-Ok" "1"; }')
    result = outcome(script, b"Subject: s\r\n\r\n")
    assert result.header == b"X-Ok: 1\r\nX-A: a\r\n Bcc: evil@example.com\r\n body\r\nSubject: s\r\n"


def test_edited_header_of_an_lf_message_is_crlf():
    result = outcome('require "editheader"; addheader "X-A" "1";', b"Subject: a\n b\nTo: c@d.example\n\nbody\n")
    assert result.header == b"X-A: 1\r\nSubject: a\r\n b\r\nTo: c@d.example\r\n"


def test_editheader_argument_errors():
    assert syntax_error('require "editheader"; addheader "Bad Name" "x";') == "invalid header field name 'Bad Name'"
    assert syntax_error('require "editheader"; deleteheader :last "X";') == ":last needs :index in deleteheader (RFC 5293 5)"


@pytest.mark.parametrize("message, key", [
    ("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\u00e9\r\n".encode(),
     "caf\u00e9"),
    ("Content-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\u00e9\r\n".encode("latin-1"), "caf\u00e9"),
    (b"Content-Type: text/plain; charset=koi8-r\r\nContent-Transfer-Encoding: base64\r\n\r\n1MXT1A==\r\n",
     "\u0442\u0435\u0441\u0442"),
    (b"Content-Type: text/plain; charset=no-such-charset\r\n\r\ncaf\xc3\xa9\r\n", "caf\u00e9"),  # UTF-8 then
])
def test_body_charsets(message, key):
    assert actions(f'require "body"; if body :contains "{key}" {{ discard; }}', message) == []
