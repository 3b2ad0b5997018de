"""The DATA decoder against a reference, for any way the stream is cut into packets."""

from hypothesis import given, settings, strategies as st

from mailstack.smtp.message import DotDecoder


def reference(stream: bytes) -> tuple[bytes, bytes]:
    s = b"\r\n" + stream
    end = s.find(b"\r\n.\r\n")
    return s[: end + 2].replace(b"\r\n.", b"\r\n")[2:], s[end + 5 :]


pieces = st.sampled_from([b"\r\n", b".", b"..", b"a", b"bc", b"\r\n.", b"x" * 70, b"\r\n..\r\n"])


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


def test_bounded_memory_without_line_breaks():
    decoder = DotDecoder()
    for _ in range(100):
        decoder.feed(b"x" * 65536)
    assert len(decoder._pending) <= 68


def test_bare_newlines_are_noticed():
    for stream in (b"hi\n.\r\nMAIL FROM:<a@b>\r\n.\r\n", b"a\rb\r\n.\r\n", b"a\r\n\n.\r\n"):
        decoder = DotDecoder()
        decoder.feed(stream + b"more text\r\n.\r\n")
        assert decoder.bare_newline, stream
