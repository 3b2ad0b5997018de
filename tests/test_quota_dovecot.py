"""The ``maildirsize`` file shared with a real Dovecot (its Maildir++ quota backend, the
quota_rule a passwd-file user brings): Dovecot reads the usage mailstack counted and reports
the same over RFC 9208, and what Dovecot appends mailstack reads and checks."""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from mailstack.store import Limits, MaildirStore, QuotaPolicy, check_quota

ADDR = "u@x.test"
DOVECOT_QUOTA = """\
mail_plugins = $mail_plugins quota
protocol imap {
  mail_plugins = $mail_plugins imap_quota
}
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=1M
  quota_rule2 = *:messages=100
}
"""


def quota_store(root: Path) -> MaildirStore:
    store = MaildirStore(str(root / "mail"), fsync=False)
    store.quota = QuotaPolicy(lambda a: Limits(1 << 20, 100), warning_percent=0, fsync=False)
    return store


@pytest.mark.slow
def test_dovecot_and_mailstack_count_in_one_maildirsize(tmp_path):
    from support.ci import on_ci
    from support.dovecot import run_dovecot, stop

    root = Path(tempfile.mkdtemp(prefix="mailstack-quota-dovecot-"))
    os.chmod(root, 0o755)
    try:
        store = quota_store(root)
        for n in range(3):
            store.deliver(ADDR, b"Subject: m%d\r\n\r\n" % n + b"y" * (1500 * (n + 1)) + b"\r\n")
        usage = store.quota_usage(ADDR)
        maildir = Path(store.user_path(ADDR))
        parent = maildir.parent
        while parent != root:
            os.chmod(parent, 0o755)
            parent = parent.parent
        proc, port, why = run_dovecot(root / "dovecot", maildir, ADDR, "pw", "imap", extra_config=DOVECOT_QUOTA)
        if proc is None:
            pytest.fail(why, pytrace=False) if on_ci() else pytest.skip(why)
        try:
            client = imaplib.IMAP4("127.0.0.1", port)
            client.login(ADDR, "pw")
            typ, data = client.getquotaroot("INBOX")
            quota_line = [d for d in data[1] if d][0].decode()
            assert quota_line == f'"User quota" (STORAGE {-(-usage.bytes // 1024)} 1024 MESSAGE 3 100)'
            body = b"Subject: through dovecot\r\n\r\n" + b"z" * 2000 + b"\r\n"
            assert client.append("INBOX", None, None, body)[0] == "OK"
            client.logout()
        finally:
            stop(proc)
        store = quota_store(root)  # a fresh process's view
        after = store.quota_usage(ADDR)
        # Dovecot stores its APPENDs with LF line ends: what it added is the LF size.
        assert (after.messages, after.bytes) == (4, usage.bytes + len(body) - body.count(b"\r\n"))
        report = check_quota(store, ADDR)
        assert report.problems == [] and report.actual == (after.bytes, 4)
        assert re.match(r"^1048576S,100C\n", (maildir / "maildirsize").read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)
