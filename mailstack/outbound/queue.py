"""The outbound queue: messages waiting to leave the server, on disk, crash-safe.

Layout under the queue directory::

    msg/<id>                      the message bytes, written once (fsynced before the 250)
    env/<id>.json                 its envelope while it waits: sender, recipients with their
                                  state, attempts, next attempt time, last errors
    active/<id>.<host>.<pid>.json the envelope while one process is delivering it
    held.json                     users whose queued mail is frozen ('mailstack queue hold USER')

Claiming a message is ``rename(env/<id>.json, active/...)``: the file system lets exactly one
process win, so two mailstack processes sharing the directory never send a message twice.
A held user's messages (the envelope names the authenticated user who submitted it) are left
out of :meth:`OutboundQueue.due`, so no relay picks them up until they are released.
Every envelope change is written with :func:`mailstack.fsutil.atomic_write` (temporary file,
fsync, rename over), so a crash leaves either the old or the new state.  After a crash, envelopes in ``active/`` whose
process is gone are put back.  A recipient is marked delivered the moment the remote server
has answered 250 to the data, so a duplicate can only come from a crash in that instant;
the envelope's ``attempt_started`` marker says which messages were mid-attempt at a crash.

Plain blocking file I/O; the relay calls it from worker threads.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

from mailstack.fsutil import atomic_write, fsync_dir, pid_alive
from mailstack.mail.headers import message_id

#: How much of a message's start is kept while it is written, to find its Message-ID.
HEAD = 64 * 1024

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass
class RecipientState:
    address: str
    status: str = PENDING
    code: int = 0  # last reply code (0: none yet)
    diagnostic: str = ""  # last reply text or local error
    remote_mta: str = ""  # the host that gave that reply


@dataclass
class Envelope:
    id: str
    sender: str  # "" for the null reverse-path (bounces)
    recipients: list[RecipientState]
    created: float
    next_attempt: float
    attempts: int = 0
    warned: bool = False  # delay warning sent
    size: int = 0
    # When the current delivery attempt began, written (fsynced) before the first connection
    # and cleared when the attempt ends: set on an envelope being claimed, it says a process
    # died mid-attempt, so recipients not yet marked delivered may already have the message.
    attempt_started: float = 0.0
    interrupted: int = 0  # attempts of this message cut short that way
    message_id: str = ""  # its Message-ID field, for the log (mailstack.logcontext)
    user: str = ""  # the authenticated user who submitted it ("" for MX mail, bounces, forwarding)

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Envelope":
        raw = json.loads(data)
        raw["recipients"] = [RecipientState(**r) for r in raw["recipients"]]
        return cls(**raw)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _unlink_older(path: str, cutoff: float) -> None:
    """Remove ``path`` if it was last written before ``cutoff``."""
    try:
        if os.stat(path).st_mtime < cutoff:
            _unlink(path)
    except FileNotFoundError:
        pass


class OutboundQueue:
    def __init__(self, directory: str, fsync: bool = True):
        self.dir = os.path.abspath(directory)
        self.fsync = fsync
        self.host = socket.gethostname().replace(".", "_").replace("/", "_") or "localhost"
        for sub in ("msg", "env", "active"):
            os.makedirs(os.path.join(self.dir, sub), mode=0o700, exist_ok=True)

    # -- paths -------------------------------------------------------------------------------

    def msg_path(self, qid: str) -> str:
        return os.path.join(self.dir, "msg", qid)

    def env_path(self, qid: str) -> str:
        return os.path.join(self.dir, "env", qid + ".json")

    def active_path(self, qid: str) -> str:
        return os.path.join(self.dir, "active", f"{qid}.{self.host}.{os.getpid()}.json")

    @staticmethod
    def valid_id(qid: str) -> bool:
        return bool(qid) and all(c.isalnum() or c == "-" for c in qid) and len(qid) < 64

    # -- adding --------------------------------------------------------------------------------

    def enqueue(self, sender: str, recipients: Iterable[str], source, user: str = "") -> str:
        """Store a message for delivery; durable when this returns.  Returns its queue id."""
        qid = f"{int(time.time()):x}-{secrets.token_hex(6)}"
        path = self.msg_path(qid)
        # Streamed from the spool (up to the size limit), so not atomic_write, which takes bytes;
        # the pid in the name lets recover() clear what a dead process left half-written.
        tmp = f"{path}.tmp{os.getpid()}-{threading.get_ident()}"
        size, head = 0, b""
        with open(tmp, "wb") as f:
            chunks = [source] if isinstance(source, (bytes, bytearray)) else source
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
                if len(head) < HEAD:
                    head += chunk[: HEAD - len(head)]
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, path)
        if self.fsync:
            fsync_dir(os.path.dirname(path))
        now = time.time()
        env = Envelope(qid, sender, [RecipientState(r) for r in recipients], created=now, next_attempt=now, size=size,
                       message_id=message_id(bytes(head)), user=user.lower())
        atomic_write(self.env_path(qid), env.to_json(), fsync=self.fsync)
        return qid

    # -- claiming and releasing ----------------------------------------------------------------

    def due(self, now: float | None = None) -> list[tuple[float, str]]:
        """(next attempt, id) of every waiting envelope, soonest first."""
        now = time.time() if now is None else now
        out, held = [], self.held_users()
        for name in os.listdir(os.path.join(self.dir, "env")):
            if not name.endswith(".json"):
                continue
            qid = name[:-5]
            try:
                with open(self.env_path(qid), "rb") as f:
                    env = Envelope.from_json(f.read())
            except (FileNotFoundError, ValueError, TypeError, KeyError):
                continue
            if env.user and env.user in held:
                continue
            out.append((env.next_attempt, qid))
        out.sort()
        return out

    def claim(self, qid: str) -> Envelope | None:
        """Take a waiting message for delivery; None if another process was quicker."""
        try:
            os.rename(self.env_path(qid), self.active_path(qid))
        except FileNotFoundError:
            return None
        with open(self.active_path(qid), "rb") as f:
            return Envelope.from_json(f.read())

    def update(self, env: Envelope) -> None:
        """Record progress (a recipient delivered) on a claimed message."""
        atomic_write(self.active_path(env.id), env.to_json(), fsync=self.fsync)

    def release(self, env: Envelope) -> None:
        """Put a claimed message back to wait for its next attempt."""
        atomic_write(self.active_path(env.id), env.to_json(), fsync=self.fsync)
        os.rename(self.active_path(env.id), self.env_path(env.id))
        if self.fsync:
            fsync_dir(os.path.join(self.dir, "env"))

    def finish(self, env: Envelope) -> None:
        """Every recipient is delivered or bounced: forget the message (envelope first, so a
        crash in between leaves at worst a message file without an envelope, never the reverse)."""
        for path in (self.active_path(env.id), self.env_path(env.id), self.msg_path(env.id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if self.fsync:
            fsync_dir(os.path.join(self.dir, "active"))

    def recover(self) -> list[str]:
        """Put back envelopes claimed by processes of this host that no longer run, and clear
        what such processes left half-written: temporary files, and message files whose
        envelope was never written (those were never acknowledged to anyone)."""
        self._clear_leftovers()
        recovered = []
        for name in os.listdir(os.path.join(self.dir, "active")):
            parts = name.rsplit(".", 3)
            if len(parts) != 4 or parts[3] != "json" or parts[1] != self.host or not parts[2].isdigit():
                continue
            if pid_alive(int(parts[2])) and int(parts[2]) != os.getpid():
                continue
            try:
                os.rename(os.path.join(self.dir, "active", name), self.env_path(parts[0]))
                recovered.append(parts[0])
            except FileNotFoundError:
                pass
        return recovered

    def _clear_leftovers(self, orphan_age: float = 3600.0) -> None:
        now = time.time()
        for sub in ("msg", "env", "active"):
            for name in os.listdir(os.path.join(self.dir, sub)):
                if ".tmp" not in name:
                    continue
                path = os.path.join(self.dir, sub, name)
                pid = name.rsplit(".tmp", 1)[1].split("-", 1)[0]
                if pid.isdigit():  # a message being written: ours say which process writes it
                    if int(pid) != os.getpid() and not pid_alive(int(pid)):
                        _unlink(path)
                elif name.endswith(".tmp") and self._writer_gone(name):
                    _unlink(path)  # a claimed envelope's, from atomic_write, by a process now dead
                elif name.endswith(".tmp"):  # an envelope's, from atomic_write: done in moments when alive
                    _unlink_older(path, now - orphan_age)
        known = {n[:-5] for n in os.listdir(os.path.join(self.dir, "env")) if n.endswith(".json")}
        known |= {n.split(".", 1)[0] for n in os.listdir(os.path.join(self.dir, "active"))}
        for name in os.listdir(os.path.join(self.dir, "msg")):
            path = os.path.join(self.dir, "msg", name)
            if ".tmp" in name or name in known:
                continue
            _unlink_older(path, now - orphan_age)  # a live process may be between the two writes

    def _writer_gone(self, name: str) -> bool:
        """True for ``<id>.<host>.<pid>.json.<random>.tmp`` (atomic_write's temporary file of a
        claimed envelope, see active_path) whose process, on this host, no longer runs."""
        parts = name.split(".")
        return (len(parts) == 6 and parts[1] == self.host and parts[2].isdigit() and parts[3] == "json"
                and int(parts[2]) != os.getpid() and not pid_alive(int(parts[2])))

    def open_message(self, qid: str):
        return open(self.msg_path(qid), "rb")

    # -- administration ------------------------------------------------------------------------

    def load(self, qid: str) -> tuple[Envelope, str] | None:
        """(envelope, "waiting" | "active") of a message, or None."""
        if not self.valid_id(qid):
            return None
        try:
            with open(self.env_path(qid), "rb") as f:
                return Envelope.from_json(f.read()), "waiting"
        except (FileNotFoundError, ValueError):
            pass
        for name in os.listdir(os.path.join(self.dir, "active")):
            if name.startswith(qid + ".") and name.endswith(".json"):  # not a temporary file being written
                try:
                    with open(os.path.join(self.dir, "active", name), "rb") as f:
                        return Envelope.from_json(f.read()), "active"
                except (FileNotFoundError, ValueError):
                    pass
        return None

    def all(self) -> Iterator[tuple[Envelope, str]]:
        ids = [n[:-5] for n in os.listdir(os.path.join(self.dir, "env")) if n.endswith(".json")]
        ids += [n.split(".", 1)[0] for n in os.listdir(os.path.join(self.dir, "active")) if n.endswith(".json")]
        for qid in sorted(set(ids)):
            found = self.load(qid)
            if found:
                yield found

    def reschedule(self, qid: str, when: float = 0.0) -> bool:
        """Make a waiting message due at ``when`` (flush, retry).  False if not waiting."""
        claimed = self.claim(qid)
        if claimed is None:
            return False
        claimed.next_attempt = when
        self.release(claimed)
        return True

    def held_users(self) -> set[str]:
        try:
            with open(os.path.join(self.dir, "held.json"), "rb") as f:
                return set(json.loads(f.read()))
        except FileNotFoundError:
            return set()
        except ValueError:  # never seen from atomic_write; a hand edit gone wrong holds nothing
            return set()

    def hold(self, user: str, held: bool = True) -> list[str]:
        """Freeze (or with ``held=False`` release) ``user``'s queued mail, and what the user
        queues later, until released.  Returns the ids of the user's queued messages; on
        release they are made due now."""
        users = self.held_users()
        users = users | {user.lower()} if held else users - {user.lower()}
        atomic_write(os.path.join(self.dir, "held.json"), json.dumps(sorted(users)).encode(), fsync=self.fsync)
        ids = [env.id for env, where in self.all() if env.user == user.lower()]
        if not held:
            for qid in ids:
                self.reschedule(qid)
        return ids

    def delete(self, qid: str) -> bool:
        claimed = self.claim(qid)
        if claimed is None:
            return False
        self.finish(claimed)
        return True
