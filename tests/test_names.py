"""Folder names: modified UTF-7 (RFC 3501 5.1.3), validation, Maildir++ directory names."""

from __future__ import annotations

import pytest

from mailstack.errors import InvalidFolderName
from mailstack.store import names

# -- modified UTF-7 ----------------------------------------------------------------------------

RFC_EXAMPLES = [
    # RFC 3501 5.1.3
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    # RFC 2152 / common client examples
    ("Entwürfe", "Entw&APw-rfe"),
    ("Gelöschte Elemente", "Gel&APY-schte Elemente"),
    ("Входящие", "&BBIERQQ+BDQETwRJBDgENQ-"),
    ("A&B", "A&-B"),
    ("&", "&-"),
    ("&&", "&-&-"),
    ("plain ascii ~!#", "plain ascii ~!#"),
    ("😀", "&2D3eAA-"),  # astral plane: a UTF-16 surrogate pair
    ("é&é", "&AOk-&-&AOk-"),
]


@pytest.mark.parametrize("text,encoded", RFC_EXAMPLES)
def test_mutf7_known_encodings(text, encoded):
    assert names.encode_mutf7(text) == encoded
    assert names.decode_mutf7(encoded) == text


def test_mutf7_rfc3501_example_decodes():
    assert names.decode_mutf7("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"


@pytest.mark.parametrize(
    "text",
    ["", "INBOX", "a b c", "日本語", "x日y本z", "über&unter", "\u00a0", "Ω" * 50, "mixed 😀 & ü", "~/&-/&"],
)
def test_mutf7_round_trip(text):
    encoded = names.encode_mutf7(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert encoded.count("/") == text.count("/")  # base64 "/" is written ","
    assert names.decode_mutf7(encoded) == text


def test_mutf7_matches_python_utf7_codec():
    """Independent reference: RFC 2152 UTF-7 with "&" for "+" and "," for "/" in the base64."""
    for text in ["台北", "日本語", "Входящие", "ü", "😀"]:
        std = text.encode("utf-7").decode("ascii")  # "+<base64>-" or "+<base64>" at the end
        body = std[1:].rstrip("-")
        assert names.encode_mutf7(text).startswith("&" + body.replace("/", ",") + "-")


def test_mutf7_encoding_never_uses_slash_in_base64():
    # "台" (U+53F0) encodes with a base64 "/" which mUTF-7 writes as ","
    enc = names.encode_mutf7("台北")
    assert enc == "&U,BTFw-"
    assert "/" not in enc


@pytest.mark.parametrize(
    "bad",
    [
        "&U,BTFw",  # unterminated shift
        "abc&",  # unterminated, nothing after
        "&AGE-",  # encodes "a": printable ASCII must not be base64-encoded
        "&ACY-",  # encodes "&": must be written "&-"
        "&AC0-",  # encodes "-"
        "&ZeVnLIqe!-",  # "!" is not base64
        "&ZeV/Lqe-",  # "/" instead of "," inside the shift
        "&A-",  # one base64 char: not a whole byte
        "&AA-",  # one byte: not a whole UTF-16 unit
        "&2D0-",  # lone high surrogate
        "tab\there",  # control character outside a shift
        "caf\u00e9",  # raw 8-bit character outside a shift
    ],
)
def test_mutf7_rejects_invalid(bad):
    with pytest.raises(InvalidFolderName):
        names.decode_mutf7(bad)


# -- folder name validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "..",
        ".",
        "a/../b",
        "../etc",
        "a/./b",
        "a..b",
        ".hidden",
        "Work.Projects",
        "/",
        "/abs",
        "trailing/",
        "a//b",
        "..\\..",
        "nul\x00byte",
        "new\nline",
        "del\x7f",
        "esc\x1b[0m",
        "x" * (names.MAX_COMPONENT + 1),
        "/".join(["d"] * (names.MAX_DEPTH + 1)),
    ],
)
def test_split_name_rejects(bad):
    with pytest.raises(InvalidFolderName):
        names.split_name(bad)
    with pytest.raises(InvalidFolderName):
        names.to_dirname(bad)


def test_a_backslash_is_an_ordinary_character():
    # RFC 3501 allows it in a (quoted) mailbox name; only what Maildir++ cannot hold is refused.
    assert names.split_name("a\\b") == ["a\\b"]
    assert names.to_dirname("Work/a\\b") == ".Work.a\\b"
    assert names.from_dirname(".bad\\name") == "bad\\name"


def test_split_name_rejects_non_str():
    with pytest.raises(InvalidFolderName):
        names.split_name(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidFolderName):
        names.split_name(b"INBOX")  # type: ignore[arg-type]


def test_limits_are_inclusive():
    assert names.split_name("x" * names.MAX_COMPONENT) == ["x" * names.MAX_COMPONENT]
    deep = "/".join(["d"] * names.MAX_DEPTH)
    assert len(names.split_name(deep)) == names.MAX_DEPTH


@pytest.mark.parametrize("spelling", ["INBOX", "inbox", "Inbox", "iNbOx"])
def test_inbox_is_case_insensitive(spelling):
    assert names.is_inbox(spelling)
    assert names.normalise(spelling) == "INBOX"
    assert names.to_dirname(spelling) == ""
    assert names.normalise(spelling + "/Sub") == "INBOX/Sub"
    assert names.to_dirname(spelling + "/Sub") == ".INBOX.Sub"


def test_other_names_keep_their_case():
    assert names.normalise("Work/Projects") == "Work/Projects"
    assert names.normalise("work/INBOX") == "work/INBOX"  # only the first level is special
    assert not names.is_inbox("INBOXES")
    assert names.to_dirname("Inboxes") == ".Inboxes"


# -- Maildir++ directory names --------------------------------------------------------------


@pytest.mark.parametrize(
    "name,dirname",
    [
        ("Sent", ".Sent"),
        ("Work/Projects", ".Work.Projects"),
        ("~peter/mail/台北/日本語", ".~peter.mail.&U,BTFw-.&ZeVnLIqe-"),
        ("A&B", ".A&-B"),
        ("Entwürfe/2024", ".Entw&APw-rfe.2024"),
        ("with space", ".with space"),
    ],
)
def test_dirname_round_trip(name, dirname):
    assert names.to_dirname(name) == dirname
    assert names.from_dirname(dirname) == name


@pytest.mark.parametrize(
    "name", ["a", "Deep/er/and/deeper", "日本語/中文/한국어", "x&y/&/z", "Ωmega 😀", "1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16"]
)
def test_to_from_dirname_round_trip(name):
    d = names.to_dirname(name)
    assert d.startswith(".") and "/" not in d
    assert names.from_dirname(d) == name


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "Sent",  # no leading dot: not a Maildir++ folder
        "cur",
        "..Sent",
        ".Sent.",
        ".a..b",
        ".&AGE-",  # non-canonical mUTF-7
        ".&U,BTFw",  # unterminated
        ".&AAA-",  # decodes to U+0000
    ],
)
def test_from_dirname_rejects(bad):
    with pytest.raises(InvalidFolderName):
        names.from_dirname(bad)
