"""Errors shared across mailstack.

Policy and store code raise; protocol sessions turn the error into their own reply.  A
:class:`MailError` carries everything a reply needs (maddy's ``exterrors`` and mox's
``xsmtpUserErrorf`` work the same way): the SMTP reply code, the enhanced status code of
RFC 3463, whether the failure is temporary, a text safe to show the client and, apart from
it, the cause for the log.
"""

from __future__ import annotations


class MailstackError(Exception):
    """Base class of every error mailstack raises on purpose."""


class ConfigError(MailstackError):
    """Invalid configuration.  The message names the file, the key and what is wrong."""

    def __init__(self, path: str, key: str | None, problem: str):
        self.path, self.key, self.problem = path, key, problem
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + problem)


class MailError(MailstackError):
    """A failure with a protocol-neutral description of how to report it.

    ``text`` is what the client is told; ``cause`` (an exception or a string) is what went
    wrong inside, for the log only and never sent (maddy's ``exterrors`` keep them apart the
    same way).
    """

    def __init__(self, code: int, enhanced: str, text: str, cause: object = None):
        self.code, self.enhanced, self.text, self.cause = code, enhanced, text, cause
        super().__init__(f"{code} {enhanced} {text}")

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class StoreError(MailstackError):
    """Base of store failures; protocols map them to NO / -ERR / 4xx replies."""


class InvalidFolderName(StoreError):
    pass


class FolderNotFound(StoreError):
    pass


class FolderExists(StoreError):
    pass


class MessageGone(StoreError):
    """The message was expunged (possibly by another session or process)."""


class KeywordLimit(StoreError):
    """Maildir filenames hold at most 26 keywords per folder (letters a-z)."""


class UnknownUser(StoreError):
    pass


class OverQuota(MailError, StoreError):
    """An addition (delivery, APPEND, COPY, MOVE to another user) would exceed the user's
    storage or message limit.  ``code``/``enhanced`` are 452 4.2.2 (temporary, RFC 3463
    X.2.2 "mailbox full") or 552 5.2.2 as ``[quota] smtp_reply`` says; IMAP answers
    ``NO [OVERQUOTA]`` (RFC 9208 4.3).  Also a :class:`StoreError`, so that code catching
    store failures catches this one too."""

    def __init__(self, text: str = "Mailbox is full", permanent: bool = False, cause: object = None):
        code, enhanced = (552, "5.2.2") if permanent else (452, "4.2.2")
        super().__init__(code, enhanced, text, cause)
