"""``[server] workers``: several reactor processes on the same listening sockets (mailstack.workers).

Which process accepts a connection is the kernel's choice, so each test makes it certain by
stopping the other process (SIGSTOP) while it connects: a connection made while the main
process is stopped can only have been accepted by a worker.
"""

from __future__ import annotations

import os
import poplib
import signal
import smtplib
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager

import pytest

from support.servers import PASSWORDS
from support.waiting import wait_for

BOB = "bob@example.test"
MESSAGE = b"From: a@example.net\r\nTo: bob@example.test\r\nSubject: through a worker\r\n\r\nhello\r\n"


def worker_pids(srv) -> list[int]:
    out = subprocess.run(["ps", "--ppid", str(srv.proc.pid), "-o", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "mailstack.workers" in line]


@contextmanager
def stopped(pid: int):
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def start(server_factory, listeners=("smtp", "pop3", "metrics"), workers=2):
    srv = server_factory(listeners=list(listeners), workers=workers).start()
    assert wait_for(lambda: len(worker_pids(srv)) == workers - 1 and "worker 1 serving" in srv.log_text(),
                    timeout=20), srv.log_text()[-3000:]
    return srv


def test_a_worker_accepts_on_the_shared_sockets_and_logs_through_the_main_process(server_factory):
    srv = start(server_factory)
    with stopped(srv.proc.pid):  # only the worker can answer now
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
            s.sendmail("a@example.net", [BOB], MESSAGE)
    assert wait_for(lambda: srv.messages(BOB), timeout=10)[0].endswith(b"hello\r\n")
    assert wait_for(lambda: "status=accepted" in srv.log_text())
    line = next(line for line in srv.log_text().splitlines() if "status=accepted" in line)
    assert "worker 1]" in line, line
    # The worker's metrics reach the main process's /metrics, labelled by process.
    url = f"http://127.0.0.1:{srv.port('metrics')}/metrics"

    def smtp_sessions_of_worker_1():
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return 'mailstack_sessions_total{listener="smtp",worker="1"} 1.0' in text and text

    text = wait_for(smtp_sessions_of_worker_1, timeout=20)
    assert text, "no worker 1 session in /metrics"
    assert 'mailstack_sessions_total{listener="smtp",worker="0"} 0.0' in text
    assert text.count("# TYPE mailstack_sessions_total counter") == 1  # one family, both processes
    assert "mailstack_queue_messages 0.0" in text  # the shared queue, once, unlabelled


def test_pop3_maildrop_lock_holds_across_processes(server_factory):
    srv = start(server_factory)
    (worker,) = worker_pids(srv)
    with stopped(srv.proc.pid):
        first = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=10)
        first.user(BOB)
        first.pass_(PASSWORDS[BOB])  # through the worker
    with stopped(worker):
        second = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=10)
        second.user(BOB)
        with pytest.raises(poplib.error_proto) as e:
            second.pass_(PASSWORDS[BOB])  # through the main process
        assert e.value.args[0].startswith(b"-ERR [IN-USE]"), e.value.args
        second.quit()
    first.quit()
    with stopped(worker):  # released: the main process gives it now
        third = poplib.POP3("127.0.0.1", srv.port("pop3"), timeout=10)
        third.user(BOB)
        assert third.pass_(PASSWORDS[BOB]).startswith(b"+OK")
        third.quit()


def test_a_dead_worker_is_started_again_and_sighup_reaches_the_workers(server_factory):
    srv = start(server_factory, listeners=("smtp",))
    (worker,) = worker_pids(srv)
    os.kill(worker, signal.SIGKILL)
    assert wait_for(lambda: "workers: worker 1 ended" in srv.log_text(), timeout=10), srv.log_text()[-2000:]
    assert wait_for(lambda: (pids := worker_pids(srv)) and pids != [worker] and srv.log_text().count("worker 1 serving") == 2,
                    timeout=20), srv.log_text()[-2000:]
    (worker,) = worker_pids(srv)
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any("worker 1]" in line and "reload" in line for line in srv.log_text().splitlines()),
                    timeout=20), srv.log_text()[-2000:]
    with stopped(srv.proc.pid):  # the new worker serves
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:
            assert s.noop()[0] == 250


def test_workers_end_with_the_main_process_even_by_sigkill(server_factory):
    # A restarted service must find its ports free: no orphan keeps them.
    srv = start(server_factory, listeners=("smtp",), workers=3)
    workers, port = worker_pids(srv), srv.port("smtp")
    assert len(workers) == 2
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)

    def gone():
        for pid in workers:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True

    assert wait_for(gone, timeout=15)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # free again


def test_one_worker_means_one_process(server_factory):
    srv = server_factory(listeners=["smtp"], workers=1).start()
    time.sleep(1)
    assert worker_pids(srv) == []
    assert "workers:" not in srv.log_text()


def test_connection_limits_count_the_sessions_of_every_process(server_factory):
    srv = server_factory(listeners=["smtp"], workers=2,
                         extra="[limits]\nconnections_per_address = 2\n").start()
    assert wait_for(lambda: len(worker_pids(srv)) == 1 and "worker 1 serving" in srv.log_text(), timeout=20)
    (worker,) = worker_pids(srv)
    with stopped(srv.proc.pid):
        held = [smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) for _ in range(2)]  # the worker's
    with stopped(worker):
        with pytest.raises(smtplib.SMTPConnectError) as e:  # the main process's: over the limit
            smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10)
        assert e.value.smtp_code == 421
    held.pop().quit()
    assert wait_for(lambda: "session end smtp" in srv.log_text(), timeout=10)
    with stopped(worker):
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:  # one was freed
            assert s.noop()[0] == 250
    assert wait_for(lambda: srv.log_text().count("session end smtp") >= 2, timeout=10)  # the main process saw it end
    # A worker killed with its sessions: they stop counting once it has ended.
    with stopped(srv.proc.pid):
        more = smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10)  # the worker's second again
    os.kill(worker, signal.SIGKILL)
    assert wait_for(lambda: "workers: worker 1 ended" in srv.log_text(), timeout=10)
    for c in held + [more]:
        c.close()
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as a, \
            smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as b:
        assert a.noop()[0] == 250 and b.noop()[0] == 250


def test_a_worker_started_from_a_file_changed_where_only_a_restart_applies_does_not_serve(server_factory):
    # Otherwise a worker restarted after such an edit would serve, say, another store.
    srv = start(server_factory, listeners=("smtp",))
    (worker,) = worker_pids(srv)
    srv.config_path.write_text(srv.config_path.read_text() + "[dns]\ntimeout = 7.0\n")
    os.kill(worker, signal.SIGKILL)
    assert wait_for(lambda: "has changed in keys that only a restart applies" in srv.log_text(), timeout=20), \
        srv.log_text()[-2000:]
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as s:  # the main process serves on
        assert s.noop()[0] == 250


def test_a_worker_holds_no_log_file_and_outlives_sigusr1(server_factory, tmp_path):
    # logrotate renames the file and signals the unit: a worker holding the old file would
    # keep its disk space, and USR1's default action would end it.
    log_file = tmp_path / "mail.log"
    srv = server_factory(listeners=["smtp"], workers=2, extra=f'[log]\nfile = "{log_file}"\n').start()
    assert wait_for(lambda: len(worker_pids(srv)) == 1 and "worker 1 serving" in log_file.read_text(), timeout=20)
    (worker,) = worker_pids(srv)
    open_files = [os.readlink(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")]
    assert str(log_file) not in open_files
    os.kill(worker, signal.SIGUSR1)
    time.sleep(1)
    assert worker_pids(srv) == [worker]
