"""Folder change notification with a real reactor: inotify and the polling fallback.

The store promises subscribers news of a change made in this process at once, and of one
made by another process within 2 seconds.  Each case runs in its own process, because the
reactor cannot be restarted inside pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.servers import env_with_tree

PROBE = r'''
import json, subprocess, sys, time
from twisted.internet import reactor, threads
from mailstack.store import MaildirStore
from mailstack.store.watch import FolderWatcher

root, mode = sys.argv[1], sys.argv[2]
store = MaildirStore(root)
folder = store.mailbox("bob@example.test").folder("INBOX")
watcher = FolderWatcher(store, reactor, poll_interval=1.0, use_inotify=(mode == "inotify"))
events = []
watcher.subscribe(folder.path, lambda: events.append(time.time()))
result = {}

OTHER = "import sys, time; from mailstack.store import MaildirStore; " \
        "MaildirStore(sys.argv[1]).deliver('bob@example.test', b'Subject: other\\r\\n\\r\\nx\\r\\n'); print(time.time())"

def wait_for_event(after, key, then):
    deadline = time.time() + 5
    def check():
        seen = [t for t in events if t >= after]
        if seen:
            result[key] = seen[0] - after
            then()
        elif time.time() > deadline:
            result[key] = None
            then()
        else:
            reactor.callLater(0.01, check)
    check()

def in_process():
    t0 = time.time()
    threads.deferToThread(store.deliver, "bob@example.test", b"Subject: same\r\n\r\nx\r\n").addCallback(
        lambda _: wait_for_event(t0, "in_process", other_process))

def other_process():
    events.clear()
    def spawn():
        out = subprocess.run([sys.executable, "-c", OTHER, root], capture_output=True, text=True, check=True)
        return float(out.stdout.strip())
    threads.deferToThread(spawn).addCallback(lambda done_at: wait_for_event(done_at - 0.05, "other_process", finish)
                                             ).addErrback(lambda f: (print(f.getTraceback(), file=sys.stderr), reactor.stop()))

def finish():
    result["snapshot"] = len(folder.snapshot().messages)
    print(json.dumps(result), flush=True)
    reactor.stop()

reactor.callWhenRunning(in_process)
reactor.run()
'''


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_subscribers_hear_of_changes(tmp_path, mode):
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), mode], capture_output=True, text=True,
                         timeout=60, env=env_with_tree())
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["in_process"] is not None and result["in_process"] < 1.0, result
    assert result["other_process"] is not None and result["other_process"] < 2.0, result
    assert result["snapshot"] == 2
