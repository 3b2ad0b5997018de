"""``mailstack quota show|set USER`` and the quota part of ``mailstack store check``.

``set`` edits the user's line in the users file (Dovecot's ``userdb_quota_rule`` extra fields,
through :class:`mailstack.accounts.UsersFile`, which a running server re-reads at once) and
drops the user's ``maildirsize``, so the next use recounts under the new limits.
"""

from __future__ import annotations

import os

from mailstack.accounts import Accounts, UsersFile, normalise_address
from mailstack.quotarules import format_size, parse_size
from mailstack.quotas import build_policy, limits_for


def quota_store(cfg):
    """A store with the server's quota policy (for show and store check)."""
    from mailstack.store import MaildirStore

    accounts = Accounts(cfg.users_file, domains=cfg.domains)
    store = MaildirStore(cfg.store_root, fsync=cfg.store_fsync, hostname=cfg.hostname)
    store.quota = build_policy(cfg, accounts)
    return store, accounts


def _limit(n: int, unit: str = "") -> str:
    return "no limit" if not n else f"{format_size(n) if unit else n}{unit}"


def show(cfg, user: str, as_service) -> int:
    store, accounts = quota_store(cfg)
    if user not in accounts.users:
        raise SystemExit(f"mailstack: no such user: {user}")
    limits = limits_for(cfg, accounts, user)
    own = accounts.quota(user)
    with as_service(cfg):
        usage = store.quota_usage(user)
    used = (usage.bytes, usage.messages) if usage is not None else (None, None)
    source = lambda key: "users file" if key in own else "[quota]"  # noqa: E731
    print(f"{user}:")
    print(f"  storage:  {'-' if used[0] is None else used[0]} bytes used, limit {_limit(limits.storage, 'B')} "
          f"({source('storage')})")
    print(f"  messages: {'-' if used[1] is None else used[1]} used, limit {_limit(limits.messages)} ({source('messages')})")
    if usage is not None:
        print(f"  {usage.percent():.0f}% full")
    return 0


def set_limits(cfg, user: str, storage: str | None, messages: int | None, as_service) -> int:
    if storage is None and messages is None:
        raise SystemExit("mailstack: give --storage and/or --messages")
    try:
        nbytes = None if storage is None else parse_size(storage)
    except ValueError as e:
        raise SystemExit(f"mailstack: --storage: {e}") from None
    if messages is not None and messages < 0:
        raise SystemExit("mailstack: --messages must be 0 (no limit) or more")
    users = UsersFile(cfg.users_file)
    try:
        users.set_quota(user, nbytes, messages)
    except KeyError as e:
        raise SystemExit(f"mailstack: {e.args[0]}") from None
    store, _accounts = quota_store(cfg)
    if store.exists(user):
        with as_service(cfg):
            try:
                os.unlink(os.path.join(store.user_path(user), "maildirsize"))
            except FileNotFoundError:
                pass
    print(f"set the quota of {user}" + (f": storage {_limit(nbytes, 'B')}" if nbytes is not None else "")
          + (f", messages {_limit(messages)}" if messages is not None else ""))
    return 0


def cmd_quota(args, config, as_service) -> int:
    cfg = config(args)
    user = normalise_address(args.user)
    if args.action == "show":
        return show(cfg, user, as_service)
    return set_limits(cfg, user, args.storage, args.messages, as_service)


def add_parser(sub, func) -> None:
    p = sub.add_parser("quota", help="a user's quota: usage and limits, or set their own limits")
    qsub = p.add_subparsers(dest="action", required=True)
    qsub.add_parser("show", help="usage and limits (and where each limit comes from)").add_argument("user")
    q = qsub.add_parser("set", help="set the user's own limits in the users file (0: no limit)")
    q.add_argument("user")
    q.add_argument("--storage", help='bytes, with an optional unit b/k/M/G/T, e.g. "1G"')
    q.add_argument("--messages", type=int, help="a number of messages")
    p.set_defaults(func=func)


def check_lines(store, user: str, repair: bool) -> tuple[list[str], bool]:
    """``store check``'s lines for the user's maildirsize; (lines, a problem left)."""
    from mailstack.store import check_quota

    report = check_quota(store, user, repair=repair)
    if report is None:
        return [], False
    status = "ok" if not report.problems else ("repaired" if report.repaired else "PROBLEMS")
    lines = [f"{user} quota: {report.actual[0]} bytes in {report.actual[1]} messages, {status}"]
    lines += [f"  - {p}" for p in report.problems]
    return lines, bool(report.problems) and not report.repaired
