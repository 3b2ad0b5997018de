"""The one error a POP3 command handler raises: :class:`Pop3Error`, sent as ``-ERR``.

RFC 2449 section 8 puts an optional response code in brackets after ``-ERR``; the codes used
here are RFC 2449's ``IN-USE`` and RFC 3206's ``SYS/TEMP``, ``SYS/PERM`` and ``AUTH`` (no
login delay is enforced, so ``LOGIN-DELAY`` is never sent).  A client tells from them whether
to retry later, give up, or ask for a new password.
"""

from __future__ import annotations

SYS_TEMP = "SYS/TEMP"  # RFC 3206 section 4: a temporary failure, try again later
SYS_PERM = "SYS/PERM"  # RFC 3206 section 4: a permanent failure, retrying will not help
AUTH = "AUTH"  # RFC 3206 section 5: the credentials (or how they were sent) are the problem
IN_USE = "IN-USE"  # RFC 2449 section 8.1.2: the maildrop is locked by another session


class Pop3Error(Exception):
    """A command failed: the session answers ``-ERR [code] text`` (``-ERR text`` without code)."""

    def __init__(self, text: str, code: str | None = None):
        super().__init__(text)
        self.text, self.code = text, code

    def line(self) -> bytes:
        """The response line, without its CRLF."""
        code = f"[{self.code}] " if self.code else ""
        return f"-ERR {code}{self.text}".encode("utf-8")
