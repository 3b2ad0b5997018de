"""End to end with ``sieve-connect`` (a ManageSieve client in Perl, ``apt-get install
sieve-connect``): STARTTLS with the dev CA verified, AUTHENTICATE PLAIN, then the commands an
administrator or a user's script runs, against a real ``twistd``."""

from __future__ import annotations

import os
import subprocess

import pytest

from support.servers import PASSWORDS

BOB = "bob@example.test"
RULES = b'require "fileinto";\nif header :contains "subject" "[list]" { fileinto "Lists"; }\n'
CLIENT_TIMEOUT = 60


def sieve_connect(srv, tmp_path, commands: str) -> subprocess.CompletedProcess:
    """Run ``commands`` (sieve-connect's --exec script) as bob; the password on a pipe, never argv."""
    script = tmp_path / "commands"
    script.write_text(commands)
    read, write = os.pipe()
    os.write(write, PASSWORDS[BOB].encode() + b"\n")
    os.close(write)
    try:
        return subprocess.run(
            ["sieve-connect", "--server", "127.0.0.1", "--port", str(srv.port("managesieve")), "--user", BOB,
             "--passwordfd", str(read), "--authmech", "PLAIN", "--tlscafile", srv.ca_file, "--tlshostname", "localhost",
             "--noclearauth", "--exec", str(script)],
            capture_output=True, timeout=CLIENT_TIMEOUT, stdin=subprocess.DEVNULL, pass_fds=(read,), cwd=tmp_path)
    finally:
        os.close(read)


@pytest.mark.slow
def test_sieve_connect_uploads_activates_lists_downloads_and_deletes(e2e_server, require, tmp_path):
    require("sieve-connect")
    srv = e2e_server(listeners=["managesieve"]).start()
    (tmp_path / "rules.sieve").write_bytes(RULES)
    done = sieve_connect(srv, tmp_path, "put rules.sieve rules\nactivate rules\nlist\nget rules got.sieve\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == b'"rules" ACTIVE\n\n'  # sieve-connect prints LISTSCRIPTS' lines
    assert (tmp_path / "got.sieve").read_bytes() == RULES
    assert os.readlink(srv.maildir(BOB) / ".dovecot.sieve") == "sieve/rules.sieve"
    done = sieve_connect(srv, tmp_path, "delete rules\n")
    assert done.returncode != 0 and b"active" in (done.stdout + done.stderr).lower()  # NO (ACTIVE)
    done = sieve_connect(srv, tmp_path, "deactivate\ndelete rules\nlist\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (srv.maildir(BOB) / "sieve" / "rules.sieve").exists()
    (tmp_path / "bad.sieve").write_bytes(b"#comment\nInvalidSieveCommand\n")
    done = sieve_connect(srv, tmp_path, "put bad.sieve bad\n")
    assert done.returncode != 0 and b"line 2, column " in done.stdout + done.stderr, done.stdout + done.stderr
