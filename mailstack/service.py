"""Build the running server from the configuration: one ``MultiService``.

Order of start-up: everything that can fail is checked first (configuration, users file,
certificate), then every listener is bound in ``privilegedStartService``.  If any endpoint
cannot bind, the ones already bound are closed and start-up stops with one message naming
the file and the key; no listener is left open.

Each protocol package provides ``build_factory(context, listener)`` and a ``BUSY`` line; the
table :data:`PROTOCOLS` says where.  Protocol packages never import each other.
"""

from __future__ import annotations

import importlib
import gc
import json
import os
import signal
import sys
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer, endpoints, protocol, task, threads
from twisted.logger import Logger

from mailstack import accounts as accounts_mod
from mailstack import config as config_mod
from mailstack import listener as listener_mod
from mailstack import logcontext, logfilter, logoutput
from mailstack import fileaccess
from mailstack import passwords
from mailstack import privileges
from mailstack.errors import ConfigError
from mailstack.outbound import relay
from mailstack.store import FolderWatcher, MaildirStore
from mailstack.throttle import LoginGate
from mailstack.tls import ReloadableTLS

log = Logger()

INDEX_SAVE_INTERVAL = 300  # seconds between saves of the open folders' indexes

#: protocol -> module providing ``build_factory(context, listener)`` and ``BUSY`` (the line a
#: client hears when a connection limit turns it away).
PROTOCOLS: dict[str, str] = {
    "smtp": "mailstack.smtp.server",
    "submission": "mailstack.smtp.server",
    "pop3": "mailstack.pop3.server",
    "imap": "mailstack.imap.server",
    "managesieve": "mailstack.managesieve.server",
    "autoconfig": "mailstack.autoconfig",
    "https": "mailstack.mtasts",
    "metrics": "mailstack.metrics",
}


@dataclass
class ServerContext:
    """Everything a protocol needs, built once from the configuration."""

    config: config_mod.Config
    store: MaildirStore
    watcher: FolderWatcher | None
    accounts: accounts_mod.Accounts
    portal: object
    realm: accounts_mod.MailRealm
    tls: ReloadableTLS | None
    delivery_batcher: object = None  # set by the first SMTP listener that needs it
    relay: object = None  # the outbound RelayService
    login_gate: object = None  # every password login goes through it (mailstack.throttle)
    dkim_signer: object = None  # signs what local users submit (mailstack.smtp.authentication)
    inbound_checker: object = None  # SPF, DKIM, DMARC on the MX port
    bound: dict = None  # listener key -> {"host", "port", "tls", "protocol"} once listening
    acme: object = None  # mailstack.acmecert.AcmeService when [acme] is on (its HTTP-01 answers)
    resolver: object = None  # the cached DNS resolver (mailstack.resolver), for the DNS lists
    greylist: object = None  # mailstack.antispam.greylist.Greylist when [greylisting] is on
    outbound_limits: object = None  # mailstack.antispam.outlimits.OutboundLimits unless off
    rspamd: object = None  # the content filter, mailstack.antispam.rspamd.RspamdFilter ([rspamd] url)
    filed: object = None  # IMAP calls it after COPY/MOVE/APPEND: mailstack.antispam.learning.JunkLearner.filed
    sieve: object = None  # mailstack.sieve.delivery.SieveDelivery: local deliveries run Sieve ([sieve] enabled)
    srs: object = None  # mailstack.srs.SRS for forwarded mail; None when [srs] enabled = false


class MailstackService(service.MultiService):
    def __init__(self, cfg: config_mod.Config, reactor=None, prebound: dict | None = None, worker: int = 0):
        super().__init__()
        self.prebound = prebound
        #: 0 in the process twistd started; 1.. in the extra processes of ``[server] workers``
        #: (mailstack.workers), which serve only the mail protocols' listeners.
        self.worker = worker
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = cfg
        os.makedirs(cfg.store_root, mode=0o700, exist_ok=True)
        store = MaildirStore(cfg.store_root, fsync=cfg.store_fsync, hostname=cfg.hostname)
        accounts = accounts_mod.Accounts(cfg.users_file, cfg.aliases_file, cfg.domains, cfg.recipient_delimiter,
                                         cfg.send_as_file)
        accounts.auth_cache_ttl = cfg.auth["cache_ttl"]
        from mailstack.quotas import build_policy

        store.quota = build_policy(cfg, accounts)  # [quota]: mailstack.store.quota
        accounts.rehash = cfg.auth["rehash_on_login"]
        passwords.configure_argon2(cfg.auth["argon2_time_cost"], cfg.auth["argon2_memory_kib"],
                                      cfg.auth["argon2_parallelism"])
        portal, realm = accounts_mod.make_portal(accounts)
        acme = None
        if cfg.acme["enabled"]:  # the ACME service owns the certificate (mailstack.acmecert)
            from mailstack.acmecert import AcmeService

            acme = AcmeService(cfg, reactor, follower=worker > 0)
            tls = acme.tls
        else:
            tls = ReloadableTLS(cfg.tls_certificate, cfg.tls_key, cfg.path) if cfg.has_tls else None
        self.context = ServerContext(cfg, store, None, accounts, portal, realm, tls)
        if acme is not None:
            self.context.acme = acme
            if worker == 0:  # renewals are the main process's ...
                acme.setServiceParent(self)
            else:  # ... a worker serves what it installed
                acme.follow()
                tls.before_connection = acme.follow
        a = cfg.auth
        self.context.login_gate = LoginGate(portal, reactor, a["max_failures"], a["lockout"], a["failure_delay"],
                                            a["max_failure_delay"], a["failure_window"],
                                            journal=os.path.join(os.path.dirname(os.path.abspath(cfg.store_root)), "auth-failures.log"))
        from mailstack.smtp import authentication

        resolver = authentication.set_default_resolver(cfg.dns["nameservers"], cfg.dns["port"], cfg.dns["timeout"],
                                                     cfg.dns["cache_size"])
        self.resolver = self.context.resolver = resolver
        self.context.dkim_signer = authentication.DkimSigner(cfg.dkim["keys"], cfg.dkim["selector"], cfg.domains)
        self.context.inbound_checker = self.make_inbound_checker(cfg)
        self.context.relay = relay.build_relay(cfg, store, accounts, reactor)
        self._build_srs(cfg)
        self._build_antispam(cfg)
        self._build_sieve(cfg, self.reactor)
        self.context.relay.setServiceParent(self)
        from mailstack.antispam import greylist, outlimits

        self.context.greylist, self.context.outbound_limits = greylist.build(cfg), outlimits.build(cfg)
        if self.context.greylist is not None:
            self.context.greylist.setServiceParent(self)
        self._build_listeners(cfg, tls)
        self.ports: list = []
        self.bound: dict[str, dict] = {}
        # [log] file / format; None: twistd's own log.  A worker logs through the main process
        # (mailstack.workers), and must not hold the file open past a rotation.
        self.log_output = logoutput.build(cfg) if not worker else None

    def _build_listeners(self, cfg: config_mod.Config, tls) -> None:
        """Each listener's factory (a worker process: the mail protocols' only)."""
        self.connection_counts = None
        if cfg.workers > 1:  # the connection limits count every process's sessions
            from mailstack.connectioncounts import SharedConnectionCounts
            from mailstack.workers import run_dir

            self.connection_counts = SharedConnectionCounts(os.path.join(run_dir(cfg), "connections"), cfg.workers,
                                                            self.worker, [lst.key for lst in cfg.listeners])
        self.factories = []  # (listener, the factory listened with)
        self.protocol_factories = []  # (listener, the protocol's own factory inside it)
        listeners = cfg.listeners
        if self.worker:
            from mailstack.workers import shared_listeners

            listeners = shared_listeners(cfg)
        for lst in listeners:
            module_name = PROTOCOLS.get(lst.protocol)
            if module_name is None:
                raise ConfigError(cfg.path, f"[listeners] {lst.key}", f"the {lst.protocol} server is not part of this build yet")
            module = importlib.import_module(module_name)
            factory = module.build_factory(self.context, lst)
            wrapped = listener_mod.wrap(lst.key, factory, lst.tls, tls, module.BUSY,
                                        cfg.max_connections, cfg.max_connections_per_address)
            wrapped.shared = self.connection_counts
            self.factories.append((lst, wrapped))
            self.protocol_factories.append((lst, factory))

    def setServiceParent(self, parent):
        logoutput.attach(self.log_output, parent, self.reactor)  # before twistd starts logging
        super().setServiceParent(parent)

    def privilegedStartService(self):
        """Bind every listener now (before privileges are dropped), or none at all.  Listeners
        that the root process bound before it dropped to the service user (``prebound``, see
        :func:`make_service`) are only given their factories."""
        if self.prebound is None:
            self.prebound = bind_listeners(self.config, self.reactor, [lst for lst, _ in self.factories])
        for lst, factory in self.factories:
            port, pending = self.prebound[lst.key]
            pending.attach(factory)
            self.ports.append(port)
            host = port.getHost()
            self.bound[lst.key] = {"host": getattr(host, "host", None), "port": getattr(host, "port", None),
                                   "tls": lst.tls, "protocol": lst.protocol}
        self.context.bound = self.bound  # what autoconfiguration tells clients
        super().privilegedStartService()

    #: gc.freeze() once running (see _freeze_startup_objects); off where the service runs
    #: inside another program (tests/support/inprocess.py), whose objects are not ours to freeze.
    freeze_at_start = True

    def startService(self):
        super().startService()
        if self.freeze_at_start:
            self.reactor.callWhenRunning(_freeze_startup_objects)
        self.context.watcher = FolderWatcher(self.context.store, self.reactor, self.config.poll_interval)
        accounts = self.context.accounts
        for watched in accounts.files():
            self.context.watcher.watch_file(watched)
        if self.worker:
            self._start_worker()
            return
        if self.config.ports_file:
            os.makedirs(os.path.dirname(self.config.ports_file), exist_ok=True)
            tmp = self.config.ports_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), "listeners": self.bound}, f, indent=1)
            os.rename(tmp, self.config.ports_file)
        try:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        except ValueError:  # not the main thread (tests embedding the service)
            pass
        log.info("{banner}", banner=logfilter.Trusted(banner(self.config, self.bound)))
        if os.geteuid() == 0:
            # Only a warning: binding ports below 1024 may need root, and twistd's --uid/--gid
            # drop it after privilegedStartService, so by now root means no drop was asked for.
            log.warn("running as root: a flaw in any protocol session would own the machine; "
                     "run twistd with --uid/--gid of a service user (see README)")
        # Folder indexes (store/index.py) let the first SELECT after a restart skip re-reading
        # the UID log and the directories; they are saved now and then, and at shutdown.
        self._index_saver = task.LoopingCall(self._save_indexes)
        self._index_saver.clock = self.reactor
        self._index_saver.start(INDEX_SAVE_INTERVAL, now=False)
        # Maildirs the service may not write (made by root by hand): named now, not at the
        # first delivery that fails.  Start-up goes on: the other users' mail works.
        d = threads.deferToThread(fileaccess.maildir_problems, self.config.store_root)
        d.addCallback(lambda problems: [log.error("store: {problem}: that user's deliveries and logins fail until "
                                                  "it is fixed", problem=p) for p in problems])
        d.addErrback(lambda f: log.failure("store: checking the Maildirs' owners failed", f))
        # What a SIGKILL left in Maildir tmp/ directories (a hard link whose message is already
        # in new/ or cur/, an abandoned half-written file): cleared in the background.
        d = threads.deferToThread(self.context.store.clear_tmp)
        d.addCallback(lambda n: n and log.info("store: cleared {n} leftover files from tmp/ directories", n=n))
        d.addErrback(lambda f: log.failure("store: clearing tmp/ directories failed", f))

    def _start_worker(self) -> None:
        """What a worker process starts besides its listeners (mailstack.workers)."""
        try:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        except ValueError:
            pass
        self._index_saver = task.LoopingCall(self._save_indexes)
        self._index_saver.clock = self.reactor
        self._index_saver.start(INDEX_SAVE_INTERVAL, now=False)
        from mailstack import metrics, workers

        self._metrics_writer = metrics.start_worker_export(self.reactor, workers.metrics_dir(self.config), self.worker)
        log.info("worker {index} serving {keys}", index=self.worker, keys=", ".join(sorted(self.bound)))

    def _save_indexes(self):
        d = threads.deferToThread(self.context.store.save_indexes)
        d.addErrback(lambda f: log.failure("saving folder indexes failed", f))
        return d

    def stopService(self):
        for port in self.ports:
            port.stopListening()
        self.ports = []
        saver = getattr(self, "_index_saver", None)
        if saver is not None and saver.running:
            saver.stop()
        try:
            self.context.store.save_indexes()
        except Exception:
            log.failure("saving folder indexes at shutdown failed")
        if self.context.watcher is not None:
            self.context.watcher.stop()
        if getattr(self, "learner", None) is not None:
            self.learner.stop()
        writer = getattr(self, "_metrics_writer", None)
        if writer is not None and writer.running:
            writer.stop()
        if self.config.ports_file and not self.worker:
            try:
                os.unlink(self.config.ports_file)
            except FileNotFoundError:
                pass
        return super().stopService()

    def _build_srs(self, cfg: config_mod.Config) -> None:
        """[srs]: the key (made on first start, as the service user), for the SMTP listeners;
        the relay's own bounces to our SRS addresses go straight to the original sender."""
        from mailstack.srs import SRS

        self.context.srs = SRS.from_config(cfg)
        self.context.relay.bounces.srs = self.context.srs

    def _build_antispam(self, cfg: config_mod.Config) -> None:
        """[rspamd]: the content filter for the SMTP listeners, learning from Junk for IMAP."""
        from mailstack.antispam import learning, rspamd

        self.context.rspamd, client = rspamd.build(self.reactor, cfg)
        if client is not None and cfg.rspamd["controller_url"]:
            self.learner = learning.JunkLearner(client, self.reactor, cfg.rspamd["learn_retries"],
                                                cfg.rspamd["learn_retry_delay"], cfg.rspamd["max_size"])
            self.context.filed = self.learner.filed

    def rebuild_greylist(self, cfg: config_mod.Config) -> None:
        """SIGHUP changed ``[greylisting]``: the new settings for the checks after it (the
        triplets stay in the database)."""
        from mailstack.antispam import greylist

        old, self.context.greylist = self.context.greylist, greylist.build(cfg)
        if self.context.greylist is not None:
            self.context.greylist.setServiceParent(self)
        if old is not None:
            old.disownServiceParent()  # stops it: its database is closed after the checks queued

    def rebuild_content_filter(self, cfg: config_mod.Config) -> None:
        """SIGHUP changed ``[rspamd]`` (or ``[checks]``, whose checks rspamd is told to skip):
        new sessions scan with the new filter.  Learns still waiting for a retry are dropped."""
        old_filter, old_learner = self.context.rspamd, getattr(self, "learner", None)
        self.learner, self.context.filed = None, None
        self._build_antispam(cfg)
        if old_learner is not None:
            old_learner.stop()
        if old_filter is not None:
            old_filter.client.close()

    def _build_sieve(self, cfg: config_mod.Config, reactor) -> None:
        """[sieve]: the Sieve step of local delivery, for SMTP and for bounces to local senders;
        the outbound side (queue, DSN, SRS) handed in, since the sieve package imports none."""
        from mailstack.outbound.bounce import refusal_report
        from mailstack.sieve.delivery import SieveDelivery, SieveSettings

        settings = SieveSettings.from_config(cfg.sieve) if cfg.sieve else SieveSettings()
        if not settings.enabled:
            return
        context, relay_service = self.context, self.context.relay
        self.context.sieve = SieveDelivery(
            settings, context.store, context.accounts, cfg.hostname, enqueue_now=relay_service.enqueue_now,
            refusal=lambda *args: refusal_report(cfg.hostname, *args), srs=lambda: getattr(context, "srs", None),
            reactor=reactor)
        relay_service.bounces.local_delivery = self.context.sieve.deliver_now

    def make_inbound_checker(self, cfg: config_mod.Config):
        """SPF, DKIM and DMARC on the MX port, or None when [checks] turns all three off."""
        from mailstack.smtp import authentication

        checks = cfg.checks
        if not (checks["spf"] or checks["dkim"] or checks["dmarc"]):
            return None
        return authentication.InboundChecker(cfg.hostname, self.resolver, checks["spf"], checks["dkim"],
                                             checks["dmarc"], checks["dmarc_enforce"])

    def reload(self) -> defer.Deferred:
        """SIGHUP: the configuration file (read in a thread: it checks every path), what of it can
        change while running (mailstack.reconfigure), then users, aliases and certificate.  A
        file with an error changes nothing; the old certificate stays if the new one is bad."""
        self._reloads = getattr(self, "_reloads", 0) + 1
        if getattr(self, "workers", None) is not None:
            self.workers.signal_all(signal.SIGHUP)  # each worker reads the file itself
        generation = self._reloads
        d = threads.deferToThread(config_mod.load, self.config.path)
        # Two quick SIGHUPs read the file twice; only the newer reading is applied.
        d.addCallbacks(lambda new: self._apply_config(new) if generation == self._reloads else None,
                       self._config_refused)
        d.addErrback(lambda f: log.failure("reload: applying the configuration failed", f))
        d.addCallback(lambda _: self._reload_files())
        return d

    def _apply_config(self, new: config_mod.Config) -> None:
        from mailstack import reconfigure

        applied, later = reconfigure.apply(self, new)
        if applied:
            log.info("reload: applied {keys}", keys=", ".join(applied))
        if later:
            log.warn("reload: kept as running until a restart: {keys}", keys=", ".join(later))
        if not applied and not later:
            log.info("reload: the configuration file is unchanged")

    def _config_refused(self, failure) -> None:
        failure.trap(ConfigError)
        log.error("reload: {error}; nothing of the file was applied", error=str(failure.value))

    def _reload_files(self) -> None:
        try:
            self.context.accounts.reload(force=True)
        except ConfigError as e:
            log.error("reload: {error}", error=str(e))
        if self.context.tls is not None:
            try:
                self.context.tls.reload()
            except ConfigError as e:
                log.error("reload: {error}", error=str(e))
        if self.context.srs is not None:
            try:
                self.context.srs.reload_keys()  # a rotated [srs] key_file
            except ConfigError as e:
                log.error("reload: {error}; the SRS keys are kept as they were", error=str(e))
        log.info("reloaded users, aliases and certificate")
        if self.context.acme is not None and not self.worker:
            self.context.acme.check()  # a renewal asked for with 'mailstack acme renew' starts now


class PendingFactory(protocol.Factory):
    """A listener's factory from its bind until the service attaches the real one.

    Root binds the ports, then drops to the service user, and only the service user builds
    the service (:func:`make_service`); the reactor is not running in between, so no
    connection can arrive before :meth:`attach`.
    """

    noisy = False

    def __init__(self):
        self.target = None

    def attach(self, factory) -> None:
        self.target = factory
        factory.doStart()

    def buildProtocol(self, addr):
        return None if self.target is None else self.target.buildProtocol(addr)

    def stopFactory(self):
        if self.target is not None:
            self.target.doStop()


def bind_listeners(cfg: config_mod.Config, reactor, listeners: list | None = None) -> dict:
    """Bind every listener (``listeners``, default all of the configuration's) to a
    :class:`PendingFactory`: ``{key: (port, pending)}``.  If one cannot bind, the ones already
    bound are closed and start-up stops with one line naming the file and the key."""
    listeners = cfg.listeners if listeners is None else listeners
    _raise_file_limit(cfg.max_connections * len(listeners) + 1024)
    bound: dict = {}
    for lst in listeners:
        pending = PendingFactory()
        result = []
        endpoints.serverFromString(reactor, lst.endpoint).listen(pending).addBoth(result.append)
        if not result:  # every endpoint we allow binds synchronously
            result.append(defer.fail(RuntimeError("endpoint did not bind at once")))
        outcome = result[0]
        if not hasattr(outcome, "getHost"):
            for port, _ in bound.values():
                port.stopListening()
            reason = getattr(outcome, "value", outcome)
            message = f"{cfg.path}: [listeners] {lst.key}: cannot listen on {lst.endpoint}: {reason}"
            # Straight to fd 2: twistd may have redirected sys.stderr into its log by now.
            os.write(2, f"mailstack: {message}\n".encode())
            raise SystemExit(1)
        bound[lst.key] = (outcome, pending)
    return bound


def _raise_file_limit(wanted: int) -> None:
    """Every connection is a file descriptor: the usual soft limit of 1024 is too low."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warn("cannot raise the open file limit to {n}: {error}", n=target, error=e)


def banner(cfg: config_mod.Config, bound: dict[str, dict]) -> str:
    mode = {"implicit": "TLS", "starttls": "STARTTLS", "optional": "STARTTLS optional", "none": "HTTP"}
    lines = ["", "mailstack is running", f"  hostname {cfg.hostname}, domains {', '.join(cfg.domains)}",
             f"  processes: {cfg.workers} ([server] workers; the mail listeners are served by each)", "  listeners:"]
    for key, b in bound.items():
        tls = "STLS" if b["tls"] == "starttls" and b["protocol"] == "pop3" else mode[b["tls"]]
        lines.append(f"    {key:<12} {b['host']}:{b['port']:<6} {tls}")
    creds = os.path.join(os.path.dirname(cfg.path), "dev-credentials.txt")
    if os.path.exists(creds):
        lines.append("  demo users (from " + creds + "):")
        with open(creds) as f:
            lines += ["    " + line.rstrip() for line in f if line.strip() and not line.startswith("#")]
    incoming = bound.get("imaps") or bound.get("imap") or bound.get("pop3s") or bound.get("pop3")
    outgoing = bound.get("submissions") or bound.get("submission")
    if incoming or outgoing:
        lines.append("  Thunderbird (Account Settings > manual configuration):")
        for label, b, key in (("incoming", incoming, None), ("outgoing", outgoing, None)):
            if not b:
                continue
            proto = {"imap": "IMAP", "pop3": "POP3", "submission": "SMTP"}[b["protocol"]]
            security = "SSL/TLS" if b["tls"] == "implicit" else "STARTTLS"  # Thunderbird's words, for STLS too
            # On loopback, the address itself: "localhost" may be tried as ::1 first.
            server = b["host"] if config_mod.is_loopback(b["host"] or "") else cfg.hostname
            lines.append(f"    {label}: {proto}, server {server}, "
                         f"port {b['port']}, {security}, normal password, user name = full address")
        auto = bound.get("autoconfig")
        if auto and config_mod.is_loopback(auto["host"] or ""):
            lines.append(f"    or let the account wizard find them: in Config Editor set mailnews.auto_config_url "
                         f"to http://{auto['host']}:{auto['port']}/v1.1/")
        sieve = bound.get("managesieve")
        if sieve:  # Thunderbird's Sieve add-on (README, "Sieve filters and ManageSieve")
            server = sieve["host"] if config_mod.is_loopback(sieve["host"] or "") else cfg.hostname
            lines.append(f"    filters: the Sieve add-on, server {server}, port {sieve['port']}, STARTTLS, same login")
        ca = os.path.join(os.path.dirname(cfg.tls_certificate), "ca.pem")
        if cfg.has_tls and os.path.exists(ca):
            lines.append(f"    the certificate is signed by the dev CA {ca}: import it, or accept the exception")
    return "\n".join(lines)


def _freeze_startup_objects() -> None:
    """What start-up made (modules, the configuration, the public suffix list: hundreds of
    thousands of objects that live as long as the process) is moved out of the collector's
    reach (``gc.freeze``): otherwise every full collection, which the allocations of ordinary
    work trigger, walks all of them again.  The price: a frozen object that later becomes
    part of a reference cycle is never freed (a few per configuration reload)."""
    gc.collect()
    gc.freeze()


#: Seconds a thread may hold the GIL while another waits (CPython's default is 5 ms).  A worker
#: thread renaming files or reading messages takes the GIL back after each system call before the
#: waiting reactor thread can, so the reactor waits out the whole interval: at the default a POP3
#: RETR waited up to 5 ms for the thread setting \Seen on the ones before it.
SWITCH_INTERVAL = 0.0005


def make_service(config_path: str, reactor=None, twistd_options=None) -> MailstackService:
    """The service for ``twistd``.  Started as root with a ``[server] user``: bind the listeners,
    become that user for good, and only then load the configuration again and build the
    service, so that every file is opened, and every start-up check made, as the service user
    (mailstack.privileges).  ``twistd_options``: twistd's own (where its log would go; see
    mailstack.logoutput)."""
    logfilter.install()
    logcontext.install()
    sys.setswitchinterval(SWITCH_INTERVAL)
    cfg = config_mod.load(config_path)
    user = privileges.service_user(cfg)
    if user is None and cfg.workers <= 1:
        return _logging(MailstackService(cfg, reactor), twistd_options)
    if user is None:
        if reactor is None:
            from twisted.internet import reactor
        return _logging(with_workers(MailstackService(cfg, reactor, prebound=bind_listeners(cfg, reactor))),
                        twistd_options)
    if reactor is None:
        from twisted.internet import reactor
    prebound = bind_listeners(cfg, reactor)
    privileges.drop_to(user)
    cfg = config_mod.load(config_path)
    log.info("bound {n} listeners as root, now running as user {user}", n=len(prebound), user=user.name)
    return _logging(with_workers(MailstackService(cfg, reactor, prebound=prebound)), twistd_options)


def _logging(main: MailstackService, twistd_options) -> MailstackService:
    """Where twistd would write text to standard output, write it there ourselves: the same
    lines, formatted faster (mailstack.logoutput)."""
    if main.log_output is None and not main.worker:
        main.log_output = logoutput.build(main.config, stdout=logoutput.twistd_writes_stdout(twistd_options))
    return main


def with_workers(main: MailstackService) -> MailstackService:
    """``[server] workers`` above 1: the main service also starts the other processes, on its
    sockets, once it has bound them (mailstack.workers)."""
    if main.config.workers > 1 and any(True for _ in _shared(main.config)):
        from mailstack.workers import WorkerPool

        from mailstack import metrics

        main.workers = WorkerPool(main.config, main.prebound, main.config.workers - 1, main.reactor)
        main.workers.setServiceParent(main)
        metrics.collect_workers(main.workers.metrics_dir, main.workers.pids)
        if main.connection_counts is not None:  # a dead worker's sessions died with it
            main.workers.on_ended.append(main.connection_counts.clear)
    return main


def _shared(cfg):
    from mailstack.workers import shared_listeners

    return shared_listeners(cfg)
