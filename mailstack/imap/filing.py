"""What a user filed where, for whoever listens (``context.filed``: learning from Junk,
mailstack.antispam.learning): after a successful COPY, MOVE or APPEND the session reports
the special use (RFC 6154) of the source folder (None for APPEND) and of the destination,
and the new UIDs.  The listener only schedules its work, so the tagged reply is not delayed."""

from __future__ import annotations

from twisted.logger import Logger

log = Logger()


def wanted(s) -> bool:
    return getattr(s.context, "filed", None) is not None


def special_uses(mailbox) -> dict:
    """*Blocking.*  Folder name -> its special use (or None)."""
    return {info.name: info.special_use for info in mailbox.list_folders()}


def report(s, uses: dict, source: str | None, dest, uids: list[int]) -> None:
    """Tell ``context.filed``; its failure is logged, never the client's."""
    if not uids:
        return
    try:
        s.context.filed(s.address, uses.get(source) if source is not None else None, uses.get(dest.name), dest, uids)
    except Exception:
        log.failure("reporting filed messages failed")
