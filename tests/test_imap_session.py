"""Each IMAP command in each state, with the exact bytes the RFC asks for (RFC 3501 sections
6 and 7, RFC 4959 SASL-IR, RFC 4315 UIDPLUS, RFC 7888 LITERAL+, RFC 5530 response codes).

Fast: the service runs in this process (``inproc_server_factory``); a raw socket speaks to it.
Written from the RFC text, section by section: where the RFC leaves a choice (the text after
a status, the order of SELECT's untagged responses) the test says so and checks only the
required part.
"""

from __future__ import annotations

import base64
import re

import pytest

from support import rev2
from support.clients import ImapClient
from support.servers import PASSWORDS
from mailstack.imap.session import COMMANDS

BOB = "bob@example.test"
FAST_FAILURES = "[auth]\nfailure_delay = 0.0\n"
BASE = (b"IMAP4rev1 IMAP4rev2 LITERAL+ ID ENABLE IDLE NAMESPACE UIDPLUS MULTIAPPEND MOVE UNSELECT CHILDREN SPECIAL-USE "
        b"LIST-EXTENDED LIST-STATUS SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES ESEARCH SEARCHRES ESORT "
        b"CONTEXT=SEARCH CONTEXT=SORT WITHIN STATUS=SIZE SAVEDATE CONDSTORE QRESYNC UTF8=ACCEPT BINARY CATENATE "
        b"QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE")
CAPS_BEFORE_LOGIN = BASE.replace(b"IMAP4rev2 ", b"IMAP4rev2 STARTTLS AUTH=PLAIN SASL-IR ")
CAPS_AFTER_LOGIN = BASE + b" COMPRESS=DEFLATE"
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


@pytest.fixture(params=["IMAP4rev1", "IMAP4rev2"])
def srv(request, inproc_server_factory):
    """The server; logged-in sessions speak the mode of the parameter (RFC 9051 6.3.1)."""
    server = inproc_server_factory(listeners=["imap", "imaps"], extra=FAST_FAILURES).start()
    server.imap_mode = request.param
    return server


class Client(ImapClient):
    def __init__(self, srv):
        super().__init__(srv.port("imap"))

    def ok(self, tag: bytes, text: bytes) -> list[bytes]:
        """The untagged lines of a command that must end in tagged OK."""
        lines = self.cmd(tag, text)
        assert lines[-1].startswith(tag + b" OK"), lines
        return rev2.Replies(lines[:-1], tag, text) if self.rev2 else lines[:-1]

    def append(self, tag: bytes = b"A", folder: bytes = b"INBOX", flags: bytes = b"") -> bytes:
        self.send(tag + b" APPEND " + folder + flags + b" {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
        return self.until(tag)[-1]


def logged_in(srv) -> Client:
    c = Client(srv)
    c.login()
    if srv.imap_mode == "IMAP4rev2":
        c.enable_rev2()
    return c


def selected(srv, count: int = 2) -> tuple[Client, int]:
    """Logged in, ``count`` messages appended to INBOX (the first \\Seen), INBOX selected;
    returns the client and INBOX's UIDVALIDITY."""
    c = logged_in(srv)
    for n in range(count):
        assert c.append(flags=b" (\\Seen)" if n == 0 else b"").startswith(b"A OK [APPENDUID ")
    lines = c.ok(b"S", b"SELECT INBOX")
    uidvalidity = int(re.search(rb"\[UIDVALIDITY (\d+)\]", b"\n".join(lines)).group(1))
    return c, uidvalidity


def test_every_command_of_the_table_is_callable():
    for table in COMMANDS.values():
        for name, command in table.items():
            assert callable(command.handler) and callable(command.grammar), name


# -- 7.1 greeting, 2.2 tags ------------------------------------------------------------------


def test_greeting_is_ok_with_the_capability_list(srv):
    # RFC 3501 7.1.1 / 7.2.1: a CAPABILITY response code in the greeting saves a round trip.
    c = Client(srv)
    assert c.greeting == b"* OK [CAPABILITY " + CAPS_BEFORE_LOGIN + b"] mailstack IMAP4rev1 server ready"


def test_a_line_without_a_valid_tag_is_answered_untagged_bad(srv):
    # RFC 3501 7.1.3: "* BAD" when the tag cannot be found; 9 (formal syntax): tag excludes "+".
    c = Client(srv)
    for line in (b"\r\n", b"a+ NOOP\r\n", b"(x) NOOP\r\n"):
        c.send(line)
        assert c.line() == b"* BAD invalid or missing tag", line
    c.send(b"a1\r\n")
    assert c.line() == b"a1 BAD missing command"
    assert c.ok(b"a2", b"NOOP") == []  # the session carries on


def test_command_names_are_case_insensitive(srv):
    # RFC 3501 9: "The ASCII characters in the grammar are case-insensitive."
    c = Client(srv)
    assert c.cmd(b"a1", b"noop") == [b"a1 OK NOOP completed"]
    assert c.cmd(b"a2", b"CaPaBiLiTy") == [b"* CAPABILITY " + CAPS_BEFORE_LOGIN, b"a2 OK CAPABILITY completed"]


# -- 6.1 any state -----------------------------------------------------------------------------


def test_capability_noop_logout(srv):
    # 6.1.1: one untagged CAPABILITY listing IMAP4rev1; 6.1.3: BYE before the tagged OK, then close.
    c = Client(srv)
    assert c.cmd(b"a1", b"CAPABILITY") == [b"* CAPABILITY " + CAPS_BEFORE_LOGIN, b"a1 OK CAPABILITY completed"]
    assert c.cmd(b"a2", b"NOOP") == [b"a2 OK NOOP completed"]
    assert c.cmd(b"a3", b"CAPABILITY extra") == [b"a3 BAD syntax error: too many arguments"]
    assert c.cmd(b"a4", b"LOGOUT") == [b"* BYE mailstack IMAP4rev1 server logging out", b"a4 OK LOGOUT completed"]
    assert c.sock.recv(1) == b""


def test_commands_of_a_later_state_are_bad_before_login(srv):
    # RFC 3501 3: a command not valid in the current state is a protocol error (tagged BAD).
    c = Client(srv)
    for name in (b"SELECT INBOX", b"LIST \"\" *", b"APPEND INBOX {1+}\r\nx", b"FETCH 1 FLAGS", b"IDLE"):
        verb = name.split()[0].decode()
        assert c.cmd(b"a1", name) == [b"a1 BAD " + verb.encode() + b" is not valid before login"], name
    assert c.cmd(b"a2", b"FROBNICATE") == [b"a2 BAD unknown command"]


# -- 6.2 not authenticated state ---------------------------------------------------------------


def test_login_failure_then_success_with_capabilities(srv):
    # 6.2.3: NO on failure (RFC 5530 AUTHENTICATIONFAILED), OK on success; the CAPABILITY code
    # after login (7.1) reflects the authenticated state.
    c = Client(srv)
    assert c.cmd(b"a1", b"LOGIN bob@example.test wrong") == [b"a1 NO [AUTHENTICATIONFAILED] Authentication failed"]
    good = f'LOGIN {BOB} "{PASSWORDS[BOB]}"'.encode()
    assert c.cmd(b"a2", good) == [b"a2 OK [CAPABILITY " + CAPS_AFTER_LOGIN + b"] Logged in"]
    assert c.cmd(b"a3", good) == [b"a3 BAD LOGIN is not valid now"]
    assert c.cmd(b"a4", b"AUTHENTICATE PLAIN") == [b"a4 BAD AUTHENTICATE is not valid now"]
    assert c.cmd(b"a5", b"STARTTLS") == [b"a5 BAD STARTTLS is not valid now"]


def test_login_with_a_synchronising_literal_gets_a_continuation(srv):
    # 7.5: the server answers a synchronising literal with "+"; the command then completes.
    c = Client(srv)
    user = BOB.encode()
    c.send(b"a1 LOGIN {%d}\r\n" % len(user))
    assert c.line().startswith(b"+ ")
    c.send(user + f' "{PASSWORDS[BOB]}"\r\n'.encode())
    assert c.line().startswith(b"a1 OK [CAPABILITY ")


def test_authenticate_plain_with_continuation_cancel_and_bad_base64(srv):
    # 6.2.2: an empty challenge is "+ " (7.5); "*" cancels with BAD; bad base64 is BAD.
    c = Client(srv)
    c.send(b"a1 AUTHENTICATE PLAIN\r\n")
    assert c.line() == b"+ "
    c.send(b"*\r\n")
    assert c.line() == b"a1 BAD authentication cancelled"
    c.send(b"a2 AUTHENTICATE PLAIN\r\n")
    assert c.line() == b"+ "
    c.send(b"!!!\r\n")
    assert c.line() == b"a2 BAD invalid base64 in the SASL response"
    assert c.cmd(b"a3", b"AUTHENTICATE FOO") == [b"a3 NO [CANNOT] unsupported authentication mechanism (use PLAIN)"]
    c.send(b"a4 AUTHENTICATE PLAIN\r\n")
    assert c.line() == b"+ "
    c.send(base64.b64encode(f"\0{BOB}\0{PASSWORDS[BOB]}".encode()) + b"\r\n")
    assert c.line() == b"a4 OK [CAPABILITY " + CAPS_AFTER_LOGIN + b"] Logged in"


def test_authenticate_with_an_initial_response(srv):
    # RFC 4959 3: the initial response on the command line; "=" is an empty one.
    c = Client(srv)
    wrong = base64.b64encode(f"\0{BOB}\0nope".encode())
    assert c.cmd(b"a1", b"AUTHENTICATE PLAIN " + wrong) == [b"a1 NO [AUTHENTICATIONFAILED] Authentication failed"]
    right = base64.b64encode(f"{BOB}\0{BOB}\0{PASSWORDS[BOB]}".encode())
    assert c.cmd(b"a2", b"AUTHENTICATE PLAIN " + right) == [b"a2 OK [CAPABILITY " + CAPS_AFTER_LOGIN + b"] Logged in"]


# -- 6.3 authenticated state -------------------------------------------------------------------


def test_select_and_examine_responses(srv):
    # 6.3.1: FLAGS, EXISTS, RECENT, UIDVALIDITY, UIDNEXT, PERMANENTFLAGS (order free), OK
    # [UNSEEN n] for the first unseen; tagged [READ-WRITE].  6.3.2: EXAMINE is [READ-ONLY]
    # and no flag is permanent.  RFC 7162 3.1.2.1: HIGHESTMODSEQ once CONDSTORE is advertised.
    c, uidvalidity = selected(srv)
    v = str(uidvalidity).encode()
    assert c.cmd(b"s1", b"SELECT INBOX") == [
        # RFC 7162 3.2.11: a server offering QRESYNC says [CLOSED] when SELECT replaces a mailbox.
        b"* OK [CLOSED] previous mailbox closed",
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] flags permitted",
        b"* 2 EXISTS",
        b"* 0 RECENT",  # the first SELECT (in selected()) took \Recent (RFC 3501 2.3.2)
        b"* OK [UNSEEN 2] first unseen message",
        b"* OK [UIDVALIDITY " + v + b"] UIDs valid",
        b"* OK [UIDNEXT 3] predicted next UID",
        b"* OK [HIGHESTMODSEQ 3] highest",
        b"s1 OK [READ-WRITE] SELECT completed",
    ]
    lines = c.cmd(b"s2", b"EXAMINE INBOX")
    assert lines[0] == b"* OK [CLOSED] previous mailbox closed"
    assert b"* OK [PERMANENTFLAGS ()] flags permitted" in lines
    assert lines[-1] == b"s2 OK [READ-ONLY] EXAMINE completed"
    assert c.cmd(b"s3", b"STORE 1 +FLAGS (\\Flagged)")[-1].startswith(b"s3 NO ")  # read-only
    assert c.cmd(b"s4", b"SELECT nothere") == [b"* OK [CLOSED] previous mailbox closed",
                                                b"s4 NO [NONEXISTENT] no such mailbox"]
    # 6.3.1: a failed SELECT leaves no mailbox selected.
    assert c.cmd(b"s5", b"FETCH 1 FLAGS") == [b"s5 BAD FETCH needs a selected mailbox"]


def test_create_delete_rename(srv):
    # 6.3.3-6.3.5 with RFC 5530 codes; a trailing separator creates the name without it;
    # superiors are created as needed; INBOX can be neither created nor deleted.
    c = logged_in(srv)
    assert c.cmd(b"c1", b"CREATE Foo") == [b"c1 OK CREATE completed"]
    assert c.cmd(b"c2", b"CREATE Foo") == [b"c2 NO [ALREADYEXISTS] mailbox already exists"]
    assert c.cmd(b"c3", b"CREATE INBOX") == [b"c3 NO [ALREADYEXISTS] INBOX always exists"]
    assert c.cmd(b"c4", b"CREATE a/b/") == [b"c4 OK CREATE completed"]
    assert c.cmd(b"c5", b'LIST "" a*') == [b'* LIST (\\HasChildren) "/" "a"', b'* LIST (\\HasNoChildren) "/" "a/b"',
                                           b"c5 OK LIST completed"]
    assert c.cmd(b"c6", b"RENAME a b") == [b"c6 OK RENAME completed"]
    assert c.cmd(b"c7", b'LIST "" b/*') == [b'* LIST (\\HasNoChildren) "/" "b/b"', b"c7 OK LIST completed"]
    assert c.cmd(b"c8", b"RENAME nothere x") == [b"c8 NO [NONEXISTENT] no such mailbox"]
    assert c.cmd(b"c9", b"DELETE Foo") == [b"c9 OK DELETE completed"]
    assert c.cmd(b"d1", b"DELETE Foo") == [b"d1 NO [NONEXISTENT] no such mailbox"]
    assert c.cmd(b"d2", b"DELETE INBOX") == [b"d2 NO [CANNOT] INBOX cannot be deleted"]


def test_list_with_an_empty_pattern_gives_the_delimiter(srv):
    # 6.3.8: 'LIST "" ""' returns the hierarchy delimiter and the root, \Noselect.
    c = logged_in(srv)
    assert c.cmd(b"l1", b'LIST "" ""') == [b'* LIST (\\Noselect) "/" ""', b"l1 OK LIST completed"]
    # "%" does not match the delimiter; special-use attributes per RFC 6154.
    assert c.cmd(b"l2", b'LIST "" %') == [
        b'* LIST (\\HasNoChildren) "/" "INBOX"',
        b'* LIST (\\HasNoChildren \\Archive) "/" "Archive"',
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
        b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
        b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
        b"l2 OK LIST completed",
    ]
    assert c.cmd(b"l3", b"NAMESPACE") == [b'* NAMESPACE (("" "/")) NIL NIL', b"l3 OK NAMESPACE completed"]


def test_status_and_append(srv):
    # 6.3.10 STATUS; 6.3.11 APPEND with a synchronising literal ("+" first, 7.5) and the
    # RFC 4315 APPENDUID code; APPEND to a missing mailbox is NO [TRYCREATE].
    c = logged_in(srv)
    c.send(b"a1 APPEND INBOX (\\Seen) {%d}\r\n" % len(MESSAGE))
    assert c.line().startswith(b"+ ")
    c.send(MESSAGE + b"\r\n")
    done = c.until(b"a1")
    assert len(done) == 1 and re.fullmatch(rb"a1 OK \[APPENDUID \d+ 1\] APPEND completed", done[0]), done
    assert c.append(b"a2").endswith(b" 2] APPEND completed")
    assert c.append(b"a3", folder=b"Nope") == b"a3 NO [TRYCREATE] no such mailbox"
    status = c.ok(b"a4", b"STATUS INBOX (MESSAGES UIDNEXT UNSEEN)")
    assert status == [b'* STATUS "INBOX" (MESSAGES 2 UIDNEXT 3 UNSEEN 1)']
    assert c.cmd(b"a5", b"STATUS Nope (MESSAGES)") == [b"a5 NO [NONEXISTENT] no such mailbox"]
    assert c.cmd(b"a6", b"STATUS INBOX (BOGUS)")[0].startswith(b"a6 BAD ")


# -- 6.4 selected state ------------------------------------------------------------------------


def test_fetch_data_items(srv):
    # 6.4.5 and 7.4.2: literals carry the exact octets; BODY[] sets \Seen (already set here).
    c, _ = selected(srv)
    assert c.ok(b"f1", b"FETCH 1:* (FLAGS UID RFC822.SIZE)") == [
        b"* 1 FETCH (FLAGS (\\Seen \\Recent) UID 1 RFC822.SIZE 21)",
        b"* 2 FETCH (FLAGS (\\Recent) UID 2 RFC822.SIZE 21)",
    ]
    assert c.ok(b"f2", b"FETCH 1 BODY[]") == [b"* 1 FETCH (BODY[] {21}", b"Subject: hi", b"", b"body", b")"]
    assert c.ok(b"f3", b"FETCH 1 (BODY[HEADER] BODY[TEXT])") == [
        b"* 1 FETCH (BODY[HEADER] {15}", b"Subject: hi", b"", b" BODY[TEXT] {6}", b"body", b")"]
    assert c.ok(b"f4", b"FETCH 1 BODY[]<0.7>") == [b"* 1 FETCH (BODY[]<0> {7}", b"Subject)"]
    assert c.ok(b"f5", b"FETCH 1 ENVELOPE") == [b'* 1 FETCH (ENVELOPE (NIL "hi" NIL NIL NIL NIL NIL NIL NIL NIL))']
    assert c.ok(b"f6", b"FETCH 1 BODYSTRUCTURE") == [
        b'* 1 FETCH (BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 6 1 NIL NIL NIL NIL))']
    # 6.4.5: BODY[] without PEEK sets \Seen and the change is reported in the same response.
    assert c.ok(b"f7", b"FETCH 2 BODY[TEXT]") == [b"* 2 FETCH (BODY[TEXT] {6}", b"body", b" FLAGS (\\Seen \\Recent))"]
    assert c.cmd(b"f8", b"FETCH 5 FLAGS") == [b"f8 BAD invalid message sequence number (the mailbox has 2 messages)"]
    assert c.cmd(b"f9", b"UID FETCH 5 FLAGS") == [b"f9 OK FETCH completed"]  # 6.4.8: no error for absent UIDs
    assert c.cmd(b"g1", b"FETCH x FLAGS") == [b"g1 BAD syntax error: invalid sequence set x"]
    assert c.cmd(b"g2", b"FETCH 1 (FLAGS") == [b"g2 BAD syntax error: unbalanced parentheses"]


def test_store_and_silent(srv):
    # 6.4.6: STORE answers with the new flags unless .SILENT.
    c, _ = selected(srv)
    assert c.ok(b"t1", b"STORE 2 +FLAGS (\\Deleted)") == [b"* 2 FETCH (FLAGS (\\Deleted \\Recent))"]
    assert c.ok(b"t2", b"STORE 1 +FLAGS.SILENT (\\Flagged)") == []
    assert c.ok(b"t3", b"FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))"]
    assert c.ok(b"t4", b"STORE 1 -FLAGS (\\Flagged)") == [b"* 1 FETCH (FLAGS (\\Seen \\Recent))"]
    assert c.ok(b"t5", b"UID STORE 1 FLAGS (\\Answered)") == [b"* 1 FETCH (FLAGS (\\Answered \\Recent) UID 1)"]
    assert c.cmd(b"t6", b"STORE 1 +FLAGS (\\Bogus)")[0].startswith(b"t6 BAD ")


def test_search(srv):
    # 6.4.4: one untagged SEARCH listing the matches (none: "* SEARCH" alone); UID SEARCH lists UIDs.
    c, _ = selected(srv)
    assert c.ok(b"q1", b"SEARCH UNSEEN") == [b"* SEARCH 2"]
    assert c.ok(b"q2", b"SEARCH DELETED") == [b"* SEARCH"]
    assert c.ok(b"q3", b"UID SEARCH ALL") == [b"* SEARCH 1 2"]
    assert c.ok(b"q4", b"SEARCH SUBJECT hi BODY body") == [b"* SEARCH 1 2"]
    assert c.ok(b"q5", b"SEARCH OR SEEN NOT ALL") == [b"* SEARCH 1"]
    assert c.cmd(b"q6", b"SEARCH FROBS")[0].startswith(b"q6 BAD ")


def test_expunge_copy_close(srv):
    # 6.4.3: one "* n EXPUNGE" per removed message; 6.4.7 COPY with RFC 4315 COPYUID and
    # [TRYCREATE]; 6.4.2: CLOSE removes \Deleted messages without EXPUNGE responses.
    c, uidvalidity = selected(srv, count=3)
    assert c.ok(b"e1", b"STORE 2 +FLAGS.SILENT (\\Deleted)") == []
    assert c.ok(b"e2", b"EXPUNGE") == [b"* 2 EXPUNGE"]
    lines = c.cmd(b"e3", b"COPY 1:2 Trash")
    assert re.fullmatch(rb"e3 OK \[COPYUID \d+ 1,3 1:2\] COPY completed", lines[-1]), lines
    assert c.cmd(b"e4", b"COPY 1 Nope") == [b"e4 NO [TRYCREATE] no such mailbox"]
    assert c.ok(b"e5", b"STORE 1 +FLAGS.SILENT (\\Deleted)") == []
    assert c.cmd(b"e6", b"CLOSE") == [b"e6 OK CLOSE completed"]
    assert c.cmd(b"e7", b"FETCH 1 FLAGS") == [b"e7 BAD FETCH needs a selected mailbox"]
    assert c.ok(b"e8", b"STATUS INBOX (MESSAGES)") == [b'* STATUS "INBOX" (MESSAGES 1)']


def test_unselect_keeps_deleted_messages(srv):
    # RFC 3691: UNSELECT leaves the selected state without expunging.
    c, _ = selected(srv)
    assert c.ok(b"u1", b"STORE 1 +FLAGS.SILENT (\\Deleted)") == []
    assert c.cmd(b"u2", b"UNSELECT") == [b"u2 OK UNSELECT completed"]
    assert c.cmd(b"u3", b"UNSELECT") == [b"u3 BAD UNSELECT needs a selected mailbox"]
    assert c.ok(b"u4", b"STATUS INBOX (MESSAGES)") == [b'* STATUS "INBOX" (MESSAGES 2)']


def test_another_sessions_append_is_reported_on_noop(srv):
    # 7.3.1 / 6.1.2: new mail is announced as "* n EXISTS" (and RECENT) at the next command.
    c, _ = selected(srv)
    other = logged_in(srv)
    assert other.append().startswith(b"A OK")
    lines = c.ok(b"n1", b"NOOP")
    assert lines == [b"* 3 EXISTS", b"* 3 RECENT"]  # RECENT: every \\Recent message, not the new ones


def test_literal_plus_needs_no_continuation(srv):
    # RFC 7888 3: "{n+}" literals are sent without waiting; the server sends no "+".
    c = logged_in(srv)
    c.send(b"p1 CREATE {3+}\r\nabc\r\np2 NOOP\r\n")
    assert c.until(b"p1") == [b"p1 OK CREATE completed"]
    assert c.until(b"p2") == [b"p2 OK NOOP completed"]


def test_every_appended_message_is_recent(srv):
    # RFC 3501 2.3.2: \Recent until a session has been notified; APPEND's flags do not change that.
    c = logged_in(srv)
    assert c.append(flags=b" (\\Seen)").startswith(b"A OK")
    assert c.append().startswith(b"A OK")
    assert c.ok(b"r1", b"STATUS INBOX (RECENT)") == [b'* STATUS "INBOX" (RECENT 2)']
