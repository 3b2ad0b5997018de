"""Prometheus metrics (``prometheus_client``), served over HTTP by the ``metrics`` listener.

Every metric lives in one private :data:`REGISTRY` (not prometheus_client's global default,
so nothing a library registers there leaks out, and in-process tests can run several servers).
Protocol code records with the small functions below, one line at each point; they never
raise and cost a dictionary look-up and a lock or two; the per-command histograms, on the
hot path of benchmarked servers, are plain lists (:class:`CommandTimes`, about half a
microsecond a command) exposed by a collector.

``/metrics`` is rendered in a worker thread (``generate_latest``): the queue collector reads
the outbound queue's directories at scrape time, which must not stall the reactor.  The
listener is loopback by default; config.py refuses any other address unless
``[metrics] allow_remote`` is true, since the numbers tell an outsider who logs in and when.

What is counted (names as exposed; counters end in ``_total``):

* ``mailstack_sessions_total`` / ``mailstack_sessions_open`` {listener}: connections accepted
  past the connection limits, and open now.
* ``mailstack_tls_handshakes_total`` {listener, version}: completed server handshakes,
  implicit TLS and STARTTLS/STLS alike.
* ``mailstack_smtp_transactions_total`` {listener, class}: the reply to the end of a message's
  data (DATA, BDAT LAST): ``2xx`` accepted, ``4xx``, ``5xx``.
* ``mailstack_smtp_recipients_total`` {listener, class}: replies to RCPT.
* ``mailstack_messages_total`` {outcome}: ``delivered`` copies stored in local mailboxes (one
  per account, a bounce report delivered here counts once), ``queued`` messages put in the
  outbound queue (bounce reports too), and per remote recipient and delivery attempt ``sent``
  (2xx), ``deferred`` (4xx or unreachable: retried) and ``bounced`` (given up: 5xx, expiry).
* ``mailstack_queue_messages`` and ``mailstack_queue_oldest_age_seconds``: read at scrape time.
* ``mailstack_auth_total`` {protocol, result}: password logins through the login gate,
  ``success``, ``failure`` or ``locked_out`` (refused unchecked: the address is locked out);
  ``mailstack_auth_lockouts_total`` {protocol}: addresses that became locked out.
* ``mailstack_command_duration_seconds`` {protocol, command}: IMAP and POP3 commands, from
  dispatch to the end of the response (IDLE's includes the idling).
* ``mailstack_store_errors_total`` {protocol}: store operations that failed on the server's
  side (an OSError or an unexpected exception: disk full, I/O, permissions), not a client's
  mistake such as a missing folder.
* ``mailstack_outbound_limited_total`` {limit}: MAIL/RCPT refused over a per-user outbound
  limit; ``mailstack_outbound_limit_hits_total`` {limit}: users who reached one (the alert).
* ``mailstack_greylist_total`` {result}: greylisting at RCPT: ``greylisted`` (451),
  ``passed``, ``spf_allowed``, ``unchecked`` (overloaded or failed: let through).
* ``mailstack_sieve_actions_total`` {action}: what Sieve did at local delivery (mailstack.sieve
  .delivery): ``keep``, ``fileinto``, ``redirect``, ``reject``, ``discard``, ``vacation`` (a
  reply sent), ``error`` (a script failed or timed out: implicit keep).
* ``mailstack_srs_total`` {result}: ``forwarded`` queued copies whose sender was rewritten,
  ``reversed`` RCPTs to our SRS addresses accepted, ``refused`` ones refused (forged, expired).
"""

from __future__ import annotations

import os
import signal
import time
from bisect import bisect_left
from time import perf_counter

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.web import resource, server

from mailstack.config import LISTENERS

log = Logger()

disable_created_metrics()  # no *_created series: a start time per label set is noise here

REGISTRY = CollectorRegistry(auto_describe=True)

#: listener key -> protocol, for labels that are per protocol ("imaps" -> "imap").
PROTOCOL_OF = {key: protocol for key, (protocol, _tls) in LISTENERS.items()}

#: Command latency buckets (seconds): sub-millisecond for cached IMAP commands up to a minute.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

SESSIONS = Counter("mailstack_sessions", "Sessions started, per listener", ["listener"], registry=REGISTRY)
SESSIONS_OPEN = Gauge("mailstack_sessions_open", "Sessions open now, per listener", ["listener"], registry=REGISTRY)
TLS_HANDSHAKES = Counter("mailstack_tls_handshakes", "Completed TLS handshakes, per listener and TLS version",
                         ["listener", "version"], registry=REGISTRY)
SMTP_TRANSACTIONS = Counter("mailstack_smtp_transactions",
                            "SMTP replies to the end of message data (DATA, BDAT LAST), per listener and class",
                            ["listener", "class"], registry=REGISTRY)
SMTP_RECIPIENTS = Counter("mailstack_smtp_recipients", "SMTP replies to RCPT, per listener and class",
                          ["listener", "class"], registry=REGISTRY)
MESSAGES = Counter("mailstack_messages",
                   "Messages: delivered (local copies), queued (outbound), and per remote recipient and attempt "
                   "sent, deferred, bounced", ["outcome"], registry=REGISTRY)
AUTH = Counter("mailstack_auth", "Password logins, per protocol and result (success, failure, locked_out)",
               ["protocol", "result"], registry=REGISTRY)
AUTH_LOCKOUTS = Counter("mailstack_auth_lockouts", "Client addresses locked out after too many failures, per protocol",
                        ["protocol"], registry=REGISTRY)
STORE_ERRORS = Counter("mailstack_store_errors", "Store operations that failed on the server's side, per protocol",
                       ["protocol"], registry=REGISTRY)
CLIENT_REFUSALS = Counter("mailstack_client_refusals", "MX replies refusing a client (mailstack.antispam.screen), per reason",
                          ["reason"], registry=REGISTRY)
DNSLIST_FAILURES = Counter("mailstack_dnslist_failures", "DNS list lookups that got no answer (the list skipped), per zone",
                           ["zone"], registry=REGISTRY)

RSPAMD_SCANS = Counter("mailstack_rspamd_scans", "Messages scanned by rspamd, per action ('error': no answer)",
                       ["action"], registry=REGISTRY)
RSPAMD_LEARNS = Counter("mailstack_rspamd_learns", "Messages sent to rspamd to learn, per kind and result "
                        "(learned, retried, failed, dropped)", ["kind", "result"], registry=REGISTRY)

for _outcome in ("delivered", "queued", "sent", "deferred", "bounced"):
    MESSAGES.labels(_outcome)

# -- recording (one call at each point in the protocol code) --------------------------------------


def listener_ready(key: str) -> None:
    """A listener exists: its series start at 0 (so a first scrape already lists it)."""
    SESSIONS.labels(key)
    SESSIONS_OPEN.labels(key)


def session_started(key: str) -> None:
    SESSIONS.labels(key).inc()
    SESSIONS_OPEN.labels(key).inc()


def session_ended(key: str) -> None:
    SESSIONS_OPEN.labels(key).dec()


def tls_handshake(key: str, transport) -> None:
    """A handshake completed on ``transport`` (anything whose ``getHandle()`` is the
    ``OpenSSL.SSL.Connection``)."""
    try:
        version = transport.getHandle().get_protocol_version_name()
    except Exception:
        version = "unknown"
    TLS_HANDSHAKES.labels(key, version).inc()


def _code_class(code: int) -> str:
    return f"{code // 100}xx" if 200 <= code < 600 else "other"


def smtp_transaction(key: str, code: int) -> None:
    SMTP_TRANSACTIONS.labels(key, _code_class(code)).inc()


def smtp_recipient(key: str, code: int) -> None:
    SMTP_RECIPIENTS.labels(key, _code_class(code)).inc()


def message(outcome: str, n: int = 1) -> None:
    """``n`` messages (or recipients, see the module docstring) with ``outcome``."""
    if n:
        MESSAGES.labels(outcome).inc(n)


def relay_reply(code: int) -> None:
    """A remote recipient's outcome in one delivery attempt: 2xx ``sent``, 4xx (or no answer)
    ``deferred``; a 5xx is counted once the recipient is bounced."""
    if 200 <= code < 300:
        MESSAGES.labels("sent").inc()
    elif code < 500:
        MESSAGES.labels("deferred").inc()


def auth(key: str, result: str) -> None:
    """A password login on the listener ``key``: "success", "failure" or "locked_out"."""
    AUTH.labels(PROTOCOL_OF.get(key, key), result).inc()


def auth_lockout(key: str) -> None:
    AUTH_LOCKOUTS.labels(PROTOCOL_OF.get(key, key)).inc()


def store_error(protocol: str) -> None:
    STORE_ERRORS.labels(protocol).inc()


def client_refused(reason: str) -> None:
    """``reason``: dnsbl, client_list, sender_domain, iprev, early_talker."""
    CLIENT_REFUSALS.labels(reason).inc()


def dnslist_failure(zone: str) -> None:
    DNSLIST_FAILURES.labels(zone).inc()


OUTBOUND_LIMITED = Counter("mailstack_outbound_limited", "Submissions refused over a per-user outbound limit, per limit",
                           ["limit"], registry=REGISTRY)
OUTBOUND_LIMIT_HITS = Counter("mailstack_outbound_limit_hits", "Users who reached a per-user outbound limit (once "
                              "an episode), per limit", ["limit"], registry=REGISTRY)


GREYLIST = Counter("mailstack_greylist", "Greylisting decisions at RCPT: greylisted, passed, spf_allowed, unchecked",
                   ["result"], registry=REGISTRY)


def greylist(result: str) -> None:
    GREYLIST.labels(result).inc()


def outbound_limited(limit: str, first: bool) -> None:
    """A MAIL or RCPT refused over ``limit`` (antispam.outlimits); ``first``: the user just hit it."""
    OUTBOUND_LIMITED.labels(limit).inc()
    if first:
        OUTBOUND_LIMIT_HITS.labels(limit).inc()


def rspamd_scan(action: str) -> None:
    RSPAMD_SCANS.labels(action).inc()


def rspamd_learn(kind: str, result: str) -> None:
    RSPAMD_LEARNS.labels(kind, result).inc()


SRS = Counter("mailstack_srs", "SRS (mailstack.srs): senders rewritten for forwarded copies (forwarded), "
              "RCPT to our SRS addresses reversed or refused (forged, expired, malformed)", ["result"], registry=REGISTRY)
for _result in ("forwarded", "reversed", "refused"):
    SRS.labels(_result)


def srs(result: str, n: int = 1) -> None:
    SRS.labels(result).inc(n)


class CommandTimes:
    """Per-command latency histograms kept without prometheus_client's per-observation locks:
    every observation happens in the reactor thread, and the scrape (in a worker thread) only
    copies the lists, which the GIL keeps whole.  Each entry: a count per bucket of
    :data:`BUCKETS` (not cumulative), the +Inf bucket, then the sum of seconds."""

    def __init__(self, protocol: str):
        self.protocol = protocol
        self.table: dict = {}  # command name -> [count per bucket..., +Inf count, sum]

    def observe(self, name, seconds: float) -> None:
        entry = self.table.get(name)
        if entry is None:
            entry = self.table[name] = [0] * (len(BUCKETS) + 1) + [0.0]
        entry[bisect_left(BUCKETS, seconds)] += 1  # le is inclusive: the first bound >= seconds
        entry[-1] += seconds

    def samples(self):
        """(command label, cumulative [(le, count)], sum) of every command seen."""
        for name, entry in list(self.table.items()):
            entry = entry[:]
            cumulative, total = [], 0
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], entry[:-1]):
                total += count
                cumulative.append((bound, total))
            yield (name.decode("ascii", "replace") if isinstance(name, bytes) else name), cumulative, entry[-1]


IMAP_TIMES, POP3_TIMES = CommandTimes("imap"), CommandTimes("pop3")


def imap_command_done(timing: tuple[bytes, float]) -> None:
    """An IMAP command (``timing``: its name, a key of the command table, so a bounded label
    set, and its ``perf_counter()`` at dispatch) has sent its tagged response."""
    IMAP_TIMES.observe(timing[0], perf_counter() - timing[1])


def _observed(result, name: str, started: float):
    POP3_TIMES.observe(name, perf_counter() - started)
    return result


def pop3_command(name: str, handler, *args):
    """Run the POP3 command handler and time it, to the end of its Deferred if it returns one."""
    started = perf_counter()
    try:
        result = handler(*args)
    except BaseException:
        POP3_TIMES.observe(name, perf_counter() - started)
        raise
    if isinstance(result, defer.Deferred):
        result.addBoth(_observed, name, started)
    else:
        POP3_TIMES.observe(name, perf_counter() - started)
    return result


class CommandCollector:
    def describe(self):
        return [HistogramMetricFamily("mailstack_command_duration_seconds", "", labels=["protocol", "command"])]

    def collect(self):
        family = HistogramMetricFamily("mailstack_command_duration_seconds",
                                       "IMAP and POP3 command latency, from dispatch to the end of the response",
                                       labels=["protocol", "command"])
        for times in (IMAP_TIMES, POP3_TIMES):
            for name, buckets, total in times.samples():
                family.add_metric([times.protocol, name], buckets, total)
        yield family


REGISTRY.register(CommandCollector())

# -- the outbound queue, read at scrape time --------------------------------------------------------

_queue_dirs: list[str] = []  # the env/ and active/ directories of the running server's queue


def watch_queue(queue) -> None:
    """Report ``queue`` (an :class:`~mailstack.outbound.queue.OutboundQueue`) from now on."""
    _queue_dirs[:] = [os.path.join(queue.dir, "env"), os.path.join(queue.dir, "active")]


def queue_stats(dirs: list[str], now: float | None = None) -> tuple[int, float]:
    """(messages waiting or being delivered, age of the oldest in seconds).  Only directory
    listings: a queue id starts with its creation time in hex (``OutboundQueue.enqueue``), so
    no envelope is read."""
    now = time.time() if now is None else now
    ids: set[str] = set()
    for directory in dirs:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        ids.update(name.split(".", 1)[0] for name in names if name.endswith(".json"))
    oldest = now
    for qid in ids:
        try:
            oldest = min(oldest, int(qid.split("-", 1)[0], 16))
        except ValueError:
            pass
    return len(ids), max(0.0, now - oldest)


class QueueCollector:
    def describe(self):
        return []  # nothing fixed to check against duplicates; collect() runs only at scrape time

    def collect(self):
        count, age = queue_stats(list(_queue_dirs))
        yield GaugeMetricFamily("mailstack_queue_messages", "Messages in the outbound queue", value=count)
        yield GaugeMetricFamily("mailstack_queue_oldest_age_seconds",
                                "Age of the oldest message in the outbound queue (0 when empty)", value=age)


REGISTRY.register(QueueCollector())

# -- the HTTP listener ------------------------------------------------------------------------------

BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class MetricsPage(resource.Resource):
    """``GET /metrics``: the text exposition format, rendered in a worker thread."""

    isLeaf = True

    def render_GET(self, request):
        if request.path.rstrip(b"/") != b"/metrics":
            request.setResponseCode(404)
            return b"not found: the metrics are at /metrics\n"

        gone: list = []
        request.notifyFinish().addErrback(gone.append)  # the client went away: nothing to send to

        def send(body: bytes):
            if not gone:
                request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
                request.write(body)
                request.finish()

        def failed(failure):
            log.failure("metrics: rendering failed", failure)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        threads.deferToThread(render).addCallbacks(send, failed)
        return server.NOT_DONE_YET


# -- several processes ([server] workers, mailstack.workers) -----------------------------------------

WORKER_EXPORT_INTERVAL = 5.0  # seconds between a worker's writes of its metrics (0.25 ms of CPU each) ...
EXPORT_NOW = signal.SIGUSR2  # ... and at once when the main process is scraped
EXPORT_WAIT = 2.0  # seconds a scrape waits for the workers' fresh files
_worker_dir: list = []  # in the main process: [directory of the workers' files, () -> {index: pid}]
_MAIN_ONLY = ("mailstack_queue_",)  # read from the shared queue by the main process alone


def collect_workers(directory: str, pids) -> None:
    """In the main process: ``/metrics`` also serves the workers' counters, every sample with a
    ``worker`` label (the main process's own are ``worker="0"``).  ``pids()`` names the
    running workers: each is asked (SIGUSR2) to write its file now, so a scrape counts
    everything done before it."""
    _worker_dir[:] = [directory, pids]


def _fresh_worker_files(directory: str, pids) -> None:
    """Ask every running worker for its counters now; wait (a while) until each has written."""
    asked = time.time_ns()
    waiting = {}
    for index, pid in pids().items():
        try:
            os.kill(pid, EXPORT_NOW)
            waiting[index] = os.path.join(directory, f"worker-{index}.prom")
        except OSError:
            pass
    deadline = time.monotonic() + EXPORT_WAIT
    while waiting and time.monotonic() < deadline:
        for index, path in list(waiting.items()):
            try:
                if os.stat(path).st_mtime_ns >= asked:
                    del waiting[index]
            except FileNotFoundError:
                pass
        if waiting:
            time.sleep(0.005)


def render() -> bytes:
    """The exposition: this process's metrics, and the workers' when there are workers."""
    if not _worker_dir:
        return generate_latest(REGISTRY)
    from prometheus_client.parser import text_string_to_metric_families

    _fresh_worker_files(*_worker_dir)

    merged: dict[str, object] = {}

    def add(family, worker: str) -> None:
        into = merged.get(family.name)
        if into is None:
            into = merged[family.name] = Metric(family.name, family.documentation, family.type)
        for sample in family.samples:
            labels = dict(sample.labels)
            if not family.name.startswith(_MAIN_ONLY):
                labels["worker"] = worker
            into.samples.append(sample._replace(labels=labels))

    for family in REGISTRY.collect():
        add(family, "0")
    try:
        names = sorted(os.listdir(_worker_dir[0]))
    except OSError:
        names = []
    for name in names:
        if not (name.startswith("worker-") and name.endswith(".prom")):
            continue
        try:
            with open(os.path.join(_worker_dir[0], name), encoding="utf-8") as f:
                text = f.read()
            for family in text_string_to_metric_families(text):
                if not family.name.startswith(_MAIN_ONLY):
                    add(family, name[len("worker-"):-len(".prom")])
        except (OSError, ValueError) as e:
            log.warn("metrics: cannot read {name}: {error}", name=name, error=e)

    class Merged:
        def collect(self):
            return list(merged.values())

    return generate_latest(Merged())


def start_worker_export(reactor, directory: str, index: int) -> task.LoopingCall:
    """In a worker: write this process's metrics to ``directory/worker-N.prom`` now and then
    (in a thread; atomically), for the main process's ``metrics`` listener."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, f"worker-{index}.prom")

    def write() -> None:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(generate_latest(REGISTRY))
        os.rename(tmp, path)

    def tick():
        d = threads.deferToThread(write)
        d.addErrback(lambda f: log.failure("metrics: writing this worker's metrics failed", f))
        return d

    try:
        signal.signal(EXPORT_NOW, lambda *_: reactor.callFromThread(tick))
    except ValueError:  # not the main thread
        pass
    loop = task.LoopingCall(tick)
    loop.clock = reactor
    loop.start(WORKER_EXPORT_INTERVAL, now=True)
    return loop


def build_factory(context, listener):
    if context.relay is not None:
        watch_queue(context.relay.queue)
    site = server.Site(MetricsPage())
    site.noisy = False
    site.displayTracebacks = False
    return site


SIEVE_ACTIONS = Counter("mailstack_sieve_actions", "Sieve at local delivery: keep, fileinto, redirect, reject, discard, "
                        "vacation (a reply sent), error (a script failed: implicit keep)", ["action"], registry=REGISTRY)


def sieve_action(action: str) -> None:
    SIEVE_ACTIONS.labels(action).inc()
