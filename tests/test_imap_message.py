"""Unit tests of the IMAP server's message model (mailstack.imap.message) and SEARCH compiler."""

from __future__ import annotations

import pytest

from mailstack.imap import message as msg
from mailstack.imap import search

NESTED = (b"From: a@b.example\r\nSubject: outer\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
          b"--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
          b"--x\r\nContent-Type: message/rfc822\r\n\r\n"
          b"From: c@d.example\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=\"y\"\r\n\r\n"
          b"--y\r\n\r\nplain\r\n--y\r\nContent-Type: text/html\r\n\r\n<b>x</b>\r\n--y--\r\n"
          b"--x--\r\n")


def test_section_paths_follow_rfc3501():
    e = msg.Entity(NESTED)
    assert e.locate((1,)).body == b"hello"
    assert e.locate((2,)).content_type == "message/rfc822"
    assert e.locate((2, 1)).body == b"plain" and e.locate((2, 1)).content_type == "text/plain"
    assert e.locate((2, 2)).body == b"<b>x</b>"
    assert e.locate((2,)).message.get("subject") == b"inner"
    with pytest.raises(KeyError):
        e.locate((3,))
    single = msg.Entity(b"Subject: s\r\n\r\nbody\r\n")
    assert single.locate((1,)).body == b"body\r\n"  # a single-part message's body is part 1


def test_bodystructure_nested_and_multipart_without_spaces():
    out = msg.sexp(msg.bodystructure(msg.Entity(NESTED), True))
    # 5 octets before the boundary, no line end of their own: 0 lines, as Dovecot counts
    assert out.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 0 NIL NIL NIL NIL)("MESSAGE" "RFC822"')
    assert b'"ALTERNATIVE" ("BOUNDARY" "y")' in out and out.endswith(b'"MIXED" ("BOUNDARY" "x") NIL NIL NIL)')
    env = msg.sexp(msg.envelope(msg.Entity(NESTED)))
    assert env == b'(NIL "outer" ((NIL NIL "a" "b.example")) ((NIL NIL "a" "b.example")) ((NIL NIL "a" "b.example")) NIL NIL NIL NIL NIL)'


def test_header_fields_keep_the_stored_bytes():
    e = msg.Entity(b"Subject: a\r\n  folded\r\nX-A: 1\r\nx-a: 2\r\nTo: t\r\n\r\nbody")
    assert e.header_fields(["X-A"], False) == b"X-A: 1\r\nx-a: 2\r\n\r\n"
    assert e.header_fields(["x-a", "to"], True) == b"Subject: a\r\n  folded\r\n\r\n"
    assert e.get("subject") == b"a  folded"


def test_multipart_edges():
    assert msg.split_multipart(b"--a\r\n\r\none\r\n--a\r\n\r\ntwo\r\n--a--", b"a") == [b"\r\none", b"\r\ntwo"]
    assert msg.split_multipart(b"no delimiter at all", b"a") == []
    assert msg.split_multipart(b"--a\r\npart\r\n--ab\r\nstill part\r\n", b"a") == [b"part\r\n--ab\r\nstill part\r\n"]
    assert msg.Entity(b"Subject: header only").body == b""
    assert msg.nstring(b'a "quoted" \\ one') == b'"a \\"quoted\\" \\\\ one"'
    assert msg.nstring(b"line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert msg.nstring("caf\u00e9".encode()) == b"{5}\r\ncaf\xc3\xa9"


def test_dates():
    assert msg.parse_date_time(b"05-Mar-2023 14:15:16 +0100") == 1678022116
    assert msg.parse_date_time(b" 5-Mar-2023 13:15:16 +0000") == 1678022116
    assert msg.format_date_time(1678022116) == b"05-Mar-2023 13:15:16 +0000"
    with pytest.raises(ValueError):
        msg.parse_date_time(b"yesterday")


def test_search_compiler():
    tree = search.compile_query([b"OR", b"SEEN", [b"FROM", b"x", b"NOT", b"1:*"], b"UID", b"5,7:*"])
    assert tree[0] == "and" and tree[1][0][0] == "or" and tree[1][1] == ("uid", [(5, 5), (7, None)])
    for bad in ([b"FROB"], [b"OR", b"SEEN"], [b"LARGER", b"x"], [b"BEFORE", b"1-Foo-2020"], [b"UID", b"0"], []):
        with pytest.raises(search.SearchSyntaxError):
            search.compile_query(bad)
    assert search.parse_seqset(b"1,3:5,*") == [(1, 1), (3, 5), (None, None)]


# -- fuzzing: whatever bytes a message holds, ENVELOPE, BODYSTRUCTURE and sections come out ----

from hypothesis import example, HealthCheck, given, settings, strategies as st  # noqa: E402

_PARTS = [b"From: ", b"To: ", b"Subject: ", b"Content-Type: ", b"multipart/mixed; boundary=", b"message/rfc822",
          b"text/plain; charset=", b"\"", b"=?utf-8?B?w6Q=?=", b"=?bad?Q?", b"\r\n", b"\r\n\r\n", b"--", b"b",
          b"--b--", b"\r\n ", b"<", b">", b"@", b",", b";", b"(", b")", b"\\", b"\x00", b"\xff", b"\xc3\xa4",
          b"Content-Transfer-Encoding: base64", b"Date: Mon, 32 Foo 2026 99:99:99 +9999", b"x" * 100]


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.sampled_from(_PARTS), st.binary(max_size=30)), max_size=60))
@example([b"Content-Type: ", b";", b"\xb5"])  # a parameter name whose upper case is not latin-1
def test_any_bytes_give_an_envelope_bodystructure_and_sections(pieces):
    raw = b"".join(pieces)
    entity = msg.Entity(raw)
    assert isinstance(msg.sexp(msg.envelope(entity)), bytes)
    for extended in (False, True):
        assert isinstance(msg.sexp(msg.bodystructure(entity, extended)), bytes)
    for path in ((1,), (1, 1), (2,), (2, 1, 1)):
        try:
            part = entity.locate(path)
        except KeyError:
            continue
        assert isinstance(part.body, bytes)
    msg.sent_date(entity)
    msg.decoded_header(entity, "subject")


_HEADER_PARTS = [b"Subject", b"subject", b"SUBJECT ", b"X-Subject", b":", b": ", b"\r\n", b"\n", b"\r", b"\r\n ",
                 b"\r\n\t", b"\r\n\r\n", b" ", b"quarterly", b"Quarterly", b"quar", b"terly", b"=?", b"x", b"To: a@b"]


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(_HEADER_PARTS), max_size=40), st.sampled_from(["subject", "to", "x-subject"]),
       st.sampled_from(["quarterly", "", "a@b", "terly"]))
def test_header_search_without_the_entity_agrees_with_the_decoded_values(pieces, name, needle):
    """search._plain_field_contains (an ASCII header without encoded words) gives what the
    entity path gives: the field is present and the needle is in its decoded value."""
    header = b"".join(pieces)
    entity = msg.Entity(header)
    expected = (any(n.lower() == name for n, _ in entity.fields)
                and needle in msg.decoded_header(entity, name).casefold())
    c = search.Candidate(None, 1, 1, None, frozenset(), False, header=header)
    assert search.matches(("header", name, needle), c, 1, 1) == expected
