"""The users' Sieve scripts on disk (mailstack.sieve.scripts), the [sieve] limits, and the
``mailstack sieve`` admin command: Dovecot/Pigeonhole's layout, atomic changes, the limits."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from support.servers import MailServer, env_with_tree
from mailstack import config
from mailstack.errors import ConfigError
from mailstack.sieve.scripts import (BadScriptName, QuotaExceeded, ScriptActive, ScriptExists, ScriptNotFound,
                                     ScriptStore, check_name)


@pytest.fixture
def store(tmp_path) -> ScriptStore:
    return ScriptStore(str(tmp_path / "bob"), max_size=100, max_scripts=3, fsync=False)


def test_put_list_activate_in_dovecots_layout(store, tmp_path):
    assert store.list() == [] and store.active_name() is None
    store.put("vacation", b"keep;\n")
    store.put("main", b"stop;\n")
    store.activate("vacation")
    assert store.list() == [("main", False), ("vacation", True)]
    user = tmp_path / "bob"
    assert os.readlink(user / ".dovecot.sieve") == "sieve/vacation.sieve"
    assert (user / ".dovecot.sieve").read_bytes() == b"keep;\n"  # what delivery reads, following the link
    assert (user / "sieve").stat().st_mode & 0o777 == 0o700
    assert (user / "sieve" / "main.sieve").stat().st_mode & 0o777 == 0o600
    store.put("vacation", b"discard;\n")  # replaced, still active
    assert store.active_name() == "vacation" and (user / ".dovecot.sieve").read_bytes() == b"discard;\n"
    assert sorted(os.listdir(user / "sieve")) == [".lock", "main.sieve", "vacation.sieve"]  # no temporary file left
    store.activate("")
    assert not os.path.lexists(user / ".dovecot.sieve") and store.active_name() is None
    store.activate("")  # nothing active: still fine


def test_refusals(store):
    store.put("a", b"keep;")
    store.activate("a")
    with pytest.raises(ScriptActive):
        store.delete("a")  # RFC 5804 2.10
    with pytest.raises(ScriptNotFound):
        store.delete("nope")
    with pytest.raises(ScriptNotFound):
        store.get("nope")
    with pytest.raises(ScriptNotFound):
        store.activate("nope")
    store.put("b", b"keep;")
    with pytest.raises(ScriptExists):
        store.rename("a", "b")
    with pytest.raises(QuotaExceeded) as e:
        store.put("c", b"#" * 101)
    assert e.value.code == "QUOTA/MAXSIZE"
    store.put("c", b"#" * 100)
    with pytest.raises(QuotaExceeded) as e:
        store.put("d", b"keep;")
    assert e.value.code == "QUOTA/MAXSCRIPTS"
    store.put("c", b"keep;")  # replacing is not one more


def test_rename_keeps_the_active_script_active(store, tmp_path):
    store.put("old", b"keep;")
    store.activate("old")
    store.rename("old", "new")
    assert store.list() == [("new", True)]
    assert os.readlink(tmp_path / "bob" / ".dovecot.sieve") == "sieve/new.sieve"
    store.rename("new", "new")  # to itself: nothing happens


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "a\x00b", "a\nb", "a\x7fb", "a\u0085b", "a\u2028b",
                                  "x" * 129, "\u00e9" * 120])
def test_bad_names(name):
    with pytest.raises(BadScriptName):
        check_name(name)


def test_names_are_nfc():
    assert check_name("cafe\u0301") == "caf\u00e9"  # RFC 5804 1.6: Net-Unicode (RFC 5198) is NFC


def test_a_hand_written_dovecot_sieve_is_taken_over(store, tmp_path):
    """A regular .dovecot.sieve (an admin's) is active; the first change moves it into sieve/."""
    user = tmp_path / "bob"
    user.mkdir()
    (user / ".dovecot.sieve").write_bytes(b"keep;\n")
    assert store.active_name() == "dovecot.orig" and store.list() == [("dovecot.orig", True)]
    assert store.get("dovecot.orig") == b"keep;\n"
    store.put("other", b"stop;")
    assert os.readlink(user / ".dovecot.sieve") == "sieve/dovecot.orig.sieve"
    assert store.list() == [("dovecot.orig", True), ("other", False)]


def test_links_that_are_not_ours_are_not_active(store, tmp_path):
    user = tmp_path / "bob"
    user.mkdir()
    os.symlink("/etc/passwd", user / ".dovecot.sieve")
    assert store.active_name() is None
    os.unlink(user / ".dovecot.sieve")
    os.symlink("sieve/gone.sieve", user / ".dovecot.sieve")
    assert store.active_name() is None  # dangling


def test_delivery_never_sees_no_active_script_while_it_is_switched(store, tmp_path):
    """Each switch of the active script is one rename over the link: a reader sees the old or
    the new script, never none."""
    store.put("a", b"A")
    store.put("b", b"B")
    store.activate("a")
    link = tmp_path / "bob" / ".dovecot.sieve"
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            try:
                seen.add(link.read_bytes())
            except FileNotFoundError:
                seen.add(None)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(300):
        store.activate("b" if i % 2 == 0 else "a")
    store.rename("a", "c")
    stop.set()
    reader.join()
    assert seen <= {b"A", b"B"} and None not in seen


# -- [sieve] in the configuration ------------------------------------------------------------


@pytest.mark.parametrize("text, key", [("max_script_size = 0", "[sieve] max_script_size"),
                                        ("max_script_size = 99999999", "[sieve] max_script_size"),
                                        ("max_scripts = 0", "[sieve] max_scripts"),
                                        ('max_scripts = "3"', "[sieve] max_scripts")])
def test_sieve_limits_are_checked(tmp_path, text, key):
    base = MailServer(tmp_path, listeners=["managesieve"], extra=f"[sieve]\n{text}\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(base.config_path))
    assert key in str(e.value) and str(base.config_path) in str(e.value)


def test_sieve_limits_defaults(tmp_path):
    cfg = config.load(str(MailServer(tmp_path, listeners=["managesieve"]).config_path))
    assert cfg.sieve_limits == {"max_script_size": 65536, "max_scripts": 16}
    assert cfg.listener("managesieve").tls == "starttls"


# -- mailstack sieve ... ---------------------------------------------------------------------


@pytest.mark.slow
def test_cli_round_trip(tmp_path):
    srv = MailServer(tmp_path, listeners=["managesieve"])

    def cli(*args, stdin: bytes = b""):
        return subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(srv.config_path), "sieve", *args],
                              input=stdin, capture_output=True, env=env_with_tree())

    bob = "bob@example.test"
    script = tmp_path / "rules.sieve"
    script.write_bytes(b'require "fileinto";\nif header :contains "subject" "x" { fileinto "X"; }\n')
    assert cli("list", bob).stdout == b""
    done = cli("put", bob, "rules", str(script))
    assert (done.returncode, done.stdout) == (0, b"stored rules\n")
    done = cli("put", "--activate", bob, "vacation", stdin=b"keep;\n")
    assert (done.returncode, done.stdout) == (0, b"stored vacation (active)\n")
    assert cli("list", bob).stdout == b"rules\nvacation (active)\n"
    assert cli("get", bob, "rules").stdout == script.read_bytes()
    assert cli("check", bob).stdout == b"valid: vacation\n"
    assert cli("check", bob, str(script)).stdout == f"valid: {script}\n".encode()
    assert cli("activate", bob, "rules").stdout == b"active: rules\n"
    done = cli("delete", bob, "rules")
    assert done.returncode == 1 and b"the active script cannot be deleted" in done.stderr and b"(ACTIVE)" in done.stderr
    assert cli("deactivate", bob).stdout == b"no script is active\n"
    assert cli("delete", bob, "rules").stdout == b"deleted rules\n"
    assert cli("list", bob).stdout == b"vacation\n"
    assert sorted(os.listdir(srv.maildir(bob) / "sieve")) == [".lock", "vacation.sieve"]
    done = cli("get", bob, "nope")
    assert done.returncode == 1 and b"no script named 'nope'" in done.stderr and b"(NONEXISTENT)" in done.stderr
    done = cli("list", "nobody@example.test")
    assert done.returncode == 1 and b"no such user" in done.stderr
    done = cli("get", bob)
    assert done.returncode == 1 and b"usage: mailstack sieve get USER NAME" in done.stderr
    done = cli("put", bob, "huge", stdin=b"#" * 70000)
    assert done.returncode == 1 and b"too large" in done.stderr and b"QUOTA/MAXSIZE" in done.stderr


def test_sieve_limits_apply_on_reload(tmp_path):
    """SIGHUP: [sieve] max_script_size and max_scripts apply to the next ManageSieve sessions."""
    from mailstack import reconfigure

    base = MailServer(tmp_path, listeners=["managesieve"])
    old = config.load(str(base.config_path))
    base.config_path.write_text(base.config_path.read_text() + "[sieve]\nmax_script_size = 1000\nmax_scripts = 2\n")
    new = config.load(str(base.config_path))
    live = [c for c in reconfigure.changed_keys(old, new) if reconfigure.is_live(old, new, *c)]
    assert live == [("sieve", "max_script_size"), ("sieve", "max_scripts")]
    assert reconfigure.merge(old, new, live).sieve_limits == {"max_script_size": 1000, "max_scripts": 2}


def test_imap_folders_named_dovecot_leave_the_active_script_alone(tmp_path):
    """The active link ``.dovecot.sieve`` sits among the Maildir++ folders (``.dovecot`` is the
    folder "dovecot"): renaming that folder must not carry the link along, and the folder
    "dovecot/sieve" cannot be made over it."""
    from mailstack.errors import InvalidFolderName
    from mailstack.store import MaildirStore

    mailbox = MaildirStore(str(tmp_path), fsync=False).mailbox("bob@example.test")
    scripts = ScriptStore(mailbox.path, fsync=False)
    scripts.put("main", b"keep;")
    scripts.activate("main")
    mailbox.create_folder("dovecot")
    mailbox.rename_folder("dovecot", "other")
    assert scripts.active_name() == "main" and not os.path.lexists(os.path.join(mailbox.path, ".other.sieve"))
    with pytest.raises(InvalidFolderName):
        mailbox.create_folder("dovecot/sieve")
    assert scripts.active_name() == "main"
    assert "dovecot/sieve" not in [f.name for f in mailbox.list_folders()]
    # start-up's clearing of tmp/ directories steps over the link (it failed on it, for every user after)
    assert MaildirStore(str(tmp_path), fsync=False).clear_tmp() == 0
