"""SEARCHRES (RFC 5182), ESORT and CONTEXT=SEARCH/SORT with PARTIAL (RFC 5267), exact replies.

Fast: the service runs in this process.  Each test names the RFC section it follows.
"""

from __future__ import annotations

import pytest

from support.clients import ImapClient

from mailstack.imap import results


@pytest.fixture(params=["IMAP4rev1", "IMAP4rev2"])
def srv(request, inproc_server_factory):
    """The server; every session of the test speaks the mode of the parameter (RFC 9051 6.3.1)."""
    server = inproc_server_factory(listeners=["imap"], extra="[auth]\nfailure_delay = 0.0\n").start()
    server.imap_mode = request.param
    return server


def session(srv) -> ImapClient:
    c = ImapClient(srv.port("imap"))
    c.login()
    if srv.imap_mode == "IMAP4rev2":
        c.enable_rev2()
    return c


def append(c: ImapClient, message: bytes) -> None:
    c.send(b"A APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
    assert c.until(b"A")[-1].startswith(b"A OK"), message


#: Subjects in arrival order: sorting by subject gives 3 5 1 4 2 (apple, banana, cherry, date, fig).
SUBJECTS = [b"cherry", b"fig", b"apple", b"date", b"banana"]


def five(srv) -> ImapClient:
    """INBOX with five messages, 2, 3 and 5 flagged; selected."""
    c = session(srv)
    for subject in SUBJECTS:
        append(c, b"Subject: " + subject + b"\r\n\r\nbody\r\n")
    c.cmd(b"s", b"SELECT INBOX")
    assert c.cmd(b"f", b"STORE 2:3,5 +FLAGS.SILENT (\\Flagged)") == [b"f OK STORE completed"]
    return c


# -- RFC 5182 SEARCHRES ----------------------------------------------------------------------------


def test_save_then_use_dollar_as_a_sequence_set(srv):
    # RFC 5182 2.1, 2.4 and its first example: SAVE alone answers no ESEARCH; $ is the result.
    c = five(srv)
    assert c.cmd(b"A282", b"SEARCH RETURN (SAVE) FLAGGED") == [b"A282 OK SEARCH completed"]
    assert c.cmd(b"A283", b"FETCH $ (UID)") == [
        b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)", b"* 5 FETCH (UID 5)", b"A283 OK FETCH completed"]
    assert c.cmd(b"A284", b"STORE $ +FLAGS (\\Seen)") == [
        b"* 2 FETCH (FLAGS (\\Flagged \\Seen \\Recent))", b"* 3 FETCH (FLAGS (\\Flagged \\Seen \\Recent))",
        b"* 5 FETCH (FLAGS (\\Flagged \\Seen \\Recent))", b"A284 OK STORE completed"]
    assert c.cmd(b"A285", b"UID SEARCH UID $ SUBJECT fig") == [b"* SEARCH 2", b"A285 OK SEARCH completed"]
    assert c.cmd(b"A286", b"SEARCH NOT $") == [b"* SEARCH 1 4", b"A286 OK SEARCH completed"]
    assert c.cmd(b"A287", b"COPY $ INBOX")[-1].startswith(b"A287 OK [COPYUID ")


def test_save_with_min_or_max_keeps_only_those(srv):
    # RFC 5182 2.4: with MIN and/or MAX (and neither ALL nor COUNT) only they are saved.
    c = five(srv)
    assert c.cmd(b"a", b"SEARCH RETURN (SAVE MIN MAX) FLAGGED") == [
        b'* ESEARCH (TAG "a") MIN 2 MAX 5', b"a OK SEARCH completed"]
    assert c.cmd(b"b", b"SEARCH $") == [b"* SEARCH 2 5", b"b OK SEARCH completed"]
    assert c.cmd(b"c", b"SEARCH RETURN (SAVE MIN COUNT) FLAGGED") == [
        b'* ESEARCH (TAG "c") MIN 2 COUNT 3', b"c OK SEARCH completed"]
    assert c.cmd(b"d", b"SEARCH $") == [b"* SEARCH 2 3 5", b"d OK SEARCH completed"]


def test_dollar_is_empty_before_a_save_and_after_a_failed_one_and_follows_expunges(srv):
    # RFC 5182 2.1: $ starts empty in a newly selected mailbox; a SEARCH with SAVE that fails
    # empties it; messages expunged leave it.
    c = five(srv)
    assert c.cmd(b"a", b"FETCH $ (UID)") == [b"a OK FETCH completed"]
    c.cmd(b"b", b"SEARCH RETURN (SAVE) FLAGGED")
    assert c.cmd(b"c", b"SEARCH RETURN (SAVE) CHARSET KOI8-R FLAGGED")[-1].startswith(b"c NO [BADCHARSET")
    assert c.cmd(b"d", b"SEARCH $") == [b"* SEARCH", b"d OK SEARCH completed"]
    c.cmd(b"e", b"UID SEARCH RETURN (SAVE) FLAGGED")
    assert c.cmd(b"f", b"STORE 3 +FLAGS.SILENT (\\Deleted)") == [b"f OK STORE completed"]
    assert c.cmd(b"g", b"EXPUNGE") == [b"* 3 EXPUNGE", b"g OK EXPUNGE completed"]
    assert c.cmd(b"h", b"UID SEARCH $") == [b"* SEARCH 2 5", b"h OK SEARCH completed"]
    c.cmd(b"i", b"SELECT INBOX")
    assert c.cmd(b"j", b"SEARCH $") == [b"* SEARCH", b"j OK SEARCH completed"]  # reset by SELECT


# -- RFC 5267 3 ESORT, 4.4 PARTIAL -----------------------------------------------------------------


def test_esort_answers_in_sort_order(srv):
    # RFC 5267 3.1, 3.2: MIN and MAX are the first and last in sort order; ALL keeps the order.
    c = five(srv)
    assert c.cmd(b"B1", b"SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL") == [
        b'* ESEARCH (TAG "B1") MIN 3 MAX 2 ALL 3,5,1,4,2 COUNT 5', b"B1 OK SORT completed"]
    assert c.cmd(b"B2", b"UID SORT RETURN (ALL) (ARRIVAL) UTF-8 ALL") == [
        b'* ESEARCH (TAG "B2") UID ALL 1:5', b"B2 OK SORT completed"]
    assert c.cmd(b"B3", b"SORT RETURN (COUNT) (SUBJECT) UTF-8 DELETED") == [
        b'* ESEARCH (TAG "B3") COUNT 0', b"B3 OK SORT completed"]
    assert c.cmd(b"B4", b"SORT RETURN (SAVE MIN) (SUBJECT) UTF-8 FLAGGED") == [
        b'* ESEARCH (TAG "B4") MIN 3', b"B4 OK SORT completed"]
    assert c.cmd(b"B5", b"SEARCH $") == [b"* SEARCH 3", b"B5 OK SEARCH completed"]
    assert c.cmd(b"B6", b"SORT (SUBJECT) UTF-8 ALL") == [b"* SORT 3 5 1 4 2", b"B6 OK SORT completed"]


def test_partial_gives_a_window_of_the_results(srv):
    # RFC 5267 4.4: positions from 1, 500:400 is 400:500; NIL when the window is empty;
    # PARTIAL and ALL together are an error.  RFC 9394 3.1: negative ranges count from the end.
    c = five(srv)
    assert c.cmd(b"p1", b"SEARCH RETURN (PARTIAL 2:3) ALL") == [
        b'* ESEARCH (TAG "p1") PARTIAL (2:3 2:3)', b"p1 OK SEARCH completed"]
    assert c.cmd(b"p2", b"SORT RETURN (PARTIAL 4:1 COUNT) (SUBJECT) UTF-8 ALL") == [
        b'* ESEARCH (TAG "p2") PARTIAL (1:4 3,5,1,4) COUNT 5', b"p2 OK SORT completed"]
    assert c.cmd(b"p3", b"UID SEARCH RETURN (PARTIAL 10:20) ALL") == [
        b'* ESEARCH (TAG "p3") UID PARTIAL (10:20 NIL)', b"p3 OK SEARCH completed"]
    assert c.cmd(b"p4", b"SEARCH RETURN (PARTIAL -1:-2) ALL") == [
        b'* ESEARCH (TAG "p4") PARTIAL (-1:-2 4:5)', b"p4 OK SEARCH completed"]
    for bad in (b"SEARCH RETURN (PARTIAL 1:2 ALL) ALL", b"SEARCH RETURN (PARTIAL 0:2) ALL",
                b"SEARCH RETURN (PARTIAL 1:*) ALL", b"SEARCH RETURN (PARTIAL -1:2) ALL",
                b"SEARCH RETURN (PARTIAL) ALL", b"SORT RETURN (MIN) SUBJECT UTF-8 ALL"):
        assert c.cmd(b"x", bad)[0].startswith(b"x BAD "), bad


def test_ordered_set_and_window():
    assert results.ordered_set([23, 1, 2, 3, 7, 6]) == b"23,1:3,7,6"
    assert results.window([1, 2, 3, 4, 5], (-3, -5)) == [1, 2, 3]  # -3:-5, the third to fifth from the end
    assert results.window([1, 2], (-3, -9)) == []
    assert results.window([1, 2], (2, 9)) == [2]


# -- RFC 5267 4.3 update contexts ------------------------------------------------------------------


def test_search_update_context_reports_additions_and_removals(srv):
    # RFC 5267 4.3.3/4.3.4 with their examples: position 0 for SEARCH; ADDTO after EXISTS,
    # REMOVEFROM before EXPUNGE; UPDATE has no interaction with COUNT (4.3).
    c, other = five(srv), session(srv)
    assert c.cmd(b"B01", b"UID SEARCH RETURN (UPDATE COUNT) FLAGGED") == [
        b'* ESEARCH (TAG "B01") UID COUNT 3', b"B01 OK SEARCH completed"]
    other.cmd(b"s", b"SELECT INBOX")
    append(other, b"Subject: new\r\n\r\nx\r\n")
    other.cmd(b"f", b"UID STORE 6 +FLAGS (\\Flagged)")
    assert c.cmd(b"n1", b"NOOP") == [
        b"* 6 EXISTS", b"* 5 RECENT", b'* ESEARCH (TAG "B01") UID ADDTO (0 6)', b"n1 OK NOOP completed"]
    other.cmd(b"d", b"STORE 3 +FLAGS.SILENT (\\Deleted)")
    other.cmd(b"e", b"EXPUNGE")
    assert c.cmd(b"n2", b"NOOP") == [
        b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 3)', b"* 3 EXPUNGE", b"n2 OK NOOP completed"]
    other.cmd(b"u", b"STORE 1 +FLAGS.SILENT (\\Flagged)")  # sequence 1 is UID 1
    assert c.cmd(b"n3", b"NOOP") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))", b'* ESEARCH (TAG "B01") UID ADDTO (0 1)', b"n3 OK NOOP completed"]
    assert c.cmd(b"B01", b"SEARCH RETURN (UPDATE) ALL")[0] == b"B01 BAD tag reuse: an update context already has this tag"
    assert c.cmd(b"B04", b'CANCELUPDATE "B01"') == [b"B04 OK CANCELUPDATE completed"]
    other.cmd(b"v", b"STORE 1 -FLAGS.SILENT (\\Flagged)")
    assert c.cmd(b"n4", b"NOOP") == [b"* 1 FETCH (UID 1 FLAGS (\\Recent))", b"n4 OK NOOP completed"]
    assert c.cmd(b"x", b"CANCELUPDATE B01")[0].startswith(b"x BAD ")


def test_sort_update_context_gives_positions(srv):
    # RFC 5267 4.3.3: for SORT the position is where the message goes in the sorted result;
    # removals are positioned too, the last first (4.3.4).
    c, other = five(srv), session(srv)
    assert c.cmd(b"C01", b"SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNDELETED") == [
        b'* ESEARCH (TAG "C01") ALL 3,5,1,4,2', b"C01 OK SORT completed"]
    other.cmd(b"s", b"SELECT INBOX")
    append(other, b"Subject: coconut\r\n\r\nx\r\n")
    assert c.cmd(b"n1", b"NOOP") == [
        b"* 6 EXISTS", b"* 5 RECENT", b'* ESEARCH (TAG "C01") ADDTO (4 6)', b"n1 OK NOOP completed"]
    other.cmd(b"d", b"STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    lines = c.cmd(b"n2", b"NOOP")
    assert lines[0] == b'* ESEARCH (TAG "C01") REMOVEFROM (3 1 1 3)' and lines[-1] == b"n2 OK NOOP completed"
    assert len(lines) == 4  # and the two FETCH FLAGS


def test_updates_reach_an_idle_client(srv):
    # RFC 5267 4.3.2: ADDTO and REMOVEFROM may come while the client IDLEs.
    c, other = five(srv), session(srv)
    c.cmd(b"D01", b"SEARCH RETURN (UPDATE) SUBJECT kiwi")
    c.send(b"i IDLE\r\n")
    assert c.line() == b"+ idling"
    append(other, b"Subject: kiwi\r\n\r\nx\r\n")
    recent = [b"* 6 RECENT"] if srv.imap_mode == "IMAP4rev1" else []  # RFC 9051: no RECENT
    seen = [c.line() for _ in range(3 if recent else 2)]
    assert seen == [b"* 6 EXISTS", *recent, b'* ESEARCH (TAG "D01") ADDTO (0 6)']
    c.send(b"DONE\r\n")
    assert c.until(b"i")[-1] == b"i OK IDLE terminated"


def test_too_many_contexts_is_noupdate_and_the_search_still_answers(srv):
    # RFC 5267 4.3.1: the server may refuse to update (untagged NO [NOUPDATE "tag"]); the
    # other return options are still honoured.
    c = five(srv)
    for n in range(results.MAX_CONTEXTS):
        c.cmd(b"u%d" % n, b"SEARCH RETURN (UPDATE) ALL")
    assert c.cmd(b"B02", b"SEARCH RETURN (UPDATE COUNT) ALL") == [
        b'* NO [NOUPDATE "B02"] too many update contexts', b'* ESEARCH (TAG "B02") COUNT 5', b"B02 OK SEARCH completed"]
