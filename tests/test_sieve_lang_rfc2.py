"""More findings of the RFC review of the Sieve interpreter (see test_sieve_lang_rfc.py):
each test quotes the section it checks."""

from __future__ import annotations

from mailstack.sieve import Envelope, compile_script, run
from mailstack.sieve.actions import FileInto, Keep

ENV = Envelope(sender="coyote@desert.example.org", recipient="roadrunner@acme.example.com")


def actions(script: str, message: bytes):
    result = run(compile_script(script), message, ENV)
    assert not result.errors, result.errors
    return result.actions


# -- RFC 5228 2.7.1: "?" is one octet under i;octet and i;ascii-casemap --------------------------------------
# "the comparators "i;octet" and "i;ascii-casemap" define a character to be a single octet, so
# "?" will always match exactly one octet when one of those comparators is in use."

CAFE = "Subject: caf\u00e9 \u00e0 la carte\r\n\r\nx\r\n".encode("utf-8")  # e-acute, a-grave: 2 octets each


def _matches(key: str, comparator: str = "i;ascii-casemap") -> bool:
    script = (f'require ["fileinto", "variables"]; if header :matches :comparator "{comparator}"'
              f' "Subject" "{key}" {{ fileinto "hit"; }}')
    return actions(script, CAFE) == [FileInto("hit")]


def test_question_mark_is_one_octet():
    for comparator in ("i;ascii-casemap", "i;octet"):
        assert not _matches("caf? * la carte", comparator)
        assert _matches("caf?? ?? la carte", comparator)
        assert _matches("CAF?? * LA CARTE") if comparator == "i;ascii-casemap" else True


def test_match_variables_still_hold_whole_characters():
    script = ('require ["fileinto", "variables"]; if header :matches "Subject" "caf* * la *"'
              ' { fileinto "${1}|${2}|${3}"; }')
    assert actions(script, CAFE) == [FileInto("\u00e9|\u00e0|carte")]


# -- RFC 5228 5.4: envelope tests drop source routes ---------------------------------------------------------
# "All tests against envelopes MUST drop source routes."

def test_envelope_drops_source_routes():
    env = Envelope(sender="@relay1.example,@relay2.example:coyote@desert.example.org",
                   recipient="@mx.example:roadrunner@acme.example.com")
    script = ('require ["envelope", "fileinto"];'
              ' if allof (envelope :all :is "from" "coyote@desert.example.org",'
              ' envelope :localpart :is "to" "roadrunner",'
              ' envelope :domain :is "to" "acme.example.com") { fileinto "hit"; }')
    result = run(compile_script(script), b"Subject: x\r\n\r\nx\r\n", env)
    assert result.actions == [FileInto("hit")] and not result.errors


# -- RFC 5260 4: a date at the end after a semicolon, in any field ------------------------------------------
# "Implementations MUST support extraction of RFC 2822 date-time information that either makes
# up the entire header field (e.g., as it does in a standard Date: header field) or appears at
# the end of a header field following a semicolon (e.g., as it does in a standard Received:
# header field)."

def test_date_after_a_semicolon_in_any_field():
    msg = b"X-Delivered: by mx.example; Tue, 1 Apr 1997 09:06:31 -0800\r\n\r\nx\r\n"
    script = ('require ["date", "fileinto"];'
              ' if date :originalzone "x-delivered" "date" "1997-04-01" { fileinto "hit"; }')
    assert actions(script, msg) == [FileInto("hit")]


# -- RFC 6131 2: "vacation-seconds" implies "vacation" ------------------------------------------------------
# 'Note that "vacation-seconds" implies "vacation", and a script with "vacation-seconds" in a
# "require" list can omit "vacation" from that list.'

def test_vacation_seconds_implies_vacation():
    (vacation, keep) = actions('require "vacation-seconds"; vacation :seconds 1800 "away";', b"Subject: x\r\n\r\nx\r\n")
    assert vacation.seconds == 1800 and keep == Keep()


# -- RFC 5232 3: a variable name without "variables" ------------------------------------------------------
# "If the SIEVE interpreter doesn't support the "variables" extension [VARIABLES], the presence
# of the variable name parameter will cause a runtime error"; and RFC 5228 2.10.5: an extension
# not enabled with require is treated as not supported at all.

def test_flag_commands_with_a_variable_name_need_variables():
    import pytest

    from mailstack.sieve import SieveSyntaxError
    for script in ('require "imap4flags"; setflag "v" "A";', 'require "imap4flags"; addflag "v" "A";',
                   'require "imap4flags"; removeflag "v" "A";', 'require "imap4flags"; if hasflag "v" "A" { }'):
        with pytest.raises(SieveSyntaxError) as info:
            compile_script(script)
        assert '"variables"' in info.value.message
    compile_script('require ["imap4flags", "variables"]; setflag "v" "A"; if hasflag "v" "A" { }')


# -- RFC 6609 3.2: :once counts every earlier inclusion ---------------------------------------------------
# 'The ":once" parameter tells the interpreter only to include the named script if it has not
# already been included at any other point during script execution.'

def test_include_once_after_a_plain_include_is_skipped():
    scripts = {("personal", "flag"): 'require ["imap4flags"]; addflag "seen-by-flag";'}
    main = 'require ["include", "imap4flags"]; include "flag"; removeflag "seen-by-flag"; include :once "flag";'
    result = run(compile_script(main, "main"), b"Subject: x\r\n\r\nx\r\n", ENV,
                 loader=lambda name, location: scripts.get((location, name)))
    assert not result.errors and result.actions == [Keep()]


# -- regex draft 3: "." and the anchors work on lines ------------------------------------------------------
# '"."  Match any single character except newline.'  '"^"  Match the beginning of the line or
# string.'  '"$"  Match the end of the line or string.'

BODY = b"Subject: x\r\n\r\nfirst line, about the anvil\r\nLook, second line\r\n"


def _body_regex(pattern: str) -> bool:
    script = f'require ["body", "regex", "fileinto"]; if body :raw :regex "{pattern}" {{ fileinto "hit"; }}'
    return actions(script, BODY) == [FileInto("hit")]


def test_regex_dot_does_not_cross_a_line_end():
    assert not _body_regex("anvil..Look")
    assert not _body_regex("anvil.*Look")
    assert _body_regex("anvil[[:space:]]+Look")


def test_regex_anchors_match_at_line_ends():
    assert _body_regex("^Look")
    assert _body_regex("anvil$")
    assert _body_regex("^first")
    assert not _body_regex("^second")
