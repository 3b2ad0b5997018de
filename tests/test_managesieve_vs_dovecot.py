"""ManageSieve against Dovecot's (Pigeonhole's ``managesieve``, ``apt-get install
dovecot-managesieved``) in the same test: the same commands get the same kind of answer and the
same RFC 5804 response code, and the scripts on disk are each other's (Dovecot's layout:
``sieve/NAME.sieve`` and the ``.dovecot.sieve`` link, so a user moving from Dovecot keeps them)."""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support.ci import on_ci
from support.dovecot import free_port, stop, wait_port
from support.servers import PASSWORDS
from test_managesieve import Client as MailstackClient

pytestmark = pytest.mark.slow

BOB = "bob@example.test"
MANAGESIEVE = "/usr/lib/dovecot/managesieve"


def run_pigeonhole(base: Path, home: Path, user: str, password: str) -> tuple[subprocess.Popen, int]:
    """Dovecot serving ManageSieve for one user whose home (and Maildir) is ``home``, with the
    scripts where mailstack keeps them; as root the files are handed to nobody (Dovecot refuses root)."""
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not (os.path.exists(binary) and os.path.exists(MANAGESIEVE)):
        why = "Dovecot's ManageSieve is not installed (apt-get install dovecot-managesieved)"
        if on_ci():
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    port = free_port()
    for sub in ("run", "state"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(base / "run", 0o755)
    (base / "passwd").write_text(f"{user}:{{PLAIN}}{password}::::::\n")
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
        chown_tree(home, uid, gid)
        parent = home.parent
        while parent != Path("/"):  # Dovecot's unprivileged processes must reach the home
            os.chmod(parent, os.stat(parent).st_mode | 0o005)
            parent = parent.parent
    (base / "dovecot.conf").write_text(f"""\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
instance_name = mailstack-sieve-{base.name}
protocols = sieve
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:~
passdb {{
  driver = passwd-file
  args = {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
  sieve_max_script_size = 64K
  sieve_quota_max_scripts = 16
}}
service managesieve-login {{
  inet_listener sieve {{
    address = 127.0.0.1
    port = {port}
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
    out = open(base / "dovecot.out", "wb")
    proc = subprocess.Popen([binary, "-F", "-c", str(base / "dovecot.conf")], stdout=out, stderr=subprocess.STDOUT)
    if not wait_port(port) or proc.poll() is not None:
        stop(proc) if proc.poll() is None else None
        pytest.fail("dovecot did not start:\n" + (base / "dovecot.out").read_text(errors="replace"))
    return proc, port


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


class DovecotClient(MailstackClient):
    def __init__(self, port: int):  # the same conversation, another server
        from support.clients import LineClient

        LineClient.__init__(self, port)
        self.greeting = self.response()


def dovecot_login(port: int) -> DovecotClient:
    """A logged-in session with Dovecot; its auth process may still be starting (TRYLATER)."""
    for _ in range(50):
        c = DovecotClient(port)
        if ask(c, LOGIN) == b"OK":
            return c
        c.close()
        time.sleep(0.1)
    raise AssertionError("Dovecot's ManageSieve refused the login")


LOGIN = b'AUTHENTICATE "PLAIN" "' + base64.b64encode(f"\0{BOB}\0{PASSWORDS[BOB]}".encode()) + b'"'


def ask(c, command) -> bytes:
    """What RFC 5804 fixes of a reply: the data before the response line, and of that line
    OK/NO/BYE and the response code; the human-readable text is each server's own."""
    reply = c.cmd(command)
    m = re.match(rb"(OK|NO|BYE)( \([^)]*\))?", c.final)
    data = reply[: len(reply) - len(c.final) - 2]
    if command == b"LISTSCRIPTS":  # RFC 5804 2.7 gives no order (Dovecot's is the directory's)
        data = b"".join(sorted(line + b"\r\n" for line in data.split(b"\r\n") if line))
    return data + m.group(0)

SCRIPT = b'require ["fileinto"];\r\nif header :contains "subject" "[list]" {\r\n  fileinto "Lists";\r\n}\r\n'
BAD = b"#comment\r\nInvalidSieveCommand\r\n"
SEQUENCE = [
    b"LISTSCRIPTS",
    b'PUTSCRIPT "rules" {%d+}\r\n' % len(SCRIPT) + SCRIPT,
    b'PUTSCRIPT "bad" {%d+}\r\n' % len(BAD) + BAD,
    b'PUTSCRIPT "vacation" {5+}\r\nkeep;',
    b"LISTSCRIPTS",
    b'SETACTIVE "rules"',
    b"LISTSCRIPTS",
    b'SETACTIVE "nosuch"',
    b'GETSCRIPT "rules"',
    b'GETSCRIPT "nosuch"',
    b'HAVESPACE "rules" 100',
    b'HAVESPACE "rules" 9999999',
    b'DELETESCRIPT "rules"',
    b'DELETESCRIPT "nosuch"',
    b'RENAMESCRIPT "vacation" "rules"',
    b'RENAMESCRIPT "nosuch" "other"',
    b'RENAMESCRIPT "rules" "main"',
    b"LISTSCRIPTS",
    b"CHECKSCRIPT {%d+}\r\n" % len(BAD) + BAD,
    b"CHECKSCRIPT {5+}\r\nkeep;",
    b'SETACTIVE ""',
    b"LISTSCRIPTS",
    b'DELETESCRIPT "vacation"',
    b"LISTSCRIPTS",
]


def test_the_same_commands_get_the_same_answers_as_dovecot(inproc_server_factory, tmp_path):
    srv = inproc_server_factory(listeners=["managesieve"]).start()
    home = tmp_path / "dovecot-home"
    home.mkdir()
    proc, port = run_pigeonhole(tmp_path / "dovecot", home, BOB, PASSWORDS[BOB])
    try:
        ours, theirs = MailstackClient(srv), dovecot_login(port)
        assert ask(ours, LOGIN) == b"OK"
        for command in SEQUENCE:
            assert ask(ours, command) == ask(theirs, command), command
        # the data the replies carry is the same bytes, not only the same shape
        command = b'PUTSCRIPT {13+}\r\nclever"script {5+}\r\nkeep;'
        assert ask(ours, command) == ask(theirs, command) == b"OK"
        assert ask(ours, b'GETSCRIPT "main"') == ask(theirs, b'GETSCRIPT "main"') == \
            b"{%d}\r\n" % len(SCRIPT) + SCRIPT + b"\r\nOK"
        # A name with a double quote: both forms are RFC 5804 4 strings; mailstack sends the
        # literal of section 2.7's example, Dovecot an escaped quoted string.
        assert ours.cmd(b"LISTSCRIPTS") == b'{13}\r\nclever"script\r\n"main"\r\nOK\r\n'
        assert ask(theirs, b"LISTSCRIPTS") == b'"clever\\"script"\r\n"main"\r\nOK'
    finally:
        stop(proc)


def test_scripts_move_between_mailstack_and_dovecot(inproc_server_factory, tmp_path):
    """mailstack's scripts are Dovecot's and the other way round: the same directory, each
    server listing, reading and switching what the other stored."""
    srv = inproc_server_factory(listeners=["managesieve"]).start()
    ours = MailstackClient(srv)
    assert ours.cmd(LOGIN) == b'OK "logged in"\r\n'
    assert ours.cmd(b'PUTSCRIPT "rules" {%d+}\r\n' % len(SCRIPT) + SCRIPT) == b"OK\r\n"
    assert ours.cmd(b'PUTSCRIPT "other" {5+}\r\nkeep;') == b"OK\r\n"
    assert ours.cmd('SETACTIVE "rules"') == b"OK\r\n"
    proc, port = run_pigeonhole(tmp_path / "dovecot", srv.maildir(BOB), BOB, PASSWORDS[BOB])
    try:
        theirs = dovecot_login(port)
        assert ask(theirs, b"LISTSCRIPTS") == b'"other"\r\n"rules" ACTIVE\r\nOK'
        assert theirs.cmd('GETSCRIPT "rules"').startswith(b"{%d}\r\n" % len(SCRIPT) + SCRIPT + b"\r\nOK")
        assert ask(theirs, b'PUTSCRIPT "fromdovecot" {6+}\r\nstop;\n') == b"OK"
        assert ask(theirs, 'SETACTIVE "fromdovecot"') == b"OK"
        assert ask(theirs, 'DELETESCRIPT "other"') == b"OK"
    finally:
        stop(proc)
    assert ours.cmd("LISTSCRIPTS") == b'"fromdovecot" ACTIVE\r\n"rules"\r\nOK\r\n'
    assert ours.cmd('GETSCRIPT "fromdovecot"') == b"{6}\r\nstop;\n\r\nOK\r\n"
    assert os.readlink(srv.maildir(BOB) / ".dovecot.sieve") == "sieve/fromdovecot.sieve"
    assert ours.cmd('DELETESCRIPT "rules"') == b"OK\r\n"  # Dovecot's compiled .svbin files are not scripts
    assert ours.cmd("LISTSCRIPTS") == b'"fromdovecot" ACTIVE\r\nOK\r\n'
