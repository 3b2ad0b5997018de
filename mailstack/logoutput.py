"""Where the log goes when ``[log]`` asks for more than twistd's own output: a file of
mailstack's (reopened on SIGUSR1, for logrotate), JSON lines, or both.

With ``[log] format = "text"`` and ``file = ""`` (the defaults) the log is where twistd's
options put it: standard output with ``--nodaemon`` (which journald captures), or twistd's
``--logfile`` or ``--syslog``.  :class:`LogOutput` takes twistd's place as the application's
``ILogObserver`` component (twistd then opens no log of its own, so no line is written twice)
when it writes to ``[log] file``, when the format is JSON, and when twistd would write plain
text to standard output: there it writes twistd's very lines (:func:`classic_line`), at a
fraction of the cost of Twisted's formatter, which a busy MX pays two or three times per
message.

It sits behind :mod:`mailstack.logfilter` (control characters escaped) and
:func:`mailstack.logcontext.annotate` (session fields) in the global publisher, so what it
writes is already safe; JSON encoding escapes the rest.
"""

from __future__ import annotations

import json
import os
import signal
import string
import sys
import threading
import time

from twisted.logger import ILogObserver, Logger, formatEvent, formatEventAsClassicLogText, formatTime
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
        "msg": message_text(event),
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


#: Parsed log formats: format string -> [(literal, field, spec, conversion)], or None where
#: only Twisted's formatter will do (positional, dotted, indexed or called fields, nested specs).
_TEMPLATES: dict[str, list | None] = {}
_MAX_TEMPLATES = 4096  # our formats are a few hundred; beyond this, parse each time
_CONVERT = {"r": repr, "s": str, "a": ascii}


def _template(fmt: str) -> list | None:
    parts = _TEMPLATES.get(fmt, False)
    if parts is not False:
        return parts
    try:
        parts = list(string.Formatter().parse(fmt))
    except ValueError:
        parts = None
    if parts is not None and any(name is not None and (not name.isidentifier() or "{" in spec or
                                                       (conv is not None and conv not in _CONVERT))
                                 for _, name, spec, conv in parts):
        parts = None
    if len(_TEMPLATES) < _MAX_TEMPLATES:
        _TEMPLATES[fmt] = parts
    return parts


def message_text(event: dict) -> str:
    """The event's text exactly as ``twisted.logger.formatEvent`` makes it, from a parsed
    format kept per format string; anything unusual (a field that is missing, called or
    dotted, a flattened event, a bytes format) goes to Twisted's formatter."""
    fmt = event.get("log_format")
    if type(fmt) is not str or "log_flattened" in event:
        return formatEvent(event)
    parts = _template(fmt)
    if parts is None:
        return formatEvent(event)
    out = []
    try:
        for literal, name, spec, conv in parts:
            out.append(literal)
            if name is not None:
                value = event[name]
                out.append(format(_CONVERT[conv](value) if conv else value, spec))
    except Exception:  # Twisted's formatter says what is wrong in the text itself
        return formatEvent(event)
    return "".join(out)


_second_text = (None, "-")  # (whole second, its text): one strftime a second


def time_text(when) -> str:
    """``twisted.logger.formatTime(when)`` (RFC 3339 to the second, local offset)."""
    global _second_text
    if when is None:
        return "-"
    second, text = _second_text
    if second is not None and second <= when < second + 0.999999:  # not rounded up to the next second
        return text
    text = formatTime(when)
    whole = int(when)
    if when - whole < 0.999999:
        _second_text = (whole, text)
    return text


def classic_line(event: dict) -> str | None:
    """``twisted.logger.formatEventAsClassicLogText(event)``, the line twistd writes:
    ``<time> [<system>] <text>``, continuation lines indented by a tab; None for no text."""
    system = event.get("log_system")
    if "log_failure" in event or not (system is None or type(system) is str):
        return formatEventAsClassicLogText(event)
    text = message_text(event)
    if not text:
        return None
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    line = f"{time_text(event.get('log_time'))} [{system}] {text}"
    return (line.replace("\n", "\n\t") if "\n" in line else line) + "\n"


def text_line(event: dict) -> str | None:
    return classic_line(event)


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
    closed file, and opening a file is all it costs the reactor.  A signal handler that logs
    (Twisted's SIGTERM handler does) may run inside our own write, in the thread that holds
    the lock (re-entrant for that reason): its line waits in ``_pending`` and follows that
    write, where a plain lock would wait forever.
    """

    def __init__(self, fmt: str, path: str = "", stream=None):
        self.format = json_line if fmt == "json" else text_line
        self.path = path
        self._lock = threading.RLock()  # re-entered only by a signal handler in the writing thread
        self._writing = False
        self._pending: list[str] = []
        self._file = _open(path) if path else (stream or sys.stdout)

    def __call__(self, event: dict) -> None:
        try:
            line = self.format(event)
        except Exception as e:  # never lose the event to a formatting error
            line = json.dumps({"msg": f"unformattable log event: {e!r}"}) + "\n"
        if not line:
            return
        with self._lock:
            if self._writing:  # re-entered by a signal handler during our write (see above)
                self._pending.append(line)
                return
            self._writing = True
            try:
                while self._pending:  # a handler's line left by a signal at the very end of a call
                    self._write(self._pending.pop(0))
                self._write(line)
                while self._pending:
                    self._write(self._pending.pop(0))
            finally:
                self._writing = False

    def _write(self, line: str) -> None:
        try:
            self._file.write(line)
            self._file.flush()
        except (OSError, ValueError, RuntimeError):  # RuntimeError: a re-entered buffer
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


def twistd_writes_stdout(options) -> bool:
    """Would twistd, run with ``options`` (its own, the parent of our plugin's), log to
    standard output?  ``--nodaemon`` without ``--logfile`` (or with ``--logfile=-``), and
    neither ``--syslog`` nor ``--logger``."""
    if options is None:
        return False
    try:
        return bool(options.get("nodaemon")) and options.get("logfile") in (None, "", "-") and \
            not options.get("syslog") and not options.get("logger")
    except AttributeError:
        return False


def build(cfg, stdout: bool = False) -> LogOutput | None:
    """The output ``[log]`` asks for, with its file open; None for twistd's own.  ``stdout``:
    twistd would write text to standard output (:func:`twistd_writes_stdout`), which this
    module then does, the same lines faster."""
    fmt, path = cfg.log["format"], cfg.log["file"]
    if fmt == "text" and not path:
        return LogOutput(fmt, "", sys.stdout) if stdout else None
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
