"""The DATA decoder against a reference, for any way the stream is cut into packets."""

import pytest
from hypothesis import given, settings, strategies as st

from mailstack.smtp.message import DotDecoder


def reference(stream: bytes) -> tuple[bytes, bytes]:
    s = b"\r\n" + stream
    end = s.find(b"\r\n.\r\n")
    return s[: end + 2].replace(b"\r\n.", b"\r\n")[2:], s[end + 5 :]


pieces = st.sampled_from([b"\r\n", b".", b"..", b"a", b"bc", b"\r\n.", b"x" * 70, b"\r\n..\r\n", b"." * 70])


@settings(max_examples=2000, deadline=None)
@given(st.lists(pieces, max_size=40), st.lists(st.integers(1, 80), min_size=1, max_size=50))
def test_decoder_matches_reference_for_any_packet_boundaries(parts, cuts):
    message = b"".join(parts)
    lines = message.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    stream = stuffed + b".\r\nQUIT\r\n"
    decoder, out, pos, done, rest, i = DotDecoder(), b"", 0, False, b"", 0
    while not done:
        n = cuts[i % len(cuts)]
        i += 1
        o, done, rest = decoder.feed(stream[pos : pos + n])
        out += o
        pos += n
    expected, expected_rest = reference(stream)
    assert out == expected
    assert rest + stream[pos:] == expected_rest
    assert not decoder.bare_newline


@pytest.mark.parametrize("piece", [b"x", b".", b".\n", b".\r", b"\r\n..", b"\r\r\n"])
def test_at_most_four_bytes_are_held_back(piece):
    # Issue 14 item 1: a run of dots after CRLF was held whole and rescanned (quadratic).
    decoder = DotDecoder()
    given = 0
    decoded = 0
    for _ in range(200):
        out, done, _rest = decoder.feed(piece * (4096 // len(piece)))
        assert not done
        given += 4096 // len(piece) * len(piece)
        decoded += len(out)
        assert len(decoder._pending) <= 4
    assert decoded >= given - given // 2 - 4  # un-stuffing removes at most one dot in two


def test_bare_newlines_are_noticed():
    for stream in (b"hi\n.\r\nMAIL FROM:<a@b>\r\n.\r\n", b"a\rb\r\n.\r\n", b"a\r\n\n.\r\n"):
        decoder = DotDecoder()
        decoder.feed(stream + b"more text\r\n.\r\n")
        assert decoder.bare_newline, stream
