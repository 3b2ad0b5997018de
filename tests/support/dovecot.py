"""Run Dovecot as the reference server for the benchmarks: ``dovecot -F`` with a generated
configuration on a loopback port, over a copy of a Maildir, with one passwd-file user.

Used by the benchmarks (bench/pop3_retr.py, bench/imap_vs_dovecot.py) and by
tests/test_imap_vs_dovecot.py (``apt-get install dovecot-pop3d dovecot-imapd``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def run_dovecot(base: Path, maildir: Path, user: str, password: str, protocol: str,
                extra_config: str = "") -> tuple[subprocess.Popen | None, int, str]:
    """Start Dovecot serving ``protocol`` ("pop3" or "imap"); (process, port, why-not).
    ``extra_config``: more dovecot.conf lines (a benchmark's raised limits)."""
    proc, ports, why = run_dovecot_protocols(base, maildir, user, password, (protocol,), extra_config)
    return proc, ports.get(protocol, 0), why


def run_dovecot_protocols(base: Path, maildir: Path, user: str, password: str, protocols: tuple[str, ...],
                          extra_config: str = "", mail_user: str | None = None,
                          separator: str | None = None) -> tuple[subprocess.Popen | None, dict[str, int], str]:
    """Start one Dovecot serving each of ``protocols``; (process, {protocol: port}, why-not).

    Mail is accessed as ``mail_user`` (a user name) if given, else as whoever runs the tests,
    or as nobody for root (Dovecot refuses root; the Maildir is then chowned to nobody).
    ``separator``: the hierarchy separator clients see (Dovecot's default for Maildir++ is ".")."""
    binary = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
    for protocol in protocols:
        if binary is None or not os.path.exists(f"/usr/lib/dovecot/{protocol}"):
            return None, {}, f"Dovecot's {protocol} server is not installed (apt-get install dovecot-{protocol}d)"
    ports = {protocol: free_port() for protocol in protocols}
    for sub in ("run", "state", "home"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(base / "run", 0o755)  # its auth process must enter it
    (base / "passwd").write_text(f"{user}:{{PLAIN}}{password}::::::\n")
    uid, gid = os.getuid(), os.getgid()
    if mail_user is not None:
        import pwd

        entry = pwd.getpwnam(mail_user)
        uid, gid = entry.pw_uid, entry.pw_gid
        os.chown(base / "home", uid, gid)
    elif uid == 0:  # Dovecot refuses to access mail as root: serve the copy as nobody
        import pwd

        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
        for path in (maildir, base / "home"):
            for dirpath, dirnames, filenames in os.walk(path):
                for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                    os.chown(name, uid, gid)
    extra = ("pop3_uidl_format = %08Xu%08Xv\n" if "pop3" in protocols else "") + extra_config
    if separator is not None:
        extra += f"namespace inbox {{\n  inbox = yes\n  separator = {separator}\n}}\n"
    services = "".join(f"""service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {ports[protocol]}
  }}
  inet_listener {protocol}s {{
    port = 0
  }}
}}
""" for protocol in protocols)
    config = base / "dovecot.conf"
    config.write_text(f"""\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
instance_name = mailstack-test-{base.name}
protocols = {" ".join(protocols)}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:{maildir}
{extra}passdb {{
  driver = passwd-file
  args = {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/home
}}
{services}service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""")
    log = open(base / "dovecot.out", "wb")
    proc = subprocess.Popen([binary, "-F", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    if not all(wait_port(port) for port in ports.values()) or proc.poll() is not None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        text = (base / "dovecot.out").read_text(errors="replace")
        if (base / "dovecot.log").exists():
            text += (base / "dovecot.log").read_text(errors="replace")
        return None, {}, "dovecot did not start:\n" + text
    return proc, ports, ""


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dovecot_on_store_maildir(root: Path, maildir: Path):
    """Dovecot IMAP over one user's Maildir inside a mailstack store under ``root`` (a
    world-enterable directory): the store's directories above the Maildir are opened to
    Dovecot's unprivileged processes; skipped without Dovecot, failed on CI.  Returns
    (process, port); user ``u@x.test``, password ``pw``."""
    import pytest

    from support.ci import on_ci

    parent = maildir.parent
    while parent != root and root in parent.parents:
        os.chmod(parent, 0o755)
        parent = parent.parent
    proc, port, why = run_dovecot(root / "dovecot", maildir, "u@x.test", "pw", "imap")
    if proc is None:
        if on_ci():
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return proc, port


def fill_through_dovecot(port: int, count: int, user: str = "u@x.test", password: str = "pw"):
    """Through Dovecot's IMAP: APPEND ``count`` small messages to INBOX and expunge the second,
    so that message numbers and UIDs differ (UIDs 1, 3, 4, ...).  Returns the logged-in
    imaplib client, INBOX selected."""
    import imaplib

    client = imaplib.IMAP4("127.0.0.1", port)
    client.login(user, password)
    for i in range(count):
        assert client.append("INBOX", None, None, f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())[0] == "OK"
    client.select("INBOX")
    client.store("2", "+FLAGS", "(\\Deleted)")
    client.expunge()
    return client
