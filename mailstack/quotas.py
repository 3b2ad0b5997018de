"""The quota policy the store enforces, from ``[quota]`` and the users file (glue between
:mod:`mailstack.config`, :mod:`mailstack.accounts` and :mod:`mailstack.store.quota`).

A user's limit is their own (the users file's ``userdb_quota_rule`` extra fields, read by
:meth:`mailstack.accounts.Accounts.quota`) where set, else ``[quota]``'s; 0 is no limit.
"""

from __future__ import annotations

from mailstack.store import Limits, QuotaPolicy


def limits_for(cfg, accounts, address: str) -> Limits:
    own = accounts.quota(address)
    q = cfg.quota
    return Limits(own.get("storage", q["storage"]), own.get("messages", q["messages"]))


def build_policy(cfg, accounts) -> QuotaPolicy:
    """What ``MaildirStore.quota`` is set to (service start, and the CLI's store check)."""
    q = cfg.quota
    return QuotaPolicy(lambda address: limits_for(cfg, accounts, address), permanent=q["smtp_reply"] == "permanent",
                       warning_percent=q["warning_percent"], hostname=cfg.hostname, fsync=cfg.store_fsync)
