"""``SEARCH {-100}x`` and ``SEARCH {-1}`` (issue 14 item 18; Twisted #12763).

Twisted's ``parseNestedParens`` before 26.10.0 took ``{-100}`` as a literal size, moved its
cursor backwards and looped forever, pinning the reactor.  mailstack reads commands with its
own reader (imap/reader.py), which only knows ``{digits}`` / ``{digits+}`` at the end of a line
(RFC 3501 9 ``literal``, RFC 7888), so these must be BAD at once; pyproject.toml's floor on
twisted is the first release with the fix anyway, for any code that still reaches its parser.
"""

from __future__ import annotations

import time

import pytest

from support.clients import ImapClient, imap_login


@pytest.mark.parametrize("command", [b"SEARCH {-100}x", b"SEARCH {-1}", b"SEARCH {-100}", b"UID SEARCH ({-5}x)",
                                     b"SEARCH CHARSET {-1}", b"SEARCH TEXT {-100}x"])
def test_negative_literal_size_is_bad_at_once_and_the_server_lives_on(server, command):
    imap = imap_login(server)
    assert imap.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    started = time.monotonic()
    answer = imap.cmd(b"a1", command)
    elapsed = time.monotonic() - started
    assert answer[-1].startswith(b"a1 BAD "), answer
    assert not any(line.startswith(b"+") for line in answer), answer  # no literal invited
    assert elapsed < 1.0, f"{command!r} took {elapsed:.2f}s"
    assert imap.cmd(b"a2", b"NOOP")[-1].startswith(b"a2 OK")  # same session, still in step
    other = ImapClient(server.port("imap"), timeout=2)  # the reactor was never pinned
    assert other.greeting.startswith(b"* OK")
    other.close()
    imap.close()


def test_twisted_floor_is_the_first_release_fixing_12763():
    import tomllib

    import twisted
    from packaging.version import Version

    from support.servers import ROOT

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(d for d in deps if d.startswith("twisted"))
    assert floor == "twisted>=26.10.0"
    assert Version(twisted.__version__) >= Version("26.10.0")
