"""IMAP QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA and the OVERQUOTA response code.

Every folder of a user has one quota root, ``""`` (RFC 9208 3.2: the name is the server's
choice; Dovecot's default when its quota setting names none), holding the STORAGE (units of 1024 octets, RFC 9208 5.1) and
MESSAGE (RFC 9208 5.2) resources that have a limit.  A user without limits has no quota root:
QUOTAROOT lists none and GETQUOTA "" is NO.  Limits are set by the administrator
(``mailstack quota set``): SETQUOTA is answered NO, and QUOTASET is not advertised (RFC 9208
4.1.3, 3.1).  Usage reads ``maildirsize`` in a worker thread (store.quota_usage).
"""

from __future__ import annotations

import re

from mailstack.imap.errors import Bad, No
from mailstack.imap.mailboxes import mailbox_name, wire_name

ROOT = b""
_ATOM = re.compile(rb"^[!#-'*+\-./0-9:;<=>?@A-Z^-z|~]+$")  # ATOM-CHAR without "%", "]", "{", "\\", '"'


def quota_list(usage) -> bytes:
    """``(STORAGE used limit MESSAGE used limit)`` for the resources with a limit.  STORAGE's
    usage is rounded up (a mailbox with mail never shows 0), its limit down: Dovecot's
    numbers for the same ``maildirsize`` (tests/test_quota_dovecot.py)."""
    parts = []
    if usage.limits.storage:
        parts.append(b"STORAGE %d %d" % (-(-usage.bytes // 1024), usage.limits.storage // 1024))
    if usage.limits.messages:
        parts.append(b"MESSAGE %d %d" % (usage.messages, usage.limits.messages))
    return b"(" + b" ".join(parts) + b")"


def _mailbox_out(raw: bytes, name: str, utf8: bool) -> bytes:
    """The mailbox as QUOTAROOT names it: the client's own spelling when it is an atom."""
    return raw if _ATOM.match(raw) else wire_name(name, utf8)


async def getquotaroot(s, tag, raw_name):
    """RFC 9208 4.1.2: ``* QUOTAROOT mailbox ""`` then ``* QUOTA "" (...)``."""
    name = mailbox_name(raw_name, utf8=s.utf8)
    mailbox, store, address = s.mailbox, s.context.store, s.address

    def work():
        if not mailbox.folder_exists(name):
            raise No("no such mailbox", "NONEXISTENT")
        return store.quota_usage(address)

    usage = await s.store_call(work)
    shown = _mailbox_out(raw_name, name, s.utf8)
    if usage is None:
        s.untagged(b"QUOTAROOT " + shown)
    else:
        s.untagged(b'QUOTAROOT ' + shown + b' ""')
        s.untagged(b'QUOTA "" ' + quota_list(usage))
    return b"Getquotaroot completed"


async def getquota(s, tag, root):
    """RFC 9208 4.1.1: the one root ``""``; NO for any other (or for a user without limits)."""
    store, address = s.context.store, s.address
    usage = await s.store_call(store.quota_usage, address) if root == ROOT else None
    if usage is None:
        raise No("no such quota root", "NONEXISTENT")
    s.untagged(b'QUOTA "" ' + quota_list(usage))
    return b"Getquota completed"


async def setquota(s, tag, words):
    """RFC 9208 4.1.3: ``NO`` (the result for "can't set that data"): limits are the
    administrator's.  Malformed arguments are BAD first."""
    if len(words) != 2 or not isinstance(words[1], list):
        raise Bad("SETQUOTA takes a quota root and a list of resource limits")
    raise No("quota limits are set by the administrator", "NOPERM")

