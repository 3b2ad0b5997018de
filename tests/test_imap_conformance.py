"""IMAP conformance items of issue 15, section 1, from the RFC text with exact replies.

Fast: the service runs in this process.  Each test names the RFC section it checks.  The
items of issue 15 not yet done (\\Recent of APPENDed and COPYed messages, the extensions)
are not here; see that issue.
"""

from __future__ import annotations

import pytest

from support.clients import ImapClient


@pytest.fixture
def srv(inproc_server_factory):
    return inproc_server_factory(listeners=["imap"], extra="[auth]\nfailure_delay = 0.0\n").start()


def session(srv) -> ImapClient:
    c = ImapClient(srv.port("imap"))
    c.login()
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
