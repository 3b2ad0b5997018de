"""The IMAP command reader and parser, in process: RFC 3501 4.3 (literals), RFC 7888
(LITERAL+), RFC 3501 9 (formal syntax) and 6.4.5 (FETCH attributes)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap import parser
from mailstack.imap.parser import Arguments, Atom, ParseError, String
from mailstack.imap.results import Returns
from mailstack.imap.reader import (
    DATA,
    MESSAGE,
    MAX_COMMAND,
    CommandAssembler,
    Complete,
    Continue,
    Framing,
    LineTooLong,
    RawCommand,
    Refused,
    Spool,
)


def assembler(literal_kind=lambda command: DATA, limit=1000) -> CommandAssembler:
    return CommandAssembler(Framing(), literal_kind, limit)


def events(a: CommandAssembler, data: bytes) -> list:
    a.framing.feed(data)
    out = []
    while (event := a.step()) is not None:
        out.append(event)
        if isinstance(event, Refused) and event.fatal:  # the session closes here
            break
    return out


def tokens_of(text: bytes, *literals) -> list:
    texts = text.split(b"\0")
    return parser.tokens(RawCommand(b"a", texts, list(literals)))


# -- framing ------------------------------------------------------------------------------------


def test_lines_end_at_crlf_or_a_bare_lf_and_wait_when_incomplete():
    f = Framing()
    f.feed(b"a NOOP\r\nb NO")
    assert f.line() == b"a NOOP"
    assert f.line() is None
    f.feed(b"OP\nc")
    assert f.line() == b"b NOOP"
    assert f.pending() == 1


def test_a_line_over_the_limit_is_refused_even_before_its_end_arrives():
    f = Framing(max_line=100)
    f.feed(b"x" * 101)
    with pytest.raises(LineTooLong):
        f.line()


def test_a_long_line_sent_a_byte_at_a_time_is_scanned_once():
    f = Framing()
    start = time.process_time()
    for _ in range(60_000):
        f.feed(b"x")
        assert f.line() is None
    assert time.process_time() - start < 5  # quadratic rescanning would take minutes


# -- literals (RFC 3501 4.3, RFC 7888) ----------------------------------------------------------


def test_a_synchronising_literal_gets_a_continuation_then_its_octets_are_read_exactly():
    a = assembler()
    assert events(a, b"a LOGIN {3}\r\n") == [Continue()]
    assert a.inside
    assert events(a, b"bob {4}\r\n") == [Continue()]
    *continued, done = events(a, b"a\r\nb {0}\r\n\r\n")
    assert continued == [Continue()]  # RFC 3501 4.3: even an empty literal waits for "+"
    assert isinstance(done, Complete)
    assert done.command.tag == b"a"
    assert done.command.texts == [b"a LOGIN ", b" ", b" ", b""]
    assert done.command.literals == [b"bob", b"a\r\nb", b""]


def test_a_non_synchronising_literal_gets_no_continuation():
    [done] = events(assembler(), b"t1 LOGIN {3+}\r\nbob {2+}\r\npw\r\n")
    assert done.command.literals == [b"bob", b"pw"]
    assert done.command.texts == [b"t1 LOGIN ", b" ", b""]


def test_a_literal_over_the_command_limit_is_refused_before_it_is_sent():
    [refused] = events(assembler(), b"a LOGIN {%d}\r\n" % (MAX_COMMAND + 1))
    assert refused == Refused(b"a", b"NO", b"[TOOBIG] command larger than %d octets" % MAX_COMMAND)
    assert not refused.fatal


def test_a_non_synchronising_literal_over_the_limit_ends_the_session():
    [refused] = events(assembler(), b"a LOGIN {%d+}\r\n" % (MAX_COMMAND + 1))
    assert refused.fatal and refused.status == b"BYE" and refused.text.startswith(b"[TOOBIG]")


def test_chained_literals_are_counted_towards_one_limit_as_they_arrive():
    """Issue 14: 1000 literals of 64 KB in one command once grew it to 64 MB."""
    a = assembler()
    chunk = b"x" * 65536
    out = events(a, b"a ID (" + b"".join(b"{65536+}\r\n" + chunk for _ in range(10)))
    assert [type(e) for e in out] == [Refused]
    assert out[0].fatal


def test_appends_message_literal_is_spooled_under_the_message_limit():
    a = assembler(literal_kind=lambda command: MESSAGE, limit=10)
    [cont] = events(a, b"a APPEND INBOX {5}\r\n")
    assert cont == Continue()
    [done] = events(a, b"hello\r\n")
    spool = done.command.literals[0]
    assert isinstance(spool, Spool) and spool.read() == b"hello"
    spool.close()
    [refused] = events(a, b"b APPEND INBOX {11}\r\n")
    assert refused == Refused(b"b", b"NO", b"[TOOBIG] message larger than 10 octets")
    # MULTIAPPEND: the messages of one command wait on disk together, 4 x the limit at most
    got = events(a, b"c APPEND INBOX {10+}\r\n" + b"x" * 10 + b" {10+}\r\n" + b"y" * 10 + b" {10+}\r\n"
                 + b"z" * 10 + b" {10+}\r\n" + b"w" * 10 + b" {10}\r\n")
    assert got[-1] == Refused(b"c", b"NO", b"[TOOBIG] messages of one APPEND larger than 40 octets")


def test_a_command_the_session_refuses_gets_no_continuation():
    # RFC 3501 7.5: the server may answer NO/BAD instead of "+"; the client then sends nothing.
    refuse = lambda command: (b"NO", b"[PRIVACYREQUIRED] not here")  # noqa: E731
    a = assembler(literal_kind=refuse)
    assert events(a, b"a LOGIN {5}\r\n") == [Refused(b"a", b"NO", b"[PRIVACYREQUIRED] not here")]
    assert not a.inside
    # LITERAL+: the octets are on their way, so they are read (never run as commands)
    got = events(a, b"b LOGIN {5+}\r\nc OK! x\r\n")
    assert got == [Complete(RawCommand(b"b", [b"b LOGIN ", b" x"], [b"c OK!"]))]


def test_a_command_without_a_valid_tag_is_read_with_the_tag_star():
    [done] = events(assembler(), b"+bad NOOP\r\n")
    assert done.command.tag == b"*"


# -- tokens (RFC 3501 9) ------------------------------------------------------------------------


def test_every_atom_char_and_the_list_wildcards_make_one_atom():
    """Issue 15: LIST "" with every ATOM-CHAR was answered BAD."""
    pattern = b"!#$&'+,-.0123456789:;<=>?@^_`|[}%*"
    assert tokens_of(b'"" ' + pattern) == [b"", pattern]
    assert isinstance(tokens_of(pattern)[0], Atom)


def test_quoted_strings_unescape_and_are_strings_not_atoms():
    [value] = tokens_of(rb'"a \"b\" \\c"')
    assert value == b'a "b" \\c' and isinstance(value, String)


def test_nil_is_an_atom_and_a_quoted_nil_a_string():
    nil, quoted = tokens_of(b'NIL "NIL"')
    assert isinstance(nil, Atom) and isinstance(quoted, String) and nil == quoted == b"NIL"


def test_lists_nest_and_literals_take_their_place():
    assert tokens_of(b"(a (b \0) c)", b"lit") == [[b"a", [b"b", b"lit"], b"c"]]
    assert isinstance(tokens_of(b"\0", b"x y")[0], String)


def test_a_bracketed_section_with_spaces_stays_in_its_atom():
    assert tokens_of(b"(FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100> UID)") == [
        [b"FLAGS", b"BODY.PEEK[HEADER.FIELDS (From To)]<0.100>", b"UID"]]
    assert tokens_of(b"[Gmail]/Sent x") == [b"[Gmail]/Sent", b"x"]


@pytest.mark.parametrize("text", [b"(a", b"a)", b'"open', b"a\x01b", b"(" * 70 + b")" * 70, b"{-100}x", b"a{1}"])
def test_malformed_input_is_a_parse_error(text):
    with pytest.raises(ParseError):
        tokens_of(text)


# -- grammars -----------------------------------------------------------------------------------


def grammar(fn, text: bytes, *literals):
    return fn(Arguments(tokens_of(text, *literals)))


def test_login_takes_two_astrings_and_nothing_more():
    assert grammar(parser.login, b'bob "se cret"') == (b"bob", b"se cret")
    assert grammar(parser.login, b"\0 \0", b"bob", b"") == (b"bob", b"")
    for bad in (b"bob", b"bob pw extra", b"(bob) pw", b"b{ob pw"):
        with pytest.raises(ParseError):
            grammar(parser.login, bad)


def test_store_with_unchangedsince_and_flags_with_or_without_parentheses():
    assert grammar(parser.store, rb"1:3 (UNCHANGEDSINCE 12) +FLAGS.SILENT (\Seen $Label)") == (
        [(1, 3)], 12, b"+FLAGS.SILENT", [b"\\Seen", b"$Label"])
    assert grammar(parser.store, rb"* FLAGS \Deleted \Seen") == ([(None, None)], None, b"FLAGS", [b"\\Deleted", b"\\Seen"])
    with pytest.raises(ParseError):
        grammar(parser.store, b"1 (UNCHANGEDSINCE x) FLAGS ()")


def test_search_takes_an_optional_charset_and_keeps_nil_as_a_word():
    assert grammar(parser.search, b"CHARSET UTF-8 SUBJECT NIL") == (b"UTF-8", [b"SUBJECT", b"NIL"], None)
    assert grammar(parser.search, b"OR (FROM a) TO \0", b"b c") == (None, [b"OR", [b"FROM", b"a"], b"TO", b"b c"], None)


def test_search_return_options_of_esearch():
    # RFC 4731 3: SEARCH [RETURN (options)] [CHARSET x] keys; RETURN () is RETURN (ALL)
    min_count = Returns(frozenset({b"MIN", b"COUNT"}))
    assert grammar(parser.search, b"RETURN (MIN COUNT) CHARSET UTF-8 ALL") == (b"UTF-8", [b"ALL"], min_count)
    assert grammar(parser.search, b"RETURN () SEEN") == (None, [b"SEEN"], Returns(frozenset({b"ALL"})))
    # RFC 5182 2.4 SAVE, RFC 5267 4 CONTEXT, UPDATE and PARTIAL (positions, RFC 9394 negative)
    assert grammar(parser.search, b"RETURN (save PARTIAL 9:3) ALL") == (None, [b"ALL"], Returns(frozenset({b"SAVE"}), (3, 9)))
    assert grammar(parser.search, b"RETURN (PARTIAL -1:-50 UPDATE) ALL")[2] == Returns(frozenset({b"UPDATE"}), (-1, -50))
    for bad in (b"RETURN (BOGUS) ALL", b"RETURN MIN ALL", b"RETURN (MIN)", b"RETURN (PARTIAL 1:2 ALL) ALL",
                b"RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL", b"RETURN (PARTIAL 0:1) ALL", b"RETURN (PARTIAL 1:-1) ALL"):
        with pytest.raises(parser.ParseError):
            grammar(parser.search, bad)


def test_append_wants_its_message_as_a_literal():
    spool = Spool(1)
    assert grammar(parser.append, b'INBOX (\\Seen) "01-Jan-2024 10:00:00 +0000" \0', spool) == (
        b"INBOX", [([b"\\Seen"], b"01-Jan-2024 10:00:00 +0000", spool)])
    with pytest.raises(ParseError):
        grammar(parser.append, b'INBOX "message"')


def test_multiappend_takes_several_messages_each_with_its_own_flags_and_date():
    # RFC 3502 6: append = "APPEND" SP mailbox 1*append-message
    one, two, three = Spool(1), Spool(1), Spool(1)
    got = grammar(parser.append, b'INBOX \0 (\\Flagged) \0 "01-Jan-2024 10:00:00 +0000" \0', one, two, three)
    assert got == (b"INBOX", [([], None, one), ([b"\\Flagged"], None, two), ([], b"01-Jan-2024 10:00:00 +0000", three)])
    with pytest.raises(ParseError):
        grammar(parser.append, b"INBOX \0 (\\Seen)", one)  # flags without their message


# -- FETCH attributes (RFC 3501 6.4.5) ------------------------------------------------------------


def fetch_items(text: bytes):
    return grammar(parser.fetch, b"1 " + text)[1]


def test_macros_expand_as_rfc_3501_says():
    assert [i.type for i in fetch_items(b"ALL").items] == ["flags", "internaldate", "rfc822size", "envelope"]
    assert [i.type for i in fetch_items(b"fast").items] == ["flags", "internaldate", "rfc822size"]
    assert [i.type for i in fetch_items(b"FULL").items][-1] == "body"


def test_sections_parts_and_partials():
    [a, b, c, d] = fetch_items(b"(BODY.PEEK[HEADER.FIELDS (From To)]<0.100> BODY[1.2.MIME] body[text] BODY[2])").items
    assert a.peek and a.header.fields == ("FROM", "TO") and not a.header.negate
    assert (a.partial_begin, a.partial_length) == (0, 100)
    assert b.part == (0, 1) and b.mime and not b.peek
    assert c.text and c.part == ()
    assert d.part == (1,) and d.empty


def test_modseq_and_changedsince_rfc_7162():
    spec = fetch_items(b"(FLAGS MODSEQ) (CHANGEDSINCE 5 VANISHED)")
    assert spec.modseq and spec.changedsince == 5 and spec.vanished
    assert [i.type for i in spec.items] == ["flags"]


@pytest.mark.parametrize("text", [b"BODY[0]", b"BODY[HEADERS]", b"FROB", b"(FLAGS", b"BODY[MIME]", b"()",
                                  b"FLAGS (CHANGEDSINCE x)", b'"FLAGS"'])
def test_malformed_fetch_attributes_are_parse_errors(text):
    with pytest.raises(ParseError):
        fetch_items(text)


# -- properties (hypothesis) ---------------------------------------------------------------------

_LINE_BYTES = st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@given(_LINE_BYTES)
def test_any_line_tokenizes_or_is_a_parse_error(line):
    try:
        result = tokens_of(line.replace(b"\0", b""))
    except ParseError:
        return
    assert isinstance(result, list)


@given(_LINE_BYTES)
def test_a_quoted_string_reads_back_as_it_was(data):
    assert tokens_of(parser.quote(data.replace(b"\0", b""))) == [data.replace(b"\0", b"")]


@given(_LINE_BYTES)
def test_any_fetch_attribute_parses_or_is_a_parse_error(data):
    try:
        item = parser.fetch_att(data)
    except ParseError:
        return
    assert item.type in ("envelope", "flags", "internaldate", "rfc822header", "rfc822text", "rfc822size",
                         "rfc822", "uid", "bodystructure", "body", "savedate", "binary", "binarysize")  # RFC 3516


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.integers(1, 50))
def test_a_command_cut_anywhere_reads_the_same(literals, cut):
    """However the bytes arrive, the assembler sees the same command."""
    wire = b"a LOGIN" + b"".join(b" {%d+}\r\n" % len(lit) + lit for lit in literals) + b"\r\n"
    whole = events(assembler(), wire)
    a, pieces = assembler(), []
    for i in range(0, len(wire), cut):
        pieces += events(a, wire[i : i + cut])
    assert [e.command for e in pieces] == [e.command for e in whole]
    assert whole[0].command.literals == literals
