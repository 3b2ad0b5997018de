"""Log lines a client cannot forge: control characters in logged values are escaped.

Client-supplied text reaches the log in many fields (HELO names, addresses, user names,
mailbox names, error causes); a newline or CR in one would start a line of the client's
choosing, and NUL or escape sequences confuse log readers (log injection, issue 14).
:func:`install` puts :func:`escape_event` in front of every other observer of the global
log publisher, so whatever writes the log (twistd's file or journald observer) sees each
string field with ``\\n``, ``\\r``, ``\\x00`` ... written out.  The format string itself is
ours and stays as it is; failures (tracebacks) are untouched.
"""

from __future__ import annotations

import re

from twisted.logger import globalLogPublisher

class Trusted(str):
    """Text of ours that is multi-line on purpose (the start-up banner): left as it is."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
_installed = False


def escape(text: str) -> str:
    """``text`` with its control characters written out (``\\r``, ``\\n``, ``\\x00`` ...)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def escape_event(event: dict) -> None:
    """Escape, in place, the control characters of the event's string and bytes fields."""
    texts = []
    for key, value in event.items():
        if isinstance(value, str):
            if type(value) is not Trusted and not key.startswith("log_"):
                texts.append(value)
        elif isinstance(value, (bytes, BaseException)) and not key.startswith("log_"):
            break
    else:
        if not _CONTROL.search("".join(texts)):
            return  # the common case: one search over all the strings finds nothing to escape
    for key, value in list(event.items()):
        if key.startswith("log_") or isinstance(value, Trusted):
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "backslashreplace")
        if isinstance(value, str) and _CONTROL.search(value):
            event[key] = escape(value)
        elif isinstance(value, BaseException) and _CONTROL.search(str(value)):
            event[key] = escape(str(value))


def install() -> None:
    """Once per process, before twistd begins logging (its observers come after ours)."""
    global _installed
    if not _installed:
        globalLogPublisher.addObserver(escape_event)
        _installed = True
