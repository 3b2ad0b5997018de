"""Sieve extensions, each from its RFC's text and examples: fileinto/mailbox (RFC 5490),
copy (3894), reject/ereject (5429), envelope, encoded-character (5228 2.4.2.4),
imap4flags (5232), variables (5229), relational (5231), subaddress (5233)."""

from __future__ import annotations

import pytest

from support.sieve import sieve_helpers

from mailstack.sieve import Envelope
from mailstack.sieve.actions import FileInto, Keep, Redirect, Reject

ENV = Envelope(sender="coyote@desert.example.org", recipient="ken+mta-filters@example.org")
MSG = (b"From: coyote@desert.example.org\r\n"
       b"To: roadrunner@acme.example.com\r\n"
       b"Subject: I have a present for you\r\n"
       b"\r\n"
       b"Look, I'm sorry about the whole anvil thing.\r\n")


outcome, actions, syntax_error = sieve_helpers(MSG, ENV)


# -- RFC 3894 copy, RFC 5490 mailbox -------------------------------------------------------------

def test_fileinto_copy_keeps_the_implicit_keep():
    assert actions('require ["fileinto", "copy"]; fileinto :copy "A";') == [FileInto("A"), Keep()]


def test_redirect_copy_keeps_the_implicit_keep():
    assert actions('require "copy"; redirect :copy "b@example.com";') == [Redirect("b@example.com"), Keep()]


def test_copy_needs_require():
    assert syntax_error('require "fileinto"; fileinto :copy "A";') == 'tag :copy needs require "copy"'


def test_fileinto_create():
    assert actions('require ["fileinto", "mailbox"]; fileinto :create "New";') == [FileInto("New", create=True)]


def test_create_needs_mailbox():
    assert syntax_error('require "fileinto"; fileinto :create "A";') == 'tag :create needs require "mailbox"'


def test_mailboxexists():
    script = 'require ["fileinto", "mailbox"]; if mailboxexists ["A", "B"] { fileinto "A"; }'
    assert actions(script, mailbox_exists=lambda name: True) == [FileInto("A")]
    assert actions(script, mailbox_exists=lambda name: name == "A") == [Keep()]


def test_fileinto_inbox_and_keep_collapse():  # RFC 5228 2.10.3
    assert actions('require "fileinto"; keep; fileinto "INBOX";') == [Keep()]


# -- RFC 5429 reject / ereject ---------------------------------------------------------------

def test_reject():
    assert actions('require "reject"; reject "no thanks";') == [Reject("no thanks")]


def test_ereject():
    assert actions('require "ereject"; ereject "no thanks";') == [Reject("no thanks", ereject=True)]


@pytest.mark.parametrize("script", [
    'require ["reject"]; keep; reject "x";',
    'require ["reject", "fileinto"]; reject "x"; fileinto "A";',
    'require ["reject", "vacation"]; vacation "away"; reject "x";',
    'require ["reject", "ereject"]; reject "x"; ereject "y";',
])
def test_reject_incompatible_actions_are_run_time_errors(script):
    result = outcome(script)
    assert result.actions == [Keep()]
    assert len(result.errors) == 1 and "RFC 5429 2.4" in result.errors[0]


def test_reject_with_discard_is_fine():
    assert actions('require "reject"; discard; reject "x";') == [Reject("x")]


# -- envelope, RFC 5233 subaddress -------------------------------------------------------------

def test_rfc5233_example():
    script = ('require ["envelope", "subaddress", "fileinto"];\n'
              'if envelope :user "to" "postmaster" { fileinto "inbox.postmaster"; stop; }\n'
              'if envelope :detail :is "to" "mta-filters" { fileinto "inbox.ietf-mta-filters"; stop; }\n')
    assert actions(script) == [FileInto("inbox.ietf-mta-filters")]
    post = Envelope("a@b.example", "postmaster+x@example.org")
    assert actions(script, envelope=post) == [FileInto("inbox.postmaster")]


@pytest.mark.parametrize("recipient, test, expected", [
    ("ken+@example.org", ':detail :is "to" ""', True),  # an empty detail exists
    ("ken@example.org", ':detail :matches "to" "*"', False),  # no separator: no detail
    ("ken@example.org", ':user :is "to" "ken"', True),
    ("ken+a+b@example.org", ':detail :is "to" "a+b"', True),  # the first separator splits
    ("ken+a+b@example.org", ':user :is "to" "ken"', True),
])
def test_subaddress_parts(recipient, test, expected):
    script = f'require ["envelope", "subaddress"]; if envelope {test} {{ discard; }}'
    assert (actions(script, envelope=Envelope("x@y.example", recipient)) == []) is expected


def test_unknown_envelope_part_is_a_syntax_error():
    assert syntax_error('require "envelope"; if envelope "frob" "x" { }') == (
        "unknown envelope part 'frob' (RFC 5228 5.4: from, to)")


def test_null_sender_compares_as_empty():  # RFC 5228 5.4
    script = 'require "envelope"; if envelope :is "from" "" { discard; }'
    assert actions(script, envelope=Envelope("", "me@example.org")) == []
    assert actions(script) == [Keep()]


def test_address_on_a_header_with_several_addresses():
    msg = b"To: A <a@x.example>, \"B, b\" <b@y.example>, undisclosed:;\r\n\r\n"
    assert actions('if address :is :domain "to" "y.example" { discard; }', msg) == []
    assert actions('if address :is "to" "undisclosed" { discard; }', msg) == [Keep()]


def test_address_with_an_encoded_comma_in_the_display_name():
    msg = b"From: =?utf-8?q?Doe=2C_John?= <john@example.com>\r\n\r\n"
    assert actions('if address :count "eq" :comparator "i;ascii-numeric" "from" "1" { discard; }'.replace(
        "if", 'require ["relational", "comparator-i;ascii-numeric"]; if', 1), msg) == []
    assert actions('if address :is "from" "john@example.com" { discard; }', msg) == []


def test_header_values_are_unfolded_and_decoded():
    msg = b"Subject: =?utf-8?q?caf=C3=A9?= =?iso-8859-1?b?6Q==?=\r\n and\r\n\tmore\r\n\r\n"
    assert actions('if header :is "subject" "caf\u00e9\u00e9 and\tmore" { discard; }', msg) == []


# -- RFC 5228 2.4.2.4 encoded-character -------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("$${hex:24 24}", "$$$"),
    ("${hex:40}", "@"),
    ("${hex: 40 }", "@"),
    ("${HEX: 40}", "@"),
    ("${hex:40", "${hex:40"),
    ("${hex:400}", "${hex:400}"),
    ("${hex:4${hex:30}}", "${hex:40}"),
    ("${unicode:40}", "@"),
    ("${ unicode:40}", "${ unicode:40}"),
    ("${UNICODE:40}", "@"),
    ("${UnICoDE:0000040}", "@"),
    ("${Unicode:40}", "@"),
    ("${Unicode:Cool}", "${Unicode:Cool}"),
    ("${hex:e2 98 ba}", "\u263a"),
])
def test_encoded_character_rfc_examples(text, expected):
    script = f'require ["encoded-character", "reject"]; reject "{text}";'
    assert actions(script) == [Reject(expected)]


@pytest.mark.parametrize("text", ["${unicode:200000}", "${Unicode:DF01}"])
def test_encoded_character_invalid_code_points_are_errors(text):
    assert syntax_error(f'require ["encoded-character", "reject"]; reject "{text}";').startswith(
        "invalid unicode character")


def test_without_encoded_character_the_text_stays():
    assert actions('require "reject"; reject "${hex:40}";') == [Reject("${hex:40}")]


# -- RFC 5232 imap4flags ------------------------------------------------------------------------

def test_flags_on_implicit_keep():
    assert actions('require "imap4flags"; addflag "\\\\Seen";') == [Keep(("\\Seen",))]


def test_setflag_addflag_removeflag():
    script = ('require "imap4flags";\n'
              'setflag ["\\\\Seen \\\\Answered", "$Work"];\n'
              'addflag "\\\\Flagged \\\\seen";\n'
              'removeflag "\\\\answered";\n'
              'keep;\n')
    assert actions(script) == [Keep(("\\Seen", "$Work", "\\Flagged"))]


def test_flags_tag_replaces_the_internal_variable():
    script = ('require ["imap4flags", "fileinto"]; addflag "\\\\Seen";\n'
              'fileinto :flags "\\\\Deleted" "Trash"; keep;')
    assert actions(script) == [FileInto("Trash", ("\\Deleted",)), Keep(("\\Seen",))]


def test_rfc5232_example_with_a_variable():
    script = ('require ["imap4flags", "fileinto", "variables"];\n'
              'if header :contains "from" "coyote@desert.example.org" {\n'
              '  setflag "flagvar" "\\\\Flagged";\n'
              '  fileinto :flags "${flagvar}" "INBOX.From Boss";\n'
              '}\n')
    assert actions(script) == [FileInto("INBOX.From Boss", ("\\Flagged",))]


@pytest.mark.parametrize("test, expected", [
    ('hasflag "\\\\Seen"', True),
    ('hasflag :is "\\\\seen"', True),
    ('hasflag :contains "Fun"', True),  # "NonFunny"
    ('hasflag :is "Fun"', False),
    ('hasflag :count "eq" :comparator "i;ascii-numeric" "3"', True),
    ('hasflag "MyVar" "C"', True),
    ('hasflag "MyVar" "\\\\Seen"', False),
])
def test_hasflag(test, expected):
    script = ('require ["imap4flags", "variables", "relational", "comparator-i;ascii-numeric"];\n'
              'setflag "\\\\Seen NonFunny $Junk"; set "MyVar" "A B C";\n'
              f'if {test} {{ discard; }}')
    result = actions(script)
    assert (result == []) is expected


# -- RFC 5229 variables ------------------------------------------------------------------------

def _reject_of(script: str, message: bytes = MSG) -> str:
    (action,) = actions('require ["variables", "reject", "fileinto"];\n' + script, message)
    return action.reason if isinstance(action, Reject) else action.mailbox


def test_rfc5229_section_3_example():
    script = ('set "honorific"  "Mr";\nset "first_name" "Wile";\nset "last_name"  "Coyote";\n'
              'set "vacation" text:\nDear ${HONORIFIC} ${last_name},\n'
              "I'm out, please leave a message after the meep.\n.\n;\n"
              'reject "${vacation}";')
    assert _reject_of(script) == "Dear Mr Coyote,\r\nI'm out, please leave a message after the meep.\r\n"


@pytest.mark.parametrize("text, expected", [
    ("&%${}!", "&%${}!"),
    ("${doh!}", "${doh!}"),
    ("${company}", "ACME"),
    ("${President, ${Company} Inc.}", "${President, ACME Inc.}"),
    ("${unknown}", ""),
])
def test_rfc5229_section_3_expansion_examples(text, expected):
    assert _reject_of(f'set "company" "ACME"; reject "{text}";') == expected


@pytest.mark.parametrize("modifiers, expected", [
    ("", "juMBlEd lETteRS"),
    (":length", "15"),
    (":lower", "jumbled letters"),
    (":upperfirst", "JuMBlEd lETteRS"),
    (":upperfirst :lower", "Jumbled letters"),
    (":lowerfirst :upper", "jUMBLED LETTERS"),
    (":upper :length", "15"),
])
def test_rfc5229_section_4_modifiers(modifiers, expected):
    script = f'set "a" "juMBlEd lETteRS"; set {modifiers} "b" "${{a}}"; reject "${{b}}";'
    assert _reject_of(script) == expected


def test_quotewildcard():
    assert _reject_of('set :quotewildcard "b" "Rock*?\\\\"; reject "${b}";') == "Rock\\*\\?\\\\"


def test_two_modifiers_of_one_precedence_are_an_error():
    assert syntax_error('require "variables"; set :lower :upper "a" "b";') == "tag :upper conflicts with :lower"


@pytest.mark.parametrize("name", ["1", "a-b", "", "a.b"])
def test_invalid_variable_names(name):
    assert syntax_error(f'require "variables"; set "{name}" "x";') == f"invalid variable name {name!r}"


def test_rfc5229_match_variables_examples():
    script = ('if header :matches "List-ID" "*<*@*" { fileinto "INBOX.lists.${2}"; stop; }\n'
              'if header :matches "Subject" "[*] *" { fileinto "INBOX.lists.${1}"; stop; }\n'
              'if address :matches ["To", "Cc"] ["coyote@**.com", "wile@**.com"] {\n'
              '  fileinto "INBOX.business.${2}.${1}.${0}"; stop; }\n')
    lists = b"List-ID: Sieve <sieve.ietf.example.org>\r\n\r\n"
    lists2 = b"List-ID: Sieve <sieve@ietf.example.org>\r\n\r\n"
    subject = b"Subject: [acme-users] [fwd] version 1.0 is out\r\n\r\n"
    to = b"To: coyote@ACME.Example.COM\r\n\r\n"
    assert _reject_of(script, lists2) == "INBOX.lists.sieve"
    assert _reject_of(script, subject) == "INBOX.lists.acme-users"
    assert _reject_of(script, to) == "INBOX.business.ACME.Example..coyote@ACME.Example.COM"
    assert actions('require ["variables", "fileinto"];\n' + script, lists) == [Keep()]


def test_match_variables_survive_a_failed_match():
    script = ('if header :matches "Subject" "I *" { }\n'
              'if header :matches "Subject" "nothing*" { }\n'
              'reject "${1}";')
    assert _reject_of(script) == "have a present for you"


def test_string_test_rfc5229_section_5():
    script = ('set "state" "${state} pending";\n'
              'if string :matches " ${state} " "* pending *" { reject "yes"; }')
    assert _reject_of(script) == "yes"


def test_string_count_ignores_empty_strings():
    script = ('require ["relational", "comparator-i;ascii-numeric"]; if string :count "eq" :comparator "i;ascii-numeric" '
              '["a", "", "b"] "2" { reject "2"; }')
    assert _reject_of(script) == "2"


# -- RFC 5231 relational -------------------------------------------------------------------------

RELATIONAL_MSG = (b"Received: from a.example by b.example; Mon, 1 Jan 2007 00:00:00 +0000\r\n"
                  b"Received: from c.example by a.example; Mon, 1 Jan 2007 00:00:00 +0000\r\n"
                  b"Subject: example\r\n"
                  b"To: foo@example.com, baz@example.com\r\n"
                  b"CC: qux@example.com\r\n"
                  b"\r\n")


@pytest.mark.parametrize("test, expected", [
    ('address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] ["3"]', True),
    ('header :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] ["3"]', False),
    ('header :count "ge" :comparator "i;ascii-numeric" ["received"] ["3"]', False),
    ('header :count "ge" :comparator "i;ascii-numeric" ["received", "subject"] ["3"]', True),
    ('header :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] ["3", "1"]', True),
    ('header :value "gt" "subject" "ex"', True),
    ('header :value "lt" "subject" "EXAMPLE"', False),
    ('header :value "eq" "subject" "EXAMPLE"', True),
    ('header :value "gt" :comparator "i;octet" "subject" "Z"', True),
    ('header :value "lt" :comparator "i;ascii-numeric" "subject" "5"', False),  # not a number: infinity
    ('address :value "ne" :domain "cc" "example.com"', False),
    ('header :value "gt" "subject" "_"', False),  # RFC 4790 9.2: compared upper-cased, "EXAMPLE" < "_"
    ('header :value "lt" :comparator "i;octet" "subject" "_"', False),  # "e" > "_"
])
def test_relational(test, expected):
    script = f'require ["relational", "comparator-i;ascii-numeric"]; if {test} {{ discard; }}'
    assert (actions(script, RELATIONAL_MSG) == []) is expected


def test_relational_needs_a_valid_operator():
    assert syntax_error('require "relational"; if header :value "gq" "a" "b" { }').startswith(":value needs one of")


def test_ascii_numeric_equality():
    msg = b"X-Spam-Score: 007\r\n\r\n"
    script = ('require "comparator-i;ascii-numeric";'
              'if header :is :comparator "i;ascii-numeric" "x-spam-score" "7" { discard; }')
    assert actions(script, msg) == []


def test_ascii_numeric_refuses_substring_matching():
    assert syntax_error('require "comparator-i;ascii-numeric";'
                        'if header :contains :comparator "i;ascii-numeric" "a" "1" { }') == (
        "comparator i;ascii-numeric does not support :contains")
