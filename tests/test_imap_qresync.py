"""QRESYNC (RFC 7162 3.2) against a real twistd process, over a raw socket (neither imaplib
nor imapclient speaks it): ENABLE, SELECT with QRESYNC parameters, VANISHED (EARLIER), the
VANISHED FETCH modifier, VANISHED instead of EXPUNGE, and [CLOSED]."""

from __future__ import annotations

import re

from test_imap import BOB, deliver, message, raw_login


def modseq_of(lines: list[bytes]) -> int:
    for line in lines:
        m = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(lines)


def uidvalidity_of(lines: list[bytes]) -> int:
    for line in lines:
        m = re.search(rb"\[UIDVALIDITY (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(lines)


def test_qresync_resynchronises_a_client(server_factory):
    srv = server_factory(listeners=["imap"]).start()
    uids = deliver(srv, *(message(n) for n in range(1, 7)))
    r = raw_login(srv)
    caps = r.cmd(b"c", b"CAPABILITY")
    assert b" QRESYNC" in caps[0] and b" CONDSTORE" in caps[0]
    # Not enabled yet: the SELECT parameter is refused.
    assert r.cmd(b"s0", b"SELECT INBOX (QRESYNC (1 1))")[-1].startswith(b"s0 BAD")
    assert r.cmd(b"e", b"ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC"
    first = r.cmd(b"s1", b"SELECT INBOX")
    validity, since = uidvalidity_of(first), modseq_of(first)
    r.close()

    # Another session changes things while "our" client is away.
    other = raw_login(srv)
    other.cmd(b"e", b"ENABLE QRESYNC")
    other.cmd(b"s", b"SELECT INBOX")
    assert other.cmd(b"f", b"UID STORE %d +FLAGS (\\Flagged)" % uids[1])[-1].startswith(b"f OK")
    assert other.cmd(b"d", b"UID STORE %d,%d +FLAGS.SILENT (\\Deleted)" % (uids[2], uids[4]))[-1].startswith(b"d OK")
    expunged = other.cmd(b"x", b"EXPUNGE")
    # With QRESYNC enabled, expunges are VANISHED (UIDs), not EXPUNGE (sequence numbers).
    assert b"* VANISHED %d,%d" % (uids[2], uids[4]) in expunged, expunged
    assert not any(line.endswith(b" EXPUNGE") for line in expunged)
    other.close()
    (new_uid,) = deliver(srv, message(7))

    r = raw_login(srv)
    r.cmd(b"e", b"ENABLE QRESYNC")
    lines = r.cmd(b"s2", b"SELECT INBOX (QRESYNC (%d %d))" % (validity, since))
    assert lines[-1].startswith(b"s2 OK"), lines
    assert b"* VANISHED (EARLIER) %d,%d" % (uids[2], uids[4]) in lines, lines
    fetches = [line for line in lines if b" FETCH " in line]
    assert len(fetches) == 2, lines  # the flagged message and the new one (its MODSEQ is new too)
    assert any(b"UID %d " % uids[1] in line and b"\\Flagged" in line and b"MODSEQ (" in line for line in fetches)
    assert any(b"UID %d " % new_uid in line for line in fetches)
    # known-uids limits what is reported.
    r.cmd(b"u", b"UNSELECT")
    lines = r.cmd(b"s3", b"SELECT INBOX (QRESYNC (%d %d %d:%d))" % (validity, since, uids[0], uids[3]))
    assert b"* VANISHED (EARLIER) %d" % uids[2] in lines, lines
    assert [line for line in lines if b" FETCH " in line and b"UID %d " % uids[1] in line]
    assert not [line for line in lines if b"UID %d " % new_uid in line]
    # A wrong UIDVALIDITY: a plain SELECT, nothing to resync.
    lines = r.cmd(b"s4", b"SELECT INBOX (QRESYNC (%d %d))" % (validity + 1, since))
    assert lines[0] == b"* OK [CLOSED] previous mailbox closed"
    assert not [line for line in lines if b"VANISHED" in line or b" FETCH " in line]
    # UID FETCH with the VANISHED modifier.
    lines = r.cmd(b"f", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % since)
    assert lines[0] == b"* VANISHED (EARLIER) %d,%d" % (uids[2], uids[4]), lines
    assert len([line for line in lines if line.startswith(b"* ") and b" FETCH (" in line]) == 2
    assert r.cmd(b"g", b"FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")[-1].startswith(b"g BAD")
    r.close()


def test_qresync_after_the_uid_log_was_compacted(server_factory):
    """Once the log forgets expunge MODSEQs, every missing UID is reported (RFC 7162 3.2.5.1)."""
    srv = server_factory(listeners=["imap"]).start()
    uids = deliver(srv, *(message(n) for n in range(1, 5)))
    r = raw_login(srv)
    r.cmd(b"e", b"ENABLE QRESYNC")
    lines = r.cmd(b"s", b"SELECT INBOX")
    validity, since = uidvalidity_of(lines), modseq_of(lines)
    r.cmd(b"d", b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uids[0])
    r.cmd(b"x", b"EXPUNGE")
    r.close()
    srv.stop()
    from mailstack.store import MaildirStore

    folder = MaildirStore(str(srv.store_root)).mailbox(BOB).folder("INBOX")
    with folder.locked():
        folder.uidlist.refresh()
        folder.uidlist.rewrite()  # as compaction does
    srv.start()
    r = raw_login(srv)
    r.cmd(b"e", b"ENABLE QRESYNC")
    lines = r.cmd(b"s", b"SELECT INBOX (QRESYNC (%d %d))" % (validity, since))
    assert b"* VANISHED (EARLIER) %d" % uids[0] in lines, lines
    # A client that is up to date hears nothing.
    now = modseq_of(lines)
    lines = r.cmd(b"s2", b"SELECT INBOX (QRESYNC (%d %d))" % (validity, now))
    assert not [line for line in lines if b"VANISHED" in line or b" FETCH " in line], lines
    r.close()
