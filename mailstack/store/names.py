"""Folder names: validation and the modified UTF-7 encoding of RFC 3501 section 5.1.3.

The store's public folder names are Unicode strings with ``/`` between hierarchy levels
("Work/Projects").  On disk a folder is a Maildir++ directory ``.Work.Projects`` whose
components are in modified UTF-7, exactly as Dovecot and Courier write them, so mail can be
moved between servers with rsync.  Because ``.`` separates levels on disk, it may not appear
inside a component.
"""

from __future__ import annotations

import base64

from mailstack.errors import InvalidFolderName

SEPARATOR = "/"
MAX_COMPONENT = 200
MAX_DEPTH = 16
#: One Maildir++ directory holds the whole flattened name (".a.b.c"): NAME_MAX on Linux file systems.
MAX_DIRNAME = 255


def encode_mutf7(text: str) -> str:
    """Encode Unicode as modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Decode modified UTF-7; raise InvalidFolderName on anything RFC 3501 does not allow."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            raise InvalidFolderName(f"invalid character in modified UTF-7 name: {text!r}")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise InvalidFolderName(f"unterminated modified UTF-7 shift in {text!r}")
        chunk = text[i + 1 : end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        b64 = chunk.replace(",", "/")
        if len(b64) % 4 == 1:
            raise InvalidFolderName(f"bad modified UTF-7 in {text!r}")
        try:
            decoded = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True).decode("utf-16-be")
        except (ValueError, UnicodeDecodeError):
            raise InvalidFolderName(f"bad modified UTF-7 in {text!r}") from None
        if any(0x20 <= ord(c) <= 0x7E for c in decoded):
            raise InvalidFolderName(f"non-canonical modified UTF-7 in {text!r}")
        out.append(decoded)
    return "".join(out)


def is_inbox(name: str) -> bool:
    return name.upper() == "INBOX"


def split_name(name: str) -> list[str]:
    """Validate a folder name and return its components; INBOX is normalised to ``INBOX``.

    Refuses anything that could name a path outside the user's Maildir or that Maildir++ cannot
    represent: empty components, ``.``/``..``, control characters, a ``.`` inside a component.
    A backslash is an ordinary character (RFC 3501 allows it in a quoted name).
    """
    if not isinstance(name, str) or not name:
        raise InvalidFolderName("empty folder name")
    parts = name.split(SEPARATOR)
    if len(parts) > MAX_DEPTH:
        raise InvalidFolderName(f"folder nested deeper than {MAX_DEPTH} levels")
    if is_inbox(parts[0]):
        parts[0] = "INBOX"
    for part in parts:
        if not part:
            raise InvalidFolderName(f"empty hierarchy level in {name!r}")
        if "." in part:
            raise InvalidFolderName(f"'.' is not allowed in a folder name: {name!r}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
            raise InvalidFolderName(f"control character in folder name {name!r}")
        if len(part) > MAX_COMPONENT:
            raise InvalidFolderName(f"folder name component longer than {MAX_COMPONENT} characters")
    if parts != ["INBOX"]:
        encoded = len("." + ".".join(encode_mutf7(p) for p in parts))  # modified UTF-7 is ASCII
        if encoded > MAX_DIRNAME:
            raise InvalidFolderName(f"folder name too long: its directory name would be {encoded} bytes "
                                    f"(at most {MAX_DIRNAME})")
    return parts


def normalise(name: str) -> str:
    return SEPARATOR.join(split_name(name))


def to_dirname(name: str) -> str:
    """Folder name -> Maildir++ directory name ('' for INBOX, '.Work.Projects' otherwise)."""
    parts = split_name(name)
    if parts == ["INBOX"]:
        return ""
    return "." + ".".join(encode_mutf7(p) for p in parts)


def from_dirname(dirname: str) -> str:
    """Maildir++ directory name -> folder name; raise InvalidFolderName if it is not one."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        raise InvalidFolderName(f"not a Maildir++ folder: {dirname!r}")
    parts = dirname[1:].split(".")
    if any(not p for p in parts):
        raise InvalidFolderName(f"not a Maildir++ folder: {dirname!r}")
    name = SEPARATOR.join(decode_mutf7(p) for p in parts)
    split_name(name)
    return name
