"""Sieve mail filtering (RFC 5228 and extensions) at local delivery.

Public interface (the rest of mailstack uses only these):

* ``compile_script(text, name="") -> Script``: parse and check a script; raises
  :class:`SieveSyntaxError` (``line``, ``column``, ``message``) for an invalid one.
  ManageSieve's PUTSCRIPT/CHECKSCRIPT and ``mailstack sieve check`` call it.
* ``run(script, message, envelope, *, mailbox_exists, loader, now, deadline) -> Outcome``:
  evaluate against one message (bytes, CRLF or LF); never raises for a run-time error (the
  outcome carries it and an implicit keep).  ``loader(name, location)`` returns the text of an
  ``include``d script (``location`` "personal" or "global"), or None if missing.
* :mod:`mailstack.sieve.actions`: the action and outcome types.
* ``CAPABILITIES``: the extensions a script may ``require`` (ManageSieve's SIEVE capability);
  ``MAX_REDIRECTS``: redirects allowed in one run (its MAXREDIRECTS, RFC 5804 1.7).
"""

from __future__ import annotations

from dataclasses import dataclass

from .actions import Envelope, Outcome
from .commands import MAX_REDIRECTS
from .errors import SieveRuntimeError, SieveSyntaxError
from .spec import CAPABILITIES

__all__ = ["CAPABILITIES", "MAX_REDIRECTS", "Envelope", "Outcome", "Script", "SieveRuntimeError", "SieveSyntaxError",
           "compile_script", "run"]


@dataclass(frozen=True)
class Script:
    """A checked script: immutable, so one compile serves every run and thread."""

    name: str
    commands: tuple
    requires: frozenset


def compile_script(text: str, name: str = "") -> Script:
    from .checker import Checker
    from .parser import parse

    try:
        nodes = parse(text)
        checker = Checker()
        commands = checker.script(nodes)
    except RecursionError:
        raise SieveSyntaxError("script nested too deeply", 1, 1) from None
    return Script(name, commands, frozenset(checker.requires))


def run(script: Script, message: bytes, envelope: Envelope, *, mailbox_exists=lambda name: True,
        loader=None, now: float | None = None, deadline: float | None = None,
        max_body: int = 1 << 20) -> Outcome:
    from .interp import execute

    return execute(script, message, envelope, mailbox_exists=mailbox_exists, loader=loader,
                   now=now, deadline=deadline, max_body=max_body)
