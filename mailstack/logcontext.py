"""Who and what a log line is about: the session (a short id, the client's address, the user
once logged in) and, for mail, the message (one Postfix-style line per step of its way).

Sessions.  The listener (:mod:`mailstack.listener`) starts a :class:`Session` for every
connection and keeps its peer as a :class:`SessionPeer`: the client's address as a ``str``
that also knows its session.  A protocol takes it with :func:`peer_of` as its ``self.peer``,
and since nearly every session log line already says ``peer=self.peer``, the observer
:func:`annotate` finds the session there and adds ``session`` and ``user`` to the event (JSON
fields), and both to the ``[system]`` part of a human line
(``[mailstack.smtp.server#info k3j4h2ab alice@example.org]``).  No protocol passes ids around; lines logged in
Deferred callbacks or threads keep their session, which a context variable would lose.

Messages.  :func:`mail` logs one line per message and step, ``key=value`` in the human log::

    s3k4j5.1: status=accepted message-id=<a@b> from=<alice@x> to=<bob@y> size=312 ...
    19c2f-0a1b2c: status=sent message-id=<a@b> from=<alice@x> to=<carol@z> relay=mx.z dsn=2.0.0 delay=0.4

greppable by queue id and by Message-ID; in JSON each key is a field.
"""

from __future__ import annotations

import base64
import secrets
import time

from twisted.logger import Logger, LogLevel, globalLogPublisher

from mailstack import logfilter

log = Logger(namespace="mailstack.mail")
_installed = False


class Session:
    """One client connection: a short random id (greppable, unique enough for a log), the
    listener it came in on and, after a login, the account."""

    __slots__ = ("id", "listener", "user")

    def __init__(self, listener: str):
        self.id = base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()
        self.listener = listener
        self.user: str | None = None


class SessionPeer(str):
    """A client's address that also says which session it belongs to (see the module doc)."""

    session: Session

    def __new__(cls, host: str, session: Session):
        self = super().__new__(cls, host)
        self.session = session
        return self


def new_session(listener: str, host: str) -> SessionPeer:
    return SessionPeer(host, Session(listener))


def peer_of(transport) -> str:
    """A protocol's peer: the listener's :class:`SessionPeer` found under ``transport`` (through
    TLS wrappers), or, where no listener wraps the protocol, the plain address."""
    t = transport
    for _ in range(5):
        peer = getattr(t, "peer_host", None)
        if isinstance(peer, SessionPeer):
            return peer
        t = getattr(t, "transport", None)
        if t is None:
            break
    address = transport.getPeer()
    return getattr(address, "host", None) or str(address)


def session_id(peer) -> str | None:
    return peer.session.id if isinstance(peer, SessionPeer) else None


def set_user(peer, user: str) -> None:
    """After a login: the session's later lines name ``user`` (control characters escaped)."""
    if isinstance(peer, SessionPeer):
        peer.session.user = logfilter.escape(str(user))


def annotate(event: dict) -> None:
    """Log observer: a session's lines get its id and user (from the peer they name)."""
    for value in list(event.values()):
        if type(value) is SessionPeer:
            s = value.session
            event.setdefault("session", s.id)
            if s.user is not None:
                event.setdefault("user", s.user)
            if "log_system" not in event:
                level = event.get("log_level")
                who = f" {s.user}" if s.user is not None else ""
                event["log_system"] = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')} {s.id}{who}"
            return


def install() -> None:
    """Once per process, after :func:`mailstack.logfilter.install` and before twistd's observers."""
    global _installed
    if not _installed:
        globalLogPublisher.addObserver(annotate)
        _installed = True


# -- per-message lines ---------------------------------------------------------------------------

#: Field -> its key in the human line (Postfix's words where it has one).
_LABELS = {"message_id": "message-id", "sender": "from", "recipient": "to"}
_BRACKETED = {"sender", "recipient"}
_FORMATS: dict[tuple, str] = {}  # (field names, with a reason?) -> the line's format


def mail(queue_id: str, status: str, *, peer=None, reason: str = "", **fields) -> None:
    """One line about one message: ``status`` is ``accepted`` (SMTP answered 250), ``sent``
    (stored locally, ``relay=local``, or taken by the next hop), ``deferred``, ``bounced`` or
    ``dsn`` (a delivery status report was made for it).  Empty fields are left out; ``reason``
    goes last, in parentheses, as Postfix writes it."""
    shown = {k: v for k, v in fields.items() if v is not None and v != ""}
    keys = (tuple(shown), bool(reason))
    fmt = _FORMATS.get(keys)
    if fmt is None:
        fmt = "{queue_id}: status={status}"
        for k in shown:
            label = _LABELS.get(k, k)
            fmt += f" {label}=<{{{k}}}>" if k in _BRACKETED else f" {label}={{{k}}}"
        if reason:
            fmt += " ({reason})"
        if len(_FORMATS) < 256:  # the callers pass a few dozen sets of fields
            _FORMATS[keys] = fmt
    if reason:
        shown["reason"] = reason
    if peer is not None:
        shown["peer"] = peer
    shown["queue_id"], shown["status"] = queue_id, status
    _emit_info(fmt, shown)


def _emit_info(fmt: str, event: dict) -> None:
    """``log.info(fmt, **event)``, the event made as ``Logger.emit`` makes it, without its
    check of the level against every level there is (constantly sorts them on each call:
    a tenth of a message line's cost, two lines for every message accepted)."""
    event.update(log_logger=log, log_level=LogLevel.info, log_namespace=log.namespace, log_source=log.source,
                 log_format=fmt, log_time=time.time())
    log.observer(event)


def accepted(peer, queue_id: str, message_id: str, sender: str, recipients: list[str], size: int, listener: str,
             local: list[str], placed: dict[str, str], queued_as: str | None) -> None:
    """SMTP took a message (its 250): the accepted line, then one ``sent relay=local`` line per
    local account, with the folder(s) its copy went to (``placed``; Sieve may have chosen)."""
    mail(queue_id, "accepted", peer=peer, message_id=message_id, sender=sender, recipient=",".join(recipients),
         size=size, nrcpt=len(recipients), listener=listener, queued_as=queued_as)
    for account in local:
        mail(queue_id, "sent", peer=peer, message_id=message_id, sender=sender, recipient=account, size=size,
             relay="local", dsn="2.0.0", folder=placed.get(account, "INBOX"))
