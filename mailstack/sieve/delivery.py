"""Running Sieve at local delivery and carrying out what it decides.

Every local delivery (the MX port, submission to a local user, a bounce to a local sender)
runs the global ``before`` scripts, the user's active script (``<user dir>/.dovecot.sieve``,
Dovecot's layout) and the global ``after`` scripts, in Pigeonhole's sequence: the next script
runs only while a keep (implicit or explicit) is in effect; every action but keep is carried
out; the last script's keep stores in the default folder (with the flags every keep of the
sequence asked for, so an after script adds to the user's); a script that fails ends the
sequence with an implicit keep (RFC 5228 2.10.6), the earlier scripts' actions standing.

The run happens in a worker thread (:meth:`SieveDelivery.deliver`), bounded by a deadline and
a body limit; only the storing goes back through the caller's batcher, so deliveries still
share one flush.  This package imports no protocol package: SMTP and the relay call it, and
what it needs of the outbound side (queueing, DSNs, SRS) is handed in by service.py.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailstack import metrics
from mailstack.errors import ConfigError, MailError, OverQuota, StoreError
from mailstack.mail import codes
from mailstack.mail.headers import delivery_fields
from mailstack.sieve import vacation as vacation_mod
from mailstack.sieve.actions import Envelope, FileInto, Keep, Redirect, Reject, Vacation
from mailstack.srs import SRSError

log = Logger()

#: A message carrying this many Delivered-To fields has gone round enough: not redirected again.
MAX_DELIVERED_TO = 10
#: Received fields past which a message is not redirected again (RFC 5228 4.2's loop control:
#: a trace editheader may not delete here, sieve.commands.PROTECTED_FIELDS; Postfix's hopcount_limit is 50).
MAX_RECEIVED = 50
#: Local redirects and replies delivered from within a delivery, at most this deep.
MAX_DEPTH = 5
MAX_SCRIPT_SIZE = 1 << 20  # a script file read for running (ManageSieve bounds uploads itself)
_DELIVERED_TO = re.compile(rb"^delivered-to[ \t]*:[ \t]*(.*?)[ \t]*\r?$", re.I | re.M)
_RECEIVED = re.compile(rb"^received[ \t]*:", re.I | re.M)


@dataclass(frozen=True)
class SieveSettings:
    """``[sieve]`` as this module uses it."""

    enabled: bool = True
    before: tuple = ()
    after: tuple = ()
    global_dir: str = ""
    max_run_time: float = 2.0
    max_body_size: int = 1 << 20
    max_redirects: int = 4
    vacation_min_period: int = 86400
    vacation_max_period: int = 30 * 86400

    @classmethod
    def from_config(cls, section: dict) -> "SieveSettings":
        keys = cls.__dataclass_fields__
        values = {k: v for k, v in section.items() if k in keys}
        values["before"], values["after"] = tuple(section.get("before", ())), tuple(section.get("after", ()))
        return cls(**values)


class ScriptCache:
    """Compiled scripts by path, reused while the file's mtime, size and inode stay the same
    (a ManageSieve upload or an admin's edit is seen at the next delivery); bounded LRU."""

    def __init__(self, size: int = 2048):
        self.size = size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, name: str = ""):
        """The compiled script at ``path``, None when there is no file; raises the
        interpreter's SieveSyntaxError (cached too) or OSError."""
        try:
            st = os.stat(path)  # follows the .dovecot.sieve link; a dangling one is "no script"
        except (FileNotFoundError, NotADirectoryError):
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            hit = self._entries.get(path)
            if hit is not None and hit[0] == key:
                self._entries.move_to_end(path)
                script = hit[1]
                hit = True
        if hit is not True:
            script = compile_file(path, name)
            with self._lock:
                self._entries[path] = (key, script)
                self._entries.move_to_end(path)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        if isinstance(script, Exception):
            raise script
        return script


def compile_file(path: str, name: str = ""):
    """Compile a script file: the Script, or the SieveSyntaxError (returned, to be cached)."""
    from mailstack import sieve as lang

    with open(path, "rb") as f:
        data = f.read(MAX_SCRIPT_SIZE + 1)
    if len(data) > MAX_SCRIPT_SIZE:
        raise OSError(f"{path}: script larger than {MAX_SCRIPT_SIZE} bytes")
    try:
        return lang.compile_script(data.decode("utf-8", "replace"), name or script_name(path))
    except lang.SieveSyntaxError as e:
        return e


def script_name(path: str) -> str:
    base = os.path.basename(os.path.realpath(path))
    return base[: -len(".sieve")] if base.endswith(".sieve") else base


@dataclass
class Plan:
    """What one account's delivery comes to: the copies to store, messages to send."""

    account: str
    message: bytes  # after editheader, without Return-Path/Delivered-To
    stores: list = field(default_factory=list)  # [(folder, flags)]
    outgoing: list = field(default_factory=list)  # [(kind, envelope sender, recipient, message)]
    reject: str | None = None  # refuse at SMTP time with this reason


@dataclass
class Incoming:
    """One message being delivered, the same for every account it goes to."""

    sender: str
    message: bytes
    folder: str = "INBOX"  # the default (implicit keep) folder: Junk when the checks said so
    auth: str = ""
    smtp_single: bool = False  # one RCPT, one account, nothing remote: reject may answer 550
    depth: int = 0


class SieveDelivery:
    """The Sieve step of local delivery, shared by every caller (built in service.py).

    ``enqueue_now(sender, recipients, message)`` queues a message from a worker thread;
    ``refusal(sender, recipient, reason, head)`` builds the DSN for a reject;
    ``srs()`` returns the SRS rewriter or None; ``accounts`` resolves redirect targets.
    """

    def __init__(self, settings: SieveSettings, store, accounts, hostname: str, enqueue_now=None, refusal=None,
                 srs=lambda: None, reactor=None):
        self.settings, self.store, self.accounts, self.hostname = settings, store, accounts, hostname
        self.enqueue_now, self.refusal, self.srs = enqueue_now, refusal, srs
        self.reactor = reactor
        self.cache = ScriptCache()
        _warm_up()

    # -- entry points ------------------------------------------------------------------------

    def deliver(self, deliveries: list[tuple[str, str]], sender: str, head: bytes, body, folder: str,
                store_items, auth: str = "", smtp_single: bool = False) -> defer.Deferred:
        """On the reactor: (account, RCPT address) ``deliveries`` of ``head`` + ``body`` (bytes
        or a spool); ``store_items(items)`` stores (the SMTP batcher).  Fires with {account:
        folders} when a script decided (None when no one has one); fails with MailError 550
        5.7.1 for a reject at SMTP time."""
        def execute(plans):
            if plans is None:  # no script for anyone: stored as without Sieve
                return store_items([(a, _compose(delivery_fields(sender, a) + head, body), folder)
                                    for a, _ in deliveries])
            refusals = [p for p in plans if p.reject is not None]
            if refusals:
                raise MailError(codes.MAILBOX_UNAVAILABLE, codes.E_NOT_AUTHORIZED,
                                f"Message refused: {_reply_text(refusals[0].reject)}",
                                cause=f"sieve reject by {refusals[0].account}")
            items = [(p.account, delivery_fields(sender, p.account) + p.message, f, flags)
                     for p in plans for f, flags in p.stores]
            outgoing = [o for p in plans for o in p.outgoing]
            d2 = store_items(items)
            if outgoing:
                d2.addCallback(lambda _: threads.deferToThread(self._send_all, outgoing, 0))
            # where each account's copies went, for the mail log (none stored: "rejected"/"discarded")
            placed = {p.account: ",".join(dict.fromkeys(f for f, _ in p.stores))
                      or ("rejected" if any(o[0] == "bounce" for o in p.outgoing) else "discarded") for p in plans}
            return d2.addCallback(lambda _: placed)

        if not self._any_script(deliveries):  # stored as without Sieve, with no hand-off to a thread
            return defer.maybeDeferred(execute, None)
        d = threads.deferToThread(self._plan_message, deliveries, sender, head, body, folder, auth, smtp_single)
        if self.reactor is not None:
            d.addTimeout(self.settings.max_run_time * (2 + len(self.settings.before) + len(self.settings.after)) + 5,
                         self.reactor)
        d.addErrback(self._fallback, deliveries)
        return d.addCallback(execute)

    def _any_script(self, deliveries) -> bool:
        """Is there a script to run for any of these accounts?  A stat of each account's
        ``.dovecot.sieve`` (the dentry is cached: microseconds, less than a thread hand-off)."""
        return bool(self.settings.before or self.settings.after) or any(
            self._user_script_exists(a) for a, _ in deliveries)

    def _fallback(self, failure, deliveries):
        """A run that overran its hard limit or broke: implicit keep for every account."""
        reason = "timed out" if failure.check(defer.TimeoutError, defer.CancelledError) else "failed"
        log.failure("sieve: delivery to {accounts}: the Sieve step {reason}; kept in the default folder", failure,
                    accounts=[a for a, _ in deliveries], reason=reason)
        metrics.sieve_action("error")
        return None

    def deliver_now(self, account: str, sender: str, message: bytes, rcpt: str = "", depth: int = 0,
                    grace: bool = False) -> None:
        """Blocking (a worker thread: bounces, local redirects and replies): run, store, send.
        ``grace``: stored past the user's quota (a delivery report about their own mail)."""
        incoming = Incoming(sender, message, depth=depth)
        plan = self.plan(incoming, account, rcpt or account) if depth <= MAX_DEPTH else None
        if plan is None:
            plan = Plan(account, message, stores=[("INBOX", ())])
        if plan.reject is not None:  # no SMTP session to answer: a bounce instead
            plan.outgoing.append(self._bounce(incoming, account, rcpt or account, plan.reject))
        items = [(account, delivery_fields(sender, account) + plan.message, f, flags, grace) for f, flags in plan.stores]
        errors = [e for e in self.store.deliver_batch(items) if e is not None] if items else []
        if errors:
            raise errors[0]
        self._send_all(plan.outgoing, depth)

    # -- deciding (worker thread) --------------------------------------------------------------

    def _plan_message(self, deliveries, sender, head, body, folder, auth, smtp_single):
        if not self._any_script(deliveries):  # removed since deliver() looked
            return None
        message = head + (body if isinstance(body, bytes) else body.read_all())
        incoming = Incoming(sender, message, folder, auth, smtp_single)
        plans = []
        for account, rcpt in deliveries:
            plan = self.plan(incoming, account, rcpt)
            if plan.reject is not None and not (smtp_single and not plan.stores and not plan.outgoing):
                plan.outgoing.append(self._bounce(incoming, account, rcpt, plan.reject))
                plan.reject = None
            plans.append(plan)
        return plans

    def _user_script_exists(self, account: str) -> bool:
        return os.path.exists(os.path.join(self.store.user_path(account), ".dovecot.sieve"))  # makes nothing

    def plan(self, incoming: Incoming, account: str, rcpt: str) -> Plan:
        """Run the script sequence for ``account`` and turn its actions into a :class:`Plan`."""
        mailbox = self.store.mailbox(account)
        user_dir = mailbox.path
        recipient = rcpt if _bare(rcpt) == account.lower() else account
        envelope = Envelope(incoming.sender, recipient, rcpt if rcpt.lower() != recipient.lower() else "",
                            incoming.auth)
        actions, keep_flags, message = self._run_sequence(incoming, mailbox, envelope)
        plan = Plan(account, message)
        self._carry_out(plan, incoming, actions, keep_flags, envelope, mailbox)
        return plan

    def _sequence(self, user_dir: str) -> list[tuple[str, str]]:
        s = self.settings
        return ([("before", p) for p in s.before] + [("user", os.path.join(user_dir, ".dovecot.sieve"))]
                + [("after", p) for p in s.after])

    def _run_sequence(self, incoming: Incoming, mailbox, envelope: Envelope):
        """(actions other than keep, the final keep's flags or None, the message after editheader)."""
        from mailstack import sieve as lang

        account, user_dir = mailbox.address, mailbox.path
        deadline = None  # from the first run on: compiling a changed script is not the run's time
        message, actions, keep_flags = incoming.message, [], ()
        for kind, path in self._sequence(user_dir):
            try:
                script = self.cache.get(path)
            except (lang.SieveSyntaxError, OSError, UnicodeError) as e:
                self._log_error(account, kind, script_name(path), f"cannot be used: {e}")
                return actions, (), message
            if script is None:
                continue
            deadline = deadline or time.monotonic() + self.settings.max_run_time
            outcome = lang.run(script, message, envelope, mailbox_exists=lambda n: _exists(mailbox, n),
                               loader=self._loader(user_dir), deadline=deadline,
                               max_body=self.settings.max_body_size)
            if outcome.errors:
                self._log_error(account, kind, script_name(path), "; ".join(outcome.errors))
                return actions, (), message  # the sequence is broken: implicit keep
            if outcome.header is not None:
                message = replace_header(message, outcome.header)
            keeps = [a for a in outcome.actions if isinstance(a, Keep)]
            actions += [a for a in outcome.actions if not isinstance(a, Keep)]
            if not keeps:
                return actions, None, message
            keep_flags = tuple(dict.fromkeys(keep_flags + tuple(f for k in keeps for f in k.flags)))
        return actions, keep_flags, message

    def _log_error(self, account: str, kind: str, name: str, reason: str) -> None:
        log.warn("sieve: {user}: {kind} script {script}: {reason}; implicit keep", user=account, kind=kind,
                 script=name, reason=reason)
        metrics.sieve_action("error")

    def _loader(self, user_dir: str):
        """``include`` (RFC 6609): :personal from the user's sieve/ directory, :global from
        ``[sieve] global_dir``; a name with a path in it, or a missing file, is None."""

        def load(name: str, location: str) -> str | None:
            if not name or "/" in name or "\0" in name or name.startswith(".") or len(name) > 255:
                return None
            base = os.path.join(user_dir, "sieve") if location == "personal" else self.settings.global_dir
            if not base:
                return None
            try:
                with open(os.path.join(base, name + ".sieve"), "rb") as f:
                    data = f.read(MAX_SCRIPT_SIZE + 1)
            except OSError:
                return None
            return None if len(data) > MAX_SCRIPT_SIZE else data.decode("utf-8", "replace")

        return load

    def _carry_out(self, plan: Plan, incoming: Incoming, actions: list, keep_flags, envelope, mailbox) -> None:
        """Turn actions into stores and outgoing messages (RFC 5228 4.x; duplicates collapse)."""
        user_dir = mailbox.path
        vacation_done = False
        redirects: list[str] = []
        for action in actions:
            if isinstance(action, FileInto):
                self._add_store(plan, self._folder_for(mailbox, action, incoming.folder), action.flags)
            elif isinstance(action, Redirect):
                if action.address.lower() not in redirects:
                    redirects.append(action.address.lower())
            elif isinstance(action, Reject):
                plan.reject = action.reason if plan.reject is None else plan.reject
            elif isinstance(action, Vacation) and not vacation_done:
                vacation_done = True  # Pigeonhole: later vacations in the sequence are dropped
                reply = vacation_mod.respond(action, plan.message, envelope, plan.account, user_dir, self.hostname,
                                             self.settings.vacation_min_period, self.settings.vacation_max_period)
                if reply is not None:
                    plan.outgoing.append(("vacation", "", incoming.sender, reply))
                    metrics.sieve_action("vacation")
        if redirects:
            kept = self._add_redirects(plan, incoming, redirects)
            keep_flags = () if (not kept and keep_flags is None) else keep_flags
        if plan.reject is not None:
            keep_flags = None
            metrics.sieve_action("reject")
        if keep_flags is not None:
            self._add_store(plan, incoming.folder, keep_flags)
        if not plan.stores and not plan.outgoing and plan.reject is None:
            metrics.sieve_action("discard")

    def _add_redirects(self, plan: Plan, incoming: Incoming, redirects: list[str]) -> bool:
        """Queue the redirects unless the message has been here before (False: keep it instead)."""
        # as it arrived too: editheader (RFC 5293) may have deleted the fields that show the loop
        arrived, edited = (_delivered_to(m) for m in (incoming.message, plan.message))
        seen = arrived if len(arrived) >= len(edited) else edited
        hops = len(_RECEIVED.findall(_header(incoming.message)))
        if plan.account.lower() in arrived + edited or len(seen) >= MAX_DELIVERED_TO or hops >= MAX_RECEIVED:
            log.warn("sieve: {user}: not redirecting to {to}: the message was delivered here before "
                     "({n} Delivered-To, {hops} Received fields); kept", user=plan.account, to=redirects, n=len(seen),
                     hops=hops)
            return False
        limit = self.settings.max_redirects
        if len(redirects) > limit:
            log.warn("sieve: {user}: {n} redirects, at most {limit} are sent: {dropped} dropped; kept",
                     user=plan.account, n=len(redirects), limit=limit, dropped=redirects[limit:])
        copy = f"Delivered-To: {plan.account}\r\n".encode() + plan.message
        for address in redirects[:limit]:
            plan.outgoing.append(("redirect", incoming.sender, address, copy))
            metrics.sieve_action("redirect")
        return len(redirects) <= limit

    @staticmethod
    def _add_store(plan: Plan, folder: str, flags) -> None:
        for i, (existing, old) in enumerate(plan.stores):
            if existing == folder:  # one copy per folder (RFC 5228 2.10.3), the flags together
                plan.stores[i] = (folder, tuple(dict.fromkeys(old + tuple(flags))))
                return
        plan.stores.append((folder, tuple(flags)))
        metrics.sieve_action("keep" if folder in ("INBOX", "Junk") else "fileinto")

    def _folder_for(self, mailbox, action: FileInto, default: str) -> str:
        """The folder a fileinto stores in: a missing one is created only with ``:create``
        (RFC 5490 3.2), else the message goes to the default folder (RFC 5228 4.1 allows it)."""
        from mailstack.store import normalise

        try:
            name = normalise(action.mailbox)
            if name == "INBOX" or mailbox.folder_exists(name):
                return name
            if action.create:
                try:
                    mailbox.create_folder(name)
                except StoreError as e:
                    if not mailbox.folder_exists(name):
                        raise e
                return name
            reason = "no such folder (no :create)"
        except (StoreError, OSError) as e:
            reason = f"cannot be used: {e}"
        log.info("sieve: {user}: fileinto {folder!r}: {reason}; stored in {default}", user=mailbox.address,
                 folder=action.mailbox, reason=reason, default=default)
        return default

    def _bounce(self, incoming: Incoming, account: str, rcpt: str, reason: str):
        """A reject when it cannot be answered at SMTP time: a DSN to the sender (RFC 5429 2.1);
        for the null sender nothing (a bounce never bounces)."""
        log.info("sieve: {user}: rejected the message from <{sender}>: {reason}", user=account,
                 sender=incoming.sender, reason=_reply_text(reason))
        if not incoming.sender or self.refusal is None:
            return ("none", "", "", b"")
        report = self.refusal(incoming.sender, rcpt, _reply_text(reason), _header(incoming.message))
        return ("bounce", "", incoming.sender, report)

    # -- sending (worker thread) --------------------------------------------------------------

    def _send_all(self, outgoing: list, depth: int) -> None:
        """Redirects, replies and bounces: local recipients delivered here (with their own
        Sieve), the rest queued; a redirect's sender rewritten with SRS when it leaves."""
        for kind, sender, recipient, message in outgoing:
            if kind == "none":
                continue
            recipient = self._unwrapped(recipient)
            if not recipient:
                continue
            resolution = self.accounts.resolve(recipient) if self.accounts is not None else None
            remote = [recipient] if resolution is None else list(resolution.remote)
            for account in (resolution.local if resolution is not None else []):
                try:  # a report to a local sender is stored past her quota, as the relay's are
                    self.deliver_now(account, sender, message, recipient, depth + 1, grace=kind == "bounce")
                except OverQuota as e:  # after the SMTP copies were stored: no error reply now
                    self._full(kind, sender, account, message, e, depth)
            if remote:
                srs = self.srs() if kind == "redirect" else None
                envelope_sender = srs.forward(sender) if srs is not None and sender else sender
                if self.enqueue_now is None:
                    raise MailError(codes.LOCAL_ERROR, codes.E_SYSTEM_TEMPORARY, "Cannot queue a message now; try again later")
                self.enqueue_now(envelope_sender, remote, message)


    def _unwrapped(self, recipient: str) -> str:
        """One of our SRS addresses stands for its original (the MX reverses it before any
        alias, mailstack.smtp.policy); "" for one that does not reverse (the MX refuses it)."""
        srs = self.srs()
        if srs is None or not srs.is_ours(recipient):
            return recipient
        try:
            return srs.reverse(recipient)
        except SRSError:
            log.info("sieve: not sending to {to}: an SRS address that does not reverse", to=recipient)
            return ""

    def _full(self, kind: str, sender: str, account: str, message: bytes, e: OverQuota, depth: int) -> None:
        """A local redirect target is full: the sender gets a report, as from a remote host
        refusing it (RFC 5228 4.2: the redirect was made; its delivery failed); a reply to
        a full mailbox is dropped."""
        log.info("sieve: {kind} to {user} not stored: {error}", kind=kind, user=account, error=str(e))
        if kind == "redirect" and sender and self.refusal is not None:
            # a report that it failed: 5.2.2 even where SMTP would say 452 (no retry comes)
            report = self.refusal(sender, account, e.text, _header(message), "5" + e.enhanced[1:], 500 + e.code % 100)
            self._send_all([("bounce", "", sender, report)], depth + 1)


def _warm_up() -> None:
    """Import the interpreter's modules now, at start-up, not within the first delivery's
    time limit."""
    from mailstack import sieve as lang

    try:
        lang.run(lang.compile_script("keep;"), b"Subject: x\r\n\r\n", Envelope("", "user@localhost"))
    except Exception:  # noqa: BLE001 - only a warm-up; a broken interpreter shows at delivery
        log.failure("sieve: the interpreter failed its warm-up")


def _exists(mailbox, name: str) -> bool:
    from mailstack.store import normalise

    try:
        return mailbox.folder_exists(normalise(name))
    except StoreError:
        return False


def _bare(address: str) -> str:
    """The address without a +detail (for comparing with the account)."""
    local, _, domain = address.lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def _delivered_to(message: bytes) -> list[str]:
    return [v.decode("utf-8", "replace").strip("<>").lower() for v in _DELIVERED_TO.findall(_header(message))]


def _header(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def replace_header(message: bytes, header: bytes) -> bytes:
    """``message`` with its header section replaced (editheader, RFC 5293): the new header's
    fields, then the blank line and the body as they were."""
    end = message.find(b"\r\n\r\n")
    rest = message[end + 2:] if end >= 0 else b"\r\n"
    header = header.rstrip(b"\r\n") + b"\r\n" if header.strip() else b""
    return header + rest


def _reply_text(reason: str) -> str:
    """A reject reason fit for one SMTP reply line: printable ASCII, blanks collapsed, bounded."""
    text = " ".join(reason.split())
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return text[:400] or "rejected by the recipient's filter"


def _compose(head: bytes, body):
    yield head
    if isinstance(body, bytes):
        yield body
    else:
        yield from body.chunks()


# -- configuration ----------------------------------------------------------------------------------


def check_config(values: dict, path: str) -> dict:
    """[sieve]: positive limits, readable before/after scripts that compile, a global_dir that
    is a directory; any problem names the file, the key and what is wrong."""
    s = values["sieve"]
    for key, low in (("max_run_time", 0.01), ("max_body_size", 1024), ("max_redirects", 0),
                     ("vacation_min_period", 0), ("vacation_max_period", 1)):
        if s[key] < low:
            raise ConfigError(path, f"[sieve] {key}", f"must be at least {low}")
    if s["vacation_max_period"] < s["vacation_min_period"]:
        raise ConfigError(path, "[sieve] vacation_max_period", "must not be below vacation_min_period")
    if s["global_dir"] and not os.path.isdir(s["global_dir"]):
        raise ConfigError(path, "[sieve] global_dir", f"{s['global_dir']} is not a directory")
    for key in ("before", "after"):
        s[key] = [os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(path)), p)) for p in s[key]]
        for script in s[key]:
            try:
                compiled = compile_file(script)
            except OSError as e:
                raise ConfigError(path, f"[sieve] {key}", f"{script}: cannot be read: {e.strerror or e}") from None
            except ImportError:
                continue  # no interpreter in this build
            if isinstance(compiled, Exception):
                raise ConfigError(path, f"[sieve] {key}", f"{script}: {compiled}")
    return s

