"""A user's Sieve scripts on disk, in Dovecot/Pigeonhole's layout, so Dovecot users bring theirs.

In the user's directory (``store.mailbox(address).path``): each script is
``sieve/<name>.sieve``; the active one is the symlink ``.dovecot.sieve`` ->
``sieve/<name>.sieve`` (no link: none active).  A regular file ``.dovecot.sieve`` (written by
an admin by hand) is active too; the first change through this class moves it into
``sieve/`` as ``dovecot.orig`` (as Pigeonhole does) so that it can be listed and managed.

Every write is atomic (temporary file, fsync, rename, directory fsync) and every switch of
the active script is one ``rename`` of a new symlink over the old, so delivery reading
``.dovecot.sieve`` sees the old script or the new one, never none.  Directories are 0700 and
files 0600, as the rest of the user's Maildir.  *Everything here blocks*: Twisted callers run
it in a thread.  Changes are serialised by an ``flock`` on ``sieve/.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import unicodedata

from mailstack.fsutil import atomic_write, fsync_dir

__all__ = ["ACTIVE_LINK", "DEFAULT_MAX_SCRIPTS", "DEFAULT_MAX_SIZE", "MAX_NAME_LENGTH", "SCRIPT_DIR", "SUFFIX",
           "BadScriptName", "InvalidScript", "QuotaExceeded", "ScriptActive", "ScriptError", "ScriptExists",
           "ScriptNotFound", "ScriptStore", "check_name", "check_script", "sieve_extensions"]

SCRIPT_DIR = "sieve"
ACTIVE_LINK = ".dovecot.sieve"
SUFFIX = ".sieve"
MIGRATED_NAME = "dovecot.orig"  # what a hand-written regular .dovecot.sieve becomes
DEFAULT_MAX_SIZE = 64 * 1024
DEFAULT_MAX_SCRIPTS = 16
MAX_NAME_LENGTH = 128  # characters; and at most MAX_NAME_BYTES in UTF-8 (a file name is 255 bytes)
MAX_NAME_BYTES = 255 - len(SUFFIX) - 20  # room for the temporary file's suffix too


class ScriptError(Exception):
    """A refused operation.  ``code`` is the RFC 5804 response code (None: none applies);
    ``str()`` is safe to show to the user."""

    code: str | None = None


class BadScriptName(ScriptError):
    pass


class ScriptNotFound(ScriptError):
    code = "NONEXISTENT"  # RFC 5804 1.3


class ScriptExists(ScriptError):
    code = "ALREADYEXISTS"


class ScriptActive(ScriptError):
    code = "ACTIVE"  # RFC 5804 2.10: the active script may not be deleted


class QuotaExceeded(ScriptError):
    """``code`` QUOTA/MAXSIZE or QUOTA/MAXSCRIPTS (RFC 5804 1.3)."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code = code


class InvalidScript(ScriptError):
    """The interpreter refused the script; ``str()`` is "line L, column C: message"."""


def check_name(name: str) -> str:
    """RFC 5804 1.6: a script name is Net-Unicode (NFC, RFC 5198) without control characters
    (U+0000-001F, U+007F-009F) or the line and paragraph separators; here also without "/", not
    empty, not starting with "." (no hidden file, no "..") and bounded.  Returns it in NFC."""
    if not isinstance(name, str) or not name:
        raise BadScriptName("a script name must not be empty")
    name = unicodedata.normalize("NFC", name)
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in name):
        raise BadScriptName("a script name must not contain control characters (RFC 5804 1.6)")
    if "/" in name or name.startswith("."):
        raise BadScriptName("a script name must not contain a slash or start with a dot")
    if len(name) > MAX_NAME_LENGTH or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise BadScriptName(f"a script name is at most {MAX_NAME_LENGTH} characters")
    return name


def check_script(text: str, name: str = "") -> None:
    """Compile ``text`` with the interpreter; :class:`InvalidScript` if it is refused.  The one
    place ManageSieve and the CLI reach the interpreter (mailstack.sieve.compile_script)."""
    import mailstack.sieve as sieve

    compile_script = getattr(sieve, "compile_script", None)
    if compile_script is None:  # the interpreter is not part of this build yet: nothing to check
        return
    try:
        compile_script(text, name)
    except sieve.SieveSyntaxError as e:
        raise InvalidScript(str(e)) from None


def sieve_extensions() -> list[str]:
    """The extensions the interpreter supports (ManageSieve's SIEVE capability, RFC 5804 1.7)."""
    import mailstack.sieve as sieve

    for attr in ("CAPABILITIES", "EXTENSIONS"):
        found = getattr(sieve, attr, None)
        if found is not None:
            return sorted(found() if callable(found) else found)
    return []


class ScriptStore:
    """One user's scripts.  ``user_dir`` is their Maildir's top directory."""

    def __init__(self, user_dir: str, max_size: int = DEFAULT_MAX_SIZE, max_scripts: int = DEFAULT_MAX_SCRIPTS,
                 fsync: bool = True):
        self.user_dir = user_dir
        self.dir = os.path.join(user_dir, SCRIPT_DIR)
        self.link = os.path.join(user_dir, ACTIVE_LINK)
        self.max_size, self.max_scripts, self.fsync = max_size, max_scripts, fsync

    # -- reading ---------------------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.dir, check_name(name) + SUFFIX)

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            if entry.endswith(SUFFIX) and not entry.startswith(".") and os.path.isfile(os.path.join(self.dir, entry)):
                found.append(entry[: -len(SUFFIX)])
        return sorted(found)

    def active_name(self) -> str | None:
        """The active script's name; None when none is active (or the link is dangling).  A
        regular ``.dovecot.sieve`` not yet moved into ``sieve/`` is named ``dovecot.orig``."""
        try:
            target = os.readlink(self.link)
        except FileNotFoundError:
            return None
        except OSError:  # not a link
            return MIGRATED_NAME if os.path.isfile(self.link) else None
        full = os.path.normpath(os.path.join(self.user_dir, target))
        if os.path.dirname(full) != os.path.normpath(self.dir) or not full.endswith(SUFFIX):
            return None  # a link somewhere else: not a script this store manages
        if not os.path.isfile(full):
            return None
        return os.path.basename(full)[: -len(SUFFIX)]

    def list(self) -> list[tuple[str, bool]]:
        """[(name, active)] sorted by name (RFC 5804 2.7 LISTSCRIPTS)."""
        active = self.active_name()
        names = self.names()
        if active == MIGRATED_NAME and active not in names:
            names = sorted(names + [active])
        return [(n, n == active) for n in names]

    def get(self, name: str) -> bytes:
        name = check_name(name)
        if name == MIGRATED_NAME and self._unmigrated():
            with open(self.link, "rb") as f:
                return f.read()
        try:
            with open(self.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ScriptNotFound(f"there is no script named {name!r}") from None

    def exists(self, name: str) -> bool:
        name = check_name(name)
        return os.path.isfile(self.path(name)) or (name == MIGRATED_NAME and self._unmigrated())

    def check_space(self, name: str, size: int) -> None:
        """RFC 5804 2.3 HAVESPACE: would a script of ``size`` octets under ``name`` fit?
        Raises :class:`QuotaExceeded` (or :class:`BadScriptName`)."""
        name = check_name(name)
        if size > self.max_size:
            raise QuotaExceeded("QUOTA/MAXSIZE", f"the script is too large (at most {self.max_size} octets)")
        if not self.exists(name) and len(self.list()) >= self.max_scripts:
            raise QuotaExceeded("QUOTA/MAXSCRIPTS", f"too many scripts (at most {self.max_scripts})")

    # -- changing --------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        """Store a script (replacing one of that name; an active one stays active)."""
        name = check_name(name)
        with self._locked():
            self.check_space(name, len(data))
            atomic_write(self.path(name), data, mode=0o600, fsync=self.fsync)

    def delete(self, name: str) -> None:
        name = check_name(name)
        with self._locked():
            if self.active_name() == name:
                raise ScriptActive("the active script cannot be deleted: deactivate it first (RFC 5804 2.10)")
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                raise ScriptNotFound(f"there is no script named {name!r}") from None
            self._sync(self.dir)

    def rename(self, old: str, new: str) -> None:
        """RFC 5804 2.11.1: the new name must be free; an active script stays active (the link
        moves to the new name before the old one goes, so delivery always finds it)."""
        old, new = check_name(old), check_name(new)
        with self._locked():
            if not os.path.isfile(self.path(old)):
                raise ScriptNotFound(f"there is no script named {old!r}")
            if old == new:
                return
            if os.path.lexists(self.path(new)):
                raise ScriptExists(f"a script named {new!r} already exists")
            os.link(self.path(old), self.path(new))
            if self.active_name() == old:
                self._point_link(new)
            os.unlink(self.path(old))
            self._sync(self.dir)

    def activate(self, name: str) -> None:
        """RFC 5804 2.8 SETACTIVE: make ``name`` the active script; "" deactivates."""
        with self._locked():
            if name == "":
                if os.path.lexists(self.link):
                    os.unlink(self.link)
                    self._sync(self.user_dir)
                return
            name = check_name(name)
            if not os.path.isfile(self.path(name)):
                raise ScriptNotFound(f"there is no script named {name!r}")
            self._point_link(name)

    # -- internals -------------------------------------------------------------------------

    def _sync(self, directory: str) -> None:
        if self.fsync:
            fsync_dir(directory)

    def _unmigrated(self) -> bool:
        return os.path.isfile(self.link) and not os.path.islink(self.link)

    def _point_link(self, name: str) -> None:
        """Swap ``.dovecot.sieve`` to ``sieve/<name>.sieve`` in one rename (relative, as Dovecot writes it)."""
        tmp = f"{self.link}.{secrets.token_hex(6)}.tmp"
        os.symlink(os.path.join(SCRIPT_DIR, name + SUFFIX), tmp)
        try:
            os.rename(tmp, self.link)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._sync(self.user_dir)

    def _migrate(self) -> None:
        """A regular ``.dovecot.sieve`` becomes ``sieve/dovecot.orig.sieve``, active."""
        if not self._unmigrated():
            return
        with open(self.link, "rb") as f:
            data = f.read()
        name = MIGRATED_NAME
        n = 1
        while os.path.lexists(self.path(name)):
            name, n = f"{MIGRATED_NAME}-{n}", n + 1
        atomic_write(self.path(name), data, mode=0o600, fsync=self.fsync)
        self._point_link(name)

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(self.user_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._migrate()
            yield
        finally:
            os.close(fd)
