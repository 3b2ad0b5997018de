"""IMAP conformance items of issue 15, section 1, from the RFC text with exact replies.

Fast: the service runs in this process.  Each test names the RFC section it checks.  The
items of issue 15 not yet done (most of the extensions) are not here; see that issue.
"""

from __future__ import annotations

import re

import pytest

from support.clients import ImapClient


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


def append(c: ImapClient, message: bytes, folder: bytes = b"INBOX") -> None:
    c.send(b"A APPEND " + folder + b" {%d+}\r\n" % len(message) + message + b"\r\n")
    assert c.until(b"A")[-1].startswith(b"A OK"), message


SPECIAL = [b'* LIST (\\HasNoChildren) "/" "INBOX"', b'* LIST (\\HasNoChildren \\Archive) "/" "Archive"',
           b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"', b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
           b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"', b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"']


# -- RFC 3501 9 list-char, RFC 5258 LIST-EXTENDED ------------------------------------------------


def test_every_atom_char_parses_in_a_list_pattern(srv):
    # RFC 3501 9: list-mailbox = 1*list-char / string; list-char = ATOM-CHAR / list-wildcards /
    # resp-specials.  Not valid modified UTF-7 ("&'"), so it matches nothing: OK, no names.
    c = session(srv)
    assert c.cmd(b"l", b'LIST "" !#$&\'+,-.0123456789:;<=>?@^_`|[}%*') == [b"l OK LIST completed"]
    assert c.cmd(b"n", b"NOOP") == [b"n OK NOOP completed"]  # and the connection stays


@pytest.mark.parametrize("command, answer", [
    (b'LIST (FOO) "" *', b"x BAD unknown LIST selection option FOO"),
    (b'LIST (RECURSIVEMATCH) "" *', b"x BAD RECURSIVEMATCH needs another selection option (RFC 5258 3)"),
    (b'LIST (RECURSIVEMATCH REMOTE) "" *', b"x BAD RECURSIVEMATCH needs another selection option (RFC 5258 3)"),
    (b'LIST "" * RETURN (BOGUS)', b"x BAD unknown LIST return option"),
])
def test_unknown_or_lone_list_options_are_bad(srv, command, answer):
    # RFC 5258 3: unknown options are BAD; RECURSIVEMATCH alone (or with REMOTE only) too.
    assert session(srv).cmd(b"x", command) == [answer]


def test_recursivematch_reports_subscribed_children(srv):
    # RFC 5258 3.5 and its example 5.5: a parent with a subscribed child is listed with
    # CHILDINFO ("SUBSCRIBED") even when it is not subscribed itself.
    c = session(srv)
    for command in (b"CREATE Foo/Bar", b"SUBSCRIBE Foo/Bar", b"CREATE Baz"):
        assert c.cmd(b"c", command)[-1].startswith(b"c OK")
    lines = c.cmd(b"r", b'LIST (SUBSCRIBED RECURSIVEMATCH) "" %')
    assert b'* LIST (\\HasChildren) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))' in lines
    assert not any(b'"Baz"' in line for line in lines)
    assert lines[-1] == b"r OK LIST completed"
    lines = c.cmd(b"s", b'LIST (SUBSCRIBED) "" %')
    assert not any(b'"Foo"' in line for line in lines)  # without RECURSIVEMATCH: only subscribed names


# -- RFC 3501 5.1 and 6.3.6 mailbox names and subscriptions ----------------------------------------


def test_a_backslash_in_a_mailbox_name_is_allowed(srv):
    # RFC 3501 5.1 leaves names to the server, 9 lets a quoted string carry "\" (as \\).
    c = session(srv)
    assert c.cmd(b"c", b'CREATE "a\\\\b"') == [b"c OK CREATE completed"]
    assert c.cmd(b"l", b'LIST "" a*') == [b'* LIST (\\HasNoChildren) "/" "a\\\\b"', b"l OK LIST completed"]
    assert c.cmd(b"s", b'SELECT "a\\\\b"')[-1] == b"s OK [READ-WRITE] SELECT completed"


def test_subscribe_needs_the_mailbox_and_delete_keeps_the_subscription(srv):
    # RFC 3501 6.3.6: the server MAY refuse a name that does not exist, and MUST NOT remove a
    # name from the subscription list because the mailbox is gone; LSUB then shows \Noselect.
    c = session(srv)
    assert c.cmd(b"a", b"SUBSCRIBE nothere") == [b"a NO [NONEXISTENT] no such mailbox"]
    assert c.cmd(b"b", b"CREATE gone")[-1] == b"b OK CREATE completed"
    assert c.cmd(b"c", b"SUBSCRIBE gone") == [b"c OK SUBSCRIBE completed"]
    assert c.cmd(b"d", b"DELETE gone") == [b"d OK DELETE completed"]
    assert c.cmd(b"e", b'LSUB "" gone') == [b'* LSUB (\\Noselect) "/" "gone"', b"e OK LSUB completed"]
    assert c.cmd(b"f", b"UNSUBSCRIBE gone") == [b"f OK UNSUBSCRIBE completed"]
    assert c.cmd(b"g", b'LSUB "" gone') == [b"g OK LSUB completed"]


# -- RFC 3501 7.4.2 ENVELOPE, 6.4.4 SEARCH ---------------------------------------------------------

GROUPS = (b"From: Grp: a@x.test, User <user-from@domain.org>;\r\nTo: undisclosed-recipients:;\r\n"
          b"Cc: one@x.test, Team: ;, \"Doe, J\" <j@d.org>\r\nSubject: groups\r\n\r\nnil here\r\n")


def test_envelope_marks_groups(srv):
    # RFC 3501 7.4.2: a group starts with (NIL NIL "name" NIL) and ends with (NIL NIL NIL NIL);
    # sender and reply-to default to from.
    c = session(srv)
    append(c, GROUPS)
    c.cmd(b"s", b"SELECT INBOX")
    from_ = b'((NIL NIL "Grp" NIL)(NIL NIL "a" "x.test")("User" NIL "user-from" "domain.org")(NIL NIL NIL NIL))'
    to = b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'
    cc = b'((NIL NIL "one" "x.test")(NIL NIL "Team" NIL)(NIL NIL NIL NIL)("Doe, J" NIL "j" "d.org"))'
    assert c.cmd(b"e", b"FETCH 1 ENVELOPE") == [
        b'* 1 FETCH (ENVELOPE (NIL "groups" ' + b" ".join([from_, from_, from_, to, cc]) + b" NIL NIL NIL))",
        b"e OK FETCH completed"]


def test_search_nil_is_a_word_and_from_matches_group_members(srv):
    # RFC 3501 6.4.4: "NIL" is an ordinary astring; FROM is a substring match of the field.
    c = session(srv)
    append(c, GROUPS)
    append(c, b"From: one@x.test, User <user-from@domain.org>\r\nSubject: NIL and more\r\n\r\nbody\r\n")
    c.cmd(b"s", b"SELECT INBOX")
    assert c.cmd(b"a", b"SEARCH FROM user-from@domain.org") == [b"* SEARCH 1 2", b"a OK SEARCH completed"]
    assert c.cmd(b"b", b"SEARCH SUBJECT NIL") == [b"* SEARCH 2", b"b OK SEARCH completed"]
    assert c.cmd(b"c", b"SEARCH BODY nil") == [b"* SEARCH 1", b"c OK SEARCH completed"]


# -- RFC 4731 ESEARCH, RFC 5032 WITHIN, RFC 8438 STATUS=SIZE ---------------------------------------

def five(srv) -> ImapClient:
    """INBOX with five messages, 2, 3 and 5 flagged; selected."""
    c = session(srv)
    for n in range(1, 6):
        append(c, b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n))
    c.cmd(b"s", b"SELECT INBOX")
    assert c.cmd(b"f", b"STORE 2:3,5 +FLAGS.SILENT (\\Flagged)") == [b"f OK STORE completed"]
    return c


def test_esearch_returns_what_was_asked(srv):
    # RFC 4731 3.1 and its examples: one ESEARCH response with the command's tag.
    c = five(srv)
    assert c.cmd(b"A282", b"SEARCH RETURN (MIN COUNT) FLAGGED") == [
        b'* ESEARCH (TAG "A282") MIN 2 COUNT 3', b"A282 OK SEARCH completed"]
    assert c.cmd(b"A283", b"SEARCH RETURN () FLAGGED") == [
        b'* ESEARCH (TAG "A283") ALL 2:3,5', b"A283 OK SEARCH completed"]
    assert c.cmd(b"A284", b"UID SEARCH RETURN (MIN MAX ALL COUNT) UNFLAGGED") == [
        b'* ESEARCH (TAG "A284") UID MIN 1 MAX 4 ALL 1,4 COUNT 2', b"A284 OK SEARCH completed"]
    # no match: neither MIN, MAX nor ALL; COUNT 0 when asked (RFC 4731 3.1)
    assert c.cmd(b"A285", b"SEARCH RETURN (MIN MAX COUNT) DELETED") == [
        b'* ESEARCH (TAG "A285") COUNT 0', b"A285 OK SEARCH completed"]
    assert c.cmd(b"A286", b"SEARCH RETURN (SAVE) ALL") == [b"A286 OK SEARCH completed"]  # RFC 5182 2.4: no ESEARCH
    assert c.cmd(b"A288", b"SEARCH RETURN (BOGUS) ALL")[0].startswith(b"A288 BAD ")
    assert c.cmd(b"A287", b"SEARCH FLAGGED") == [b"* SEARCH 2 3 5", b"A287 OK SEARCH completed"]  # RFC 3501 form


def test_within_older_and_younger(srv):
    # RFC 5032 2: OLDER n matches an INTERNALDATE more than n seconds ago, YOUNGER n at most n.
    c = session(srv)
    m = b"Subject: old\r\n\r\nx\r\n"
    c.send(b'A APPEND INBOX "01-Jan-2020 00:00:00 +0000" {%d+}\r\n' % len(m) + m + b"\r\n")
    assert c.until(b"A")[-1].startswith(b"A OK")
    append(c, b"Subject: new\r\n\r\nx\r\n")
    c.cmd(b"s", b"SELECT INBOX")
    assert c.cmd(b"o", b"SEARCH OLDER 86400") == [b"* SEARCH 1", b"o OK SEARCH completed"]
    assert c.cmd(b"y", b"SEARCH YOUNGER 3600") == [b"* SEARCH 2", b"y OK SEARCH completed"]
    assert c.cmd(b"z", b"SEARCH YOUNGER 0")[0].startswith(b"z BAD ")  # an nz-number


def test_status_size_is_the_sum_of_the_message_sizes(srv):
    # RFC 8438 3: SIZE is the total of the RFC822.SIZE of the mailbox's messages.
    c = session(srv)
    append(c, b"Subject: a\r\n\r\n12345\r\n")  # 21 octets
    append(c, b"Subject: bb\r\n\r\n1\r\n")  # 18 octets
    assert c.cmd(b"t", b"STATUS INBOX (MESSAGES SIZE)") == [b'* STATUS "INBOX" (MESSAGES 2 SIZE 39)', b"t OK STATUS completed"]
    lines = c.cmd(b"l", b'LIST "" INBOX RETURN (STATUS (SIZE))')
    assert lines[1] == b'* STATUS "INBOX" (SIZE 39)', lines


# -- RFC 3501 2.3.2 \Recent -----------------------------------------------------------------------


def rev1_only(srv) -> None:
    if srv.imap_mode != "IMAP4rev1":
        pytest.skip("\\Recent is IMAP4rev1's alone: RFC 9051 has no \\Recent and no RECENT (see test_imap_rev2)")


def test_a_copy_into_the_selected_mailbox_is_recent_here_only(srv):
    rev1_only(srv)
    # RFC 3501 6.4.7: the \Recent flag SHOULD be set on the copy; 2.3.2: for this session alone.
    c = session(srv)
    append(c, b"Subject: one\r\n\r\nx\r\n")
    assert c.cmd(b"s", b"SELECT INBOX")[3] == b"* 1 RECENT"
    lines = c.cmd(b"c", b"COPY 1 INBOX")
    assert lines[:2] == [b"* 2 EXISTS", b"* 2 RECENT"] and lines[-1].startswith(b"c OK [COPYUID "), lines
    assert c.cmd(b"f", b"FETCH 2 FLAGS") == [b"* 2 FETCH (FLAGS (\\Recent))", b"f OK FETCH completed"]
    other = session(srv)
    assert b"* 0 RECENT" in other.cmd(b"s", b"SELECT INBOX")  # already claimed by the first


def test_an_append_with_flags_is_recent_for_the_first_session_to_see_it(srv):
    rev1_only(srv)
    c = session(srv)
    append(c, b"Subject: flagged\r\n\r\nx\r\n", folder=b"INBOX (\\Seen \\Flagged)")
    assert c.cmd(b"t", b"STATUS INBOX (RECENT)") == [b'* STATUS "INBOX" (RECENT 1)', b"t OK STATUS completed"]
    lines = c.cmd(b"e", b"EXAMINE INBOX")  # EXAMINE reports it without claiming it
    assert b"* 1 RECENT" in lines
    assert b"* 1 RECENT" in c.cmd(b"s", b"SELECT INBOX")
    assert c.cmd(b"f", b"FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))", b"f OK FETCH completed"]
    assert b"* 0 RECENT" in c.cmd(b"s2", b"SELECT INBOX")


# -- RFC 3502 MULTIAPPEND ---------------------------------------------------------------------------


def multiappend(c: ImapClient, tag: bytes, *parts: bytes) -> list[bytes]:
    """``APPEND INBOX`` with each part (options then a message) sent as a LITERAL+ message."""
    command = tag + b" APPEND INBOX"
    for part in parts:
        options, _, message = part.partition(b"|")
        command += (b" " + options if options else b"") + b" {%d+}\r\n" % len(message) + message
    c.send(command + b"\r\n")
    return c.until(tag)


def test_multiappend_stores_every_message_and_reports_a_uid_set(srv):
    # RFC 3502 6 and RFC 4315 3: one APPENDUID with the set of new UIDs.
    c = session(srv)
    [done] = multiappend(c, b"m", b"|Subject: 1\r\n\r\na\r\n", b"(\\Flagged)|Subject: 2\r\n\r\nb\r\n",
                         b'"01-Jan-2024 10:00:00 +0000"|Subject: 3\r\n\r\nc\r\n')
    assert re.fullmatch(rb"m OK \[APPENDUID \d+ 1:3\] APPEND completed", done), done
    c.cmd(b"s", b"EXAMINE INBOX")
    assert c.cmd(b"f", b"FETCH 1:3 FLAGS") == [b"* 1 FETCH (FLAGS (\\Recent))", b"* 2 FETCH (FLAGS (\\Flagged \\Recent))",
                                             b"* 3 FETCH (FLAGS (\\Recent))", b"f OK FETCH completed"]
    assert c.cmd(b"d", b"FETCH 3 INTERNALDATE")[0] == b'* 3 FETCH (INTERNALDATE "01-Jan-2024 10:00:00 +0000")'


def test_a_multiappend_with_one_bad_message_appends_none(srv, monkeypatch):
    # RFC 3502 6: "If the server fails to append any message, none of the messages are appended."
    c = session(srv)
    [bad] = multiappend(c, b"b", b"|Subject: 1\r\n\r\na\r\n", b'"not a date"|Subject: 2\r\n\r\nb\r\n')
    assert bad.startswith(b"b BAD invalid date-time")
    from mailstack.store import MaildirFolder

    real, calls = MaildirFolder.append, []

    def second_fails(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MaildirFolder, "append", second_fails)
    [full] = multiappend(c, b"f", b"|Subject: 1\r\n\r\na\r\n", b"|Subject: 2\r\n\r\nb\r\n", b"|Subject: 3\r\n\r\nc\r\n")
    assert full.startswith(b"f NO [OVERQUOTA] ")
    assert c.cmd(b"t", b"STATUS INBOX (MESSAGES)") == [b'* STATUS "INBOX" (MESSAGES 0)', b"t OK STATUS completed"]


# -- RFC 8514 SAVEDATE --------------------------------------------------------------------------------


def test_savedate_is_when_the_message_was_stored_not_its_internal_date(srv):
    import time

    c = session(srv)
    m = b"Subject: old\r\n\r\nx\r\n"
    before = int(time.time())
    c.send(b'A APPEND INBOX "01-Jan-2020 00:00:00 +0000" {%d+}\r\n' % len(m) + m + b"\r\n")
    assert c.until(b"A")[-1].startswith(b"A OK")
    after = int(time.time())
    c.cmd(b"s", b"SELECT INBOX")
    [line, done] = c.cmd(b"f", b"FETCH 1 (INTERNALDATE SAVEDATE)")
    assert line.startswith(b'* 1 FETCH (INTERNALDATE "01-Jan-2020 00:00:00 +0000" SAVEDATE "') and done == b"f OK FETCH completed"
    from datetime import datetime

    saved = re.search(rb'SAVEDATE "([^"]+)"', line).group(1).decode()
    assert before <= datetime.strptime(saved, "%d-%b-%Y %H:%M:%S %z").timestamp() <= after + 1, saved
    today = time.strftime("%d-%b-%Y", time.gmtime(after)).lstrip("0").encode()
    assert c.cmd(b"a", b"SEARCH SAVEDSINCE " + today) == [b"* SEARCH 1", b"a OK SEARCH completed"]
    assert c.cmd(b"b", b"SEARCH SAVEDBEFORE " + today) == [b"* SEARCH", b"b OK SEARCH completed"]
    assert c.cmd(b"c", b"SEARCH SINCE " + today) == [b"* SEARCH", b"c OK SEARCH completed"]  # internal date: 2020
    assert c.cmd(b"d", b"SEARCH SAVEDATESUPPORTED") == [b"* SEARCH 1", b"d OK SEARCH completed"]


# -- RFC 5256 SORT, RFC 5957 SORT=DISPLAY --------------------------------------------------------------

from mailstack.imap.sort import base_subject  # noqa: E402


@pytest.mark.parametrize("subject, base", [
    ("Re: foo", "FOO"), ("RE: Re: re:  foo  bar ", "FOO BAR"), ("Fwd: foo (fwd)", "FOO"), ("[list] Re: foo", "FOO"),
    ("Re: [list] foo", "FOO"), ("[fwd: foo]", "FOO"), ("Fw: [Fwd: Re: foo]", "FOO"), ("Re[2]: foo", "FOO"),
    ("[only a blob]", "[ONLY A BLOB]"), ("Reply: foo", "REPLY: FOO"), ("", ""),
])
def test_base_subject(subject, base):
    # RFC 5256 2.1: leaders, trailers, blobs and the [fwd: ...] wrapper go; case is ignored.
    assert base_subject(subject) == base


SORTABLE = [
    b"From: Zed <z@x.test>\r\nTo: b@y.test\r\nSubject: Re: banana\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\n\r\nxx\r\n",
    b"From: adam@x.test\r\nTo: Alice <c@y.test>\r\nSubject: apple\r\nDate: Wed, 3 Jan 2024 10:00:00 +0200\r\n\r\nx\r\n",
    b"From: Bob <m@x.test>\r\nTo: a@y.test\r\nSubject: [list] cherry\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nxxxx\r\n",
    b"From: m@x.test\r\nSubject: Fwd: apple\r\n\r\nxxx\r\n",  # no Date: the internal date (now) is the sent date
]


def sorted_session(srv) -> ImapClient:
    c = session(srv)
    for m in SORTABLE:
        append(c, m)
    c.cmd(b"s", b"SELECT INBOX")
    return c


@pytest.mark.parametrize("criteria, expected", [
    (b"(SUBJECT)", b"2 4 1 3"),  # APPLE (2, 4 by sequence), BANANA, CHERRY
    (b"(REVERSE SUBJECT)", b"3 1 2 4"),  # ties still by ascending sequence number
    (b"(DATE)", b"3 1 2 4"),  # 2 Jan 10:00, 3 Jan 08:00 UTC, then the undated one (today)
    (b"(FROM)", b"2 3 4 1"),  # ADAM, M, M, Z (the addr-mailbox, not the display name)
    (b"(DISPLAYFROM)", b"2 3 4 1"),  # adam@x.test, bob, m@x.test, zed
    (b"(TO)", b"4 3 1 2"),  # none first, then A, B, C
    (b"(DISPLAYTO)", b"4 3 2 1"),  # "", a@y.test, alice, b@y.test
    (b"(SIZE)", b"4 2 1 3"),  # 44, 100, 101, 106 octets
    (b"(ARRIVAL)", b"1 2 3 4"),
    (b"(SUBJECT REVERSE DATE)", b"4 2 1 3"),  # the two APPLEs, the undated (today) one first
])
def test_sort(srv, criteria, expected):
    c = sorted_session(srv)
    assert c.cmd(b"t", b"SORT " + criteria + b" UTF-8 ALL") == [b"* SORT " + expected, b"t OK SORT completed"]


def test_uid_sort_with_search_keys_and_errors(srv):
    c = sorted_session(srv)
    assert c.cmd(b"u", b"UID SORT (SUBJECT) US-ASCII SUBJECT apple") == [b"* SORT 2 4", b"u OK SORT completed"]
    assert c.cmd(b"n", b"SORT (DATE) UTF-8 DELETED") == [b"* SORT", b"n OK SORT completed"]
    assert c.cmd(b"b1", b"SORT (BOGUS) UTF-8 ALL")[0].startswith(b"b1 BAD ")
    assert c.cmd(b"b2", b"SORT (REVERSE) UTF-8 ALL")[0].startswith(b"b2 BAD ")
    assert c.cmd(b"b3", b"SORT SUBJECT UTF-8 ALL")[0].startswith(b"b3 BAD ")
    assert c.cmd(b"b4", b"SORT (SUBJECT) KOI8-R ALL")[0].startswith(b"b4 NO [BADCHARSET")


def test_a_second_sort_reads_its_keys_from_the_cache(srv, monkeypatch):
    c = sorted_session(srv)
    assert c.cmd(b"a", b"SORT (DISPLAYFROM) UTF-8 ALL")[0] == b"* SORT 2 3 4 1"
    from mailstack.store import MaildirFolder

    def no_reading(*args, **kwargs):
        raise AssertionError("the headers were read again")

    monkeypatch.setattr(MaildirFolder, "headers", no_reading)
    assert c.cmd(b"b", b"SORT (SUBJECT) UTF-8 ALL") == [b"* SORT 2 4 1 3", b"b OK SORT completed"]


# -- RFC 5256 THREAD ------------------------------------------------------------------------------------


def threaded(n: int, msgid: str, subject: str, refs: str = "", day: int = 1) -> bytes:
    head = f"Message-ID: {msgid}\r\nSubject: {subject}\r\nDate: {day:d} Jan 2024 10:00:{n:02d} +0000\r\n"
    if refs:
        head += f"References: {refs}\r\n"
    return (head + "\r\nbody\r\n").encode()


THREADED = [
    threaded(1, "<a@x>", "apple"),
    threaded(2, "<b@x>", "Re: apple", "<a@x>"),
    threaded(3, "<c@x>", "Re: apple", "<a@x> <b@x>"),
    threaded(4, "<d@x>", "Re: apple", "<a@x>"),
    threaded(5, "<e@x>", "banana", day=2),
    threaded(6, "<f@x>", "Re: cherry", "<gone@x>", day=3),  # a parent we never received
    threaded(7, "<g@x>", "Re: cherry", "<gone@x>", day=3),
    threaded(8, "<h@x>", "Re: banana", day=4),  # no References: joined by subject (step 5)
]


@pytest.mark.parametrize("algorithm, expected", [
    # RFC 5256 3: REFERENCES links by References, prunes the dummy of a missing parent that
    # holds two roots together, then groups roots by base subject; 4: no space between lists.
    (b"REFERENCES", b"(1 (2 3)(4))(5 8)((6)(7))"),
    # ORDEREDSUBJECT: one thread per base subject, the rest children of its first message
    (b"ORDEREDSUBJECT", b"(1 (2)(3)(4))(5 8)(6 7)"),
])
def test_thread(srv, algorithm, expected):
    c = session(srv)
    for m in THREADED:
        append(c, m)
    c.cmd(b"s", b"SELECT INBOX")
    assert c.cmd(b"t", b"THREAD " + algorithm + b" UTF-8 ALL") == [b"* THREAD " + expected, b"t OK THREAD completed"]
    assert c.cmd(b"u", b"UID THREAD " + algorithm + b" US-ASCII SUBJECT banana") == [b"* THREAD (5 8)",
                                                                                      b"u OK THREAD completed"]
    assert c.cmd(b"n", b"THREAD " + algorithm + b" UTF-8 DELETED") == [b"* THREAD", b"n OK THREAD completed"]
    assert c.cmd(b"x", b"THREAD FOO UTF-8 ALL")[0].startswith(b"x BAD ")
