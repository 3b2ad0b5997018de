"""Drive a real Thunderbird against a mailstack server: profile, Xvfb, Marionette, screenshot.

Used by ``test_thunderbird.py``.  Thunderbird runs under Xvfb with a fresh profile whose
``user.js`` holds the accounts (see :func:`account_prefs`) and prefs that keep it from
asking anything or reaching the network (:func:`quiet_prefs`); the dev CA is imported into
the profile's NSS database with ``certutil``, so certificates are really verified.  It is
scripted through Marionette (a small client here: the protocol is ``<length>:<json>`` over
TCP), with chrome-context scripts using Thunderbird's own XPCOM services (``MailServices``)
and modules (the account wizard's lookup, :meth:`Thunderbird.find_config`).

Where the kernel allows it (as root), Thunderbird and Xvfb run in a
network namespace of their own that has nothing but a loopback interface (:class:`NetJail`),
and the mail server's ports are forwarded into it: whatever a pref misses, Thunderbird cannot
reach anything but the server under test.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
MARIONETTE_PORT = 2828  # inside the namespace; a free port is used when there is none

DEAD = "127.0.0.1"  # proxies point at a closed port here, so a stray HTTP(S) request fails at once


def quiet_prefs(dead_port: int) -> dict:
    """Prefs for an unattended Thunderbird that makes no request of its own."""
    return {
        # no first-run questions, no start page, no account wizard, no default-client dialog
        "mail.shell.checkDefaultClient": False,
        "mailnews.start_page.enabled": False,
        "mailnews.start_page.url": "about:blank",
        "mail.rights.override": True,
        "mail.rights.version": 1,
        "mail.inappnotifications.enabled": False,
        "mail.inappnotifications.url": "",
        "browser.aboutConfig.showWarning": False,
        "toolkit.startup.max_resumed_crashes": -1,
        # no updates, telemetry, remote settings, safe browsing, add-on checks, push, region
        "app.update.auto": False,
        "app.update.checkInstallTime": False,
        "app.update.disabledForTesting": True,
        "extensions.update.enabled": False,
        "extensions.update.autoUpdateDefault": False,
        "extensions.getAddons.cache.enabled": False,
        "extensions.blocklist.enabled": False,
        "extensions.systemAddon.update.enabled": False,
        "extensions.systemAddon.update.url": "",
        "datareporting.policy.dataSubmissionEnabled": False,
        "datareporting.policy.dataSubmissionPolicyBypassNotification": True,
        "datareporting.healthreport.uploadEnabled": False,
        "toolkit.telemetry.enabled": False,
        "toolkit.telemetry.unified": False,
        "toolkit.telemetry.archive.enabled": False,
        "toolkit.telemetry.server": "",
        "toolkit.telemetry.shutdownPingSender.enabled": False,
        "toolkit.telemetry.firstShutdownPing.enabled": False,
        "toolkit.telemetry.newProfilePing.enabled": False,
        "toolkit.telemetry.updatePing.enabled": False,
        "toolkit.telemetry.bhrPing.enabled": False,
        "services.settings.server": f"http://{DEAD}:{dead_port}/v1",
        "security.remote_settings.crlite_filters.enabled": False,
        "security.remote_settings.intermediates.enabled": False,
        "security.OCSP.enabled": 0,
        "browser.safebrowsing.malware.enabled": False,
        "browser.safebrowsing.phishing.enabled": False,
        "browser.safebrowsing.downloads.enabled": False,
        "browser.safebrowsing.downloads.remote.enabled": False,
        "browser.safebrowsing.blockedURIs.enabled": False,
        "browser.safebrowsing.provider.google4.updateURL": "",
        "browser.safebrowsing.provider.mozilla.updateURL": "",
        "dom.push.connection.enabled": False,
        "dom.push.serverURL": "",
        "browser.region.network.url": "",
        "browser.region.update.enabled": False,
        "geo.enabled": False,
        "media.gmp-manager.url": "",
        "media.gmp-provider.enabled": False,
        "mailnews.auto_config_url": "",
        "mailnews.auto_config.addons_url": "",
        # no DNS or connections of the network stack's own: connectivity and captive portal
        # checks, DNS-over-HTTPS, prefetching, speculative connections
        "network.connectivity-service.enabled": False,
        "network.captive-portal-service.enabled": False,
        "network.trr.mode": 5,
        "network.dns.disablePrefetch": True,
        "network.dns.disablePrefetchFromHTTPS": True,
        "network.prefetch-next": False,
        "network.http.speculative-parallel-limit": 0,
        "network.dns.native_https_query": False,
        # HTTP(S) through a proxy on a closed loopback port (mail protocols do not use it)
        "network.proxy.type": 1,
        "network.proxy.http": DEAD,
        "network.proxy.http_port": dead_port,
        "network.proxy.ssl": DEAD,
        "network.proxy.ssl_port": dead_port,
        "network.proxy.no_proxies_on": "localhost, 127.0.0.1",
        "network.proxy.allow_hijacking_localhost": False,
        # remote content in messages is blocked by default; keep it so
        "mailnews.message_display.disable_remote_image": True,
        # no mail checks of its own: the test asks for mail when the password is in
        "mail.server.default.login_at_startup": False,
        "mail.server.default.check_new_mail": False,
        "mail.biff.show_alert": False,
        "mail.biff.play_sound": False,
        "mail.biff.show_tray_icon": False,
        "mail.biff.use_system_alert": False,
        "mail.biff.show_badge": False,
        # no "remember the password?" prompt after sending, no send progress window
        "signon.rememberSignons": False,
        "mailnews.show_send_progress": False,
        "mail.warn_on_send_accel_key": False,
        "mail.compose.big_attachments.notify": False,
        # the look of the screenshot: classic layout (list above the message), table view
        "mail.pane_config.dynamic": 0,
        "mail.threadpane.listview": 1,
    }


def account_prefs(incoming: list[dict], smtp: dict) -> dict:
    """Accounts as ``user.js`` prefs: one per entry of ``incoming``, then Local Folders.

    Each entry is ``{"type": "imap"|"pop3", "host", "port", "user", "socket"}``, ``smtp`` the
    same without ``type``; ``socket`` is Thunderbird's socketType (2 STARTTLS, 3 SSL/TLS) and
    authMethod 3 is "normal password" (AUTH PLAIN or LOGIN).  Every identity sends through
    the one SMTP server (``smtp1``); account N is ``accountN``/``serverN``/``idN``.
    """
    n_local = len(incoming) + 1
    p: dict = {
        "mail.accountmanager.accounts": ",".join(f"account{n}" for n in range(1, n_local + 1)),
        "mail.accountmanager.defaultaccount": "account1",
        "mail.accountmanager.localfoldersserver": f"server{n_local}",
        "mail.smtpservers": "smtp1",
        "mail.smtp.defaultserver": "smtp1",
    }
    for n, s in enumerate(incoming, start=1):
        server_uri = "{}://{}@{}".format("imap" if s["type"] == "imap" else "mailbox", s["user"].replace("@", "%40"), s["host"])
        p |= {
            f"mail.account.account{n}.server": f"server{n}",
            f"mail.account.account{n}.identities": f"id{n}",
            f"mail.server.server{n}.type": s["type"],
            f"mail.server.server{n}.hostname": s["host"],
            f"mail.server.server{n}.port": s["port"],
            f"mail.server.server{n}.userName": s["user"],
            f"mail.server.server{n}.name": s["user"],
            f"mail.server.server{n}.socketType": s["socket"],
            f"mail.server.server{n}.authMethod": 3,
            f"mail.server.server{n}.login_at_startup": False,
            f"mail.server.server{n}.check_new_mail": False,
            f"mail.identity.id{n}.useremail": s["user"],
            f"mail.identity.id{n}.fullName": s["user"].split("@")[0].title(),
            f"mail.identity.id{n}.smtpServer": "smtp1",
            f"mail.identity.id{n}.valid": True,
            f"mail.identity.id{n}.compose_html": False,
        }
        if s["type"] == "imap":
            p |= {
                # message bodies are kept in the offline store, ImapMail/<host>/INBOX (mbox)
                f"mail.server.server{n}.offline_download": True,
                f"mail.server.server{n}.autosync_offline_stores": True,
                # what the account wizard sets: copies of sent mail go to the server's Sent
                f"mail.identity.id{n}.fcc": True,
                f"mail.identity.id{n}.fcc_folder": server_uri + "/Sent",
                f"mail.identity.id{n}.draft_folder": server_uri + "/Drafts",
            }
    p |= {
        f"mail.account.account{n_local}.server": f"server{n_local}",
        f"mail.server.server{n_local}.type": "none",
        f"mail.server.server{n_local}.hostname": "Local Folders",
        f"mail.server.server{n_local}.userName": "nobody",
        f"mail.server.server{n_local}.name": "Local Folders",
        "mail.smtpserver.smtp1.type": "smtp",
        "mail.smtpserver.smtp1.hostname": smtp["host"],
        "mail.smtpserver.smtp1.port": smtp["port"],
        "mail.smtpserver.smtp1.username": smtp["user"],
        "mail.smtpserver.smtp1.try_ssl": smtp["socket"],
        "mail.smtpserver.smtp1.authMethod": 3,
        "mail.smtpserver.smtp1.description": "mailstack submission",
    }
    return p


def _js(value) -> str:
    return json.dumps(value)


def write_user_js(profile: Path, prefs: dict) -> None:
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "user.js").write_text("".join(f"user_pref({_js(k)}, {_js(v)});\n" for k, v in prefs.items()))


def trust_ca(profile: Path, ca_file: str, nickname: str = "mailstack-dev-ca") -> None:
    """Make the profile's NSS database (cert9.db) and trust ``ca_file`` to identify servers."""
    profile.mkdir(parents=True, exist_ok=True)
    db = f"sql:{profile}"
    subprocess.run(["certutil", "-N", "-d", db, "--empty-password"], check=True, capture_output=True, timeout=60)
    subprocess.run(["certutil", "-A", "-d", db, "-n", nickname, "-t", "C,,", "-i", ca_file],
                   check=True, capture_output=True, timeout=60)
    listing = subprocess.run(["certutil", "-L", "-d", db], check=True, capture_output=True, text=True, timeout=60).stdout
    assert nickname in listing, listing


class NetJail:
    """A network namespace with only a loopback interface, for Thunderbird and Xvfb.

    One worker thread enters the namespace (``unshare(CLONE_NEWNET)`` acts on the calling
    thread only); processes started and sockets made through :meth:`call` are in it, while
    the rest of this process stays outside.  :meth:`forward` listens on a port inside and
    relays each connection to the same port on the host's 127.0.0.1, so the mail server is
    reachable and nothing else is.  When the kernel refuses the namespace, ``isolated`` is
    false and everything runs on the host's loopback (the prefs alone keep Thunderbird quiet);
    the environment variable ``THUNDERBIRD_NETNS=0`` asks for that too.
    """

    def __init__(self):
        self.isolated = False
        self.reason = ""
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netjail")
        self._listeners: list[socket.socket] = []
        self._stop = threading.Event()
        if os.environ.get("THUNDERBIRD_NETNS", "1") == "0":
            self.reason = "THUNDERBIRD_NETNS=0"
            return
        try:
            self.call(self._enter)
            self.isolated = True
        except OSError as e:
            self.reason = str(e)

    @staticmethod
    def _enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # ip link set lo up
            ifreq = struct.pack("16sH14x", b"lo", 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))

    def call(self, fn, *args, **kw):
        return self._pool.submit(fn, *args, **kw).result()

    def popen(self, *args, **kw) -> subprocess.Popen:
        return self.call(subprocess.Popen, *args, **kw)

    def connect(self, port: int, timeout: float = 5.0) -> socket.socket:
        return self.call(socket.create_connection, ("127.0.0.1", port), timeout)

    def free_port(self) -> int:
        def pick():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]
        return self.call(pick)

    def forward(self, port: int, to: int | None = None) -> None:
        """Relay connections to 127.0.0.1:port inside the namespace to the host's 127.0.0.1:to
        (the same port when ``to`` is not given), e.g. port 80 to the autoconfig listener.
        Nothing is done outside a namespace; callers that forward to another port check
        ``isolated``."""
        if not self.isolated:
            return
        to = port if to is None else to

        def listen():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(16)
            return s

        lsock = self.call(listen)
        self._listeners.append(lsock)
        # started from this thread, so outside the namespace: its connect() reaches the host
        threading.Thread(target=self._accept, args=(lsock, to), daemon=True, name=f"fwd-{port}-{to}").start()

    def _accept(self, lsock: socket.socket, port: int) -> None:
        while not self._stop.is_set():
            try:
                inner, _ = lsock.accept()
            except OSError:
                return
            try:
                outer = socket.create_connection(("127.0.0.1", port), 10)
                outer.settimeout(None)
            except OSError:
                inner.close()
                continue
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                try:
                    s.shutdown(how)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        for s in self._listeners:
            try:
                s.close()
            except OSError:
                pass
        self._pool.shutdown(wait=False)


class MarionetteError(RuntimeError):
    pass


class Marionette:
    """A minimal Marionette (protocol 3) client: ``<len>:<json>`` frames over one TCP socket."""

    def __init__(self, sock: socket.socket, timeout: float = 120.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self._buf = b""
        self._id = 0
        hello = self._read()
        if hello.get("marionetteProtocol") != 3:
            raise MarionetteError(f"unexpected greeting {hello!r}")

    def _read(self):
        while b":" not in self._buf:
            self._recv_more()
        length, _, rest = self._buf.partition(b":")
        n = int(length)
        self._buf = rest
        while len(self._buf) < n:
            self._recv_more()
        body, self._buf = self._buf[:n], self._buf[n:]
        return json.loads(body)

    def _recv_more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise MarionetteError("Marionette connection closed")
        self._buf += data

    def command(self, name: str, params: dict | None = None):
        self._id += 1
        data = json.dumps([0, self._id, name, params or {}]).encode()
        self.sock.sendall(str(len(data)).encode() + b":" + data)
        while True:
            msg = self._read()
            if msg[0] == 1 and msg[1] == self._id:
                break
        if msg[2]:
            err = msg[2]
            raise MarionetteError(f"{name}: {err.get('error')}: {err.get('message')}\n{err.get('stacktrace', '')}")
        result = msg[3]
        return result.get("value", result) if isinstance(result, dict) and set(result) == {"value"} else result

    def start_session(self, script_timeout_ms: int = 100_000) -> None:
        self.command("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {"moz:windowless": False}}})
        self.command("Marionette:SetContext", {"value": "chrome"})
        self.command("WebDriver:SetTimeouts", {"script": script_timeout_ms})

    def js(self, script: str, *args):
        """Run ``script`` (a function body; ``arguments`` holds ``args``) in the chrome context of
        the main window; a returned Promise is waited for."""
        return self.command("WebDriver:ExecuteScript", {"script": script, "args": list(args), "sandbox": None, "newSandbox": False})

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


JS_PRELUDE = r"""
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
// the value of fn() once it is truthy, polling every 200 ms; an error naming `what` after ms
async function waitFor(what, fn, ms = 80000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(200);
  }
}
function serverOf(accountKey) {
  return MailServices.accounts.getAccount(accountKey).incomingServer;
}
function inboxOf(accountKey) {
  return serverOf(accountKey).rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
}
function subjectsOf(folder) {
  return [...folder.messages].map(hdr => hdr.mime2DecodedSubject);
}
// an nsIUrlListener and the promise of the status its OnStopRunningUrl gets
function urlListener() {
  let done;
  const finished = new Promise(resolve => (done = resolve));
  const listener = {
    QueryInterface: ChromeUtils.generateQI(["nsIUrlListener"]),
    OnStartRunningUrl() {},
    OnStopRunningUrl(url, status) { done(status); },
  };
  return { listener, finished };
}
"""


#: What the account wizard (the Account Hub's email view, ``#findConfig``) does with the address
#: typed in: ``FindConfig.parallelAutoDiscovery`` - the install directory's isp/ folder, then
#: the provider's own ``autoconfig.<domain>`` and ``<domain>/.well-known`` (https, then http),
#: then the ISPDB at ``mailnews.auto_config_url``, then the same for the domain of the MX host,
#: with Microsoft Autodiscover beside them - and ``AccountConfig.replaceVariables`` on the
#: result.  ``arguments``: the address, prefs to set for the lookup only (restored after), and
#: the time allowed in ms.  Returns the AccountConfig in plain values, or ``config: null``
#: when nothing was found (where the wizard would go on to guess host names).
FIND_CONFIG_JS = r"""
const [email, prefs, ms] = arguments;
const { FindConfig } = ChromeUtils.importESModule("resource:///modules/accountcreation/FindConfig.sys.mjs");
const { AccountConfig } = ChromeUtils.importESModule("resource:///modules/accountcreation/AccountConfig.sys.mjs");
const kinds = { [Services.prefs.PREF_STRING]: "Char", [Services.prefs.PREF_INT]: "Int", [Services.prefs.PREF_BOOL]: "Bool" };
const saved = [];
for (const [name, value] of Object.entries(prefs)) {
  const kind = typeof value == "boolean" ? "Bool" : typeof value == "number" ? "Int" : "Char";
  const had = kinds[Services.prefs.getPrefType(name)];
  saved.push([name, Services.prefs.prefHasUserValue(name) ? [had, Services.prefs[`get${had}Pref`](name)] : null]);
  Services.prefs[`set${kind}Pref`](name, value);
}
const server = s => s && { type: s.type, hostname: s.hostname, port: s.port, socketType: s.socketType,
                           auth: s.auth, username: s.username };
const started = Date.now();
const abort = new AbortController();
let timer;
try {
  const stream = FindConfig.parallelAutoDiscovery(email.split("@")[1], email, abort.signal, "", "");
  const step = await Promise.race([
    stream.next(),
    new Promise(resolve => (timer = setTimeout(() => { abort.abort(); resolve("timeout"); }, ms))),
  ]);
  const elapsed = Date.now() - started;
  if (step == "timeout") return { error: `no answer in ${ms} ms`, elapsed };
  const config = step.value;
  if (!config) return { config: null, done: step.done, elapsed };
  if (config.isRedirect) return { redirect: config, elapsed };
  AccountConfig.replaceVariables(config, "Alice", email, "");  // as the wizard's #fillAccountConfig
  return {
    config: {
      source: config.source, subSource: config.subSource, id: config.id, displayName: config.displayName,
      incoming: server(config.incoming), incomingAlternatives: config.incomingAlternatives.map(server),
      outgoing: server(config.outgoing), outgoingAlternatives: config.outgoingAlternatives.map(server),
    },
    done: step.done, elapsed,
  };
} catch (e) {
  return { error: `${e}`, elapsed: Date.now() - started };
} finally {
  clearTimeout(timer);
  for (const [name, old] of saved) {
    if (old) Services.prefs[`set${old[0]}Pref`](name, old[1]);
    else Services.prefs.clearUserPref(name);
  }
}
"""


def _wait_port(jail: NetJail, port: int, proc: subprocess.Popen, deadline: float, log: Path) -> socket.socket:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"thunderbird exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            return jail.connect(port, timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Marionette did not listen in time:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.25)


class Thunderbird:
    """Xvfb plus Thunderbird on a fresh profile, driven through Marionette."""

    def __init__(self, workdir: Path, prefs: dict, ca_file: str, forward_ports=(), size=(1280, 800)):
        self.workdir = workdir
        self.profile = workdir / "profile"
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "thunderbird.log"
        self.jail = NetJail()
        self.size = size
        self.xvfb: subprocess.Popen | None = None
        self.proc: subprocess.Popen | None = None
        self.marionette: Marionette | None = None
        self.display = ""
        for port in forward_ports:
            self.jail.forward(port)
        self.marionette_port = MARIONETTE_PORT if self.jail.isolated else self.jail.free_port()
        dead_port = self.jail.free_port()  # nothing listens there
        trust_ca(self.profile, ca_file)
        write_user_js(self.profile, quiet_prefs(dead_port) | {"marionette.port": self.marionette_port} | prefs)

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MOZ_", "XDG_", "WAYLAND", "DBUS"))}
        env |= {
            "HOME": str(self.home), "DISPLAY": self.display, "XDG_RUNTIME_DIR": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"), "XDG_CACHE_HOME": str(self.home / ".cache"),
            "MOZ_CRASHREPORTER_DISABLE": "1", "MOZ_CRASHREPORTER_NO_REPORT": "1",
            "MOZ_DISABLE_AUTO_SAFE_MODE": "1", "MOZ_REMOTE_ALLOW_SYSTEM_ACCESS": "1",
            "NO_AT_BRIDGE": "1", "GTK_A11Y": "none", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "DBUS_SESSION_BUS_ADDRESS": "disabled:",
        }
        return env

    def start_xvfb(self, timeout: float = 30.0) -> None:
        r, w = os.pipe()
        try:
            self.xvfb = self.jail.popen(
                ["Xvfb", "-displayfd", str(w), "-screen", "0", f"{self.size[0]}x{self.size[1]}x24",
                 "-nolisten", "tcp", "-noreset"],
                pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=open(self.workdir / "xvfb.log", "wb"),
            )
            os.close(w)
            w = -1
            deadline = time.monotonic() + timeout
            out = b""
            while not out.endswith(b"\n"):
                if time.monotonic() > deadline or self.xvfb.poll() is not None:
                    raise RuntimeError(f"Xvfb did not start: {(self.workdir / 'xvfb.log').read_text(errors='replace')}")
                if select.select([r], [], [], 0.5)[0]:
                    chunk = os.read(r, 64)
                    if not chunk:
                        break
                    out += chunk
            self.display = ":" + out.decode().strip()
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def start(self, timeout: float = 90.0) -> "Thunderbird":
        self.start_xvfb()
        log = open(self.log_path, "ab")
        self.proc = self.jail.popen(
            ["thunderbird", "--marionette", "-remote-allow-system-access", "-no-remote", "-profile", str(self.profile)],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        sock = _wait_port(self.jail, self.marionette_port, self.proc, deadline, self.log_path)
        self.marionette = Marionette(sock, timeout=max(10.0, deadline - time.monotonic()))
        self.marionette.start_session()
        self.marionette.sock.settimeout(130)  # beyond the script timeout
        # the 3-pane window is up, its about:3pane loaded, and it fills the screen
        self.js("""
            await waitFor("the 3-pane window", () => window.gTabmail?.tabInfo[0]?.chromeBrowser?.contentDocument?.readyState == "complete", 60000);
            window.gTabmail.closeOtherTabs(0);  // a start page or a notification would be in another tab
            window.gTabmail.switchToTab(0);
            window.moveTo(0, 0);
            window.resizeTo(arguments[0], arguments[1]);
            await waitFor("the window size", () => window.outerWidth == arguments[0] && window.outerHeight == arguments[1], 10000);
        """, *self.size)
        return self

    def js(self, body: str, *args):
        """Run ``body`` as an async function in Thunderbird's main window (chrome context).

        ``arguments`` holds ``args``; the helpers of :data:`JS_PRELUDE` are in scope.  Marionette
        ends a script without its value when a modal dialog opens (a password prompt, a
        certificate error): that is an error here, with the dialog's text."""
        assert self.marionette
        script = (JS_PRELUDE + "return (async function () {\n" + body + "\n}).apply(window, arguments)"
                  ".then(value => ({ done: true, value }));")
        out = self.marionette.js(script, *args)
        if isinstance(out, dict) and out.get("done") is True:
            return out.get("value")
        try:
            dialog = self.marionette.command("WebDriver:GetAlertText")
        except MarionetteError as e:
            dialog = f"(no dialog: {e})"
        raise MarionetteError(f"the script ended without its value ({out!r}); dialog: {dialog!r}")

    def find_config(self, address: str, prefs: dict | None = None, timeout: float = 40.0) -> dict:
        """The account wizard's lookup of ``address`` (:data:`FIND_CONFIG_JS`), with ``prefs``
        set for it alone: ``{"config": {...} or None, "elapsed": ms}``, or ``{"error": ...}``."""
        return self.js(FIND_CONFIG_JS, address, prefs or {}, int(timeout * 1000))

    def screenshot(self, path: Path, max_bytes: int = 300_000) -> Path:
        """The whole Xvfb screen as a PNG (ImageMagick's ``import``), reduced to a palette if large."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.workdir / "screen.png"
        proc = self.jail.popen(["import", "-window", "root", str(tmp)], env=self.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"import failed: {out.decode(errors='replace')}")
        subprocess.run(["convert", str(tmp), "-strip", "-colors", "256", "-define", "png:compression-level=9",
                        f"PNG8:{path}"], check=True, timeout=60)
        if path.stat().st_size > max_bytes:
            subprocess.run(["convert", str(tmp), "-strip", "-resize", "75%", "-colors", "128", f"PNG8:{path}"],
                           check=True, timeout=60)
        return path

    def stop(self) -> None:
        """Quit Thunderbird (killed if it lingers), then Xvfb; always safe to call."""
        if self.marionette:
            try:
                self.marionette.sock.settimeout(10)
                self.marionette.command("Marionette:Quit", {"flags": ["eForceQuit"]})
            except Exception:
                pass
            self.marionette.close()
            self.marionette = None
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
            try:  # Thunderbird's content processes are in its process group
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(15)
        if self.xvfb is not None:
            if self.xvfb.poll() is None:
                self.xvfb.terminate()
                try:
                    self.xvfb.wait(10)
                except subprocess.TimeoutExpired:
                    self.xvfb.kill()
                    self.xvfb.wait(10)
        self.jail.close()


def mbox_messages(path: Path) -> list[bytes]:
    """The messages of an mbox file (Thunderbird's "From " separator lines)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    parts, current = [], []
    for line in data.splitlines(keepends=True):
        if line.startswith(b"From ") and (not current or current[-1].strip() == b""):
            if current:
                parts.append(b"".join(current))
            current = []
            continue
        current.append(line)
    if current:
        parts.append(b"".join(current))
    return parts


def missing_programs(*programs: str) -> list[str]:
    """Those of ``programs`` not found on PATH."""
    return [p for p in programs if shutil.which(p) is None]
