"""The script commands of the authenticated state (RFC 5804 2.5-2.12).

Each runs its disk work (and the interpreter's check) in a thread: the scripts live beside
the user's Maildir (:class:`mailstack.sieve.scripts.ScriptStore`).  A refusal of the store
becomes ``NO`` with the RFC 5804 1.3 response code the store names (QUOTA/MAXSIZE,
QUOTA/MAXSCRIPTS, NONEXISTENT, ACTIVE, ALREADYEXISTS); an invalid script
``NO "line L, column C: message"``.
"""

from __future__ import annotations

from twisted.internet import threads

from mailstack.managesieve import wire
from mailstack.sieve.scripts import ScriptError, check_script


class SieveNo(Exception):
    """A refused command: ``NO [(code)] "text"`` (RFC 5804 1.3)."""

    def __init__(self, text: str, code: bytes | None = None):
        super().__init__(text)
        self.text, self.code = text, code


def name_of(value: bytes) -> str:
    """A script name from the wire: UTF-8 (RFC 5804 1.6); the store checks the rest."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise SieveNo("a script name must be UTF-8 (RFC 5804 1.6)") from None


def script_text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise SieveNo("the script is not valid UTF-8 (RFC 5228 2.2)") from None


def in_thread(work, *args):
    """Run store work in a thread; its ScriptError becomes the NO to answer."""

    def refused(failure):
        failure.trap(ScriptError)
        e = failure.value
        raise SieveNo(str(e), e.code.encode() if e.code else None)

    return threads.deferToThread(work, *args).addErrback(refused)


class ScriptCommands:
    """Mixed into the session: ``self.scripts`` is the user's ScriptStore, ``self.ok``/``self.send`` reply."""

    def cmd_havespace(self, name: bytes, size: int):
        """RFC 5804 2.5: would a script of this size fit (size and count limits)?"""
        return in_thread(self.scripts.check_space, name_of(name), int(size)).addCallback(lambda _: self.ok())

    def cmd_putscript(self, name: bytes, content: bytes):
        """RFC 5804 2.6: refused unless the interpreter accepts the script (section 2.6 'MUST
        check'); an active script replaced stays active."""
        scripts, script_name, text = self.scripts, name_of(name), script_text(content)

        def put():
            scripts.check_space(script_name, len(content))
            check_script(text, script_name)
            scripts.put(script_name, content)

        return in_thread(put).addCallback(lambda _: self.ok())

    def cmd_checkscript(self, content: bytes):
        """RFC 5804 2.12: the PUTSCRIPT checks without storing anything."""
        text = script_text(content)
        if len(content) > self.scripts.max_size:
            raise SieveNo(f"the script is too large (at most {self.scripts.max_size} octets)", b"QUOTA/MAXSIZE")
        return in_thread(check_script, text).addCallback(lambda _: self.ok())

    def cmd_listscripts(self):
        """RFC 5804 2.7: one line per script, ``ACTIVE`` after the active one."""

        def listed(scripts):
            lines = [wire.string(n) + (b" ACTIVE" if active else b"") + b"\r\n" for n, active in scripts]
            self.send(b"".join(lines))
            self.ok()

        return in_thread(self.scripts.list).addCallback(listed)

    def cmd_setactive(self, name: bytes):
        """RFC 5804 2.8: "" deactivates; the link is swapped in one rename."""
        return in_thread(self.scripts.activate, name_of(name)).addCallback(lambda _: self.ok())

    def cmd_getscript(self, name: bytes):
        """RFC 5804 2.9: the script as a literal, then OK."""

        def got(data: bytes):
            self.send(b"{%d}\r\n" % len(data) + data + b"\r\n")
            self.ok()

        return in_thread(self.scripts.get, name_of(name)).addCallback(got)

    def cmd_deletescript(self, name: bytes):
        """RFC 5804 2.10: the active script cannot be deleted (NO (ACTIVE))."""
        return in_thread(self.scripts.delete, name_of(name)).addCallback(lambda _: self.ok())

    def cmd_renamescript(self, old: bytes, new: bytes):
        """RFC 5804 2.11.1: the new name must be free; the active script stays active."""
        return in_thread(self.scripts.rename, name_of(old), name_of(new)).addCallback(lambda _: self.ok())
