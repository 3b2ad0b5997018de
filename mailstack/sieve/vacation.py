"""Vacation replies (RFC 5230): whether to answer, remembering whom, and the reply itself.

The interpreter only says "vacation with these arguments"; this module applies the rules
that keep an autoresponder from doing harm: never to the null sender or to list, bulk and
automatic mail (4.6, RFC 3834 2), only to mail addressed to the user (4.5), once per sender
and handle per period (4.2), the period on disk in the user's directory so it holds across
restarts and processes.  Blocking file I/O: called in the delivery's worker thread.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import os
import quopri
import secrets
import threading
import time
from email.header import Header

from mailstack.fsutil import atomic_write

TRACK_FILE = ".mailstack-vacation"  # in the user's directory, beside .dovecot.sieve
MAX_ENTRIES = 5000  # senders remembered per user; the oldest go first
_RECIPIENT_FIELDS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
_PRECEDENCE_SKIP = ("bulk", "list", "junk")
_thread_lock = threading.Lock()


def parse_header(message: bytes) -> list[tuple[str, str]]:
    """(lower-cased name, unfolded value) of each field of the header section."""
    end = message.find(b"\r\n\r\n")
    block = message if end < 0 else message[: end + 2]
    fields: list[tuple[str, str]] = []
    for line in block.decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + " " + line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name.strip().lower(), value.strip()))
    return fields


def _bare(address: str) -> str:
    local, _, domain = address.strip().lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def skip_reason(fields: list[tuple[str, str]], sender: str, own: list[str]) -> str | None:
    """Why no reply may go out (None: it may), RFC 5230 4.5 and 4.6, RFC 3834 2."""
    if not sender:
        return "null sender"
    local = sender.rpartition("@")[0].lower()
    if local in ("mailer-daemon", "listserv", "majordomo") or local.startswith("owner-") or local.endswith("-request"):
        return f"sender {sender} is a list or a mail system"
    mine = {a.lower() for a in own} | {_bare(a) for a in own}
    if sender.lower() in mine or _bare(sender) in mine:
        return "sent by the user"
    for name, value in fields:
        if name == "auto-submitted" and value.split(";")[0].strip().lower() != "no":
            return f"Auto-Submitted: {value}"
        if name == "precedence" and value.strip().lower() in _PRECEDENCE_SKIP:
            return f"Precedence: {value}"
        if name.startswith("list-"):
            return f"a list message ({name})"
    addressed = email.utils.getaddresses([v for n, v in fields if n in _RECIPIENT_FIELDS])
    if not any(a.lower() in mine or _bare(a) in mine for _, a in addressed if "@" in a):
        return "the user's address is not in To, Cc, Bcc or Resent-*"
    return None


def first_reply(user_dir: str, sender: str, handle: str, seconds: int, now: float) -> bool:
    """Record (sender, handle) for ``seconds``; False when a reply went to it within the period.
    The file is rewritten whole (fsynced, renamed over) under a lock shared by threads and
    processes; expired entries go, and at most MAX_ENTRIES stay."""
    key = hashlib.sha256(f"{sender.lower()}\0{handle}".encode()).hexdigest()[:32]
    path = os.path.join(user_dir, TRACK_FILE)
    with _thread_lock, open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries: dict[str, int] = {}
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) > now:
                        entries[parts[0]] = int(parts[1])
        except FileNotFoundError:
            pass
        if key in entries:
            return False
        entries[key] = int(now + seconds)
        kept = sorted(entries.items(), key=lambda kv: kv[1])[-MAX_ENTRIES:]
        atomic_write(path, "".join(f"{k} {v}\n" for k, v in kept).encode())
    return True


def _encode(text: str) -> str:
    """A header value: as is in ASCII, else RFC 2047 encoded words (folded with CRLF: the
    email package folds with a bare LF)."""
    text = " ".join(text.split())
    return text if text.isascii() else Header(text, "utf-8").encode(linesep="\r\n")


def _mailboxes(text: str) -> str:
    """A mailbox-list for From: as is in ASCII, else each display name encoded and the
    addresses left readable (RFC 2047 5: no encoded word in an addr-spec)."""
    text = " ".join(text.split())
    if text.isascii():
        return text
    return ", ".join((email.utils.formataddr((name, "x"), charset="utf-8")[:-3] if name else "") + f"<{addr}>"
                     for name, addr in email.utils.getaddresses([text]))


def _fold(field: str, width: int = 78) -> str:
    """A header field folded at its spaces to lines of about ``width`` (RFC 5322 2.2.3): a
    long subject or a thread's References, unfolded when read, must not pass 998 (2.1.1)."""
    out = []
    for n, physical in enumerate(field.split("\r\n")):
        words = physical.split(" ")
        start = 2 if n == 0 else 1  # the name and the first word stay together
        line = " ".join(words[:start])
        for word in words[start:]:
            if len(line) + 1 + len(word) > width and line.strip():
                out.append(line)
                line = " " + word
            else:
                line += " " + word
        out.append(line)
    return "\r\n".join(out)


def build_reply(action, fields: list[tuple[str, str]], sender: str, user: str, hostname: str,
                now: float | None = None) -> bytes:
    """The reply (RFC 5230 5): From the user or :from, To the sender, "Auto: " and the original
    subject unless :subject, In-Reply-To and References, Auto-Submitted: auto-replied (RFC 3834
    5), the reason as a text/plain body or, with :mime, as the MIME entity it is."""
    get = {}
    for name, value in fields:
        get.setdefault(name, value)
    subject = action.subject if action.subject is not None else "Auto: " + get.get("subject", "")
    lines = [
        f"From: {_mailboxes(action.from_addr or user)}",
        f"To: <{sender}>",
        f"Subject: {_encode(subject)}",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-ID: <{secrets.token_hex(10)}@{hostname}>",
    ]
    original_id = get.get("message-id", "")
    if original_id:
        lines.append(f"In-Reply-To: {original_id}")
        lines.append(f"References: {(get.get('references', '') + ' ' + original_id).strip()}")
    lines = [_fold(line) for line in lines] + ["Auto-Submitted: auto-replied", "MIME-Version: 1.0"]
    reason = action.reason.replace("\r\n", "\n").replace("\r", "\n")
    if action.mime:  # the reason is a MIME entity: its own header fields, then its body
        entity = reason.lstrip("\n")
        return ("\r\n".join(lines) + "\r\n" + entity.replace("\n", "\r\n")).encode("utf-8")
    body = reason if reason.endswith("\n") else reason + "\n"
    encoded = body.encode("utf-8")
    if body.isascii() and all(len(line) <= 998 for line in encoded.split(b"\n")):
        cte = "7bit"
    else:  # quoted-printable: the relay's client may meet a server without 8BITMIME
        cte, encoded = "quoted-printable", quopri.encodestring(encoded)
    lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Transfer-Encoding: {cte}", ""]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8") + encoded.replace(b"\n", b"\r\n")


def respond(action, message: bytes, envelope, account: str, user_dir: str, hostname: str,
            min_period: int, max_period: int, now: float | None = None) -> bytes | None:
    """The reply to send for a Vacation action, or None (not allowed, or sent already)."""
    now = time.time() if now is None else now
    fields = parse_header(message)
    own = [account, envelope.recipient, *action.addresses]
    if skip_reason(fields, envelope.sender, own) is not None:
        return None
    seconds = min(max(action.seconds, min_period), max_period)
    handle = action.handle or f"{action.subject}\0{action.from_addr}\0{action.reason}"
    if not first_reply(user_dir, envelope.sender, handle, seconds, now):
        return None
    return build_reply(action, fields, envelope.sender, account, hostname, now)

