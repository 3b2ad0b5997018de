"""The Maildir store: the one source of truth every protocol reads and writes through.

Protocol code uses only what is exported here (``__all__``), never a module of this
package: tests/test_layout.py fails on ``mailstack.store.<module>`` imports outside it.

* :class:`MaildirStore` (the root of every user's Maildir), :class:`Mailbox` (one user's
  folders and subscriptions), :class:`MaildirFolder` (one folder): what each offers protocol
  code is spelled out by :class:`StoreAPI`, :class:`MailboxAPI` and :class:`FolderAPI`.
* :class:`FolderSnapshot`, :class:`MessageInfo`, :class:`FolderInfo`: the immutable values
  they hand out; ``SPECIAL_FOLDERS``: the folders every account has, with their RFC 6154
  attribute.
* Folder names: ``SEPARATOR``, ``normalise``, ``is_inbox``, and ``encode_mutf7`` /
  ``decode_mutf7`` (RFC 3501 5.1.3 modified UTF-7).
* :class:`FolderWatcher`: change notification on the reactor (imported on first use, so
  that ``import mailstack.store`` does not load Twisted).
* ``check_user``, ``check_folder``, :class:`FolderReport`: the consistency checker and
  repair behind ``mailstack store check``; ``check_quota``, its part for ``maildirsize``.
* :class:`QuotaPolicy`, :class:`Limits`, :class:`QuotaUsage`: per-user quotas (quota.py),
  enforced once the service sets ``MaildirStore.quota``.
"""

from mailstack.store.check import FolderReport, QuotaReport, check_folder, check_quota, check_user
from mailstack.store.folder import MaildirFolder
from mailstack.store.interface import FolderAPI, MailboxAPI, StoreAPI
from mailstack.store.mailbox import SPECIAL_FOLDERS, Mailbox
from mailstack.store.maildir import MaildirStore
from mailstack.store.quota import Limits, QuotaPolicy, QuotaUsage
from mailstack.store.names import SEPARATOR, decode_mutf7, encode_mutf7, is_inbox, normalise
from mailstack.store.snapshot import FolderInfo, FolderSnapshot, MessageInfo

__all__ = [
    "SEPARATOR",
    "SPECIAL_FOLDERS",
    "FolderAPI",
    "FolderInfo",
    "FolderReport",
    "FolderSnapshot",
    "FolderWatcher",
    "Limits",
    "Mailbox",
    "MailboxAPI",
    "MaildirFolder",
    "MaildirStore",
    "MessageInfo",
    "QuotaPolicy",
    "QuotaUsage",
    "StoreAPI",
    "QuotaReport",
    "check_folder",
    "check_quota",
    "check_user",
    "decode_mutf7",
    "encode_mutf7",
    "is_inbox",
    "normalise",
]


def __getattr__(name: str):
    if name == "FolderWatcher":
        from mailstack.store.watch import FolderWatcher

        return FolderWatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
