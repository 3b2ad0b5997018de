"""The selected-mailbox view (mailstack.imap.view), pure: sequence numbers, SELECT's untagged
responses and the resync after each command, against RFC 3501 2.3.1.2, 6.3.1, 7.3 and 7.4."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.errors import Bad
from mailstack.imap.view import Selected, uid_list, uid_set
from mailstack.store import FolderSnapshot, MessageInfo


def message(uid: int, flags=(), new=False, modseq=1) -> MessageInfo:
    return MessageInfo(uid, f"m{uid}", ("new/" if new else "cur/") + f"m{uid}", frozenset(flags), 100, 0, modseq)


def snapshot(*messages, uidnext=None, modseq=1) -> FolderSnapshot:
    top = max((m.uid for m in messages), default=0)
    return FolderSnapshot("INBOX", 7, uidnext or top + 1, modseq, tuple(messages))


def opened(*messages, readonly=False, recent=()) -> Selected:
    return Selected.opened(object(), readonly, snapshot(*messages), recent)


def test_select_responses_in_rfc_3501_6_3_1_order():
    sel = opened(message(1, ["\\Seen"]), message(2), message(3, ["$Label"]), recent=[3])
    assert sel.select_responses(snapshot(message(1, ["\\Seen"]), message(2), message(3, ["$Label"]))) == [
        b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label)",
        b"OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label \\*)] flags permitted",
        b"3 EXISTS",
        b"1 RECENT",
        b"OK [UNSEEN 2] first unseen message",
        b"OK [UIDVALIDITY 7] UIDs valid",
        b"OK [UIDNEXT 4] predicted next UID",
        b"OK [HIGHESTMODSEQ 1] highest",
    ]


def test_examine_permits_no_flag_changes_and_reports_new_mail_as_recent():
    snap = snapshot(message(1, new=True))
    sel = Selected.opened(object(), True, snap, [])
    lines = sel.select_responses(snap)
    assert b"OK [PERMANENTFLAGS ()] flags permitted" in lines  # RFC 3501 7.1
    assert b"1 RECENT" in lines


def test_expunges_go_out_highest_first_so_each_number_is_right():
    """RFC 3501 6.4.3's example: deleting messages 3, 4, 7 and 11 of 11 may be reported as
    3, 3, 5, 8 (lowest first) -- any order works if each number is right when applied; the
    view sends 11, 7, 4, 3."""
    sel = opened(*(message(u) for u in range(1, 12)))
    remaining = [message(u) for u in range(1, 12) if u not in (3, 4, 7, 11)]
    lines = sel.resync(snapshot(*remaining, uidnext=12), [], 11, True, False, False)
    assert lines == [b"11 EXPUNGE", b"7 EXPUNGE", b"4 EXPUNGE", b"3 EXPUNGE"]
    assert sel.uids == [1, 2, 5, 6, 8, 9, 10]


def test_without_expunge_a_vanished_message_keeps_its_number():
    """RFC 3501 7.4.1: no EXPUNGE during FETCH, STORE or SEARCH."""
    sel = opened(message(1), message(2))
    assert sel.resync(snapshot(message(2), uidnext=3), [], 2, False, False, False) == []
    assert sel.uids == [1, 2]
    assert sel.resolve([(1, 2)], False) == [(1, 1), (2, 2)]


def test_vanished_replaces_expunge_under_qresync():
    sel = opened(message(1), message(2), message(3))
    assert sel.resync(snapshot(message(2), uidnext=4), [], 3, True, True, True) == [b"VANISHED 1,3"]


def test_new_mail_flag_changes_and_new_keywords():
    sel = opened(message(1), message(2))
    snap = snapshot(message(1, ["\\Seen"], modseq=5), message(2), message(3, new=True), modseq=5)
    lines = sel.resync(snap, [3], 2, True, False, True)
    assert lines == [b"1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (5))", b"3 EXISTS", b"1 RECENT"]
    assert sel.flag_bytes(3) == b"(\\Recent)"
    lines = sel.resync(snapshot(message(1, ["\\Seen"]), message(2, ["$Work"]), message(3)), [], 3, True, False, False)
    assert lines[:2] == [b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)",
                         b"OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] flags permitted"]
    assert lines[2] == b"2 FETCH (UID 2 FLAGS ($Work))"


def test_sequence_numbers_past_the_end_are_bad_but_uid_ranges_select_what_exists():
    """RFC 3501 6.4.8: a UID range selects the UIDs that exist; "*" is the highest."""
    sel = opened(message(2), message(5), message(9))
    assert sel.resolve([(3, None)], True) == [(2, 5), (3, 9)]
    assert sel.resolve([(100, 200)], True) == []
    assert sel.resolve([(None, 2)], False) == [(2, 5), (3, 9)]  # "*:2" is "2:*"
    with pytest.raises(Bad):
        sel.resolve([(4, 4)], False)
    assert opened().resolve([(None, None)], False) == []


@given(st.sets(st.integers(1, 300), max_size=60))
def test_uid_sets_round_trip(uids):
    assert uid_list(uid_set(uids)) == sorted(uids) if uids else uid_set(uids) == b""


def test_uid_list_refuses_sets_too_large_to_expand():
    with pytest.raises(Bad):
        uid_list(b"1:4294967295")


def test_reported_flags_read_the_shared_columns_and_keep_changes_apart():
    from mailstack.imap.view import ReportedFlags

    seen, none = frozenset({"\\Seen"}), frozenset()
    uids, flags = [2, 5, 9], [seen, none, seen]
    reported = ReportedFlags(uids, flags)
    assert [reported.get(u) for u in (1, 2, 5, 9, 10)] == [None, seen, none, seen, None]
    assert 5 in reported and 6 not in reported and reported.get(6, "x") == "x"
    reported[5] = seen
    reported[12] = none  # a new message
    assert reported.pop(9) == seen and 9 not in reported and reported.pop(9, "gone") == "gone"
    copy = reported.copy()
    copy[2] = none
    assert (reported.get(5), reported.get(12), reported.get(2), copy.get(2)) == (seen, none, seen, none)
    assert (uids, flags) == ([2, 5, 9], [seen, none, seen])  # the snapshot's columns are never changed


def test_first_unseen_and_keywords_from_the_distinct_flag_sets():
    from mailstack.imap.view import first_unseen, keywords_of
    from mailstack.store.snapshot import FolderSnapshot, MessageInfo

    def snap(*flag_sets):
        return FolderSnapshot("INBOX", 1, len(flag_sets) + 1, 1, tuple(
            MessageInfo(i, f"b{i}", f"cur/b{i}", frozenset(f), 10, 0, 1) for i, f in enumerate(flag_sets, 1)))

    assert first_unseen(snap({"\\Seen"}, {"\\Seen", "$Work"}, set(), {"\\Seen"}, set())) == 3
    assert first_unseen(snap({"\\Seen"}, {"\\Seen"})) is None and first_unseen(snap()) is None
    assert first_unseen(snap({"$Later"})) == 1
    assert keywords_of(snap({"\\Seen"}, {"\\Seen", "$Work"}, {"$Later", "\\Flagged"})) == {"$Work", "$Later"}
