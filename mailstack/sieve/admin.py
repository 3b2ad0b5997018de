"""``mailstack sieve ...``: what the admin command does with one user's scripts (the parser
and the switch to the service user are in :mod:`mailstack.cli`)."""

from __future__ import annotations

import os
import sys

from mailstack.sieve import scripts as sv

USAGE = {"put": "USER NAME [FILE]", "get": "USER NAME", "list": "USER", "activate": "USER NAME",
         "deactivate": "USER", "delete": "USER NAME", "check": "USER [NAME] [FILE]"}


def check_arguments(args) -> None:
    usage = USAGE[args.action]
    if ("NAME" in usage and "[NAME]" not in usage and not args.name) or ("NAME" not in usage and args.name) or (
            "FILE" not in usage and args.file):
        raise SystemExit(f"mailstack: usage: mailstack sieve {args.action} {usage}")


def _stored(store: sv.ScriptStore, name: str) -> bool:
    try:
        return store.exists(name)
    except sv.BadScriptName:
        return False


def run(store: sv.ScriptStore, args) -> int:
    """Do ``args.action`` on one user's scripts; what it says goes to standard output."""

    def given() -> bytes:
        if not args.file or args.file == "-":
            return sys.stdin.buffer.read(store.max_size + 1)
        with open(args.file, "rb") as f:
            return f.read(store.max_size + 1)

    if args.action == "list":
        for name, active in store.list():
            print(name + (" (active)" if active else ""))
    elif args.action == "get":
        sys.stdout.buffer.write(store.get(args.name))
    elif args.action in ("put", "check"):
        if args.action == "check" and args.name and not args.file and os.path.isfile(args.name) and not _stored(
                store, args.name):
            args.name, args.file = None, args.name  # "check USER FILE": a file, not a stored script
        name = args.name or ("" if args.file and args.action == "check" else store.active_name())
        if name is None:
            raise SystemExit("mailstack: no script is active: name one")
        data = given() if args.action == "put" or args.file else store.get(name)
        if args.action == "put":
            store.check_space(name, len(data))
        try:
            sv.check_script(data.decode("utf-8"), name)
        except UnicodeDecodeError:
            raise SystemExit("mailstack: the script is not valid UTF-8") from None
        if args.action == "check":
            print(f"valid: {args.file if args.file and args.file != '-' else name}")
            return 0
        store.put(name, data)
        if args.activate:
            store.activate(name)
        print(f"stored {name}" + (" (active)" if args.activate else ""))
    elif args.action == "activate":
        store.activate(args.name)
        print(f"active: {args.name}")
    elif args.action == "deactivate":
        store.activate("")
        print("no script is active")
    else:
        store.delete(args.name)
        print(f"deleted {args.name}")
    return 0
