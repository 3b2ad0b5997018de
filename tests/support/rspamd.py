"""Run a real rspamd (Debian's ``rspamd`` package) and a redis for its Bayes classifier, on
loopback ports, for the anti-spam tests and bench/smtp_accept.py --rspamd.

Debian's own configuration (/etc/rspamd) is used, with a local directory of our own given by
``--var LOCAL_CONFDIR=``: our workers' ports and password, and every module that would query
the internet turned off (RBLs, URL lists, fuzzy storage, DNS-based checks), so a run needs no
network; given a tests' DNS server, SPF, DKIM and DMARC are on and ask it.  One test rule, ``MAILSTACK_TEST_ADD_HEADER`` (a Subject containing
``mailstack-test-add-header``), scores 8: past rspamd's "add header" threshold (6) and under
"reject" (15), so a test can ask for that action.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from support.dovecot import free_port, stop, wait_port

PASSWORD = "mailstack-test"
ADD_HEADER_SUBJECT = "mailstack-test-add-header"

#: Modules that look things up on the network (or need state we do not give them).
OFF = ["rbl", "surbl", "fuzzy_check", "asn", "phishing", "dcc", "url_redirector", "emails", "mx_check",
       "neural", "reputation", "replies", "spf", "dkim", "dmarc", "arc", "ratelimit", "greylist",
       "hfilter", "history_redis", "whitelist", "once_received", "rspamd_update", "dkim_signing",
       "bimi", "external_services", "antivirus", "clickhouse", "elastic", "metric_exporter", "p0f",
       "spamassassin", "mid", "maillist", "forged_recipients", "known_senders"]


@dataclass
class Rspamd:
    proc: subprocess.Popen
    redis: subprocess.Popen | None
    normal_port: int
    controller_port: int
    base: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.normal_port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    def stat(self) -> dict:
        """The controller's /stat (what Bayes has learned)."""
        request = urllib.request.Request(self.controller_url + "/stat", headers={"Password": PASSWORD})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop(self.proc)
        if self.redis is not None and self.redis.poll() is None:
            stop(self.redis)


def installed() -> str:
    """'' when rspamd and redis-server are installed, else why not."""
    for program in ("rspamd", "redis-server"):
        if shutil.which(program) is None and not os.path.exists(f"/usr/bin/{program}"):
            return f"{program} is not installed (apt-get install rspamd redis-server)"
    return ""


#: What rspamd checks for mailstack (``[rspamd] checks = "rspamd"``) when start() is given a DNS server.
AUTHENTICATION = ["spf", "dkim", "dmarc"]


def _write_config(local: Path, normal: int, controller: int, redis_port: int, workers: int,
                  dns_port: int | None = None) -> None:
    d = local / "local.d"
    o = local / "override.d"
    d.mkdir(parents=True)
    o.mkdir()
    (o / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{normal}";\ncount = {workers};\n')
    (o / "worker-controller.inc").write_text(
        f'bind_socket = "127.0.0.1:{controller}";\ncount = 1;\npassword = "{PASSWORD}";\n'
        f'enable_password = "{PASSWORD}";\nsecure_ip = [];\n')
    (o / "worker-proxy.inc").write_text("enabled = false;\n")
    (o / "worker-fuzzy.inc").write_text("enabled = false;\ncount = 0;\n")
    (o / "logging.inc").write_text(f'type = "file";\nfilename = "{local}/rspamd.log";\nlevel = "warning";\n')
    # Without dns_port, a resolver that answers nothing quickly: nothing should ask, and
    # nothing may reach out.  With it, the tests' DNS server, for SPF, DKIM and DMARC.
    nameserver = dns_port or free_port()
    (o / "options.inc").write_text(
        f'pidfile = "{local}/rspamd.pid";\ndns {{ nameserver = ["127.0.0.1:{nameserver}"]; timeout = 0.2s; '
        'retransmits = 1; }\nlocal_addrs = [];\n')
    (d / "redis.conf").write_text(f'servers = "127.0.0.1:{redis_port}";\n')
    (o / "classifier-bayes.conf").write_text(
        f'backend = "redis";\nservers = "127.0.0.1:{redis_port}";\nmin_learns = 1;\nautolearn = false;\n'
        'new_schema = true;\nstatfile { symbol = "BAYES_HAM"; spam = false; }\n'
        'statfile { symbol = "BAYES_SPAM"; spam = true; }\n')
    for module in OFF:
        if dns_port and module in AUTHENTICATION:  # on, for mail from loopback too (rspamd skips
            (d / f"{module}.conf").write_text("check_local = true;\n")  # loopback otherwise)
        else:
            (o / f"{module}.conf").write_text("enabled = false;\n")
    (local / "subjects.map").write_text(f"/{ADD_HEADER_SUBJECT}/i\n")
    (d / "multimap.conf").write_text(
        'MAILSTACK_TEST_ADD_HEADER { type = "header"; header = "Subject"; regexp = true; '
        f'map = "{local}/subjects.map"; score = 8.0; description = "mailstack test: add header"; }}\n')


def start(base: Path, workers: int = 1, dns_port: int | None = None) -> tuple[Rspamd | None, str]:
    """rspamd (normal and controller workers) and redis on free loopback ports; (Rspamd, why-not).
    With ``dns_port`` (a tests' DNS server on 127.0.0.1) rspamd checks SPF, DKIM and DMARC too."""
    why = installed()
    if why:
        return None, why
    base.mkdir(parents=True, exist_ok=True)
    for sub in ("db", "run", "log"):
        (base / sub).mkdir(exist_ok=True)
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(base / "db")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    normal, controller = free_port(), free_port()
    local = base / "local"
    _write_config(local, normal, controller, redis_port, workers, dns_port)
    as_root = ["-u", "root", "-g", "root"] if os.geteuid() == 0 else []  # else: as whoever runs the tests
    args = ["rspamd", "-f", "-i", "-c", "/etc/rspamd/rspamd.conf", *as_root,
            "--var", f"LOCAL_CONFDIR={local}", "--var", f"DBDIR={base / 'db'}", "--var", f"RUNDIR={base / 'run'}",
            "--var", f"LOGDIR={base / 'log'}"]
    out = open(base / "rspamd.out", "wb")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    server = Rspamd(proc, redis, normal, controller, base)
    if not (wait_port(redis_port, 10) and wait_port(normal, 30) and wait_port(controller, 10)):
        server.stop()
        log = (local / "rspamd.log").read_text(errors="replace") if (local / "rspamd.log").exists() else ""
        return None, "rspamd did not start:\n" + (base / "rspamd.out").read_text(errors="replace")[-3000:] + log[-3000:]
    time.sleep(0.3)
    return server, ""


def start_or_skip(base: Path, workers: int = 1, dns_port: int | None = None) -> Rspamd:
    """start(), or skip the test without rspamd (fail on CI, tests/support/ci.py)."""
    import pytest

    from support.ci import on_ci

    server, why = start(base, workers, dns_port)
    if server is None:
        if on_ci():
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return server
