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
    package = f"dovecot-{protocol}d"
    binary = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
    if binary is None or not os.path.exists(f"/usr/lib/dovecot/{protocol}"):
        return None, 0, f"Dovecot's {protocol} server is not installed (apt-get install {package})"
    port = free_port()
    for sub in ("run", "state", "home"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(base / "run", 0o755)  # its auth process must enter it
    (base / "passwd").write_text(f"{user}:{{PLAIN}}{password}::::::\n")
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:  # Dovecot refuses to access mail as root: serve the copy as nobody
        import pwd

        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
        for path in (maildir, base / "home"):
            for dirpath, dirnames, filenames in os.walk(path):
                for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                    os.chown(name, uid, gid)
    extra = ("pop3_uidl_format = %08Xu%08Xv\n" if protocol == "pop3" else "") + extra_config
    config = base / "dovecot.conf"
    config.write_text(f"""\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
instance_name = mailstack-bench-{protocol}
protocols = {protocol}
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
service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {protocol}s {{
    port = 0
  }}
}}
service stats {{
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
    if not wait_port(port) or proc.poll() is not None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        text = (base / "dovecot.out").read_text(errors="replace")
        if (base / "dovecot.log").exists():
            text += (base / "dovecot.log").read_text(errors="replace")
        return None, 0, "dovecot did not start:\n" + text
    return proc, port, ""


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
