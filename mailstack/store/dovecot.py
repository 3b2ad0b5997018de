"""Dovecot's ``dovecot-uidlist``, read when a folder has no UID state of ours (issue 18, item 1).

A Maildir that Dovecot served carries its UIDs in ``dovecot-uidlist``; taking them over keeps
UIDVALIDITY and every UID, so clients keep their caches when the store moves to mailstack.
The format (Dovecot's documentation, "Maildir Mailbox Format"):

    3 V<uidvalidity> N<uidnext> G<guid> ...        version 3 header (fields in any order)
    <uid> [<ext> ...] :<base name>                 version 3 record
    1 <uidvalidity> <uidnext>                      version 1 header
    <uid> <flags> <base name>                      version 1 record

Extension fields are a letter and a value (``W`` the CRLF size, ``S`` the size, ``G`` the GUID):
they are skipped; the name is what the file is called up to ``:2,``.  Writing the file back,
for a move to Dovecot, is not done yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

UIDLIST = "dovecot-uidlist"


@dataclass
class DovecotUids:
    uidvalidity: int
    uidnext: int
    uids: dict[str, int] = field(default_factory=dict)  # base name -> UID


def read_uidlist(folder_path: str) -> DovecotUids | None:
    """The folder's ``dovecot-uidlist``, or None if it has none (or one that cannot be read)."""
    try:
        with open(os.path.join(folder_path, UIDLIST), encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().split("\n")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    header = lines[0].split()
    if not header:
        return None
    uidvalidity = uidnext = 0
    if header[0] == "3":
        for item in header[1:]:
            if item[:1] == "V" and item[1:].isdigit():
                uidvalidity = int(item[1:])
            elif item[:1] == "N" and item[1:].isdigit():
                uidnext = int(item[1:])
    elif header[0] == "1" and len(header) >= 3 and header[1].isdigit() and header[2].isdigit():
        uidvalidity, uidnext = int(header[1]), int(header[2])
    else:
        return None
    if uidvalidity < 1:
        return None
    found = DovecotUids(uidvalidity, max(uidnext, 1))
    for line in lines[1:]:
        uid_text, _, rest = line.partition(" ")
        if not uid_text.isdigit() or not rest:
            continue
        if header[0] == "3":
            name = rest.partition(":")[2] if rest.startswith(":") else rest.partition(" :")[2]
        else:
            name = rest.partition(" ")[2]
        name = name.split(":2,", 1)[0]
        uid = int(uid_text)
        if name and "/" not in name and uid >= 1 and name not in found.uids:
            found.uids[name] = uid
            found.uidnext = max(found.uidnext, uid + 1)
    return found
