"""What protocol code may use of the store, as ``typing.Protocol`` classes.

:class:`~mailstack.store.MaildirStore`, :class:`~mailstack.store.Mailbox` and
:class:`~mailstack.store.MaildirFolder` satisfy these (tests/test_layout.py checks it).
Everything here blocks on disk I/O: Twisted callers run it in a thread pool.  Failures are
the exceptions of :mod:`mailstack.errors` (``UnknownUser``, ``FolderNotFound``,
``FolderExists``, ``InvalidFolderName``, ``KeywordLimit``, ``MessageGone``, ``OverQuota``,
``StoreError``).
Folder names are Unicode with ``/`` between levels (``SEPARATOR``); an IMAP session converts
them with ``encode_mutf7``/``decode_mutf7`` (RFC 3501 5.1.3).
"""

from __future__ import annotations

from typing import BinaryIO, Callable, ContextManager, Iterable, Iterator, Protocol, runtime_checkable

from mailstack.store.snapshot import FolderInfo, FolderSnapshot


@runtime_checkable
class FolderAPI(Protocol):
    """One folder.  UIDs, UIDVALIDITY and MODSEQs follow RFC 3501 2.3.1 and RFC 7162."""

    name: str
    path: str  # what a FolderWatcher subscription is keyed on

    def snapshot(self) -> FolderSnapshot:
        """The messages now (shared and immutable; reads no mail file)."""

    def uidvalidity(self) -> int:
        """UIDVALIDITY without a snapshot (cheap whatever the folder's size)."""

    def select(self, take_recent: bool) -> tuple[FolderSnapshot, list[int]]:
        """A snapshot, first claiming new/ (the UIDs this session reports \\Recent) if asked."""

    def take_recent(self) -> list[int]:
        """Claim every unclaimed message (RFC 3501 2.3.2): new/, and what APPEND with flags or
        COPY stored into cur/; return their UIDs."""

    def open_message(self, uid: int) -> BinaryIO:
        """The message in its CRLF form (RFC 5322 2.1: a file's bare LFs read as CRLF), to
        stream; raises MessageGone.  ``size`` is the CRLF size (RFC822.SIZE); ``read(n)`` is
        short only at the end; ``seek(offset)`` starts a range (on a converted file it reads
        up to the offset).  Never fstat it: a file's own size may not be the message's."""

    def read_message(self, uid: int) -> bytes:
        """The whole message in its CRLF form; raises MessageGone."""

    def read_messages(self, uids: Iterable[int]) -> dict[int, bytes]:
        """uid -> the whole message in its CRLF form, for those not expunged: many small
        messages in one call (never a large one: each is read whole)."""

    def headers(self, uids: Iterable[int]) -> dict[int, bytes]:
        """uid -> header section (blank line included), cached."""

    def derived(self, uids: Iterable[int], kind: str) -> dict[int, bytes]:
        """uid -> a value kept with :meth:`keep_derived` under ``kind``."""

    def keep_derived(self, kind: str, values: dict[int, bytes]) -> None:
        """Cache values protocol code derived from messages' (immutable) content."""

    def derived_table(self, kind: str) -> bytes | None:
        """The one folder-wide value kept with :meth:`keep_derived_table` under ``kind``."""

    def keep_derived_table(self, kind: str, value: bytes) -> None:
        """Cache one value derived from many messages (it must say which: it is not
        invalidated here)."""

    def expunged_since(self, modseq: int, uids: Iterable[int] | None = None) -> list[int]:
        """UIDs expunged after ``modseq`` (RFC 7162 QRESYNC)."""

    def append(self, source, flags: Iterable[str] = (), internaldate: int | None = None,
               assign_uid: bool = True) -> int | None:
        """Store a message durably before returning; its UID (None without ``assign_uid``)."""

    def set_flags(self, uids: Iterable[int], flags: Iterable[str], mode: str = "replace",
                  unchangedsince: int | None = None) -> tuple[dict[int, tuple[frozenset, int]], list[int]]:
        """({uid: (flags, modseq)} changed, [uids refused by UNCHANGEDSINCE])."""

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """Remove messages for good; the UIDs removed."""

    def copy(self, uids: Iterable[int], dest) -> list[tuple[int, int]]:
        """[(source uid, new uid)], flags and internal dates kept (RFC 4315 COPYUID).  Like
        ``append`` raises OverQuota (nothing copied) past the destination user's quota."""

    def move(self, uids: Iterable[int], dest) -> list[tuple[int, int]]:
        """Copy then expunge (RFC 6851 3.1)."""

    def locked(self) -> ContextManager[None]:
        """This folder's lock, across threads and processes (re-entrant)."""

    def pop3_uidls(self) -> dict[int, str]:
        """UIDs -> UIDL that another server stored for them (Dovecot's P extension)."""

    def pop3_order(self) -> dict[int, int]:
        """UIDs -> POP3 position another server stored for them (Dovecot's O extension)."""


@runtime_checkable
class MailboxAPI(Protocol):
    """One user's folder tree and subscriptions (RFC 3501 6.3)."""

    address: str
    #: The user's directory (their INBOX's Maildir).  Per-user files that are not mail (Sieve
    #: scripts in Dovecot's layout: ``sieve/`` and ``.dovecot.sieve``) live here; the store
    #: never reads them and never lists them as folders.
    path: str

    def folder(self, name: str) -> FolderAPI: ...

    def folder_exists(self, name: str) -> bool: ...

    def list_folders(self) -> list[FolderInfo]:
        """INBOX first, then every folder, with parents that exist only through children."""

    def create_folder(self, name: str) -> FolderAPI: ...

    def delete_folder(self, name: str) -> None: ...

    def rename_folder(self, old: str, new: str) -> None: ...

    def subscriptions(self) -> list[str]: ...

    def subscribe(self, name: str) -> None: ...

    def unsubscribe(self, name: str) -> None: ...

    def exclusive(self, name: str):
        """A lock one holder has at a time, across processes (an object with ``release()``), or
        None while another holds it.  ``name`` is a word (POP3 uses ``pop3``)."""


@runtime_checkable
class StoreAPI(Protocol):
    """Every user's Maildir under one root."""

    root: str
    fsync: bool
    #: Called with a folder's path after this process changed that folder.
    on_change: Callable[[str], None]

    def mailbox(self, address: str, create: bool = True) -> MailboxAPI: ...

    def exists(self, address: str) -> bool: ...

    def users(self) -> Iterator[str]: ...

    def deliver(self, address: str, source, folder: str = "INBOX", flags: Iterable[str] = ()) -> None:
        """Store a message durably in a user's folder (SMTP final delivery)."""

    def deliver_batch(self, items: list[tuple]) -> list[Exception | None]:
        """Deliver (address, source[, folder[, flags[, grace]]]) items with one flush; per item
        None or the error (OverQuota past a limit, unless ``grace``)."""

    def quota_usage(self, address: str):
        """A ``QuotaUsage`` (``bytes``, ``messages``, ``limits.storage``, ``limits.messages``;
        0 is no limit), or None for a user without limits (RFC 9208: no quota root)."""

    def check_quota(self, address: str, size: int = 0) -> None:
        """Raise OverQuota if the user is full, or would be with ``size`` more bytes."""

    def save_indexes(self) -> int:
        """Save the index of every open folder (periodically and at shutdown)."""
