"""The Sieve core language (RFC 5228): grammar, errors with positions, implicit keep, the
base tests and actions.  Expected outcomes come from the RFC's text and examples."""

from __future__ import annotations

import pytest

from mailstack.sieve import Envelope, SieveSyntaxError, compile_script, run
from mailstack.sieve.actions import FileInto, Keep, Redirect, Reject

ENV = Envelope(sender="coyote@desert.example.org", recipient="roadrunner@acme.example.com")

# RFC 5228 section 6 (the example message of 2.7.x and 5.x)
MSG = (b"Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)\r\n"
       b"From: coyote@desert.example.org\r\n"
       b"To: roadrunner@acme.example.com\r\n"
       b"Subject: I have a present for you\r\n"
       b"X-Caffeine: C8H10N4O2\r\n"
       b"\r\n"
       b"Look, I'm sorry about the whole anvil thing, and I really\r\n"
       b"didn't mean to try and drop it on you.  I've got some great\r\n"
       b"birdseed over here at my place--top of the line stuff--and I'd\r\n"
       b"love to have you over to sample it.\r\n")


def actions(script: str, message: bytes = MSG, envelope: Envelope = ENV, **kw):
    outcome = run(compile_script(script), message, envelope, **kw)
    assert not outcome.errors, outcome.errors
    return outcome.actions


def error_of(script: str) -> tuple[int, int, str]:
    with pytest.raises(SieveSyntaxError) as info:
        compile_script(script)
    e = info.value
    assert str(e) == f"line {e.line}, column {e.column}: {e.message}"
    return e.line, e.column, e.message


# -- 2.10.2 implicit keep, 4.x actions ------------------------------------------------------

def test_empty_script_keeps():
    assert actions("") == [Keep()]


def test_comments_only_keep():
    assert actions("# a comment\r\n/* a bracket\r\n comment */\r\n") == [Keep()]


def test_discard_cancels_implicit_keep():
    assert actions("discard;") == []


def test_keep_then_discard_still_keeps():  # 4.4: discard only cancels the implicit keep
    assert actions("keep; discard;") == [Keep()]


def test_fileinto_cancels_implicit_keep_and_duplicates_collapse():  # 2.10.3, 4.1
    script = 'require "fileinto"; fileinto "A"; fileinto "A"; fileinto "B";'
    assert actions(script) == [FileInto("A"), FileInto("B")]


def test_keep_twice_is_one_keep():
    assert actions("keep; keep;") == [Keep()]


def test_stop_ends_the_script():  # 3.3
    assert actions('require "fileinto"; fileinto "A"; stop; fileinto "B";') == [FileInto("A")]


def test_stop_keeps_implicitly_when_nothing_was_done():
    assert actions("stop; discard;") == [Keep()]


def test_redirect_cancels_implicit_keep():  # 4.2
    assert actions('redirect "bart@example.com";') == [Redirect("bart@example.com")]


def test_redirect_duplicates_collapse():
    assert actions('redirect "a@example.com"; redirect "A@example.com";') == [Redirect("a@example.com")]


def test_redirect_and_keep():
    assert actions('redirect "a@example.com"; keep;') == [Redirect("a@example.com"), Keep()]


# -- 5.x tests on the RFC's message ------------------------------------------------------------

@pytest.mark.parametrize("test, expected", [
    ('header :contains "Subject" "present"', True),
    ('header :contains "subject" "PRESENT"', True),  # i;ascii-casemap is the default
    ('header :comparator "i;octet" :contains "Subject" "PRESENT"', False),
    ('header :is "X-Caffeine" "C8H10N4O2"', True),
    ('header :is "X-Caffeine" "C8H10N4"', False),
    ('header :contains "X-Caffeine" ""', True),
    ('header :contains "X-None" ""', False),  # 5.7: a missing header never matches
    ('header :matches "Subject" "I have*"', True),
    ('header :matches "Subject" "?have*"', False),
    ('header :matches "Subject" "? have*"', True),
    ('header :matches "Subject" "*present\\\\*"', False),
    ('address :is :all "from" "coyote@desert.example.org"', True),
    ('address :is :localpart "from" "coyote"', True),
    ('address :is :domain "from" "DESERT.example.org"', True),
    ('address :contains "to" "acme"', True),
    ('envelope :is "from" "coyote@desert.example.org"', True),
    ('envelope :is :domain "to" "acme.example.com"', True),
    ('exists ["From", "Date"]', True),
    ('exists ["From", "Cc"]', False),
    ('size :over 100', True),
    ('size :under 1K', True),
    ('size :over 1M', False),
    ('not size :over 100', False),
    ('allof (true, header :contains "Subject" "present")', True),
    ('allof (true, false)', False),
    ('anyof (false, false)', False),
    ('anyof (false, exists "To")', True),
])
def test_base_tests(test, expected):
    script = f'require "envelope"; if {test} {{ discard; }}'
    assert (actions(script) == []) is expected


def test_rfc5228_2_7_1_ascii_casemap_example():
    # "address :is :localpart "from" "Frodo"" does not match "frodo" only under i;octet
    msg = b"From: frodo@example.net\r\n\r\n"
    assert actions('if address :is :localpart "from" "Frodo" { discard; }', msg) == []
    assert actions('if address :comparator "i;octet" :is :localpart "from" "Frodo" { discard; }', msg) == [Keep()]


def test_if_elsif_else():
    script = ('require "fileinto";\r\n'
              'if header :contains "Subject" "nothing" { fileinto "A"; }\r\n'
              'elsif header :contains "Subject" "present" { fileinto "B"; }\r\n'
              'else { fileinto "C"; }\r\n')
    assert actions(script) == [FileInto("B")]


def test_rfc5228_section_9_example_1():
    # the first complete example of RFC 5228 section 9.1
    script = '''
    # Example Sieve Filter
    # Declare any optional features or extension used by the script
    require ["fileinto"];

    # Handle messages from known mailing lists
    # Move messages from IETF filter discussion list to filter mailbox
    if header :is "Sender" "owner-ietf-mta-filters@imc.org"
            {
            fileinto "filter";  # move to "filter" mailbox
            }
    #
    # Keep all messages to or from people in my company
    #
    elsif address :DOMAIN :is ["From", "To"] "example.com"
            {
            keep;               # keep in "In" mailbox
            }

    #
    # Try and catch unsolicited email.  If a message is not to me,
    # or it contains a subject known to be spam, file it away.
    #
    elsif anyof (NOT address :all :contains
                   ["To", "Cc", "Bcc"] "me@example.com",
                 header :matches "subject"
                   ["*make*money*fast*", "*university*dipl*mas*"])
            {
            fileinto "spam";   # move to "spam" mailbox
            }
    else
            {
            # Move all other (non-company) mail to "personal"
            # mailbox.
            fileinto "personal";
            }
    '''
    ietf = b"Sender: owner-ietf-mta-filters@imc.org\r\nTo: me@example.com\r\n\r\n"
    company = b"From: boss@example.com\r\nTo: me@example.com\r\n\r\n"
    spam = b"From: x@spam.test\r\nTo: list@lists.test\r\nCc: me@example.com\r\nSubject: Make lots of MONEY fast now\r\n\r\n"
    other = b"From: friend@elsewhere.test\r\nTo: group@elsewhere.test\r\nCc: me@example.com\r\nSubject: hi\r\n\r\n"
    not_to_me = b"From: friend@elsewhere.test\r\nTo: you@example.net\r\nSubject: hi\r\n\r\n"
    assert actions(script, ietf) == [FileInto("filter")]
    assert actions(script, company) == [Keep()]
    assert actions(script, spam) == [FileInto("spam")]
    assert actions(script, other) == [FileInto("personal")]
    assert actions(script, not_to_me) == [FileInto("spam")]


# -- strings and numbers (2.4) ----------------------------------------------------------------

def test_multiline_string_with_dot_stuffing():
    script = 'require "reject";\r\nreject text:\r\nline one\r\n..dotted\r\n.\r\n;\r\n'
    assert actions(script) == [Reject("line one\r\n.dotted\r\n")]


def test_multiline_string_with_hash_comment_after_text():
    script = 'require "reject";\nreject text: # why\nno\n.\n;\n'
    assert actions(script) == [Reject("no\r\n")]


def test_quoted_string_escapes():  # 2.4.2: \" and \\ escape, any other backslash is dropped
    script = 'require "reject"; reject "a\\"b\\\\c\\d";'
    assert actions(script) == [Reject('a"b\\cd')]


def test_quantifiers():
    assert actions("if size :under 1K { discard; }") == []
    assert actions("if size :over 1G { discard; }") == [Keep()]


def test_identifiers_are_case_insensitive():
    assert actions('IF TRUE { DISCARD; }') == []


# -- compile-time errors with their position ----------------------------------------------------

@pytest.mark.parametrize("script, line, column, message", [
    ("frobnicate;", 1, 1, "unknown command 'frobnicate'"),
    ("if frob { keep; }", 1, 4, "unknown test 'frob'"),
    ('fileinto "x";', 1, 1, 'command fileinto needs require "fileinto"'),
    ('keep;\nrequire "fileinto";', 2, 1, "require must come before any other command (RFC 5228 3.2)"),
    ('require "frob";', 1, 9, "unsupported extension 'frob' in require"),
    ("keep", 1, 1, "unexpected end of script, expected ';' or '{'"),
    ("if true keep;", 1, 1, "if needs a block { ... }"),
    ("if true { keep; } if", 1, 19, "unexpected end of script, expected ';' or '{'"),
    ("elsif true { keep; }", 1, 1, "elsif without a preceding if or elsif"),
    ("if true { keep; }\nkeep;\nelse { keep; }", 3, 1, "else without a preceding if or elsif"),
    ('if header :frob "a" "b" { keep; }', 1, 11, "unknown tag :frob for header"),
    ('if header :is :contains "a" "b" { keep; }', 1, 15, "tag :contains conflicts with :is"),
    ('if header "a" { keep; }', 1, 4, "header takes 2 positional arguments, found 1"),
    ('if header :comparator "i;frob" "a" "b" { keep; }', 1, 4, "unknown comparator 'i;frob'"),
    ('if header :comparator "i;ascii-numeric" :is "a" "b" { keep; }', 1, 4,
     'comparator i;ascii-numeric needs require "comparator-i;ascii-numeric"'),
    ('/* open', 1, 1, "unterminated /* comment"),
    ('keep;\n  "open', 2, 3, "unterminated quoted string"),
    ('require "reject";\nreject text:\nno end\n', 2, 8, 'unterminated text: string (no line with a lone ".")'),
    ('if size 100 { keep; }', 1, 4, "size needs :over or :under"),
    ('if true { keep; } else keep;', 1, 19, "else needs a block { ... }"),
    ('keep "x";', 1, 1, "keep takes 0 positional arguments, found 1"),
    ('keep { }', 1, 1, "keep takes no block"),
    ('if allof true { keep; }', 1, 4, "allof needs a test list in parentheses"),
    ('if not (true, false) { keep; }', 1, 4, "not needs exactly one test"),
    ('redirect "no-at-sign";', 1, 1, "redirect needs a valid address, not 'no-at-sign'"),
    ("if true { keep; ", 1, 15, "unexpected end of script, expected '}'"),
    ("keep; @", 1, 7, "unexpected character '@'"),
    ('if header :contains "a" ["b", ] { keep; }', 1, 31, "expected a string, found ']'"),
    ('if size :over 12x { keep; }', 1, 15, "bad number '12x'"),
    ('require "vacation"; vacation :days "7" "away";', 1, 30, "tag :days needs a number argument"),
    ('require "vacation"; vacation :days 7;', 1, 21, "vacation takes 1 positional arguments, found 0"),
    ('require "fileinto"; fileinto ["a", "b"];', 1, 30, "fileinto: expected a string"),
    ('if header "subject" :is "x" { }', 1, 21, "tag :is after positional arguments"),
    ('if header :comparator :is "a" "b" { }', 1, 11, "tag :comparator needs a string argument"),
    ('keep :flags "x";', 1, 6, 'tag :flags needs require "imap4flags"'),
    ('if header :regex "a" "b" { }', 1, 11, 'tag :regex needs require "regex"'),
    ('require "relational"; if header :count "a" "b" "c" { }', 1, 26, ":count needs one of eq, ge, gt, le, lt, ne"),
    ('require "include"; global "x";', 1, 20, 'command global needs require "variables"'),
    ('require ["variables"]; set "a" "b" "c";', 1, 24, "set takes 2 positional arguments, found 3"),
    ('if exists "a" "b" { }', 1, 4, "exists takes 1 positional arguments, found 2"),
    ('stop true;', 1, 6, "command stop takes no test"),
])
def test_syntax_errors(script, line, column, message):
    assert error_of(script) == (line, column, message)


def test_error_positions_count_crlf_lines():
    assert error_of('require "fileinto";\r\n\r\n  frob;\r\n')[:2] == (3, 3)


def test_compiled_script_is_reusable():
    script = compile_script('if header :contains "Subject" "present" { discard; }')
    for _ in range(3):
        assert run(script, MSG, ENV).actions == []
        assert run(script, b"Subject: no\r\n\r\n", ENV).actions == [Keep()]


# -- more of RFC 5228's own examples ---------------------------------------------------------------

def test_rfc5228_2_3_comment_example():
    script = ('if size :over 100k { # this is a comment\r\n    discard;\r\n}\r\n'
              'if size :over 100K { /* this is a comment\r\n    this is still a comment */ discard /* this is a comment\r\n'
              '    */ ;\r\n}\r\n')
    big = MSG + b"x" * 200_000
    assert actions(script, big) == []
    assert actions(script) == [Keep()]


def test_rfc5228_3_1_if_example():
    script = ('if header :contains ["From"] ["coyote"] {\r\n    redirect "acm@example.com";\r\n'
              '} elsif header :contains "Subject" "$$$" {\r\n    redirect "postmaster@example.com";\r\n'
              '} else {\r\n    redirect "field@example.com";\r\n}\r\n')
    assert actions(script) == [Redirect("acm@example.com")]
    assert actions(script, b"From: a@b.example\r\nSubject: get $$$\r\n\r\n") == [Redirect("postmaster@example.com")]
    assert actions(script, b"From: a@b.example\r\n\r\n") == [Redirect("field@example.com")]


def test_rfc5228_4_1_fileinto_example():
    script = 'require "fileinto";\r\nif header :contains ["from"] "coyote" {\r\n    fileinto "INBOX.harassment";\r\n}\r\n'
    assert actions(script) == [FileInto("INBOX.harassment")]


def test_rfc5228_fileinto_inbox_is_a_keep():  # 2.10.3: keep is fileinto "INBOX"
    assert actions('require "fileinto"; fileinto "inbox"; keep;') == [Keep()]


def test_rfc5228_5_2_allof_and_5_3_anyof_examples():
    msg = b"From: John Cleese <cleese@example.org>\r\nTo: Eric Idle <idle@example.org>\r\n\r\n"
    both = 'if allof (header :contains "From" "Cleese", header :contains "To" "Idle") { discard; }'
    either = 'if anyof (header :contains "From" "Cleese", header :contains "To" "Chapman") { discard; }'
    assert actions(both, msg) == [] and actions(either, msg) == []
    assert actions(both, b"From: John Cleese <cleese@example.org>\r\nTo: Michael Palin <palin@example.org>\r\n\r\n") == [Keep()]


def test_rfc5228_5_7_header_example_with_empty_strings():
    # "X-Caffeine" is present: :contains "" matches it, :is "" does not (its value is not empty)
    assert actions('if header :contains "X-Caffeine" "" { discard; }') == []
    assert actions('if header :is "X-Caffeine" "" { discard; }') == [Keep()]
    assert actions('if header :is "X-Empty" "" { discard; }', b"X-Empty:\r\n\r\n") == []


def test_rfc5228_2_10_6_run_time_error_keeps():
    # a variable address that is not an address only fails when run
    script = compile_script('require "variables"; set "a" "not an address"; redirect "${a}";')
    outcome = run(script, MSG, ENV)
    assert outcome.actions == [Keep()]
    assert outcome.errors == ["redirect to an invalid address 'not an address'"]


def test_flags_of_duplicate_stores_last_wins():  # RFC 5232 3: "the last flag list value MUST win"
    script = 'require ["fileinto", "imap4flags"]; fileinto :flags "a" "X"; fileinto :flags ["b", "A"] "X";'
    assert actions(script) == [FileInto("X", ("b", "A"))]


def test_lf_only_script_and_message():
    script = 'require "fileinto";\nif header :is "subject" "hi" {\n  fileinto "A";\n}\n'
    assert actions(script, b"Subject: hi\nFrom: a@b.example\n\nbody\n") == [FileInto("A")]


def test_one_compiled_script_serves_many_threads():
    from concurrent.futures import ThreadPoolExecutor

    script = compile_script('require ["fileinto", "variables", "editheader"];\n'
                            'if header :matches "Subject" "* for *" { fileinto "${2}"; addheader "X-N" "${1}"; }')
    messages = [b"Subject: gift %d for user%d\r\n\r\n" % (i, i) for i in range(200)]

    def one(i):
        outcome = run(script, messages[i], ENV)
        return outcome.actions, outcome.header

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    for i, (acts, header) in enumerate(results):
        assert acts == [FileInto(f"user{i}")]
        assert header == b"X-N: gift %d\r\nSubject: gift %d for user%d\r\n" % (i, i, i)
