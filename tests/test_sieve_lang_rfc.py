"""Findings of the RFC review of the Sieve interpreter: each test quotes the section it
checks; expected outcomes come from the RFC text, not from the implementation."""

from __future__ import annotations

import pytest

from mailstack.sieve import Envelope, SieveSyntaxError, compile_script, run
from mailstack.sieve.actions import FileInto, Keep, Redirect, Reject

ENV = Envelope(sender="coyote@desert.example.org", recipient="roadrunner@acme.example.com")
MSG = (b"From: coyote@desert.example.org\r\n"
       b"To: roadrunner@acme.example.com\r\n"
       b"Subject: I have a present for you\r\n"
       b"\r\n"
       b"Look, I'm sorry about the whole anvil thing.\r\n")


def outcome(script: str, message: bytes = MSG, envelope: Envelope = ENV):
    return run(compile_script(script), message, envelope)


def actions(script: str, message: bytes = MSG, envelope: Envelope = ENV):
    result = outcome(script, message, envelope)
    assert not result.errors, result.errors
    return result.actions


# -- RFC 5429 2.4: reject and actions that cause mail delivery ---------------------------------
# "It is NOT RECOMMENDED that implementations permit the use of "reject" with actions that
# cause mail delivery, such as "keep", "fileinto", and "redirect"."  keep and fileinto were
# refused already; redirect must be refused the same way (the run fails: implicit keep).

def test_reject_after_redirect_is_an_error():
    result = outcome('require "reject"; redirect "x@example.com"; reject "no";')
    assert result.errors and result.actions == [Keep()]


def test_redirect_after_reject_is_an_error():
    result = outcome('require "reject"; reject "no"; redirect "x@example.com";')
    assert result.errors and result.actions == [Keep()]


def test_ereject_with_redirect_copy_is_an_error():
    result = outcome('require ["ereject", "copy"]; redirect :copy "x@example.com"; ereject "no";')
    assert result.errors and result.actions == [Keep()]


def test_reject_alone_still_works():
    assert actions('require "reject"; reject "no";') == [Reject("no")]


# -- RFC 5173 6: body wildcards set no match variables -----------------------------------------
# "Wildcard expressions used with "body" are exempt from the side effects described in
# [VARIABLES].  That is, they MUST NOT set match variables (${1}, ${2}...)"

def test_body_matches_sets_no_match_variables():
    script = ('require ["body", "variables", "fileinto"];\r\n'
              'if header :matches "Subject" "I have *" { }\r\n'
              'if body :matches "Look, * about *" { fileinto "${1}"; }\r\n')
    assert actions(script) == [FileInto("a present for you")]


def test_body_regex_sets_no_match_variables():
    script = ('require ["body", "variables", "fileinto", "regex"];\r\n'
              'if body :regex "(anvil)" { fileinto "x${1}"; }\r\n')
    assert actions(script) == [FileInto("x")]


# -- RFC 5173 4: a message without a body --------------------------------------------------------
# "If a message consists of a header only, not followed by an empty line, then that set is
# empty and all "body" tests return false, including those that test for an empty string."

HEADER_ONLY = b"From: coyote@desert.example.org\r\nSubject: nothing else\r\n"


def test_header_only_message_fails_every_body_test():
    for transform in (":raw", ":text", ':content "text"', ':content ""'):
        script = f'require ["body", "fileinto"]; if body {transform} :is "" {{ fileinto "empty"; }}'
        assert actions(script, HEADER_ONLY) == [Keep()], transform
        script = f'require ["body", "fileinto"]; if body {transform} :matches "*" {{ fileinto "any"; }}'
        assert actions(script, HEADER_ONLY) == [Keep()], transform


def test_empty_body_after_the_empty_line_is_the_empty_string():
    script = 'require ["body", "fileinto"]; if body :raw :is "" { fileinto "empty"; }'
    assert actions(script, HEADER_ONLY + b"\r\n") == [FileInto("empty")]


# -- RFC 5230 4.2: response tracking uses the arguments before variable expansion ---------------
# "the arguments MUST NOT have undergone variable expansion prior to their use in response
# tracking.  This is so that examples like the following script will only generate a single
# response to each incoming message with a different subject line."

VACATION_5230_4_2 = ('require ["vacation", "variables"];\r\n'
                     'if header :matches "subject" "*" {\r\n'
                     '    vacation :subject "Automatic response to: ${1}"\r\n'
                     '             "I\'m away -- send mail to foo in my absence";\r\n'
                     '}\r\n')


def _vacation(script: str, message: bytes):
    (vacation,) = [a for a in actions(script, message) if not isinstance(a, Keep)]
    return vacation


def test_vacation_handle_is_built_before_variable_expansion():
    one = _vacation(VACATION_5230_4_2, b"From: coyote@desert.example.org\r\nSubject: Cyrus bug\r\n\r\nx\r\n")
    two = _vacation(VACATION_5230_4_2, b"From: coyote@desert.example.org\r\nSubject: dinner\r\n\r\nx\r\n")
    assert one.subject == "Automatic response to: Cyrus bug"
    assert two.subject == "Automatic response to: dinner"
    assert one.handle == two.handle


def test_vacation_different_reasons_are_different_responses():  # 4.2's "REQUIRED" example
    script = ('require "vacation";\r\n'
              'if header :contains "subject" "cyrus" {\r\n'
              '    vacation "I\'m out -- send mail to cyrus-bugs";\r\n'
              '} else {\r\n'
              '    vacation "I\'m out -- call me at +1 304 555 0123";\r\n'
              '}\r\n')
    one = _vacation(script, b"From: coyote@desert.example.org\r\nSubject: Cyrus bug\r\n\r\nx\r\n")
    two = _vacation(script, b"From: coyote@desert.example.org\r\nSubject: come over for dinner\r\n\r\nx\r\n")
    assert one.handle != two.handle


# -- RFC 5228 5.4: the null reverse-path -----------------------------------------------------------
# "The null reverse-path is matched against as the empty string, regardless of the
# ADDRESS-PART argument specified."

NULL_SENDER = Envelope(sender="", recipient="roadrunner@acme.example.com")


def test_null_reverse_path_is_empty_for_every_address_part():
    for part in (":all", ":localpart", ":domain", ":user", ":detail"):
        script = (f'require ["envelope", "subaddress", "fileinto"];'
                  f' if envelope {part} "from" "" {{ fileinto "bounce"; }}')
        assert actions(script, envelope=NULL_SENDER) == [FileInto("bounce")], part


# -- RFC 5228 5.1: address only on headers that contain addresses ------------------------------------
# "Implementations MUST restrict the address test to headers that contain addresses, but MUST
# include at least From, To, Cc, Bcc, Sender, Resent-From, and Resent-To"

ADDRESSY = (b"From: coyote@desert.example.org\r\nTo: a@example.com\r\nCc: b@example.com\r\n"
            b"Bcc: c@example.com\r\nSender: d@example.com\r\nResent-From: e@example.com\r\n"
            b"Resent-To: f@example.com\r\nSubject: g@example.com\r\nX-Note: h@example.com\r\n\r\nx\r\n")


def test_address_works_on_the_headers_5_1_requires():
    for name, addr in (("From", "coyote@desert.example.org"), ("To", "a@example.com"), ("Cc", "b@example.com"),
                       ("Bcc", "c@example.com"), ("Sender", "d@example.com"),
                       ("Resent-From", "e@example.com"), ("Resent-To", "f@example.com")):
        script = f'require "fileinto"; if address :is "{name}" "{addr}" {{ fileinto "hit"; }}'
        assert actions(script, ADDRESSY) == [FileInto("hit")], name


def test_address_on_a_header_without_addresses_never_matches():
    for name, addr in (("Subject", "g@example.com"), ("X-Note", "h@example.com")):
        script = f'require "fileinto"; if address :is "{name}" "{addr}" {{ fileinto "hit"; }}'
        assert actions(script, ADDRESSY) == [Keep()], name
        script = f'require "fileinto"; if address :is :domain "{name}" "example.com" {{ fileinto "hit"; }}'
        assert actions(script, ADDRESSY) == [Keep()], name


def test_address_on_other_address_list_headers():  # "SHOULD include any other ... address-list"
    msg = b"Reply-To: r@example.com\r\nResent-Cc: s@example.com\r\nDelivered-To: t@example.com\r\n\r\nx\r\n"
    script = ('require "fileinto"; if allof (address :is "reply-to" "r@example.com",'
              ' address :is "resent-cc" "s@example.com", address :is "delivered-to" "t@example.com")'
              ' { fileinto "hit"; }')
    assert actions(script, msg) == [FileInto("hit")]


# -- RFC 5260 4: date uses the first field only (without :index) --------------------------------------
# "If multiple header fields with the same name are present, only the first field that is
# found is used."  and "The count of a date test is 1 if the specified field exists and
# contains a valid date; 0, otherwise."

TWO_RECEIVED = (b"Received: from a by b; Tue, 1 Apr 1997 09:06:31 -0800\r\n"
                b"Received: from c by d; Mon, 31 Mar 1997 18:00:00 -0800\r\n"
                b"Subject: x\r\n\r\nx\r\n")


def test_date_looks_at_the_first_field_only():
    base = 'require ["date", "fileinto"]; if date :originalzone "received" "date" "1997-03-31" { fileinto "hit"; }'
    assert actions(base, TWO_RECEIVED) == [Keep()]
    first = 'require ["date", "fileinto"]; if date :originalzone "received" "date" "1997-04-01" { fileinto "hit"; }'
    assert actions(first, TWO_RECEIVED) == [FileInto("hit")]


def test_date_count_is_one_with_several_fields():
    script = ('require ["date", "relational", "fileinto", "comparator-i;ascii-numeric"];'
              ' if date :count "eq" :comparator "i;ascii-numeric" "received" "year" "1" { fileinto "one"; }')
    assert actions(script, TWO_RECEIVED) == [FileInto("one")]


def test_date_with_index_still_reaches_the_second_field():  # 6: "can be modified with index"
    script = ('require ["date", "index", "fileinto"]; if date :index 2 :originalzone "received" "date"'
              ' "1997-03-31" { fileinto "hit"; }')
    assert actions(script, TWO_RECEIVED) == [FileInto("hit")]


# -- RFC 5260 4.2: iso8601 writes a zero offset as "Z" -------------------------------------------------
# "a time zone offset of zero MUST be represented by "Z" and not "+00:00"."  The example of 6:
# date :value "gt" :index 2 :zone "-0500" "received" "iso8601" "2007-02-26T09:00:00-05:00"

def test_iso8601_zero_offset_is_z():
    script = ('require ["date", "variables", "fileinto"];'
              ' if date :zone "+0000" :matches "date" "iso8601" "*" { fileinto "${1}"; }')
    msg = b"Date: Tue, 1 Apr 1997 09:06:31 -0800\r\n\r\nx\r\n"
    assert actions(script, msg) == [FileInto("1997-04-01T17:06:31Z")]


def test_iso8601_rfc5260_6_example():
    script = ('require ["date", "relational", "index", "fileinto"];'
              ' if date :value "gt" :index 2 :zone "-0500" "received"'
              ' "iso8601" "2007-02-26T09:00:00-05:00" { fileinto "late"; }')
    msg = (b"Received: from a by b; Tue, 27 Feb 2007 10:00:00 +0000\r\n"
           b"Received: from c by d; Mon, 26 Feb 2007 14:30:00 +0000\r\n\r\nx\r\n")
    assert actions(script, msg) == [FileInto("late")]


# -- RFC 5229 4: the name of set is a constant string ----------------------------------------------------
# "The name MUST be a constant string and conform to the syntax of variable-name. [...]
# An invalid name MUST be detected as a syntax error."

def test_set_with_a_variable_name_is_a_syntax_error():
    with pytest.raises(SieveSyntaxError) as info:
        compile_script('require "variables"; set "n" "x"; set "${n}" "y";')
    assert (info.value.line, info.value.column) == (1, 35)
    assert "constant" in info.value.message


def test_set_global_name_is_still_fine():  # RFC 6609 3.5
    assert actions('require ["variables", "include", "fileinto"]; set "global.a" "x"; fileinto "${global.a}";') \
        == [FileInto("x")]


# -- RFC 5229 4.1.3: case modifiers change only US-ASCII letters -------------------------------------------
# "Characters other than "A"-"Z" and "a"-"z" from US-ASCII are left unchanged."  And 4.1's
# examples (set "a" "juMBlEd lETteRS"; ...).

def test_case_modifiers_leave_non_ascii_letters():
    script = ('require ["variables", "fileinto"];'
              ' set :upper "a" "\u00e9t\u00e9"; set :lower "b" "\u00c9T\u00c9";'
              ' set :upperfirst "c" "\u00e9t\u00e9"; set :lowerfirst "d" "\u00c9T\u00c9";'
              ' fileinto "${a}|${b}|${c}|${d}";')
    assert actions(script) == [FileInto("\u00e9T\u00e9|\u00c9t\u00c9|\u00e9t\u00e9|\u00c9T\u00c9")]


def test_rfc5229_4_1_examples():
    script = ('require ["variables", "fileinto"]; set "a" "juMBlEd lETteRS";'
              ' set :length "b" "${a}"; set :lower "c" "${a}"; set :upperfirst "d" "${a}";'
              ' set :upperfirst :lower "e" "${a}"; set :quotewildcard "f" "Rock*";'
              ' fileinto "${b}|${c}|${d}|${e}|${f}";')
    assert actions(script) == [FileInto("15|jumbled letters|JuMBlEd lETteRS|Jumbled letters|Rock\\*")]


# -- RFC 5173 5.2: :content on container parts ------------------------------------------------------------
# "If the :content specification matches a multipart MIME part, only the prologue and epilogue
# sections of the part will be searched [...] If the :content specification matches a
# message/rfc822 MIME part, only the header of the nested message will be searched"

MIME_5173 = (b"From: Whomever\r\nTo: Someone\r\nDate: Whenever\r\nSubject: whatever\r\n"
             b"Content-Type: multipart/mixed; boundary=outer\r\n"
             b"\r\n"
             b"This is a multi-part message in MIME format.\r\n"
             b"\r\n"
             b"--outer\r\n"
             b"Content-Type: multipart/alternative; boundary=inner\r\n"
             b"\r\n"
             b"This is a nested multi-part message in MIME format.\r\n"
             b"\r\n"
             b"--inner\r\n"
             b"Content-Type: text/plain; charset=\"us-ascii\"\r\n"
             b"\r\n"
             b"Hello\r\n"
             b"\r\n"
             b"--inner\r\n"
             b"Content-Type: text/html; charset=\"us-ascii\"\r\n"
             b"\r\n"
             b"<html><body>Hello</body></html>\r\n"
             b"\r\n"
             b"--inner--\r\n"
             b"\r\n"
             b"This is the end of the inner MIME multipart.\r\n"
             b"\r\n"
             b"--outer\r\n"
             b"Content-Type: message/rfc822\r\n"
             b"\r\n"
             b"From: Someone Else\r\n"
             b"Subject: hello request\r\n"
             b"\r\n"
             b"Please say Hello\r\n"
             b"\r\n"
             b"--outer--\r\n"
             b"\r\n"
             b"This is the end of the outer MIME multipart.\r\n")


def _body(test: str) -> bool:
    script = f'require ["body", "fileinto"]; if body {test} {{ fileinto "hit"; }}'
    return actions(script, MIME_5173) == [FileInto("hit")]


def test_content_multipart_searches_prologue_and_epilogue():
    assert _body(':content "multipart" :contains "MIME"')
    assert _body(':content "multipart" :contains "end of the inner MIME multipart"')
    assert _body(':content "multipart" :contains "end of the outer MIME multipart"')
    assert not _body(':content "multipart" :contains "Hello"')  # nested parts: only by their own type


def test_content_message_rfc822_searches_the_nested_header():
    assert _body(':content "message/rfc822" :contains "Hello"')  # "Subject: hello request"
    assert _body(':content "message/rfc822" :contains "Someone Else"')
    assert not _body(':content "message/rfc822" :contains "Please say"')


def test_content_text_searches_the_leaf_parts():  # the '$' and '%' lines
    assert _body(':content "text/plain" :contains "Please say Hello"')
    assert _body(':content "text/html" :contains "<body>Hello"')
    assert not _body(':content "text/plain" :contains "MIME format"')


# -- RFC 5231 4.2: :count of envelope "from" ---------------------------------------------------------------
# "The envelope "from" will be 0 if the MAIL FROM is empty, or 1 if MAIL FROM is not empty."

def test_envelope_from_count_is_zero_for_the_null_sender():
    script = ('require ["envelope", "relational", "fileinto", "comparator-i;ascii-numeric"];'
              ' if envelope :count "eq" :comparator "i;ascii-numeric" "from" "0" { fileinto "zero"; }'
              ' if envelope :count "eq" :comparator "i;ascii-numeric" "from" "1" { fileinto "one"; }')
    assert actions(script, envelope=NULL_SENDER) == [FileInto("zero")]
    assert actions(script) == [FileInto("one")]


# -- RFC 5232 4: hasflag's list-of-flags is split into flags too --------------------------------------------
# 'If the internal variable has the value "A B", the following test  hasflag :is "b A"
# evaluates to true.'  and, with MyVar as in 4's example, hasflag :contains "MyVar"
# "junk forward" is true (a "not recommended" form, but true).

def _hasflag(test: str) -> bool:
    script = ('require ["imap4flags", "variables", "fileinto"];'
              ' set "MyVar" "NonJunk Junk gnus-forward $Forwarded NotJunk JunkRecorded $Junk $NotJunk";'
              f' setflag "A B"; if {test} {{ fileinto "T"; }} else {{ fileinto "F"; }}')
    (action,) = actions(script)
    return action.mailbox == "T"


def test_hasflag_rfc5232_4_examples():
    assert _hasflag('hasflag :is "b A"')
    assert _hasflag('hasflag ["b","A"]')
    assert _hasflag('hasflag :contains "MyVar" "Junk"')
    assert _hasflag('hasflag :contains "MyVar" "forward"')
    assert _hasflag('hasflag :contains "MyVar" ["label", "forward"]')
    assert _hasflag('hasflag :contains "MyVar" ["junk", "forward"]')
    assert _hasflag('hasflag :contains "MyVar" "junk forward"')
    assert _hasflag('hasflag :contains "MyVar" "forward junk"')
    assert not _hasflag('hasflag :contains "MyVar" "label"')
    assert not _hasflag('hasflag :contains "MyVar" ["label1", "label2"]')


# -- RFC 5232 3: duplicate stores keep the last flag list -------------------------------------------------
# "when keep/fileinto is used multiple times in a script and duplicate message elimination is
# performed (as described in Section 2.10.3 of [SIEVE]), the last flag list value MUST win."

def test_duplicate_fileinto_last_flag_list_wins():
    script = 'require ["fileinto", "imap4flags"]; fileinto :flags "a" "X"; fileinto :flags ["b", "c"] "X";'
    assert actions(script) == [FileInto("X", ("b", "c"))]


def test_duplicate_keep_last_flag_list_wins_also_for_the_implicit_keep():
    script = 'require ["fileinto", "imap4flags", "copy"]; fileinto :copy :flags "a" "INBOX"; setflag "b";'
    assert actions(script) == [Keep(("b",))]


# -- RFC 5232 2: invalid and unsettable flags are ignored ---------------------------------------------------
# "it is not possible to use this extension to set or clear the \Recent flag [...] Any such
# flags MUST be ignored if included in a flag list."  "The Sieve interpreter SHOULD check the
# list of flags for validity as described by [IMAP] ABNF.  In particular [...] non-ASCII
# characters are not allowed in flag names. [...] If a flag validity check fails, the flag
# MUST be ignored."

def test_recent_and_invalid_flags_are_ignored():
    script = ('require ["imap4flags", "fileinto"];'
              ' setflag ["\\\\Recent", "\\\\Seen", "caf\u00e9", "a(b", "$Label1"];'
              ' fileinto :flags ["\\\\recent", "\\\\Flagged", "x]"] "X";')
    assert actions(script) == [FileInto("X", ("\\Flagged",))]
    assert actions(script.replace('fileinto :flags', 'keep; fileinto :flags')) == [
        Keep(("\\Seen", "$Label1")), FileInto("X", ("\\Flagged",))]


def test_internal_variable_without_ignored_flags():
    script = 'require "imap4flags"; addflag "\\\\Recent \\\\Answered  \u00fcber ";'
    assert actions(script) == [Keep(("\\Answered",))]


# -- RFC 6609 3.2: include ----------------------------------------------------------------------------------
# ":once [...] Implementations MUST NOT generate an error if an "include :once" command names
# a script whose inclusion would be recursive; in this case, the script MUST be considered
# previously included"

def _loader(scripts: dict):
    return lambda name, location: scripts.get((location, name))


def test_include_once_of_a_script_being_run_is_no_error():
    scripts = {("personal", "a"): 'require "include"; include :once "b"; keep;',
               ("personal", "b"): 'require ["include", "fileinto"]; include :once "a"; fileinto "B";'}
    result = run(compile_script(scripts[("personal", "a")], "a"), MSG, ENV, loader=_loader(scripts))
    assert result.errors == [] and result.actions == [FileInto("B"), Keep()]


def test_include_once_of_the_main_script_is_no_error():
    scripts = {("personal", "main"): 'require "include"; include :once "main"; keep;'}
    result = run(compile_script(scripts[("personal", "main")], "main"), MSG, ENV, loader=_loader(scripts))
    assert result.errors == [] and result.actions == [Keep()]


def test_plain_recursive_include_is_still_a_run_time_error():  # 3.1: MUST generate an error
    scripts = {("personal", "a"): 'require "include"; include "a";'}
    result = run(compile_script(scripts[("personal", "a")], "a"), MSG, ENV, loader=_loader(scripts))
    assert result.errors and result.actions == [Keep()]


# "The script name argument MUST be a constant string as defined in [RFC5229], Section 3;
# implementations MUST NOT expand variables in the script name argument."  "Implementations
# MUST restrict script names according to ManageSieve [RFC5804], Section 1.6" (no control
# characters, no U+2028/U+2029, at least one character).

def test_include_with_a_variable_in_the_name_is_a_syntax_error():
    with pytest.raises(SieveSyntaxError) as info:
        compile_script('require ["include", "variables"]; set "n" "x"; include "${n}";')
    assert "constant" in info.value.message


def test_include_names_follow_rfc5804_1_6():
    for bad in ("a\u2028b", "a\u2029b", "tab\tx", "del\x7f", "c1\x85"):
        with pytest.raises(SieveSyntaxError):
            compile_script(f'require "include"; include "{bad}";')
    scripts = {("personal", "caf\u00e9 $1"): 'require "fileinto"; fileinto "ok";'}
    result = run(compile_script('require "include"; include "caf\u00e9 $1";'), MSG, ENV, loader=_loader(scripts))
    assert result.actions == [FileInto("ok")]


# -- RFC 6609 3.4.1 / 3.4.2: global -------------------------------------------------------------------------
# "Each name MUST be a constant string [...] An invalid name MUST be detected as a syntax
# error."  "If a "global" command is given the name of a variable that has previously been
# defined in the immediate script with "set", an error MUST be generated"  "references to the
# "global" namespace without a prior require statement for the "include" extension MUST cause
# an error."

def test_global_with_a_variable_name_is_a_syntax_error():
    with pytest.raises(SieveSyntaxError):
        compile_script('require ["include", "variables"]; set "n" "x"; global "${n}";')


def test_global_after_set_of_the_same_name_is_an_error():
    result = outcome('require ["include", "variables", "fileinto"]; set "a" "1"; global "a"; fileinto "x";')
    assert result.errors and result.actions == [Keep()]


def test_global_before_set_is_fine():
    assert actions('require ["include", "variables", "fileinto"]; global "a"; set "a" "1"; fileinto "x${a}";') \
        == [FileInto("x1")]


def test_global_namespace_needs_require_include():
    with pytest.raises(SieveSyntaxError):
        compile_script('require "variables"; set "global.a" "1";')
    with pytest.raises(SieveSyntaxError):
        compile_script('require ["variables", "fileinto"]; fileinto "${global.a}";')


# -- RFC 5229 3: namespaces need their extension -------------------------------------------------------------
# "References to namespaces without a prior require statement for the relevant extension MUST
# cause an error."  (variable-ref = "${" [namespace] variable-name "}")

def test_reference_to_an_unrequired_namespace_is_an_error():
    for text in ("${foo.bar}", "${Env.host}", "${global.a.b}", "${a.b.1}"):
        with pytest.raises(SieveSyntaxError):
            compile_script(f'require ["variables", "include", "fileinto"]; fileinto "{text}";')


def test_strings_that_are_not_namespace_references_stay_verbatim():
    for text in ("${a.}", "${.a}", "${doh.!}"):
        assert actions(f'require ["variables", "fileinto"]; fileinto "{text}";') == [FileInto(text)]


# -- RFC 5228 2.7.4: invalid addresses and :localpart / :domain --------------------------------------------
# "If an address is not syntactically valid, then it will not be matched by tests specifying
# ":localpart" or ":domain"."

def test_address_without_a_domain_matches_only_all():
    msg = b"To: undisclosed-recipients\r\nCc: a@example.com\r\n\r\nx\r\n"
    script = 'require "fileinto"; if address {part} "to" "{key}" {{ fileinto "hit"; }}'
    assert actions(script.format(part=":all", key="undisclosed-recipients"), msg) == [FileInto("hit")]
    assert actions(script.format(part=":localpart", key="undisclosed-recipients"), msg) == [Keep()]
    assert actions(script.format(part=":domain", key=""), msg) == [Keep()]
    assert actions(script.format(part=":localpart", key="a").replace('"to"', '"cc"'), msg) == [FileInto("hit")]


# -- draft-murchison-sieve-regex-07 3: POSIX EREs only ------------------------------------------------------
# "Any regular expression not defined by [POSIX.2], as well as [POSIX.2] basic regular
# expressions, word boundaries and backreferences are not supported by this extension.
# Implementations SHOULD reject regular expressions that are unsupported by this
# specification as a syntax error."  And its example, with [[:lower:]].

REGEX_EXAMPLE = ('require "regex";\r\n'
                 'if anyof (\r\n'
                 '  not address :regex ["to", "cc", "bcc"]\r\n'
                 '    "me(\\\\+.*)?@company\\\\.com",\r\n'
                 '  header :regex :comparator "i;octet" "subject"\r\n'
                 '    "^[^[:lower:]]+$" ) {\r\n'
                 '  discard;\r\n'
                 '}\r\n')


def test_regex_draft_example():
    assert actions(REGEX_EXAMPLE, b"To: me+x@company.com\r\nSubject: BUY NOW\r\n\r\nx\r\n") == []
    assert actions(REGEX_EXAMPLE, b"To: me+x@company.com\r\nSubject: Hello\r\n\r\nx\r\n") == [Keep()]
    assert actions(REGEX_EXAMPLE, b"To: you@company.com\r\nSubject: Hello\r\n\r\nx\r\n") == []


def test_non_ere_regexes_are_syntax_errors():
    for pattern in ("\\\\bfoo\\\\b", "(a)\\\\1", "(?i)a", "\\\\d+", "a*?", "a++", "[\\\\w]", "(?P<x>a)"):
        with pytest.raises(SieveSyntaxError):
            compile_script(f'require "regex"; if header :regex "subject" "{pattern}" {{ discard; }}')


def test_ere_escapes_and_brackets_are_fine():
    for pattern in ("a\\\\.b", "\\\\(x\\\\)", "[*?+]", "[]a]", "[^]a]", "a{2,3}", "(a|b)+", "[[:digit:]]?",
                    "\\\\\\\\", "x$"):
        compile_script(f'require "regex"; if header :regex "subject" "{pattern}" {{ discard; }}')


# -- RFC 5230 4.3: :from is a mailbox-list ----------------------------------------------------------------
# "The string must specify a valid [RFC2822] mailbox-list.  Implementations SHOULD check the
# syntax and generate an error when a syntactically invalid ":from" parameter is specified."

def test_vacation_from_that_is_not_a_mailbox_list_is_an_error():
    with pytest.raises(SieveSyntaxError):
        compile_script('require "vacation"; vacation :from "not an address" "away";')
    result = outcome('require ["vacation", "variables"]; set "f" "nobody"; vacation :from "${f}" "away";')
    assert result.errors and result.actions == [Keep()]


def test_vacation_from_mailbox_lists_are_fine():
    for value, quoted in (("me@example.com", "me@example.com"), ("Me <me@example.com>", "Me <me@example.com>"),
                          ('"Doe, J" <j@example.com>, k@example.com', '\\"Doe, J\\" <j@example.com>, k@example.com')):
        vacation, keep = actions(f'require "vacation"; vacation :from "{quoted}" "away";')
        assert vacation.from_addr == value and keep == Keep()


# -- RFC 5293 4: addheader values that do not fit a header line ---------------------------------------------
# "If the specified field value does not match the [IMAIL] "unstructured" nonterminal syntax
# element or exceeds a length limit set by the implementation, the implementation MUST either
# flag an error or encode the field using folding white space [...] to be compliant with
# [IMAIL]."  (RFC 5322 2.1.1: lines of at most 998 characters.)

def test_long_addheader_value_is_folded():
    value = " ".join(["word"] * 400)
    result = outcome(f'require "editheader"; addheader "X-Long" "{value}";')
    assert not result.errors
    field = result.header.split(b"\r\nFrom:")[0]
    lines = field.split(b"\r\n")
    assert len(lines) > 1 and max(len(line) for line in lines) <= 998
    assert all(line.startswith(b" ") for line in lines[1:])
    assert field.replace(b"\r\n", b"") == b"X-Long: " + value.encode()


def test_addheader_value_that_cannot_be_folded_is_an_error():
    result = outcome('require "editheader"; addheader "X-Long" "' + "z" * 1200 + '";')
    assert result.errors and result.actions == [Keep()] and result.header is None
