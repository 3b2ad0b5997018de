"""Where the log goes when ``[log]`` asks for more than twistd's own output: a file of
mailstack's (reopened on SIGUSR1, for logrotate), JSON lines, or both.

With ``[log] format = "text"`` and ``file = ""`` (the defaults) nothing here runs: twistd's
observer writes the log (standard output with ``--nodaemon``, which journald captures, or
``--logfile``).  Otherwise :class:`LogOutput` takes twistd's place as the application's
``ILogObserver`` component (twistd then opens no log of its own, so no line is written twice):
it writes to ``[log] file``, or to standard output when that is empty.

It sits behind :mod:`mailstack.logfilter` (control characters escaped) and
:func:`mailstack.logcontext.annotate` (session fields) in the global publisher, so what it
writes is already safe; JSON encoding escapes the rest.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from twisted.logger import ILogObserver, Logger, formatEvent, formatEventAsClassicLogText
from twisted.python.components import Componentized
from zope.interface import implementer

from mailstack.errors import ConfigError

log = Logger()

#: Characters JSON leaves raw (with ensure_ascii off) that some readers take as line breaks.
_LEGACY = {"message", "isError", "system", "format", "why"}
_SEPARATORS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}


def json_line(event: dict) -> str:
    """One event as one line of JSON: time (UTC), level, namespace, msg (the human text), and every plain
    field (session, peer, user, queue_id, message_id, ...)."""
    when = event.get("log_time")
    when = time.time() if when is None else when
    level = event.get("log_level")
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z",
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "msg": formatEvent(event),
    }
    legacy = record["namespace"] == "log_legacy"  # twisted.python.log: its fields repeat the text
    for key, value in event.items():
        if key.startswith("log_") or key in record or (legacy and key in _LEGACY):
            continue
        if isinstance(value, str) and value == record["msg"]:
            continue  # a "{banner}" field: the text already
        if value is None or isinstance(value, (str, int, float, bool)):
            record[key] = value
        elif isinstance(value, (list, tuple, set, frozenset)):
            record[key] = [v if isinstance(v, (str, int, float, bool)) else str(v) for v in value]
        elif isinstance(value, BaseException):
            record[key] = str(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = "(traceback could not be formatted)"
    text = json.dumps(record, ensure_ascii=False, default=str)
    for raw, escaped in _SEPARATORS.items():
        text = text.replace(raw, escaped)
    return text + "\n"


def text_line(event: dict) -> str | None:
    return formatEventAsClassicLogText(event)


def _open(path: str):
    """Append, created owner/group-readable only: addresses and subjects are personal data."""
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")


@implementer(ILogObserver)
class LogOutput:
    """A log observer writing each event as one line to a file (or a stream), flushed at once.

    Events may come from worker threads, so writes and :meth:`reopen` take one lock; reopen
    opens the new file before it lets go of the old one, so no line is lost or written to a
    closed file, and opening a file is all it costs the reactor.
    """

    def __init__(self, fmt: str, path: str = "", stream=None):
        self.format = json_line if fmt == "json" else text_line
        self.path = path
        self._lock = threading.Lock()
        self._file = _open(path) if path else (stream or sys.stdout)

    def __call__(self, event: dict) -> None:
        try:
            line = self.format(event)
        except Exception as e:  # never lose the event to a formatting error
            line = json.dumps({"msg": f"unformattable log event: {e!r}"}) + "\n"
        if not line:
            return
        with self._lock:
            try:
                self._file.write(line)
                self._file.flush()
            except (OSError, ValueError):
                pass  # a full disk must not stop the server; nothing better to report it to

    def reopen(self) -> None:
        """SIGUSR1 (after logrotate renamed the file): continue in a new file at ``path``."""
        if not self.path:
            return
        try:
            new = _open(self.path)
        except OSError as e:
            log.error("cannot reopen the log file {path}: {error}; still writing to the old one", path=self.path,
                      error=str(e))
            return
        with self._lock:
            old, self._file = self._file, new
        try:
            old.close()
        except OSError:
            pass
        log.info("log file reopened")

    def close(self) -> None:
        if self.path:
            with self._lock:
                self._file.close()


def build(cfg) -> LogOutput | None:
    """The output ``[log]`` asks for, with its file open; None for twistd's own."""
    fmt, path = cfg.log["format"], cfg.log["file"]
    if fmt == "text" and not path:
        return None
    try:
        return LogOutput(fmt, path)
    except OSError as e:
        raise ConfigError(cfg.path, "[log] file", f"cannot open {path}: {e.strerror or e}") from None


def attach(output: LogOutput | None, parent, reactor) -> None:
    """Make ``output`` the log of the application ``parent``: twistd reads its ILogObserver
    component when it starts logging, just after this (a service embedded elsewhere keeps
    its host's log).  SIGUSR1 reopens the file."""
    if output is None or not isinstance(parent, Componentized):
        return
    parent.setComponent(ILogObserver, output)
    if output.path:
        try:
            signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(output.reopen))
        except ValueError:  # not the main thread (tests embedding the service)
            pass
