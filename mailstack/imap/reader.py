"""Reading IMAP commands off the wire: lines, and the literals inside them (RFC 3501 4.3,
RFC 7888 LITERAL+).  Pure code, no I/O: the session feeds bytes and acts on the events.

A command is read whole before it is parsed: its lines, and between them the octets of each
literal announced at a line's end (``{n}`` after a continuation request, ``{n+}`` at once).
Everything but APPEND's message is held in memory under :data:`MAX_COMMAND` octets, counted
as the octets arrive, and nothing is scanned twice; APPEND's message goes to a spool file
under the message size limit.  Over a limit a synchronising literal is refused before it is
sent (tagged NO), a non-synchronising one closes the session (RFC 7888 4: its octets are
already on their way).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field

MAX_LINE = 65536  # one line of a command: long UID sets from clients that resynchronise
MAX_COMMAND = 256 * 1024  # a whole command, literals included, APPEND's message excepted
#: A MULTIAPPEND (RFC 3502) may hold messages of this many times the message size limit in all:
#: they wait on disk until the last arrives.
MULTIAPPEND_FACTOR = 4
SPOOL_IN_MEMORY = 256 * 1024  # an APPEND message above this goes to a temporary file
#: Once a command's spools hold this much (MULTIAPPEND, CATENATE's TEXT parts: many small
#: literals), its next ones go straight to disk: memory stays bounded however many there are.
COMMAND_SPOOLS_IN_MEMORY = 1024 * 1024

#: ``{n}``, ``{n+}``; with ``~`` after a space or parenthesis: literal8 (RFC 3516 4.4)
_LITERAL_RE = re.compile(rb"((?:^|(?<=[ (]))~)?\{(\d{1,19})(\+?)\}$")
_TAG_RE = re.compile(rb"^[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7e]+$")  # astring-char minus "+"


class LineTooLong(Exception):
    """A line longer than :data:`MAX_LINE`: the session cannot find the next command."""


class Framing:
    """The client's unread bytes, taken a line or a number of octets at a time."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self.buffer = bytearray()
        self._scanned = 0  # bytes already searched for a line end

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def line(self) -> bytes | None:
        """The next line without its CRLF (a bare LF is taken too), or None until it is whole."""
        end = self.buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self.buffer)
            if self._scanned > self.max_line:
                raise LineTooLong()
            return None
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        self._scanned = 0
        if len(line) > self.max_line:
            raise LineTooLong()
        return line[:-1] if line.endswith(b"\r") else line

    def take(self, size: int) -> bytes:
        """Up to ``size`` octets of what has arrived."""
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        self._scanned = 0
        return data

    def pending(self) -> int:
        return len(self.buffer)

    def clear(self) -> None:
        self.buffer.clear()
        self._scanned = 0


class Spool:
    """APPEND's message as it arrives: in memory while small, then in a temporary file.

    ``literal8``: sent as ``~{n}`` (RFC 3516 4.4); ``nul``: a NUL octet arrived in it (the
    store keeps no NUL, see :mod:`mailstack.imap.binary`), found as the octets arrive."""

    def __init__(self, size: int, literal8: bool = False, in_memory: bool = True):
        self.size, self.literal8, self.nul = size, literal8, False
        # max_size=1: the first write rolls over to the file (0 would mean never)
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY if in_memory else 1)

    def write(self, data: bytes) -> None:
        if not self.nul and b"\0" in data:
            self.nul = True
        self.file.write(data)

    def finish(self) -> None:
        self.file.seek(0)

    def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    def close(self) -> None:
        self.file.close()


@dataclass
class RawCommand:
    """A whole command as read: ``texts[i]`` is followed by ``literals[i]`` (bytes, or a
    :class:`Spool` for APPEND's message); the literal announcements are cut from the texts."""

    tag: bytes
    texts: list[bytes] = field(default_factory=list)
    literals: list = field(default_factory=list)
    #: a literal8 arrived where only APPEND's message may be one (RFC 3516 4.4): BAD when parsed
    misplaced_literal8: bool = False

    def close(self) -> None:
        for lit in self.literals:
            if isinstance(lit, Spool):
                lit.close()


@dataclass(frozen=True)
class Continue:
    """Send a continuation request: the client waits for it before a synchronising literal."""


@dataclass(frozen=True)
class Complete:
    command: RawCommand


@dataclass(frozen=True)
class Refused:
    """The command cannot be read.  ``fatal``: the session must close (the client is already
    sending what was refused); otherwise answer ``tag`` with ``status`` and go on."""

    tag: bytes
    status: bytes
    text: bytes
    fatal: bool = False


def tag_of(line: bytes) -> bytes | None:
    tag = line.split(b" ", 1)[0]
    return tag if tag and _TAG_RE.match(tag) else None


#: What ``literal_kind`` may answer: APPEND's message (spooled, under the message limit) or
#: any other literal (in memory, under the command limit).
MESSAGE, DATA = "message", "data"


class CommandAssembler:
    """Turns the framing's lines and octets into whole commands.

    ``literal_kind(command)``, asked when a literal is announced (the session knows the state
    and the grammar): :data:`MESSAGE`, :data:`DATA`, or ``(status, text)`` to refuse the
    command before a synchronising literal is invited (RFC 3501 7.5: the client then sends
    no octets), e.g. LOGIN where passwords are not allowed yet; ``message_limit``: the size
    limit of a message.
    """

    def __init__(self, framing: Framing, literal_kind, message_limit: int, max_command: int = MAX_COMMAND):
        self.framing, self.literal_kind = framing, literal_kind
        self.message_limit, self.max_command = message_limit, max_command
        self.command: RawCommand | None = None
        self.literal: bytearray | Spool | None = None
        self.remaining = 0
        self.size = 0  # octets of the command held in memory
        self.spooled = 0  # octets of APPEND messages spooled for the command (MULTIAPPEND: several)

    @property
    def inside(self) -> bool:
        """True while a command is partly read (a literal or the line after one)."""
        return self.command is not None

    def step(self):
        """The next event, or None until more input arrives.  Raises :class:`LineTooLong`."""
        if self.literal is not None:
            return self._literal_octets()
        line = self.framing.line()
        if line is None:
            return None
        if self.command is None:
            self.command, self.size = RawCommand(tag_of(line) or b"*"), 0
        self.size += len(line)
        m = _LITERAL_RE.search(line)
        if m is None:
            self.command.texts.append(line)
            if self.size > self.max_command:
                tag = self.command.tag
                self.abandon()
                return Refused(tag, b"BAD", b"[TOOBIG] command larger than %d octets" % self.max_command)
            return self._complete()
        text, binary, size, sync = line[: m.start()], bool(m.group(1)), int(m.group(2)), not m.group(3)
        self.command.texts.append(text)
        kind = self.literal_kind(self.command)
        if isinstance(kind, str) and binary and kind != MESSAGE:
            kind = (b"BAD", b"literal8 (~{n}) is only for APPEND message data (RFC 3516 4.4)")
            self.command.misplaced_literal8 = True
        if not isinstance(kind, str):
            if sync:
                tag = self.command.tag
                self.abandon()
                return Refused(tag, *kind)
            kind = DATA  # LITERAL+: the octets are on their way; read them, the command fails when run
        message = kind == MESSAGE
        refused = self._refuse(size, sync, message)
        if refused is not None:
            return refused
        self.remaining = size
        self.literal = Spool(size, binary, self.spooled <= COMMAND_SPOOLS_IN_MEMORY) if message else bytearray()
        if message:
            self.spooled += size
        else:
            self.size += size
        return Continue() if sync else self.step()

    def _refuse(self, size: int, sync: bool, message: bool) -> Refused | None:
        limit = self.message_limit if message else self.max_command
        if message and size <= limit and self.spooled + size > MULTIAPPEND_FACTOR * limit:
            limit, what = MULTIAPPEND_FACTOR * limit, "messages of one APPEND"
        elif size <= (limit if message else limit - self.size):
            return None
        else:
            what = "message" if message else "command"
        tag = self.command.tag
        self.abandon()
        if not sync:  # RFC 7888 4: the octets are already on their way; the session cannot go on
            return Refused(tag, b"BYE", b"[TOOBIG] %s larger than %d octets" % (what.encode(), limit), True)
        return Refused(tag, b"NO", b"[TOOBIG] %s larger than %d octets" % (what.encode(), limit))

    def _literal_octets(self):
        while self.remaining:
            data = self.framing.take(self.remaining)
            if not data:
                return None
            if isinstance(self.literal, Spool):
                self.literal.write(data)
            else:
                self.literal.extend(data)
            self.remaining -= len(data)
        lit = self.literal
        if isinstance(lit, Spool):
            lit.finish()
        else:
            lit = bytes(lit)
        self.command.literals.append(lit)
        self.literal = None
        return self.step()

    def _complete(self) -> Complete:
        command = self.command
        self._reset()
        return Complete(command)

    def _reset(self) -> None:
        self.command, self.literal, self.remaining, self.size, self.spooled = None, None, 0, 0, 0

    def abandon(self) -> None:
        """Drop the command being read (refused, or the connection went away): close its spools."""
        if self.command is not None:
            if isinstance(self.literal, Spool):
                self.literal.close()
            self.command.close()
        self._reset()
