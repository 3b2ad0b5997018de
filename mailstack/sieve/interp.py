"""Running a compiled script against one message (RFC 5228 2.10): the run's state, the
command loop with its deadline, variables (RFC 5229) and include (RFC 6609).

Control flow (``stop``, ``return``) travels as exceptions; any other failure is a
:class:`SieveRuntimeError` that :func:`execute` turns into an implicit keep with the reason.
"""

from __future__ import annotations

import functools
import re
import time

from .actions import Envelope, Keep, Outcome
from .checker import VARIABLE_NAME, Template
from .errors import SieveRuntimeError, SieveSyntaxError
from .matching import Matcher, MatchTimeout
from .message import Message

MAX_INCLUDE_DEPTH = 8  # RFC 6609 3.2 lets an implementation limit nesting
MAX_INCLUDES = 64
MAX_VARIABLE_SIZE = 64 * 1024  # RFC 5229 3: values may be truncated to an implementation limit
MAX_VARIABLES = 1024
MAX_MATCH_VARIABLES = 10  # RFC 5229 3.2: at least ${0}..${9}
REGEX_BUDGET = 2.0  # seconds of :matches/:regex work one run may spend in total
_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


class Stop(Exception):
    """``stop`` (RFC 5228 3.3): ends every script of the run."""


class Return(Exception):
    """``return`` (RFC 6609 3.3): ends the current (included) script."""


class Frame:
    """What belongs to one script of the run: its requires and local variables (RFC 6609 3.4)."""

    __slots__ = ("requires", "local", "global_names", "name")

    def __init__(self, requires: frozenset, name: str):
        self.requires = requires
        self.local: dict[str, str] = {}
        self.global_names: set[str] = set()
        self.name = name


class Run:
    """One evaluation: the message view, the actions so far, flags, variables, include state."""

    def __init__(self, script, message: bytes, envelope: Envelope, *, mailbox_exists, loader,
                 now, deadline, max_body):
        self.msg = Message(message)
        self.envelope = envelope
        self.mailbox_exists = mailbox_exists
        self.loader = loader
        self.now = time.time() if now is None else now
        self.deadline = deadline
        self.max_body = max_body
        self.regex_until = time.monotonic() + REGEX_BUDGET
        self.actions: list = []
        self.implicit_keep = True
        self.flags: list[str] = []
        self.globals: dict[str, str] = {}
        self.match_vars: list[str] = []
        self.frame = Frame(script.requires, script.name)
        self.include_stack: list[tuple[str, str]] = [("personal", script.name)]
        self.included_once: set[tuple[str, str]] = set()
        self.include_count = 0
        self.compiled: dict[tuple[str, str], object] = {}
        self.bodies: dict = {}
        self.state: dict = {}  # per-action bookkeeping (commands.py): reject, vacation, redirects

    # -- bounds ------------------------------------------------------------------
    def tick(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SieveRuntimeError("the script ran past its time limit")

    def regex_timeout(self) -> float:
        now = time.monotonic()
        until = self.regex_until if self.deadline is None else min(self.regex_until, self.deadline)
        if until <= now:
            raise SieveRuntimeError("pattern matching ran past its time limit")
        return until - now

    # -- the command loop --------------------------------------------------------
    def block(self, commands) -> None:
        from .commands import COMMANDS
        from .tests import evaluate

        for cmd in commands:
            self.tick()
            if cmd.name == "if":
                for test, body in cmd.branches:
                    if test is None or evaluate(self, test):
                        self.block(body)
                        break
            else:
                COMMANDS[cmd.name](self, cmd)

    def matcher(self, cmd) -> Matcher:
        return Matcher(cmd, self.regex_timeout, self.tick)

    def matched(self, matcher: Matcher, result: bool) -> bool:
        """RFC 5229 3.2: a successful :matches/:regex sets ${0}..${n}; a failed one keeps them."""
        if result and matcher.groups is not None and "variables" in self.frame.requires:
            self.match_vars = matcher.groups[:MAX_MATCH_VARIABLES]
        return result

    # -- variables (RFC 5229) ------------------------------------------------------
    def expand(self, text: str) -> str:
        if type(text) is not Template:
            return text
        out = _REFERENCE.sub(self._reference, text)
        return out[:MAX_VARIABLE_SIZE]

    def expand_list(self, values) -> list[str]:
        return [self.expand(v) for v in values or ()]

    def _reference(self, m: re.Match) -> str:
        name = m.group(1)
        if name.isdigit():
            index = int(name)
            return self.match_vars[index] if index < len(self.match_vars) else ""
        name = name.lower()
        namespace, dot, rest = name.partition(".")
        if dot:
            if namespace == "global" and VARIABLE_NAME.match(rest):  # RFC 6609 3.5
                return self.globals.get(rest, "")
            return m.group()
        if not VARIABLE_NAME.match(name):
            return m.group()
        return self.get_variable(name)

    def get_variable(self, name: str) -> str:
        name = name.lower()
        if name.startswith("global."):
            return self.globals.get(name[7:], "")
        if name in self.frame.global_names:
            return self.globals.get(name, "")
        return self.frame.local.get(name, "")

    def set_variable(self, name: str, value: str) -> None:
        name = name.lower()
        if name.startswith("global.") and VARIABLE_NAME.match(name[7:]):
            store, name = self.globals, name[7:]
        elif VARIABLE_NAME.match(name):
            store = self.globals if name in self.frame.global_names else self.frame.local
        else:
            raise SieveRuntimeError(f"invalid variable name {name!r}")
        if name not in store and len(store) >= MAX_VARIABLES:
            raise SieveRuntimeError(f"more than {MAX_VARIABLES} variables")
        store[name] = value[:MAX_VARIABLE_SIZE]

    # -- include (RFC 6609) ------------------------------------------------------------
    def include(self, name: str, location: str, once: bool, optional: bool) -> None:
        key = (location, name)
        if once and (key in self.included_once or key in self.include_stack):
            return  # RFC 6609 3.2: a recursive :once counts as already included, no error
        if key in self.include_stack:
            raise SieveRuntimeError(f"include loop: {location} script {name!r} includes itself")
        if len(self.include_stack) > MAX_INCLUDE_DEPTH:
            raise SieveRuntimeError(f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
        self.include_count += 1
        if self.include_count > MAX_INCLUDES:
            raise SieveRuntimeError(f"more than {MAX_INCLUDES} includes in one run")
        script = self.load(key, optional)
        if script is None:
            return
        self.included_once.add(key)  # RFC 6609 3.2: :once skips any earlier inclusion, :once or not
        outer = self.frame
        self.frame = Frame(script.requires, name)
        self.include_stack.append(key)
        try:
            self.block(script.commands)
        except Return:
            pass
        finally:
            self.include_stack.pop()
            self.frame = outer

    def load(self, key: tuple[str, str], optional: bool):
        if key in self.compiled:
            return self.compiled[key]
        location, name = key
        text = self.loader(name, location) if self.loader is not None else None
        if text is None:
            if optional:  # RFC 6609 3.2 :optional: a missing script is no error
                return None
            raise SieveRuntimeError(f"included {location} script {name!r} does not exist")
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        try:
            script = _compile_included(text, name)
        except SieveSyntaxError as e:
            raise SieveRuntimeError(f"included {location} script {name!r}: {e}") from None
        self.compiled[key] = script
        return script

    # -- the result ------------------------------------------------------------------------
    def outcome(self) -> Outcome:
        actions = list(self.actions)
        if self.implicit_keep:
            from .commands import store

            store(self, "INBOX", tuple(self.flags), False, True, implicit=True)
            actions = list(self.actions)
        header = self.msg.header_bytes() if self.msg.edited else None
        return Outcome(actions=actions, header=header)


@functools.lru_cache(maxsize=128)
def _compile_included(text: str, name: str):
    """Included scripts are compiled once per text, not once per delivery (they are immutable)."""
    from . import compile_script

    return compile_script(text, name)


def execute(script, message: bytes, envelope: Envelope, **options) -> Outcome:
    try:
        run = Run(script, message, envelope, **options)
        try:
            run.block(script.commands)
        except (Stop, Return):
            pass
        return run.outcome()
    except SieveRuntimeError as e:
        return Outcome(actions=[Keep()], errors=[str(e)])
    except MatchTimeout as e:
        return Outcome(actions=[Keep()], errors=[str(e)])
    except RecursionError:
        return Outcome(actions=[Keep()], errors=["script nested too deeply"])
    except Exception as e:  # a bug here must still deliver the message (RFC 5228 2.10.6)
        return Outcome(actions=[Keep()], errors=[f"internal error: {type(e).__name__}: {e}"])
