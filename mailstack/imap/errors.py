"""How command handlers end other than with a plain tagged OK.

A handler returns the text of its tagged OK, or :data:`NO_REPLY` when it sent its own
tagged response (LOGOUT, STARTTLS, COMPRESS, IDLE, ...), or raises :class:`No` / :class:`Bad`;
store exceptions become NO with RFC 5530 response codes (:func:`store_error`).
"""

from __future__ import annotations

from mailstack.errors import (
    FolderExists,
    FolderNotFound,
    InvalidFolderName,
    KeywordLimit,
    MessageGone,
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
    return No(str(e) or "the mailbox store refused", "CANNOT")
