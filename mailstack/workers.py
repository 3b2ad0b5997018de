"""Both cores: ``[server] workers`` reactor processes serving the same listening sockets.

CPython runs one thread of Python at a time, so one process uses one core however many
threads it has.  With ``workers = N`` the process twistd starts (the *main* process) binds
every listener as it always has, then starts N-1 more processes (``python -m
mailstack.workers``) that inherit the listening sockets of the mail protocols and adopt them
(``IReactorSocket.adoptStreamPort``); the kernel hands each new connection to whichever
process accepts it first.  Every process is a whole :class:`~mailstack.service.MailstackService`
over the same store and queue, which are safe across processes already: UIDs are given under
an ``flock`` (store/uidlist.py), queued messages are claimed by ``rename`` (outbound/queue.py),
IDLE sessions hear of other processes' changes through inotify, greylisting is one SQLite
database, and the outbound-limit counts are one shared journal (antispam/outlimits.py), as
are the login failures (throttle.py); the connection limits count every process's sessions
(connectioncounts.py), and the POP3 maildrop lock is an ``flock`` (store/mailbox.py).

What only the main process does: the HTTP listeners (autoconfiguration, MTA-STS, metrics),
ACME renewals (the workers are told with SIGHUP when a new certificate is installed), the
ports file and the start-up banner, and the start-up clean-up of tmp/ directories.  It
restarts a worker that dies, passes SIGHUP (reload) and SIGUSR1 (reopen the log) on, and
stops the workers when it stops.  A worker stops by itself when the main process dies,
even by SIGKILL (``PR_SET_PDEATHSIG``, and its parent checked each second), so a restarted
service never finds its ports held by orphans.

A worker logs through the main process: each event goes as one JSON line (its text and
plain fields, :class:`_LogPipe`) down a pipe, and the main process publishes it with a
``worker`` field, so twistd's log, ``[log] file`` and the JSON format see every process's
lines in one place.  Its metrics are written to the run directory when a scrape asks (SIGUSR2) and every few seconds, and
served by the main process's ``metrics`` listener with a ``worker`` label.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time

from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.logger import InvalidLogLevelError, Logger, LogLevel, globalLogBeginner, globalLogPublisher

from mailstack import logoutput

log = Logger()

#: The protocols whose listeners the workers share; the HTTP ones stay with the main process.
SHARED_PROTOCOLS = frozenset({"smtp", "submission", "imap", "pop3", "managesieve"})

RESTART_DELAY = 1.0  # seconds before a dead worker is started again ...
MAX_RESTART_DELAY = 60.0  # ... doubling while it keeps dying within STABLE seconds of its start
STABLE = 30.0
STOP_GRACE = 10.0  # seconds a stopping worker has before SIGKILL
MAX_LOG_LINE = 1 << 20  # a worker's log line longer than this is cut (it is our own output)


def shared_listeners(cfg) -> list:
    return [lst for lst in cfg.listeners if lst.protocol in SHARED_PROTOCOLS]


class WorkerProcess(protocol.ProcessProtocol):
    """One worker as the main process sees it: its log lines in, its end out."""

    def __init__(self, pool: "WorkerPool", index: int):
        self.pool, self.index = pool, index
        self.started = time.monotonic()
        self.buffer = b""
        self.ended = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LOG_LINE:
                self.buffer = b""
            return
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.pool.publish(self.index, line)

    def processEnded(self, reason) -> None:
        self.pool.ended(self, reason)
        self.ended.callback(None)


class WorkerPool(service.Service):
    """The main process's side: starts ``count`` workers on the shared sockets and keeps them
    running until the service stops."""

    name = "workers"

    def __init__(self, cfg, prebound: dict, count: int, reactor, executable: str = sys.executable):
        self.cfg, self.count, self.reactor, self.executable = cfg, count, reactor, executable
        #: listener key -> the listening socket's descriptor, inherited under the same number
        self.fds = {lst.key: prebound[lst.key][0].fileno() for lst in shared_listeners(cfg)}
        self.processes: dict[int, WorkerProcess] = {}
        self.delays: dict[int, float] = {}
        self.transports: dict[int, object] = {}
        self.metrics_dir = metrics_dir(cfg)
        self.on_ended: list = []  # called with a worker's index when it has ended

    def startService(self):
        super().startService()
        for index in range(1, self.count + 1):
            self.spawn(index)
        log.info("workers: {n} more processes serve {keys}", n=self.count, keys=", ".join(sorted(self.fds)))

    def spawn(self, index: int) -> None:
        if not self.running:
            return
        from mailstack.reconfigure import restart_digest

        argv = [self.executable, "-m", "mailstack.workers", "--config", self.cfg.path, "--index", str(index),
                "--parent", str(os.getpid()), "--processes", str(self.count + 1), "--digest", restart_digest(self.cfg)]
        argv += [f"{key}={fd}" for key, fd in sorted(self.fds.items())]
        child_fds = {0: "w", 1: "r", 2: 2}
        child_fds.update({fd: fd for fd in self.fds.values()})
        worker = WorkerProcess(self, index)
        self.processes[index] = worker
        self.transports[index] = self.reactor.spawnProcess(worker, self.executable, argv, env=os.environ.copy(),
                                                           childFDs=child_fds)

    def publish(self, index: int, line: bytes) -> None:
        """One of a worker's log events (see :class:`_LogPipe`), into this process's log."""
        try:
            event = json.loads(line)
            if not isinstance(event, dict) or not isinstance(event.get("log_text"), str):
                raise ValueError("not an event")
            event["log_level"] = LogLevel.levelWithName(event.get("log_level", "info"))
        except (ValueError, InvalidLogLevelError):
            event = {"log_text": line.decode("utf-8", "replace"), "log_level": LogLevel.info}
        event["log_format"] = "{log_text}"
        event.setdefault("log_namespace", "mailstack.workers")
        event["worker"] = index
        level = event.get("log_level")
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        event["log_system"] = f"{system} worker {index}"
        event.setdefault("log_time", time.time())
        globalLogPublisher(event)

    def ended(self, worker: WorkerProcess, reason) -> None:
        index = worker.index
        if self.processes.get(index) is worker:
            del self.processes[index]
            self.transports.pop(index, None)
            for hook in self.on_ended:
                hook(index)
        if not self.running:
            return
        lived = time.monotonic() - worker.started
        delay = RESTART_DELAY if lived >= STABLE else min(MAX_RESTART_DELAY, self.delays.get(index, RESTART_DELAY / 2) * 2)
        self.delays[index] = delay
        log.error("workers: worker {index} ended ({reason}); starting it again in {delay:.0f} s", index=index,
                  reason=reason.getErrorMessage(), delay=delay)
        self.reactor.callLater(delay, self.spawn, index)

    def pids(self) -> dict[int, int]:
        """The running workers: index -> process id (read from a thread by the metrics page)."""
        return {index: transport.pid for index, transport in list(self.transports.items()) if transport.pid}

    def signal_all(self, signum: int) -> None:
        for transport in list(self.transports.values()):
            try:
                transport.signalProcess(signum)
            except Exception:  # ended in between: processEnded will say so
                pass

    def stopService(self):
        super().stopService()
        waits = [w.ended for w in self.processes.values()]
        self.signal_all(signal.SIGTERM)
        if not waits:
            return None
        kill = self.reactor.callLater(STOP_GRACE, self.signal_all, signal.SIGKILL)
        d = defer.DeferredList(waits)
        d.addBoth(lambda _: kill.active() and kill.cancel())
        return d


def run_dir(cfg) -> str:
    """What the processes share besides the store: ``run/`` beside it."""
    return os.path.join(os.path.dirname(os.path.abspath(cfg.store_root)), "run")


def metrics_dir(cfg) -> str:
    """Where workers leave their metrics for the main process."""
    return os.path.join(run_dir(cfg), "metrics")


class _LogPipe:
    """A worker's log observer: each event as one line of JSON to the main process, its text
    formatted here (``log_text``, a traceback after it) with its plain fields beside it
    (session, user, queue_id ...: what ``[log] format = "json"`` writes).  A fifth of the cost
    of Twisted's ``eventAsJSON``, which keeps every field restorable; the main process needs
    only the text and the fields."""

    def __init__(self, fd: int):
        self.fd = fd

    def __call__(self, event: dict) -> None:
        text = logoutput.message_text(event)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                text += "\n" + failure.getTraceback()
            except Exception:  # a failure that cannot say more: its text is there
                pass
        level = event.get("log_level")
        record = {"log_text": text, "log_time": event.get("log_time") or time.time(),
                  "log_level": getattr(level, "name", "info"), "log_namespace": event.get("log_namespace", "-")}
        if event.get("log_system"):
            record["log_system"] = str(event["log_system"])
        for key, value in event.items():
            if not key.startswith("log_") and (value is None or isinstance(value, (str, int, float, bool))):
                record[key] = value
        try:
            line = json.dumps(record, separators=(",", ":"))  # ASCII: no line break inside
        except (TypeError, ValueError):
            line = json.dumps({"log_text": text, "log_time": record["log_time"]})
        data = (line + "\n").encode("ascii", "replace")
        while data:
            try:
                data = data[os.write(self.fd, data):]
            except InterruptedError:
                continue
            except OSError:  # the main process is gone: we stop soon anyway
                return


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the main process dies (Linux's PR_SET_PDEATHSIG), and a check now in
    case it died before this call."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailstack.workers")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--processes", type=int, required=True, help="the main process's [server] workers")
    parser.add_argument("--digest", required=True, help="of the main process's restart-only configuration")
    parser.add_argument("sockets", nargs="*", help="KEY=FD: a listening socket inherited from the main process")
    args = parser.parse_args(argv)
    for signum in (signal.SIGHUP, signal.SIGUSR2):  # until their handlers are in place, not fatal
        signal.signal(signum, signal.SIG_IGN)
    # Log rotation's "reopen" is the main process's (the log is its); 'systemctl kill -s USR1'
    # reaches every process of the unit, and must not end this one.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal goes to the main process
    from mailstack import config as config_mod
    from mailstack import logcontext, logfilter
    from mailstack.errors import ConfigError
    from mailstack import service as service_mod

    logfilter.install()
    logcontext.install()
    log_fd = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints must not mix into the log pipe
    globalLogBeginner.beginLoggingTo([_LogPipe(log_fd)], redirectStandardIO=True)
    sys.setswitchinterval(service_mod.SWITCH_INTERVAL)
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as e:
        log.error("worker {index}: {error}", index=args.index, error=str(e))
        return 2
    from mailstack.reconfigure import restart_digest

    if restart_digest(cfg) != args.digest:
        log.error("worker {index}: {path} has changed in keys that only a restart applies since the service "
                  "started; this process does not serve until the service is restarted", index=args.index,
                  path=args.config)
        return 2
    import dataclasses

    cfg = dataclasses.replace(cfg, workers=args.processes)  # the main process's count, whatever CPUs say now
    from twisted.internet import reactor

    adopted = {}
    for item in args.sockets:
        key, _, fd = item.partition("=")
        sock = socket.socket(fileno=int(fd))
        pending = service_mod.PendingFactory()
        adopted[key] = (reactor.adoptStreamPort(sock.fileno(), sock.family, pending), pending)
        sock.close()  # the reactor has its own copy
    os.close(0)  # the pipe from the main process: not read, only its end matters (see WorkerPool)
    svc = service_mod.MailstackService(cfg, reactor, prebound=adopted, worker=args.index)
    svc.privilegedStartService()
    svc.startService()
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    watch = task.LoopingCall(lambda: os.getppid() != args.parent and reactor.stop())
    watch.start(1.0, now=False)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
