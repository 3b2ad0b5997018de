"""The service user and file ownership (issue 17, part 1), for real: a system user, mailstack
installed from its wheel into a venv that user can run, admin commands run as root, and the
server started both ways an administrator starts it:

* by root, by hand: it binds, then drops to ``[server] user`` for good;
* as the service user directly, as systemd's unit does (here with ``setpriv``).

Then what a root-made file does to start-up: it stops, naming the key and the path.
"""

from __future__ import annotations

import grp
import imaplib
import json
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailstack.devinit import make_dev_ca
from support.install import SERVICE_USER, ensure_service_user, installed_venv, public_dir

pytestmark = pytest.mark.slow

DOMAIN = "example.test"
PASSWORDS = {f"alice@{DOMAIN}": "alice-password-1", f"bob@{DOMAIN}": "bob-password-2"}


class Install:
    """/etc/mailstack and /var/lib/mailstack in miniature, laid out as README's install does."""

    def __init__(self, base: Path, bin_dir: Path):
        self.base, self.bin = base, bin_dir
        self.user = ensure_service_user()
        self.gid = grp.getgrnam(SERVICE_USER).gr_gid
        self.etc, self.lib, self.run_dir = base / "etc", base / "lib", base / "run"
        self.config = self.etc / "mailstack.toml"
        self.etc.mkdir(mode=0o750)
        os.chown(self.etc, 0, self.gid)
        for d in (self.lib, self.run_dir):  # install -d -o mailstack -g mailstack -m 700
            d.mkdir(mode=0o700)
            os.chown(d, self.user.pw_uid, self.gid)
        make_dev_ca(str(self.etc / "tls"), hostnames=("localhost", "mail.example.test"))
        self.etc_file("tls", mode=0o750)
        self.etc_file("tls/server-key.pem", mode=0o640)
        self.etc_file("tls/server.pem", mode=0o644)
        (self.etc / "users").write_text("")
        (self.etc / "aliases").write_text(f"postmaster@{DOMAIN}: alice@{DOMAIN}\n")
        self.etc_file("users")
        self.etc_file("aliases")
        self.config.write_text("\n".join([
            "[server]", 'hostname = "mail.example.test"', f'domains = ["{DOMAIN}"]',
            f'ports_file = "{self.run_dir}/ports.json"', f'user = "{SERVICE_USER}"',
            "[listeners]", 'smtp = "tcp:0:interface=127.0.0.1"', 'submission = "tcp:0:interface=127.0.0.1"',
            'imaps = "tcp:0:interface=127.0.0.1"',
            "[tls]", 'certificate = "tls/server.pem"', 'key = "tls/server-key.pem"',
            "[accounts]", 'users = "users"', 'aliases = "aliases"',
            "[store]", f'root = "{self.lib}/mail"',
            "[checks]", "spf = false", "dkim = false", "dmarc = false",
        ]) + "\n")
        self.etc_file("mailstack.toml")
        self.proc: subprocess.Popen | None = None

    def etc_file(self, name: str, mode: int = 0o640) -> None:
        """root:mailstack, readable by the group: the service reads it, only root changes it."""
        os.chown(self.etc / name, 0, self.gid)
        os.chmod(self.etc / name, mode)

    def admin(self, *args: str, stdin: str = "", ok: bool = True) -> subprocess.CompletedProcess:
        """``mailstack`` run as root, as an administrator does."""
        got = subprocess.run([str(self.bin / "mailstack"), "--config", str(self.config), *args], input=stdin,
                             capture_output=True, text=True, timeout=120)
        if ok:
            assert got.returncode == 0, got.stdout + got.stderr
        return got

    def twistd(self, as_service_user: bool) -> list[str]:
        argv = [str(self.bin / "twistd"), "--nodaemon", "--pidfile=", "mailstack", "--config", str(self.config)]
        if as_service_user:  # what systemd's User=/Group= does
            argv = ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups", *argv]
        return argv

    def start(self, as_service_user: bool) -> dict:
        ports_file = self.run_dir / "ports.json"
        self.log_path = self.base / f"server-{int(time.time() * 1000)}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.twistd(as_service_user), cwd=self.base, stdout=self.log,
                                     stderr=subprocess.STDOUT, env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ports_file.exists():
                return json.loads(ports_file.read_text())
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"server did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        self.log.close()

    def start_fails(self, as_service_user: bool) -> str:
        """Start-up that must stop: exit status 2 and one line naming the problem."""
        got = subprocess.run(self.twistd(as_service_user), cwd=self.base, capture_output=True, text=True, timeout=60,
                             env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"})
        assert got.returncode == 2, got.stdout + got.stderr
        return got.stdout + got.stderr


@pytest.fixture
def install():
    bin_dir = installed_venv()
    base = public_dir("mailstack-install-")
    inst = Install(base, bin_dir)
    yield inst
    if inst.proc is not None and inst.proc.poll() is None:
        inst.proc.kill()
        inst.proc.wait()
    shutil.rmtree(base, ignore_errors=True)


def owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, st.st_mode & 0o777


def ids_of(pid: int) -> dict[str, list[int]]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: [int(x) for x in line.split(":")[1].split()] for line in status
            if line.startswith(("Uid:", "Gid:", "Groups:"))}


def prepare_users_and_key(inst: Install) -> None:
    for address, password in PASSWORDS.items():
        inst.admin("user", "add", address, "--password-file", "-", stdin=password + "\n")
    inst.admin("dkim", "genkey", DOMAIN)


def send_and_read(inst: Install, ports: dict) -> bytes:
    """alice submits to bob (STARTTLS, AUTH); bob reads it over IMAPS; the stored bytes."""
    ctx = ssl.create_default_context(cafile=str(inst.etc / "tls" / "ca.pem"))
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"alice@{DOMAIN}", f"bob@{DOMAIN}", "as the service user"
    msg["Message-ID"] = f"<{time.time_ns()}@{DOMAIN}>"
    msg.set_content("hello\n")
    with smtplib.SMTP("127.0.0.1", ports["listeners"]["submission"]["port"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login(f"alice@{DOMAIN}", PASSWORDS[f"alice@{DOMAIN}"])
        s.send_message(msg)
    imap = imaplib.IMAP4_SSL("127.0.0.1", ports["listeners"]["imaps"]["port"], ssl_context=ctx, timeout=30)
    try:
        imap.login(f"bob@{DOMAIN}", PASSWORDS[f"bob@{DOMAIN}"])
        deadline = time.monotonic() + 20
        while True:
            typ, data = imap.select("INBOX")
            if int(data[0]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        typ, data = imap.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK", data
        return data[0][1]
    finally:
        imap.logout()


def test_admin_commands_as_root_leave_files_the_service_can_use(install):
    inst = install
    uid, gid = inst.user.pw_uid, inst.gid
    prepare_users_and_key(inst)
    # The users file: rewritten by root, still root:mailstack 0640 (not root:root).
    assert owner(inst.etc / "users") == (0, gid, 0o640)
    assert (inst.etc / "users").read_text().count("{ARGON2ID}") == 2
    # Maildirs and their files: the service user's.
    alice = inst.lib / "mail" / DOMAIN / "alice"
    for path in [alice, alice / "cur", alice / "new", alice / "tmp", *alice.iterdir()]:
        assert path.stat().st_uid == uid, f"{path} is owned by uid {path.stat().st_uid}"
    assert owner(alice)[2] == 0o700
    # The DKIM key: the service reads it, nobody else may.
    key = inst.lib / "dkim" / DOMAIN / "mail.rsa.pem"
    assert owner(key) == (uid, gid, 0o600)
    # The SRS key, made by the first command that needs it: the service's too (issue 19).
    assert inst.admin("srs", "forward", "dave@outside.test").stdout.startswith("SRS0=")
    assert owner(inst.lib / "srs.key") == (uid, gid, 0o600)
    got = inst.admin("config", "check")
    assert f"checked as user {SERVICE_USER}" in got.stdout


@pytest.mark.parametrize("as_service_user", [False, True], ids=["started-by-root", "started-as-service-user"])
def test_server_runs_as_the_service_user_and_signs_and_delivers(install, as_service_user):
    inst = install
    prepare_users_and_key(inst)
    ports = inst.start(as_service_user)
    try:
        ids = ids_of(ports["pid"])
        assert ids["Uid"] == [inst.user.pw_uid] * 4, ids  # real, effective, saved, fs: no way back to root
        assert ids["Gid"] == [inst.gid] * 4, ids
        assert 0 not in ids["Groups"], ids
        stored = send_and_read(inst, ports)
        assert b"DKIM-Signature:" in stored.split(b"\r\n\r\n", 1)[0], stored[:500]
        assert owner(inst.lib / "srs.key") == (inst.user.pw_uid, inst.gid, 0o600)  # made at start, as the service user
        bob_new = [p for d in ("new", "cur") for p in (inst.lib / "mail" / DOMAIN / "bob" / d).iterdir()]
        assert bob_new and all(p.stat().st_uid == inst.user.pw_uid for p in bob_new)
        queue = inst.lib / "queue"
        if queue.exists():
            assert queue.stat().st_uid == inst.user.pw_uid
    finally:
        inst.stop()
    if not as_service_user:
        assert "now running as user " + SERVICE_USER in inst.log_path.read_text()


def test_a_root_made_maildir_is_named_at_start_up_and_by_config_check(install):
    """Start-up names it (and goes on: the other users' mail works); config check fails on it."""
    inst = install
    prepare_users_and_key(inst)
    carol = inst.lib / "mail" / DOMAIN / "carol"
    carol.mkdir(mode=0o700)  # root, by hand: what the old 'user add' did
    for d in ("cur", "new", "tmp"):
        (carol / d).mkdir(mode=0o700)
    line = f"not writable by user {SERVICE_USER}: {carol} (owner root:root, mode 700); chown -R {SERVICE_USER}: {carol}"
    got = inst.admin("config", "check", ok=False)
    assert got.returncode == 2
    assert got.stderr.strip() == f"mailstack: {inst.config}: [store] root: {line}", got.stderr
    ports = inst.start(as_service_user=True)
    try:
        deadline = time.monotonic() + 20
        while line not in inst.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"store: {line}: that user's deliveries and logins fail until it is fixed" in inst.log_path.read_text()
        assert b"DKIM-Signature:" in send_and_read(inst, ports)  # alice and bob: unaffected
    finally:
        inst.stop()
    assert "Traceback" not in inst.log_path.read_text()


def test_an_unreadable_dkim_key_stops_start_up(install):
    """Not a silent "this domain is unsigned" while DNS promises signatures (issue 17)."""
    inst = install
    prepare_users_and_key(inst)
    key = inst.lib / "dkim" / DOMAIN / "mail.rsa.pem"
    os.chown(key, 0, 0)
    out = inst.start_fails(as_service_user=True)
    assert f"[dkim] keys: file not readable by user {SERVICE_USER}: {key}" in out, out
    assert "Traceback" not in out


def test_a_users_file_only_root_can_read_stops_start_up(install):
    inst = install
    prepare_users_and_key(inst)
    os.chown(inst.etc / "users", 0, 0)
    out = inst.start_fails(as_service_user=True)
    assert f"[accounts] users: file not readable by user {SERVICE_USER}: {inst.etc / 'users'}" in out, out
    got = inst.admin("config", "check", ok=False)
    assert got.returncode == 2 and "[accounts] users: file not readable" in got.stderr


def test_a_missing_service_user_is_a_configuration_error(install):
    inst = install
    inst.config.write_text(inst.config.read_text().replace(f'user = "{SERVICE_USER}"', 'user = "no-such-user-xyz"'))
    out = inst.start_fails(as_service_user=False)
    assert "[server] user: no such user 'no-such-user-xyz'" in out and "adduser --system" in out, out


def test_an_admin_command_the_service_user_may_not_run_says_so(install):
    """Run as the service user, ``user add`` cannot rewrite root's users file: a clear refusal."""
    inst = install
    got = subprocess.run(["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups",
                          str(inst.bin / "mailstack"), "--config", str(inst.config), "user", "add", f"carol@{DOMAIN}",
                          "--password-file", "-"], input="carol-password-3\n", capture_output=True, text=True,
                         timeout=60, cwd=inst.base)
    assert got.returncode == 1
    assert got.stderr.strip() == (f"mailstack: Permission denied: {inst.etc / 'users.lock'} (running as user "
                                  f"{SERVICE_USER}: run it as root, or as the user that owns the file)"), got.stderr
    assert "carol" not in (inst.etc / "users").read_text()


def test_old_hashes_in_a_users_file_the_service_cannot_write_are_said_once_and_kept(install):
    """root:mailstack 0640 (as init makes it): no rehash can be stored, so none is made."""
    from argon2 import PasswordHasher

    inst = install
    prepare_users_and_key(inst)
    alice = f"alice@{DOMAIN}"
    old = "{ARGON2ID}" + PasswordHasher(time_cost=2, memory_cost=1024, parallelism=1).hash(PASSWORDS[alice])
    lines = [f"{alice}:{old}" if line.startswith(alice + ":") else line
             for line in (inst.etc / "users").read_text().splitlines()]
    (inst.etc / "users").write_text("\n".join(lines) + "\n")
    before = (inst.etc / "users").read_text()
    ports = inst.start(as_service_user=True)
    try:
        ctx = ssl.create_default_context(cafile=str(inst.etc / "tls" / "ca.pem"))
        for _ in range(2):
            imap = imaplib.IMAP4_SSL("127.0.0.1", ports["listeners"]["imaps"]["port"], ssl_context=ctx, timeout=30)
            imap.login(alice, PASSWORDS[alice])
            imap.logout()
    finally:
        inst.stop()
    log = inst.log_path.read_text()
    assert log.count("is not writable by this service: password hashes with old Argon2 parameters stay") == 1, log
    assert "cannot store a new password hash" not in log
    assert (inst.etc / "users").read_text() == before
