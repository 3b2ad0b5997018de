"""Certificates by ACME (RFC 8555), with certbot's ``acme`` library: no hand-written JOSE.

:class:`AcmeService` keeps a certificate for ``[acme] names`` (default: the host name, and
``mta-sts.<domain>`` and ``autoconfig.<domain>`` of every local domain).  It checks every
``check_interval`` seconds and on SIGHUP; it orders a certificate when there is none, when the
names or the directory changed, when ``renew_days`` or fewer days are left, or when
``mailstack acme renew`` asked for one.  HTTP-01 challenges (RFC 8555 section 8.3) are
answered by the ``autoconfig`` listener (port 80) at ``/.well-known/acme-challenge/<token>``
whatever the Host.  The ACME client blocks (``requests``), so it runs in a thread of its own,
never on the reactor; the new certificate is swapped into the shared :class:`ReloadableTLS`,
which changes it for new handshakes only: open sessions keep theirs.

A failed attempt is logged with what the CA said, and the next one waits ``retry_delay``
seconds, doubling with each failure up to ``max_retry_delay`` (a forced renewal does not wait).

Which certificate is served: the ACME one once there is one; before that the ``[tls]`` files
when they are set, else a self-signed placeholder made in the state directory.

The state directory (``[acme] state``, default ``acme`` beside the store root; mode 0700) holds
``account.json`` (the account key and URL, 0600), ``certs/<serial>/key.pem`` (0600) and
``cert.pem`` (the full chain) with the symlink ``current`` naming the one served (switched by
one rename, so a key never meets another's chain), ``status.json`` (names, expiry, failures, next attempt, last error), the
placeholder, and ``renew-now`` while a forced renewal is pending.  Every file is replaced
atomically (:func:`mailstack.fsutil.atomic_write`).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import threading
import time

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import resource

from mailstack import fileaccess
from mailstack.errors import ConfigError
from mailstack.fsutil import atomic_write, fsync_dir
from mailstack.tls import ReloadableTLS

log = Logger()

__all__ = ["AcmeService", "AcmeState", "check_acme_config", "default_names", "with_challenges"]

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # base64url (RFC 8555 section 8.3)
_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
_EMAIL = re.compile(r"^[^@\s:,]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$")
ORDER_TIMEOUT = 120  # seconds for the CA to validate and issue


# -- configuration -------------------------------------------------------------------------------


def default_names(hostname: str, domains: list[str]) -> list[str]:
    names = [hostname]
    for domain in domains:
        names += [f"mta-sts.{domain}", f"autoconfig.{domain}"]
    return list(dict.fromkeys(n.lower().rstrip(".") for n in names))


def check_acme_config(values: dict, hostname: str, domains: list[str], listeners, root: str, path: str) -> dict:
    """[acme], with its defaults filled in (names, state directory)."""
    acme = dict(values["acme"])
    acme["state"] = acme["state"] or os.path.join(os.path.dirname(root), "acme")
    acme["names"] = [n.strip().lower().rstrip(".") for n in acme["names"]] or default_names(hostname, domains)
    if not acme["enabled"]:
        return acme
    if not acme["directory"].startswith("https://"):
        raise ConfigError(path, "[acme] directory", f"must be an https:// URL (RFC 8555 section 6.1), not {acme['directory']!r}")
    contact = acme["contact"].removeprefix("mailto:")
    if contact and not _EMAIL.match(contact):
        raise ConfigError(path, "[acme] contact", f"must be one email address, not {acme['contact']!r}")
    acme["contact"] = contact
    for name in acme["names"]:
        if name.startswith("*."):
            raise ConfigError(path, "[acme] names", f"{name}: wildcards need DNS-01; only HTTP-01 is supported")
        if not _NAME.match(name):
            raise ConfigError(path, "[acme] names", f"not a host name: {name!r}")
    if len(acme["names"]) > 100:
        raise ConfigError(path, "[acme] names", "at most 100 names in one certificate")
    if not any(lst.key == "autoconfig" for lst in listeners):
        raise ConfigError(path, "[acme] enabled", "HTTP-01 challenges are answered by the HTTP listener: "
                          "set [listeners] autoconfig (port 80, where the CA connects)")
    if acme["ca_file"]:
        fileaccess.readable(path, "[acme] ca_file", acme["ca_file"])
    if os.path.exists(acme["state"]) and not os.path.isdir(acme["state"]):
        raise ConfigError(path, "[acme] state", f"not a directory: {acme['state']}")
    fileaccess.writable_dir(path, "[acme] state", acme["state"])  # as the service user, who renews
    if not 1 <= acme["renew_days"] <= 365:
        raise ConfigError(path, "[acme] renew_days", "must be 1 to 365 (days before expiry)")
    for key in ("check_interval", "retry_delay"):
        if acme[key] <= 0:
            raise ConfigError(path, f"[acme] {key}", "must be above 0 (seconds)")
    if acme["max_retry_delay"] < acme["retry_delay"]:
        raise ConfigError(path, "[acme] max_retry_delay", "must be at least [acme] retry_delay")
    return acme


# -- state on disk -------------------------------------------------------------------------------


class AcmeState:
    """The files of ``[acme] state`` (see the module docstring)."""

    def __init__(self, directory: str):
        self.dir = directory
        self.account = os.path.join(directory, "account.json")
        # current -> certs/<serial>/: the key and its chain change together, in one rename of
        # the link (a crash or a SIGHUP never sees a new key with an old chain).
        self.current = os.path.join(directory, "current")
        self.key = os.path.join(self.current, "key.pem")
        self.cert = os.path.join(self.current, "cert.pem")
        self.status_file = os.path.join(directory, "status.json")
        self.placeholder_key = os.path.join(directory, "placeholder-key.pem")
        self.placeholder_cert = os.path.join(directory, "placeholder.pem")
        self.renew_flag = os.path.join(directory, "renew-now")

    def make(self) -> None:
        """The directory, private to the server's user (it holds the keys)."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        if os.stat(self.dir).st_mode & 0o077:
            os.chmod(self.dir, 0o700)

    def status(self) -> dict:
        try:
            with open(self.status_file, encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def write_status(self, status: dict) -> None:
        atomic_write(self.status_file, json.dumps(status, indent=1, sort_keys=True).encode(), 0o600)

    def has_certificate(self) -> bool:
        return self.status().get("issued") is not None and os.path.exists(self.cert) and os.path.exists(self.key)

    def install(self, key_pem: bytes, chain: bytes, serial: str) -> None:
        """Make ``certs/<serial>/`` the current key and chain (atomic: ``current`` is a symlink
        renamed over); the previous one is kept, older ones removed."""
        import shutil

        certs = os.path.join(self.dir, "certs")
        target = os.path.join(certs, serial)
        os.makedirs(target, mode=0o700, exist_ok=True)
        atomic_write(os.path.join(target, "key.pem"), key_pem, 0o600)
        atomic_write(os.path.join(target, "cert.pem"), chain, 0o644)
        previous = os.path.basename(os.readlink(self.current)) if os.path.islink(self.current) else None
        tmp = f"{self.current}.{os.getpid()}.tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.join("certs", serial), tmp)
        os.rename(tmp, self.current)
        fsync_dir(self.dir)
        for name in os.listdir(certs):
            if name not in (serial, previous):
                shutil.rmtree(os.path.join(certs, name), ignore_errors=True)

    def request_renewal(self) -> None:
        atomic_write(self.renew_flag, f"{time.time()}\n".encode(), 0o600)

    def renewal_requested(self) -> bool:
        return os.path.exists(self.renew_flag)

    def make_placeholder(self, names: list[str]) -> None:
        """A self-signed certificate for the names, served until the CA has issued one: TLS
        listeners work from the first second (clients see an untrusted certificate)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailstack placeholder (ACME pending)")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=90))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                .sign(key, hashes.SHA256()))
        atomic_write(self.placeholder_key, _key_pem(key), 0o600)
        atomic_write(self.placeholder_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def retry_delay(failures: int, first: float, longest: float) -> float:
    """Seconds to wait after ``failures`` failed orders in a row: ``first``, doubling, at most
    ``longest`` (a CA counts failed validations: Let's Encrypt allows 5 an hour)."""
    return min(first * 2 ** min(failures - 1, 64), longest)


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the ACME conversation (blocking: runs in a thread) ------------------------------------------


class AcmeFailure(Exception):
    """An attempt failed; the message says why in words an administrator can act on."""


def _account(state: AcmeState):
    """The account key (RSA-2048, RS256: what every CA accepts), made on first use."""
    import josepy as jose
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        with open(state.account, encoding="utf-8") as f:
            data = json.load(f)
        key = serialization.load_pem_private_key(data["key"].encode(), password=None)
    except FileNotFoundError:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        data = {"key": _key_pem(key).decode()}
        atomic_write(state.account, json.dumps(data, indent=1).encode(), 0o600)
    return jose.JWKRSA(key=key), data


def _register(acme, net, settings: dict, state: AcmeState, account: dict):
    """The account for our key: made, or found (RFC 8555 section 7.3.1); its URL is kept."""
    from acme import errors, messages

    registration = messages.NewRegistration.from_data(email=settings["contact"] or None, terms_of_service_agreed=True)
    try:
        regr = acme.new_account(registration)
    except errors.ConflictError as e:  # the key has an account already
        regr = messages.RegistrationResource(uri=e.location, body=messages.Registration())
        net.account = regr
    if account.get("uri") != regr.uri or account.get("directory") != settings["directory"]:
        account.update(uri=regr.uri, directory=settings["directory"])
        atomic_write(state.account, json.dumps(account, indent=1).encode(), 0o600)
    return regr


def _answer_challenges(acme, order, account_key, challenges: dict, tokens: list) -> None:
    """Publish the key authorization of each pending http-01 challenge, then tell the CA."""
    from acme import challenges as acme_challenges
    from acme import messages

    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:  # still valid from an earlier order
            continue
        challb = next((c for c in authz.body.challenges if isinstance(c.chall, acme_challenges.HTTP01)), None)
        if challb is None:
            raise AcmeFailure(f"{authz.body.identifier.value}: the CA offers no http-01 challenge")
        response, validation = challb.chall.response_and_validation(account_key)
        token = challb.chall.encode("token")
        challenges[token] = validation
        tokens.append(token)
        acme.answer_challenge(challb, response)


def _finalize(acme, order):
    from acme import errors

    deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
    try:
        return acme.poll_and_finalize(order, deadline)
    except errors.ValidationError as e:
        problems = [f"{authzr.body.identifier.value}: {ch.error.detail or ch.error.typ}"
                    for authzr in e.failed_authzrs for ch in authzr.body.challenges if ch.error is not None]
        raise AcmeFailure("the CA could not validate " + "; ".join(problems)
                          + " (does each name resolve to this host, and does port 80 reach the autoconfig listener?)") from None
    except errors.TimeoutError:
        raise AcmeFailure(f"the CA did not finish the order within {ORDER_TIMEOUT} seconds") from None


def obtain(settings: dict, state: AcmeState, challenges: dict, say) -> dict:
    """Register (or find) the account, order a certificate for ``settings["names"]``, answer
    its HTTP-01 challenges through ``challenges`` (token -> key authorization), and write the
    key and chain.  Returns what goes into status.json; raises AcmeFailure."""
    import josepy as jose
    import requests
    from acme import client, crypto_util, errors, messages
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    names = settings["names"]
    account_key, account = _account(state)
    net = client.ClientNetwork(account_key, alg=jose.RS256, verify_ssl=settings["ca_file"] or True,
                               user_agent="mailstack (acme-python)")
    tokens: list[str] = []
    try:
        try:
            directory = client.ClientV2.get_directory(settings["directory"], net)
        except (requests.RequestException, ValueError) as e:
            raise AcmeFailure(f"cannot read the ACME directory {settings['directory']}: {e}") from None
        acme = client.ClientV2(directory, net)
        regr = _register(acme, net, settings, state, account)
        say(f"account {regr.uri}; ordering a certificate for {', '.join(names)}")
        key_pem = _key_pem(ec.generate_private_key(ec.SECP256R1()))  # a new key with every certificate
        order = acme.new_order(crypto_util.make_csr(key_pem, names))
        _answer_challenges(acme, order, account_key, challenges, tokens)
        order = _finalize(acme, order)
    except messages.Error as e:
        raise AcmeFailure(f"the CA refused: {e}") from None
    except errors.Error as e:
        raise AcmeFailure(f"ACME error: {e}") from None
    except requests.RequestException as e:
        raise AcmeFailure(f"cannot reach the CA: {e}") from None
    finally:
        for token in tokens:
            challenges.pop(token, None)
        net.session.close()

    chain = order.fullchain_pem.encode("ascii")
    leaf = x509.load_pem_x509_certificate(chain)
    state.install(key_pem, chain, format(leaf.serial_number, "x"))
    return {"issued": time.time(), "not_after": leaf.not_valid_after_utc.timestamp(), "serial": format(leaf.serial_number, "x"),
            "names": names, "directory": settings["directory"], "account": regr.uri, "order": order.uri}


# -- the service ---------------------------------------------------------------------------------


class AcmeService(service.Service):
    """Keeps the certificate of ``[acme]`` current; ``self.tls`` is what the listeners use."""

    name = "acme"

    def __init__(self, cfg, reactor, follower: bool = False):
        #: ``follower``: a worker process (mailstack.workers), which serves what the main
        #: process made and installed and writes nothing (two writers could pair one's key
        #: with the other's certificate).
        self.follower = follower
        self.cfg, self.settings, self.reactor = cfg, cfg.acme, reactor
        self.state = AcmeState(self.settings["state"])
        self.challenges: dict[str, str] = {}  # token -> key authorization, while an order is open
        self.busy = False  # an order is under way
        self.state.make()
        self.tls = ReloadableTLS(*self._initial_files(), cfg.path)

    def _initial_files(self) -> tuple[str, str]:
        """The ACME certificate once there is one; else [tls]; else a (new) placeholder."""
        from mailstack.tls import load_context_factory

        if self.state.has_certificate():
            try:
                load_context_factory(self.state.cert, self.state.key, self.cfg.path)
                return self.state.cert, self.state.key
            except ConfigError as e:
                log.error("acme: the stored certificate is unusable ({error}); ordering a new one", error=str(e))
                if not self.follower:  # the main process orders, and says so in the status
                    status = self.state.status()
                    status["issued"] = None
                    self.state.write_status(status)
        if self.cfg.tls_certificate:
            return self.cfg.tls_certificate, self.cfg.tls_key
        if self.follower and os.path.exists(self.state.placeholder_cert):
            return self.state.placeholder_cert, self.state.placeholder_key
        self.state.make_placeholder(self.settings["names"])
        log.info("acme: serving a self-signed placeholder certificate until the CA issues one")
        return self.state.placeholder_cert, self.state.placeholder_key

    def tls_files_changed(self, cert: str, key: str) -> None:
        """SIGHUP changed [tls]: those files serve only while ACME has issued nothing."""
        if self.tls.cert_path == self.state.cert:
            return
        if cert:
            self.tls.cert_path, self.tls.key_path = cert, key
        else:
            if not os.path.exists(self.state.placeholder_cert):
                self.state.make_placeholder(self.settings["names"])
            self.tls.cert_path, self.tls.key_path = self.state.placeholder_cert, self.state.placeholder_key

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.settings["check_interval"], now=True)

    def stopService(self):
        if getattr(self, "_loop", None) is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    def _tick(self) -> None:
        try:
            self.check()
        except Exception:  # the timer must go on whatever one check met
            log.failure("acme: the certificate check failed")

    def due(self, now: float | None = None) -> str | None:
        """Why a certificate should be ordered now, or None."""
        now = time.time() if now is None else now
        status = self.state.status()
        if self.state.renewal_requested():
            return "renewal asked for (mailstack acme renew)"
        if not self.state.has_certificate():
            reason = "no certificate yet"
        elif status.get("names") != self.settings["names"]:
            reason = "the names changed"
        elif status.get("directory") != self.settings["directory"]:
            reason = "the ACME directory changed"
        elif status.get("not_after", 0) - now <= self.settings["renew_days"] * 86400:
            reason = f"it expires {_utc(status.get('not_after', 0))}"
        else:
            return None
        if status.get("failures") and now < status.get("next_attempt", 0):
            return None  # backing off after failures
        return reason

    def check(self) -> defer.Deferred | None:
        """Order a certificate if one is due (called by the timer and on SIGHUP); the
        Deferred fires when the attempt is over, whatever its outcome."""
        if self.busy or not self.running:
            return None
        reason = self.due()
        if reason is None:
            return None
        self.busy = True
        log.info("acme: ordering a certificate from {directory}: {reason}", directory=self.settings["directory"], reason=reason)
        d = defer.Deferred()
        # A daemon thread, not the reactor's pool: a CA that hangs must not hold up shutdown.
        threading.Thread(target=self._attempt, args=(d,), name="acme", daemon=True).start()
        d.addCallbacks(self._issued, self._failed)
        d.addErrback(lambda f: log.failure("acme: handling the outcome of an order failed", f))
        d.addBoth(self._done)
        return d

    def _attempt(self, d: defer.Deferred) -> None:
        """In the ACME thread: one order, and its outcome written to status.json."""
        def say(text: str) -> None:
            self.reactor.callFromThread(log.info, "acme: {text}", text=text)

        try:
            if self.state.renewal_requested():
                os.unlink(self.state.renew_flag)  # asked for once: a failure then backs off
            result = obtain(self.settings, self.state, self.challenges, say)
            status = self.state.status()
            status.update(result, failures=0, next_attempt=0, last_error="")
            self.state.write_status(status)
        except Exception as e:
            error = str(e) if isinstance(e, AcmeFailure) else f"{type(e).__name__}: {e}"  # a bug: backoff all the same
            status = self.state.status()
            failures = int(status.get("failures", 0)) + 1
            delay = retry_delay(failures, self.settings["retry_delay"], self.settings["max_retry_delay"])
            status.update(failures=failures, next_attempt=time.time() + delay, last_error=error, last_failure=time.time())
            try:
                self.state.write_status(status)
            except OSError as write_error:
                error += f" (and status.json could not be written: {write_error})"
            self.reactor.callFromThread(d.errback, AcmeFailure(error, failures, status["next_attempt"]))
        else:
            self.reactor.callFromThread(d.callback, result)

    def _issued(self, result: dict) -> None:
        old_paths = self.tls.cert_path, self.tls.key_path
        self.tls.cert_path, self.tls.key_path = self.state.cert, self.state.key
        try:
            self.tls.reload()
        except ConfigError as e:
            self.tls.cert_path, self.tls.key_path = old_paths  # keep serving, and reloading, what works
            log.error("acme: the new certificate cannot be loaded: {error}", error=str(e))
            return
        log.info("acme: new certificate for {names} (serial {serial}) valid until {until} is now served; "
                 "open sessions keep the one they began with",
                 names=", ".join(result["names"]), serial=result["serial"], until=_utc(result["not_after"]))

    def follow(self) -> None:
        """In a worker process (mailstack.workers), which never orders: serve the certificate
        the main process installed, once it has installed one.  Called before each TLS
        connection (``ReloadableTLS.before_connection``), so it costs one ``readlink``: the
        ``current`` link names the installed certificate (AcmeState.install)."""
        try:
            installed = os.readlink(self.state.current)
        except OSError:
            return
        if installed == getattr(self, "_followed", None):
            return
        self._followed = installed
        old_paths = self.tls.cert_path, self.tls.key_path
        self.tls.cert_path, self.tls.key_path = self.state.cert, self.state.key
        try:
            self.tls.reload()
        except ConfigError as e:
            self.tls.cert_path, self.tls.key_path = old_paths
            log.error("acme: the certificate the main process installed cannot be loaded: {error}", error=str(e))

    def _failed(self, failure) -> None:
        error, failures, next_attempt = failure.value.args
        log.error("acme: ordering a certificate for {names} failed ({n} in a row): {error}; next try at {when}",
                  names=", ".join(self.settings["names"]), n=failures, error=error, when=_utc(next_attempt))

    def _done(self, _) -> None:
        self.busy = False


# -- HTTP-01 on the autoconfig listener ----------------------------------------------------------


class ChallengeResource(resource.Resource):
    """``/.well-known/acme-challenge/<token>`` from the open order's challenges, for any Host
    (RFC 8555 section 8.3); every other path goes to ``inner``."""

    isLeaf = True

    def __init__(self, context, inner):
        super().__init__()
        self.context, self.inner = context, inner

    def render(self, request):
        path = request.path.decode("ascii", "replace")
        if not path.startswith(CHALLENGE_PREFIX):
            return self.inner.render(request)
        token = path[len(CHALLENGE_PREFIX):]
        acme = getattr(self.context, "acme", None)
        answer = acme.challenges.get(token) if acme is not None and _TOKEN.match(token) else None
        if answer is None or request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(404)
            return b"no such challenge\n"
        request.setHeader(b"content-type", b"application/octet-stream")
        return answer.encode("ascii")


def with_challenges(context, inner) -> resource.Resource:
    return ChallengeResource(context, inner)
