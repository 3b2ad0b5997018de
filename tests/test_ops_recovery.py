"""Recovery after SIGKILL (issue 14 item 19): what a killed writer left in Maildir tmp/
directories is cleared at start-up, and a message whose relay attempt a crash cut short is
logged and counted when it is picked up again (at-least-once delivery made visible)."""

from __future__ import annotations

import json
import os
import smtplib
import time

import pytest

from support.servers import MailServer
from support.waiting import wait_files, wait_for
from test_relay import dns_server, relay_env  # noqa: F401  (fixtures)

DEAD_PID = 2 ** 22 + 12345  # beyond the default pid_max: no such process


def deliver(srv: MailServer, to: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
        s.sendmail("someone@remote.test", [to], f"From: someone@remote.test\r\nSubject: {subject}\r\n\r\nhi\r\n")


def test_start_up_clears_tmp_leftovers_and_keeps_the_rest(server_factory):
    srv = server_factory(listeners=["smtp"]).start()
    deliver(srv, "bob@example.test", "kept")
    bob = srv.store_root / "example.test" / "bob"
    [message] = list((bob / "new").iterdir())
    srv.kill()  # as the adversarial round did
    # The SIGKILL case: the message was linked into its folder, the tmp/ name not yet removed.
    os.link(message, bob / ".Drafts" / "tmp" / message.name)
    os.link(message, bob / "tmp" / message.name)
    (bob / "tmp" / "deleted-0123456789abcdef" / "cur").mkdir(parents=True)  # a DELETE cut short
    fresh = bob / ".Sent" / "tmp" / "1700000000.M1P1Q1R1.host"  # maybe a live writer's: stays
    fresh.write_bytes(b"Subject: half\r\n")
    os.utime(fresh, (0, 0))  # APPEND sets mtime to the internal date: not a sign of age
    srv.start()
    assert wait_for(lambda: "cleared 3 leftover files from tmp/ directories" in srv.log_text()), srv.log_text()
    assert sorted(p.name for p in (bob / "tmp").iterdir()) == []
    assert list((bob / ".Drafts" / "tmp").iterdir()) == []
    assert fresh.exists()
    assert message.exists() and os.stat(message).st_nlink == 1  # the message itself untouched


def test_files_abandoned_longer_than_the_maildir_limit_go(tmp_path):
    from mailstack.store import MaildirStore

    store = MaildirStore(str(tmp_path / "mail"))
    store.mailbox("bob@example.test")
    old = tmp_path / "mail" / "example.test" / "bob" / ".Trash" / "tmp" / "old"
    old.write_bytes(b"x")
    assert store.clear_tmp() == 0  # fresh (ctime now): kept
    assert store.clear_tmp(max_age=-5) == 1  # older than the limit (ctime cannot be set back)
    assert not old.exists()


def test_interrupted_attempt_is_logged_as_a_redelivery(relay_env):
    from mailstack.outbound.queue import OutboundQueue

    make, start_fake, _ = relay_env
    srv = make()  # not started: its queue is prepared as a SIGKILL mid-attempt leaves it
    queue = OutboundQueue(str(srv.base / "queue"))
    qid = queue.enqueue("alice@example.test", ["carol@remote.test"], b"Subject: again\r\n\r\nbody\r\n")
    env = queue.claim(qid)
    env.attempts, env.attempt_started = 1, time.time() - 5
    queue.update(env)
    active = queue.active_path(qid)
    os.rename(active, active.replace(f".{os.getpid()}.json", f".{DEAD_PID}.json"))
    out = start_fake()
    srv.start()
    [eml] = wait_files(out, "*.eml", 1)
    assert b"Subject: again" in eml.read_bytes()
    log = srv.log_text()
    assert wait_for(lambda: f"relay: {qid}: redelivering after interrupted attempt" in srv.log_text()), log
    line = next(l for l in srv.log_text().splitlines() if "redelivering after interrupted attempt" in l)
    assert "1 interrupted for this message, 1 since start-up" in line
    assert wait_for(lambda: f"relay: {qid} done after 2 attempts" in srv.log_text())


def test_an_attempt_writes_its_marker_before_connecting_and_clears_it(relay_env):
    """No fake MX: the attempt fails, the message waits; its envelope must say the attempt
    ended (marker cleared) so a later start does not call it interrupted."""
    make, _, _ = relay_env
    srv = make(retry="[3600]").start()
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=20) as s:
        from support.servers import PASSWORDS

        s.starttls(context=srv.ssl_context())
        s.login("alice@example.test", PASSWORDS["alice@example.test"])
        s.sendmail("alice@example.test", ["carol@remote.test"], b"Subject: w\r\n\r\nx\r\n")
    envs = srv.base / "queue" / "env"
    assert wait_for(lambda: any(json.loads(p.read_text()).get("attempts") == 1 for p in envs.glob("*.json")), timeout=30)
    [env] = [json.loads(p.read_text()) for p in envs.glob("*.json")]
    assert env["attempt_started"] == 0.0 and env["interrupted"] == 0
    srv.stop()
    srv.start()
    time.sleep(1)
    assert "redelivering after interrupted attempt" not in srv.log_text()


def arrived(out) -> list[int | None]:
    """X-Seq of every message the fake MX wrote (None: a file it is still writing)."""
    seqs = []
    for f in out.glob("*.eml"):
        data = f.read_bytes()
        seqs.append(int(data.split(b"X-Seq: ")[1].split(b"\r\n")[0]) if b"\r\n\r\nbody" in data else None)
    return seqs


@pytest.mark.slow
def test_sigkill_while_relaying_every_duplicate_is_a_logged_redelivery(relay_env):
    """The measurement of item 19: SIGKILL the relay mid-flow, start again; each message
    arrives at least once, and a message can only arrive twice if its redelivery was logged."""
    import subprocess
    import sys

    from support.servers import PASSWORDS, env_with_tree

    total = 150
    make, start_fake, _ = relay_env
    srv = make(retry="[3600]").start()
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=30) as s:
        s.starttls(context=srv.ssl_context())
        s.login("alice@example.test", PASSWORDS["alice@example.test"])
        for i in range(total):
            s.sendmail("alice@example.test", ["carol@remote.test"], f"Subject: n{i}\r\nX-Seq: {i}\r\n\r\nbody {i}\r\n".encode())
    assert wait_for(lambda: len(list((srv.base / "queue" / "msg").iterdir())) >= total)
    srv.kill()
    out = start_fake()
    flush = [sys.executable, "-m", "mailstack.cli", "--config", str(srv.config_path), "queue", "flush"]
    assert subprocess.run(flush, capture_output=True, env=env_with_tree()).returncode == 0
    srv.start()  # everything is due: the relay sends at once
    assert wait_for(lambda: len(list(out.glob("*.eml"))) >= 20, timeout=60, interval=0.005)
    srv.kill()
    before_restart = len(list(out.glob("*.eml")))
    assert subprocess.run(flush, capture_output=True, env=env_with_tree()).returncode == 0
    srv.start()
    assert wait_for(lambda: len(set(arrived(out)) - {None}) == total, timeout=120)
    assert wait_for(lambda: not list((srv.base / "queue" / "env").iterdir()), timeout=60)
    assert wait_for(lambda: None not in arrived(out))  # the receiver finished writing
    seqs = arrived(out)
    duplicates = len(seqs) - len(set(seqs))
    redelivered = srv.log_text().count("redelivering after interrupted attempt")
    print(f"{total} messages, killed after {before_restart} arrived: {duplicates} delivered twice, "
          f"{redelivered} logged redeliveries")
    assert set(seqs) == set(range(total))
    assert duplicates <= redelivered


def test_recovery_clears_a_claimed_envelope_half_written_by_a_dead_process(tmp_path):
    """SIGKILL inside atomic_write of a claimed envelope (the attempt marker, a progress
    update) leaves active/<id>.<host>.<pid>.json.<random>.tmp: gone at the next start, not
    an hour later; a live writer's stays."""
    from mailstack.outbound.queue import OutboundQueue

    q = OutboundQueue(str(tmp_path / "q"), fsync=False)
    dead = tmp_path / "q" / "active" / f"abc.{q.host}.{DEAD_PID}.json.0a1b2c3d4e5f.tmp"
    dead.write_bytes(b'{"id": ')
    live = tmp_path / "q" / "active" / f"abd.{q.host}.{os.getppid()}.json.0a1b2c3d4e5f.tmp"
    live.write_bytes(b'{"id": ')
    q.recover()
    assert not dead.exists() and live.exists()
