"""The Maildir store: the one source of truth every protocol reads and writes through.

Protocol code uses only what is exported here.
"""

from mailstack.store.maildir import (
    SPECIAL_FOLDERS,
    FolderInfo,
    FolderSnapshot,
    Mailbox,
    MaildirFolder,
    MaildirStore,
    MessageInfo,
)

__all__ = ["SPECIAL_FOLDERS", "FolderInfo", "FolderSnapshot", "Mailbox", "MaildirFolder", "MaildirStore", "MessageInfo"]
