"""How command handlers end other than with a plain tagged OK.

A handler returns the text of its tagged OK, or :data:`NO_REPLY` when it sent its own
tagged response (LOGOUT, STARTTLS, COMPRESS, IDLE, ...), or raises :class:`No` / :class:`Bad`;
store exceptions become NO with RFC 5530 response codes (:func:`store_error`).
"""

from __future__ import annotations

import errno

from mailstack.errors import (
    FolderExists,
    FolderNotFound,
    InvalidFolderName,
    KeywordLimit,
    MessageGone,
    OverQuota,
    StoreError,
)

#: Returned by a handler that has sent its tagged response itself.
NO_REPLY = object()


class ImapError(Exception):
    status = b"NO"

    def __init__(self, text: str, code: str = ""):
        super().__init__(text)
        self.text, self.code = text, code

    def line(self) -> bytes:
        return ((f"[{self.code}] " if self.code else "") + self.text).encode("utf-8", "replace")


class No(ImapError):
    status = b"NO"


class Bad(ImapError):
    status = b"BAD"


def shown(text: bytes, limit: int = 40) -> str:
    """Client bytes quoted back in a response text: printable ASCII only (a response line
    cannot carry CR, LF or NUL), at most ``limit`` characters."""
    return "".join(chr(c) if 0x20 <= c < 0x7F else "?" for c in text[:limit])


def os_error(e: OSError) -> ImapError | None:
    """The store's file system failing in a way the client should hear about (RFC 5530):
    full or over quota, read-only or not permitted, a name too long; None for the rest."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return No("not enough disk space for that", "OVERQUOTA")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE):
        return No("the mail store cannot be written now; try again later", "UNAVAILABLE")
    if e.errno == errno.ENAMETOOLONG:
        return No("mailbox name too long for the store", "LIMIT")
    return None


class Disconnect(Exception):
    """The session is being closed; no tagged response follows."""


def store_error(e: StoreError) -> ImapError:
    """Store exceptions -> responses with RFC 5530 codes."""
    if isinstance(e, InvalidFolderName):
        return No(f"invalid mailbox name: {e}", "CANNOT")
    if isinstance(e, FolderNotFound):
        return No("no such mailbox", "NONEXISTENT")
    if isinstance(e, FolderExists):
        return No("mailbox already exists", "ALREADYEXISTS")
    if isinstance(e, KeywordLimit):
        return No(str(e), "LIMIT")
    if isinstance(e, MessageGone):
        return No("message was expunged", "EXPUNGEISSUED")
    if isinstance(e, OverQuota):  # RFC 9208 4.3.1
        return No(OVER_QUOTA, "OVERQUOTA")
    return No(str(e) or "the mailbox store refused", "CANNOT")


OVER_QUOTA = "over quota: the mailbox is full"


def quota_failed(e: ImapError, word: bytes) -> ImapError:
    """A refusal of APPEND/COPY/MOVE; the user's quota (not a full disk) worded as RFC 9208
    4.3.1's example."""
    if e.code == "OVERQUOTA" and e.text == OVER_QUOTA:
        return No(f"{word.decode()} Failed", "OVERQUOTA")
    return e
