"""The real mail service inside the test process: :class:`InProcessServer`.

Same API as :class:`support.servers.MailServer` (same files, config and users), but
:meth:`~InProcessServer.start` builds the service with ``mailstack.service.make_service`` and
starts it on the global Twisted reactor, which runs in one daemon thread for the whole test
session (started by the first server).  The listeners bind port 0 on loopback; the test talks
to them with ordinary blocking clients (socket, smtplib, imaplib, poplib) from its own thread.
A test costs milliseconds instead of a ``twistd`` start.

What the process tests have and these do not: a restart of a process, ``kill -9``, signals,
the process's stdout/stderr, a second process on the same store.  Use ``MailServer`` for those.

- Everything that touches the service runs in the reactor thread through :func:`in_reactor`
  (``blockingCallFromThread`` with a timeout, so a wedged reactor fails the test instead of
  hanging the session).
- :meth:`~InProcessServer.log_text` is the Twisted log of the process while the server ran,
  formatted as twistd does.  The events also go to the stdlib logger ``mailstack.inprocess``,
  so pytest shows the warnings and errors (tracebacks raised in the reactor thread) of a failed
  test under "Captured log"; ``--log-level=INFO`` shows everything.  Twisted's events do not
  say which service they come from: two servers running at once each see both logs.
- :meth:`~InProcessServer.stop` stops the service (listeners closed, indexes saved), then
  drops the connections still open to its ports, as twistd's shutdown does, so per-session
  state (the POP3 maildrop locks) goes with them.  It also puts back dnspython's default
  resolver, which the service replaces.
- Users get ``{SSHA512}`` hashes (real verification in microseconds; the ``{ARGON2ID}`` path
  costs ~0.1 s a login and is what the process servers and test_accounts use).
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import logging
import signal
import threading

import dns.resolver
from twisted.internet import defer, reactor, task, tcp
from twisted.logger import LogLevel, formatEventAsClassicLogText, globalLogPublisher

from support.servers import MailServer

__all__ = ["InProcessServer", "in_reactor", "start_reactor", "stop_reactor", "stop_all"]

_reactor_thread: threading.Thread | None = None
_reactor_lock = threading.Lock()
_running: set["InProcessServer"] = set()
_python_log = logging.getLogger("mailstack.inprocess")
_LEVELS = {LogLevel.debug: logging.DEBUG, LogLevel.info: logging.INFO, LogLevel.warn: logging.WARNING,
           LogLevel.error: logging.ERROR, LogLevel.critical: logging.CRITICAL}


def start_reactor() -> None:
    """Run the global reactor in a daemon thread, once per session (no signal handlers)."""
    global _reactor_thread
    with _reactor_lock:
        if _reactor_thread is None:
            pool = reactor.threadpool
            if pool is not None and pool.joined:  # stopped: the reactor could not start it again
                raise RuntimeError("a test stopped the reactor's thread pool before the reactor ran: "
                                   "run Twisted code through support.inprocess.in_reactor instead")
            _reactor_thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                                               name="twisted-reactor", daemon=True)
            _reactor_thread.start()


def stop_reactor(timeout: float = 10.0) -> None:
    """End of session: stop the reactor (its thread pool with it) and wait for the thread."""
    if _reactor_thread is not None and _reactor_thread.is_alive():
        reactor.callFromThread(reactor.stop)
        _reactor_thread.join(timeout)


def in_reactor(fn, *args, timeout: float = 30.0, **kwargs):
    """``fn(*args, **kwargs)`` called in the reactor thread; its result, waited for if a Deferred.

    Like ``twisted.internet.threads.blockingCallFromThread``, plus a timeout.  An exception is
    raised here with the reactor-side traceback as a note.
    """
    start_reactor()
    if threading.current_thread() is _reactor_thread:
        raise RuntimeError("in_reactor() called from the reactor thread")
    result: concurrent.futures.Future = concurrent.futures.Future()

    def failed(failure):
        error = failure.value
        error.add_note("raised in the reactor thread:\n" + failure.getTraceback())
        result.set_exception(error)

    def call():
        try:  # BaseException too: a SystemExit must not end the reactor thread
            d = defer.maybeDeferred(fn, *args, **kwargs)
        except BaseException as e:  # pragma: no cover - maybeDeferred catches Exception only
            result.set_exception(e)
            return
        d.addCallbacks(result.set_result, failed)

    reactor.callFromThread(call)
    try:
        return result.result(timeout)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"the reactor did not answer {fn!r} in {timeout}s") from None


def stop_all() -> None:
    """Stop every InProcessServer still running (the end of a session, or a forgotten one)."""
    for server in list(_running):
        server.stop()


class _LogCapture:
    """A Twisted log observer keeping the events as twistd's log lines."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, event: dict) -> None:
        text = formatEventAsClassicLogText(event)
        if text:
            self.lines.append(text)  # list.append is atomic: events come from any thread
            level = _LEVELS.get(event.get("log_level"), logging.INFO)
            if _python_log.isEnabledFor(level):
                _python_log.log(level, "%s", text.rstrip("\n"))

    def text(self) -> str:
        return "".join(self.lines)


def _ssha512(password: str) -> str:
    salt = hashlib.sha256(password.encode()).digest()[:8]  # fixed per password: the files stay comparable
    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode()


def _no_freeze() -> None:
    """The service's gc.freeze() would freeze the whole test process (every test's objects)."""
    from mailstack.service import MailstackService

    MailstackService.freeze_at_start = False


_no_freeze()


class InProcessServer(MailServer):
    """The mail service of ``base`` (as MailServer configures it), run inside this process."""

    workers = 1  # this process is the server: no worker processes beside it

    def __init__(self, *args, **kwargs):
        self.service = None
        self._log: _LogCapture | None = None
        self._saved_resolver = None
        super().__init__(*args, **kwargs)

    @staticmethod
    def password_hash(password: str) -> str:
        return _ssha512(password)

    def start(self, timeout: float = 30.0) -> "InProcessServer":
        if self.service is not None:
            raise RuntimeError("already started")
        self._log = _LogCapture()
        globalLogPublisher.addObserver(self._log)
        self._saved_resolver = dns.resolver.default_resolver
        try:
            self.service = in_reactor(_start_service, str(self.config_path), timeout=timeout)
        except BaseException:
            self._release_globals()
            raise
        self.ports = {key: dict(bound) for key, bound in self.service.bound.items()}
        _running.add(self)
        return self

    def stop(self, sig=signal.SIGTERM) -> int | None:
        """Stop the service and drop its connections; 0 (what a clean twistd exit returns)."""
        if sig != signal.SIGTERM:
            raise NotImplementedError("an in-process server cannot be signalled: use MailServer")
        if self.service is None:
            return None
        service, self.service = self.service, None
        try:
            in_reactor(_stop_service, service)
        finally:
            self._release_globals()
            _running.discard(self)
        return 0

    def kill(self) -> None:
        raise NotImplementedError("an in-process server cannot be killed: use MailServer (the server fixture)")

    def _release_globals(self) -> None:
        if self._log is not None:
            globalLogPublisher.removeObserver(self._log)
        if self._saved_resolver is not None:
            dns.resolver.default_resolver = self._saved_resolver
            self._saved_resolver = None

    def log_text(self) -> str:
        return self._log.text() if self._log is not None else ""

    def errors(self) -> list[str]:
        """The log lines that carry a traceback (an exception raised in the reactor thread)."""
        return [line for line in (self._log.lines if self._log else []) if "Traceback (most recent call last)" in line]


def _start_service(config_path: str):
    """Reactor thread: build the service, bind its listeners, start it (twistd's order)."""
    from mailstack.service import make_service

    service = make_service(config_path, reactor)
    try:
        service.privilegedStartService()
    except SystemExit as e:  # it has written why to fd 2 already
        raise RuntimeError(f"the service did not bind its listeners (exit {e.code})") from None
    try:
        service.startService()
    except BaseException:
        for port in service.ports:
            port.stopListening()
        raise
    return service


@defer.inlineCallbacks
def _stop_service(service):
    """Reactor thread: stopService, then abort what is still connected to its ports."""
    ports = {bound["port"] for bound in service.bound.values()}
    yield defer.maybeDeferred(service.stopService)
    connections = [selectable for selectable in set(reactor.getReaders()) | set(reactor.getWriters())
                   if isinstance(selectable, tcp.Server) and selectable.getHost().port in ports]
    for connection in connections:
        connection.abortConnection()
    for _ in range(100):  # abortConnection reports connectionLost on the next reactor turn
        if not any(connection.connected for connection in connections):
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
