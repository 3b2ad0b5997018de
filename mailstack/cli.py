"""The ``mailstack`` administration command.

    mailstack init --dev [--dir var]
    mailstack init --hostname HOST --domain DOMAIN... [--dir /etc/mailstack] [--data-dir /var/lib/mailstack]
                   [--ports standard|dev|any] [--listen ADDRESS] [--user NAME]
    mailstack install-files [--systemd-dir /etc/systemd/system] [--dir /etc/mailstack]
    mailstack [--config FILE] config check
    mailstack [--config FILE] user add|passwd|del|list ...
    mailstack [--config FILE] alias add|del|list ...
    mailstack [--config FILE] store check [--repair] USER
    mailstack [--config FILE] queue list|show ID|retry ID|delete ID|flush|hold USER|release USER
    mailstack [--config FILE] dkim genkey DOMAIN [--ed25519]
    mailstack [--config FILE] dns [DOMAIN] [--check]
    mailstack [--config FILE] acme status|renew
    mailstack [--config FILE] srs forward|reverse ADDRESS

The configuration is ``--config``, else ``$MAILSTACK_CONFIG``, else ``var/mailstack.toml`` when
present, else ``/etc/mailstack/mailstack.toml``.  Passwords are read from a prompt or from
``--password-file`` (``-`` for standard input), never from the command line, where ``ps``
would show them.  Edits go to the files a running server watches, so they apply at once.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys

from mailstack import __version__, config as config_mod
from mailstack import fileaccess, privileges
from mailstack.accounts import AliasesFile, UsersFile, normalise_address, valid_address
from mailstack.passwords import configure_argon2, hash_password
from mailstack.errors import ConfigError, MailstackError


def _read_password(args) -> str:
    if args.password_file == "-":
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit("mailstack: the passwords differ")
    if not password:
        raise SystemExit("mailstack: empty password")
    return password


def _config(args) -> config_mod.Config:
    return config_mod.load(args.config or config_mod.default_path())


@contextlib.contextmanager
def _as_service(cfg: config_mod.Config):
    """Run the block as the service user when root runs the command (mailstack.privileges):
    what it makes under the data directories is then the service's, not root's."""
    user = privileges.service_user(cfg)
    umask = os.umask(0o077)  # the service's (systemd/mailstack.service): what it makes is private
    try:
        with privileges.acting_as(user):
            yield
    except PermissionError as e:
        if user is None:
            raise
        raise SystemExit(f"mailstack: {e.strerror}: {e.filename} (written as the service user {user.name}, "
                         f"who must own the data directories: chown -R {user.name}: {e.filename})") from None
    finally:
        os.umask(umask)


def cmd_init(args) -> int:
    """``--dev``: a throw-away set-up on loopback; otherwise a production configuration."""
    from mailstack import prodinit

    try:
        if args.dev:
            if args.hostname or args.domain or args.data_dir or args.ports or args.listen or args.user is not None:
                print("mailstack init: --dev takes only --dir (it makes its own names, ports and CA)", file=sys.stderr)
                return 2
            from mailstack.devinit import init_dev

            directory = args.dir or "var"
            passwords = init_dev(directory)
            print(f"made {directory}/mailstack.toml, a dev CA in {directory}/tls/, users:")
            for address, password in passwords.items():
                print(f"  {address}  password: {password}")
            return 0
        if not args.hostname or not args.domain:
            print("mailstack init: give --hostname and --domain (or --dev for a throw-away set-up on loopback)",
                  file=sys.stderr)
            return 2
        path = prodinit.init_production(args.dir or prodinit.DEFAULT_DIR, args.data_dir or prodinit.DEFAULT_DATA_DIR,
                                        args.hostname, args.domain, args.ports or "standard", args.listen or "",
                                        "mailstack" if args.user is None else args.user, args.acme or "")
    except (prodinit.InitError, FileExistsError) as e:
        print(f"mailstack init: {e}", file=sys.stderr)
        return 2
    print(prodinit.next_steps(path, args.hostname, args.domain, "mailstack" if args.user is None else args.user,
                              bool(args.acme)))
    return 0


def cmd_install_files(args) -> int:
    from mailstack.shipped import install_files

    for path in install_files(args.systemd_dir, args.dir):
        print(f"wrote {path}")
    print("then: systemctl daemon-reload && systemctl enable --now mailstack")
    return 0


def cmd_config(args) -> int:
    """Load the configuration as start-up does (types, files, modes, keys) and say so."""
    cfg = _config(args)
    user = privileges.service_user(cfg)
    with privileges.acting_as(user):  # as root: check again as the service will, with its access rights
        cfg = _config(args)
        fileaccess.check_maildirs(cfg.path, cfg.store_root)
    running = _running_pid(cfg)
    if args.skip_ports or running:
        note = f"; ports not checked: mailstack is running as pid {running}" if running else "; ports not checked"
    else:
        _check_ports(cfg)
        note = f"; {len(cfg.listeners)} listeners can bind"
    print(f"{cfg.path}: ok" + (f" (checked as user {user.name})" if user else "") + note)
    return 0


def _running_pid(cfg: config_mod.Config) -> int | None:
    """The pid in the ports file of a server that is running now, if any."""
    import json

    try:
        with open(cfg.ports_file) as f:
            pid = int(json.load(f)["pid"])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_ports(cfg: config_mod.Config) -> None:
    """Bind every listener's endpoint and let it go again: what start-up would do first."""
    from twisted.internet import endpoints, protocol, reactor

    for lst in cfg.listeners:
        if lst.endpoint.startswith("systemd:"):
            continue  # systemd holds those sockets
        result = []
        endpoints.serverFromString(reactor, lst.endpoint).listen(protocol.Factory()).addBoth(result.append)
        port = result[0] if result else None
        if not hasattr(port, "getHost"):
            reason = getattr(getattr(port, "value", None), "socketError", None) or getattr(port, "value", port)
            raise ConfigError(cfg.path, f"[listeners] {lst.key}", f"cannot listen on {lst.endpoint}: {reason}")
        port.stopListening()


def cmd_user(args) -> int:
    cfg = _config(args)
    configure_argon2(cfg.auth["argon2_time_cost"], cfg.auth["argon2_memory_kib"], cfg.auth["argon2_parallelism"])
    users = UsersFile(cfg.users_file)
    users.refresh()
    if args.action == "list":
        for user in sorted(users.users):
            print(user)
        return 0
    address = normalise_address(args.address)
    if not valid_address(address):
        raise SystemExit(f"mailstack: not a usable address: {args.address!r}")
    if args.action in ("add", "passwd"):
        domain = address.rpartition("@")[2]
        if args.action == "add" and domain not in cfg.domains:
            raise SystemExit(f"mailstack: {domain} is not one of [server] domains in {cfg.path}")
        try:
            stored = hash_password(_read_password(args))
        except ValueError as e:
            raise SystemExit(f"mailstack: unusable password: {e}")
        try:
            users.set(address, stored, must_exist=(args.action == "passwd"))
        except KeyError as e:
            raise SystemExit(f"mailstack: {e.args[0]}")
        if args.action == "add":
            from mailstack.store import MaildirStore

            with _as_service(cfg):
                MaildirStore(cfg.store_root, fsync=cfg.store_fsync).mailbox(address)
        print(f"{'added' if args.action == 'add' else 'changed password of'} {address}")
    elif args.action == "del":
        try:
            users.set(address, "", must_exist=True)
        except KeyError as e:
            raise SystemExit(f"mailstack: {e.args[0]}")
        print(f"deleted {address} (its mail stays in the store)")
    return 0


def cmd_alias(args) -> int:
    cfg = _config(args)
    if not cfg.aliases_file:
        raise SystemExit(f"mailstack: no [accounts] aliases file is set in {cfg.path}")
    aliases = AliasesFile(cfg.aliases_file)
    aliases.refresh()
    if args.action == "list":
        for source, targets in sorted(aliases.aliases.items()):
            print(f"{source}: {', '.join(targets)}")
        return 0
    try:
        if args.action == "add":
            source = normalise_address(args.source)
            if not (valid_address(source) or (source.startswith("@") and valid_address("x" + source))):
                raise SystemExit(f"mailstack: not an address or @domain: {args.source!r}")
            bad = [t for t in args.targets if not valid_address(normalise_address(t))]
            if bad:
                raise SystemExit(f"mailstack: not an address: {bad[0]!r}")
            aliases.add(source, args.targets)
            print(f"added {source}: {', '.join(args.targets)}")
        else:
            aliases.delete(args.source)
            print(f"deleted {normalise_address(args.source)}")
    except KeyError as e:
        raise SystemExit(f"mailstack: {e.args[0]}")
    return 0


def cmd_store(args) -> int:
    cfg = _config(args)
    if bool(args.user) == args.all:
        raise SystemExit("mailstack: name one USER or --all")
    with _as_service(cfg):
        return _store_check(cfg, args)


def _store_check(cfg, args) -> int:
    from mailstack.store import MaildirStore, check_user

    store = MaildirStore(cfg.store_root, fsync=cfg.store_fsync)
    users = list(store.users()) if args.all else [normalise_address(args.user)]
    bad = 0
    for user in users:
        for report in check_user(store, user, repair=args.repair):
            status = "ok" if not report.problems else ("repaired" if report.repaired else "PROBLEMS")
            notes = [f"{report.from_dovecot} UIDs from dovecot-uidlist, taken over at the first opening"] \
                if report.from_dovecot else []
            notes += [f"{report.waiting} in new/ waiting for their first listing"] if report.waiting else []
            notes += [f"{report.stale_cache} cache entries of expunged messages"] if report.stale_cache else []
            notes += [f"{report.expunged_elsewhere} expunged by another program"] if report.expunged_elsewhere else []
            notes_text = f" ({'; '.join(notes)})" if notes else ""
            print(f"{user} {report.folder}: {report.messages} messages, {status}{notes_text}")
            for problem in report.problems:
                print(f"  - {problem}")
            bad += bool(report.problems) and not report.repaired
    return 1 if bad else 0


def cmd_queue(args) -> int:
    from mailstack.outbound.queue import OutboundQueue

    cfg = _config(args)
    with _as_service(cfg):
        return _queue_command(OutboundQueue(cfg.queue_dir, cfg.store_fsync), args)


def _queue_command(queue, args) -> int:
    import datetime

    def when(t: float) -> str:
        return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")

    if args.action == "list":
        entries, held = list(queue.all()), queue.held_users()
        if not entries:
            print("queue is empty")
        for env, where in entries:
            pending = [r.address for r in env.pending()]
            where = "held" if env.user and env.user in held else where
            print(f"{env.id}  {where:<7} {env.size:>9} bytes  from <{env.sender}>  attempts {env.attempts}  "
                  f"next {when(env.next_attempt)}  to {', '.join(pending)}")
        return 0
    if args.action in ("hold", "release"):
        ids = queue.hold(args.user, held=args.action == "hold")
        print(f"{args.user}: {len(ids)} queued messages " + ("held (and what the user queues until released)"
                                                           if args.action == "hold" else "released, due now"))
        return 0
    if args.action == "flush":
        n = sum(queue.reschedule(env.id) for env, where in list(queue.all()) if where == "waiting")
        print(f"{n} messages due now")
        return 0
    found = queue.load(args.id)
    if found is None:
        raise SystemExit(f"mailstack: no queued message {args.id}")
    env, where = found
    if args.action == "show":
        print(f"id {env.id} ({where}), from <{env.sender}>, {env.size} bytes, queued {when(env.created)}, "
              f"attempts {env.attempts}, next {when(env.next_attempt)}"
              + (f", {env.interrupted} interrupted by a crash" if env.interrupted else "")
              + (f", submitted by {env.user}" + (" (held)" if env.user in queue.held_users() else "") if env.user else ""))
        for r in env.recipients:
            detail = f"  last: {r.code} {r.diagnostic}" + (f" ({r.remote_mta})" if r.remote_mta else "") if r.code else ""
            print(f"  {r.address}: {r.status}{detail}")
        with queue.open_message(env.id) as f:
            head = f.read(64 * 1024).split(b"\r\n\r\n", 1)[0]
        print(head.decode("utf-8", "replace"))
        return 0
    if where != "waiting":
        raise SystemExit(f"mailstack: {env.id} is being delivered right now; try again in a moment")
    if args.action == "retry":
        queue.reschedule(env.id)
        print(f"{env.id} due now")
    elif args.action == "delete":
        queue.delete(env.id)
        print(f"deleted {env.id} (no bounce is sent)")
    return 0


def cmd_dkim(args) -> int:
    from mailstack.smtp import authentication

    cfg = _config(args)
    domain = args.domain.lower()
    if domain not in cfg.domains:
        raise SystemExit(f"mailstack: {domain} is not one of [server] domains in {cfg.path}")
    selector = args.selector or cfg.dkim["selector"]
    with _as_service(cfg):  # the service reads the key: it must own it
        records = authentication.generate_keys(cfg.dkim["keys"], domain, selector, args.ed25519 or cfg.dkim["ed25519"])
    paths = authentication.key_paths(cfg.dkim["keys"], domain, selector)
    print(f"; keys in {os.path.dirname(paths['rsa'])}; publish:")
    for algorithm, value in records.items():
        name = selector if algorithm == "rsa" else authentication.ed25519_selector(selector)
        print(f'{name}._domainkey.{domain}. TXT "{value}"   ; {algorithm}')
    return 0


def cmd_dns(args) -> int:
    from mailstack import dnsrecords
    from mailstack.smtp import authentication

    cfg = _config(args)
    domains = [args.domain.lower()] if args.domain else cfg.domains
    bad = 0
    for domain in domains:
        records = dnsrecords.records_for(cfg, domain)
        if not args.check:
            print(f"; DNS records for {domain} (mail host {cfg.hostname})")
            print(dnsrecords.format_zone(records))
            print(f"; MTA-STS policy to serve at https://mta-sts.{domain}/.well-known/mta-sts.txt:")
            print("\n".join("; " + line for line in dnsrecords.mta_sts_policy(cfg).splitlines()))
            continue
        resolver = authentication.set_default_resolver(cfg.dns["nameservers"], cfg.dns["port"], cfg.dns["timeout"])
        for record, status, found in dnsrecords.check(records, resolver):
            bad += status != "ok"
            detail = f"  found: {found}" if found and status != "ok" else ""
            print(f"{status.upper():<8} {record.name} {record.rtype}{detail}" + (f"\n         want: {record.value}" if status != "ok" else ""))
    return 1 if bad else 0


def cmd_acme(args) -> int:
    """The ACME state of ``[acme] state``: what it holds, or ask the server for a new
    certificate now (it orders one at its next check, or at once on SIGHUP)."""
    import datetime

    from mailstack.acmecert import AcmeState

    cfg = _config(args)
    if not cfg.acme["enabled"]:
        raise SystemExit(f"mailstack: [acme] enabled is not true in {cfg.path}")
    state = AcmeState(cfg.acme["state"])
    if not os.path.isdir(state.dir):
        raise SystemExit(f"mailstack: no ACME state in {state.dir} yet: has the server run with [acme] enabled?")

    def when(t) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"

    if args.action == "renew":
        with _as_service(cfg):  # the service removes the request when it starts on it
            state.request_renewal()
        print(f"renewal asked for in {state.renew_flag}; the server orders a certificate at its next check "
              f"(within {cfg.acme['check_interval']:.0f} s), or now on SIGHUP (systemctl reload mailstack)")
        return 0
    status = state.status()
    print(f"directory   {cfg.acme['directory']}")
    print(f"names       {', '.join(cfg.acme['names'])}")
    if status.get("issued"):
        print(f"certificate {state.cert}, serial {status.get('serial')}, for {', '.join(status.get('names', []))}")
        print(f"            issued {when(status['issued'])}, valid until {when(status.get('not_after'))}")
    else:
        print("certificate none issued yet (a placeholder or the [tls] files are served)")
    if status.get("failures"):
        print(f"failures    {status['failures']} in a row, the last {when(status.get('last_failure'))}: {status.get('last_error')}")
        print(f"next try    {when(status.get('next_attempt'))}")
    if state.renewal_requested():
        print("renewal     asked for, not started yet")
    return 0


def cmd_srs(args) -> int:
    """The envelope sender a forwarded copy from ADDRESS gets, or what an SRS address stands for."""
    from mailstack.srs import cmd_srs

    cfg = _config(args)
    with _as_service(cfg):  # the first use makes the key file: the service's own
        return cmd_srs(cfg, args.action, args.address)


def _add_srs_command(sub) -> None:
    p = sub.add_parser("srs", help="the Sender Rewriting Scheme of forwarded mail ([srs]), for debugging")
    ssub = p.add_subparsers(dest="action", required=True)
    ssub.add_parser("forward", help="the SRS sender a forwarded copy from ADDRESS gets").add_argument("address")
    ssub.add_parser("reverse", help="check an SRS address of ours and print the address it stands for "
                    "(exit 1: forged, expired or malformed)").add_argument("address")
    p.set_defaults(func=cmd_srs)


def _add_setup_commands(sub) -> None:
    """``init`` and ``install-files``: setting a server up."""
    p = sub.add_parser("init", help="make a configuration: production (--hostname, --domain) or --dev")
    p.add_argument("--dev", action="store_true", help="a throw-away development set-up on loopback, with demo users")
    p.add_argument("--hostname", help="production: this server's fully qualified name (the MX host), e.g. mail.example.org")
    p.add_argument("--domain", action="append", help="production: a domain whose mail is delivered here (repeatable)")
    p.add_argument("--dir", help="where the configuration goes (default: /etc/mailstack; with --dev: var)")
    p.add_argument("--data-dir", help="production: store, queue, DKIM keys, ACME state (default: /var/lib/mailstack)")
    p.add_argument("--ports", choices=("standard", "dev", "any"),
                   help="production: standard (25, 587, ...: the default), dev (2525, 2587, ...) or any "
                        "(port 0: free ports, written to the ports file; for tests)")
    p.add_argument("--listen", help="production: listen on this IP address only (default: every IPv4 address)")
    p.add_argument("--user", help='production: [server] user, the service user (default: mailstack; "": stay whoever starts it)')
    p.add_argument("--acme", metavar="CONTACT", help="production: get the certificate by ACME (Let's Encrypt), with this "
                   "contact address for the CA's notices, instead of [tls] files")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("install-files", help="install the systemd unit and the reference configuration")
    p.add_argument("--systemd-dir", default="/etc/systemd/system", help="for mailstack.service (default: /etc/systemd/system)")
    p.add_argument("--dir", default="/etc/mailstack", help="for mailstack.toml.example (default: /etc/mailstack)")
    p.set_defaults(func=cmd_install_files)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailstack", description="Administer a mailstack mail server.")
    parser.add_argument("--version", action="version", version=f"mailstack {__version__}")
    parser.add_argument("--config", help="configuration file (default: $MAILSTACK_CONFIG, var/mailstack.toml, /etc/mailstack/mailstack.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_setup_commands(sub)

    p = sub.add_parser("config", help="check the configuration")
    csub = p.add_subparsers(dest="action", required=True)
    q = csub.add_parser("check", help="check it as start-up does: types, files, their owners and modes, keys, "
                        "certificate, ports (exit 2 on a problem)")
    q.add_argument("--skip-ports", action="store_true", help="do not try to bind the listeners' ports")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("user", help="add, change, delete and list users")
    usub = p.add_subparsers(dest="action", required=True)
    for action, text in (("add", "add a user"), ("passwd", "change a password"), ("del", "delete a user")):
        q = usub.add_parser(action, help=text)
        q.add_argument("address")
        if action != "del":
            q.add_argument("--password-file", help="read the password from this file's first line ('-': standard input)")
    usub.add_parser("list", help="list users")
    p.set_defaults(func=cmd_user)

    p = sub.add_parser("alias", help="add, delete and list aliases")
    asub = p.add_subparsers(dest="action", required=True)
    q = asub.add_parser("add", help="add an alias (or @domain catch-all)")
    q.add_argument("source")
    q.add_argument("targets", nargs="+")
    q = asub.add_parser("del", help="delete an alias")
    q.add_argument("source")
    asub.add_parser("list", help="list aliases")
    p.set_defaults(func=cmd_alias)

    p = sub.add_parser("queue", help="the outbound queue of a running (or stopped) server")
    qsub = p.add_subparsers(dest="action", required=True)
    qsub.add_parser("list", help="list queued messages")
    qsub.add_parser("flush", help="make every waiting message due now")
    for action, text in (("show", "show a message's envelope, state and headers"), ("retry", "make one message due now"),
                         ("delete", "remove a message without a bounce")):
        q = qsub.add_parser(action, help=text)
        q.add_argument("id")
    for action, text in (("hold", "freeze a user's queued outbound mail (a compromised account)"),
                         ("release", "let a held user's mail go again")):
        qsub.add_parser(action, help=text).add_argument("user")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("dkim", help="DKIM signing keys")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("genkey", help="make a domain's signing key (RSA-2048) and print the TXT record")
    q.add_argument("domain")
    q.add_argument("--selector", help="default: [dkim] selector")
    q.add_argument("--ed25519", action="store_true", help="also an Ed25519 key (a second signature)")
    p.set_defaults(func=cmd_dkim)

    p = sub.add_parser("dns", help="the DNS records to publish for the local domains")
    p.add_argument("domain", nargs="?", help="default: every domain in [server] domains")
    p.add_argument("--check", action="store_true", help="ask DNS and report what is missing or wrong")
    p.set_defaults(func=cmd_dns)

    p = sub.add_parser("acme", help="the certificate from ACME ([acme])")
    asub = p.add_subparsers(dest="action", required=True)
    asub.add_parser("status", help="the certificate, its expiry and the last failure")
    asub.add_parser("renew", help="have the running server order a new certificate (now, on SIGHUP)")
    p.set_defaults(func=cmd_acme)

    p = sub.add_parser("store", help="check the store")
    ssub = p.add_subparsers(dest="action", required=True)
    q = ssub.add_parser("check", help="check a user's Maildir against its UID state")
    q.add_argument("--repair", action="store_true", help="fix what is wrong, keeping UIDs that still match")
    q.add_argument("--all", action="store_true", help="check every user in the store")
    q.add_argument("user", nargs="?")
    p.set_defaults(func=cmd_store)
    _add_srs_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"mailstack: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"mailstack: {e.strerror}: {e.filename} (running as user {privileges.who()}: run it as root, "
              "or as the user that owns the file)", file=sys.stderr)
        return 1
    except (MailstackError, OSError) as e:
        print(f"mailstack: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
