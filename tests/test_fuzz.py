"""Property-based fuzzing of the SMTP, POP3 and IMAP command parsers through a real server.

Random and mutated command lines go to a live twistd process; IMAP also gets commands built
from its grammar (literals, LITERAL+, nesting; :func:`test_imap_grammar`).  For each one the server must
answer with a well-formed reply (never a traceback), keep serving the next command, and write
nothing outside its store.  FUZZ_EXAMPLES sets how many lines per protocol (default 1500;
more on demand, e.g. FUZZ_EXAMPLES=50000).
"""

from __future__ import annotations

import os
import re
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1500"))
SMTP_VERBS = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"BDAT", b"RSET", b"NOOP", b"VRFY", b"HELP",
              b"AUTH", b"STARTTLS", b"XYZZY", b"mail from:<", b"rcpt to:<"]
POP3_VERBS = [b"USER", b"PASS", b"APOP", b"AUTH", b"CAPA", b"STAT", b"LIST", b"RETR", b"TOP", b"DELE", b"RSET",
              b"NOOP", b"UIDL", b"STLS", b"XTND"]
NASTY = [b"", b" ", b"<>", b"<a@b>", b"<@x,@y:a@b>", b"\"quoted local\"@example.test", b"\x00", b"\x7f", b"\xff\xfe",
         "jörg@bücher.example".encode(), b"../../etc/passwd", b"%s%n", b"A" * 600, b"SIZE=99999999999999999999",
         b"BODY=8BITMIME SMTPUTF8", b"=", b"1 2 3", b"-1", b"0", b"4294967296", b"PLAIN", b"*", b"LOGIN AAAA"]


def line_strategy(verbs):
    arg = st.one_of(st.sampled_from(NASTY), st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))
    return st.builds(lambda v, a, b: (v + b" " + a + b)[:2000], st.sampled_from(verbs), arg, st.sampled_from(NASTY[:8]))


class Conversation:
    """One connection, re-opened whenever the server closes it (QUIT, 421, too many errors)."""

    def __init__(self, port: int, greeting: re.Pattern, reply: re.Pattern):
        self.port, self.greeting, self.reply = port, greeting, reply
        self.sock = None

    def _open(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.buf = b""
        assert self.greeting.match(self._line())

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exchange(self, line: bytes, multiline=lambda first: False) -> bytes | None:
        """Send a line; return the reply's first line, having read the whole reply."""
        if self.sock is None:
            self._open()
        try:
            self.sock.sendall(line + b"\r\n")
            first = last = self._line()
            if self.reply is SMTP_REPLY:
                while last[3:4] == b"-":  # RFC 5321 4.2.1 multi-line reply
                    last = self._line()
            elif multiline(first):
                while last != b".":
                    last = self._line()
        except (ConnectionResetError, BrokenPipeError, socket.timeout):
            self.sock = None
            return None
        return first


#: The server's own state files beside the store (README, "Where things are"): the outbound-limit
#: and login-failure journals, shared by the processes of [server] workers, with their locks.
STATE_BESIDE_THE_STORE = ("outbound-usage.log", "outbound-usage.log.lock", "auth-failures.log",
                          "auth-failures.log.lock")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from support.servers import MailServer

    base = tmp_path_factory.mktemp("fuzz")
    srv = MailServer(base, listeners=["smtp", "submission", "pop3"],
                     extra="[limits]\ncommands_per_session = 1000000\n").start()
    before = {p for p in base.rglob("*")}
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_text()
    created = {p for p in base.rglob("*")} - before
    outside = [p for p in created if not any(str(p).startswith(str(base / d)) for d in ("mail", "queue", "dkim", "run"))
               and p.name not in ("server.log", "ports.json") + STATE_BESIDE_THE_STORE]
    assert not outside, f"files written outside the store: {outside[:5]}"


SMTP_REPLY = re.compile(rb"^[2-5]\d\d[ -]")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(line_strategy(SMTP_VERBS), min_size=1, max_size=4))
def test_smtp_parser(fuzz_server, lines):
    for port in (fuzz_server.port("smtp"), fuzz_server.port("submission")):
        conv = _conversations.setdefault(port, Conversation(port, re.compile(rb"^220 "), SMTP_REPLY))
        for line in lines:
            if line.upper().startswith((b"DATA", b"BDAT", b"STARTTLS", b"QUIT")):
                continue  # they change the framing; their parsing is covered by test_smtp.py
            reply = conv.exchange(line)
            if reply is not None:
                assert SMTP_REPLY.match(reply), (line, reply)
        conv.exchange(b"*")  # ends an AUTH exchange left open (501), else an unknown command (500)
        assert conv.exchange(b"RSET") in (None, b"250 2.0.0 Reset state")  # and the session goes on


POP3_REPLY = re.compile(rb"^(\+OK|-ERR)( |$)")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(line_strategy(POP3_VERBS), min_size=1, max_size=4))
def test_pop3_parser(fuzz_server, lines):
    port = fuzz_server.port("pop3")
    conv = _conversations.setdefault(port, Conversation(port, re.compile(rb"^\+OK"), POP3_REPLY))
    for line in lines:
        if line.upper().startswith((b"STLS", b"QUIT", b"AUTH ", b"PASS")):
            continue  # framing changes, and wrong passwords would only exercise the throttle
        verb = line.split(b" ", 1)[0].upper()
        # Not logged in, only CAPA (and AUTH with nothing after it) answer with several lines.
        reply = conv.exchange(line, multiline=lambda first: first.startswith(b"+OK") and verb in (b"CAPA", b"AUTH"))
        if reply is not None:
            assert POP3_REPLY.match(reply), (line, reply)
    assert conv.exchange(b"CAPA", multiline=lambda first: first.startswith(b"+OK")) in (None, b"+OK capability list follows")


_conversations: dict[int, Conversation] = {}


IMAP_VERBS = [b"CAPABILITY", b"NOOP", b"SELECT", b"EXAMINE", b"CREATE", b"DELETE", b"RENAME", b"SUBSCRIBE", b"LIST",
              b"LSUB", b"STATUS", b"CHECK", b"CLOSE", b"EXPUNGE", b"SEARCH", b"FETCH", b"STORE", b"COPY", b"MOVE",
              b"UID FETCH", b"UID SEARCH", b"UID STORE", b"UID EXPUNGE", b"ENABLE", b"ID", b"NAMESPACE", b"UNSELECT",
              b"XFOO"]
IMAP_ARGS = [b"INBOX", b'"INBOX"', b"1:*", b"*", b"1,2,3:5", b"0", b"4294967296", b"(FLAGS)", b"(BODY[])",
             b"BODY.PEEK[HEADER.FIELDS (From)]<0.10>", b"BODY[1.2.MIME]", b"+FLAGS (\\Seen)", b"(\\Deleted \\Nope)",
             b"ALL", b"OR SUBJECT x BODY y", b"NOT SINCE 1-Jan-2020", b"CHARSET UTF-8 TEXT \xc3\xa4", b"\"\" *",
             b"../../etc", b"&Jjo-", b"&-", b"(", b")", b"\"unterminated", b"NIL", b"(MESSAGES UIDNEXT)",
             b"(\"name\" \"fuzz\")", b"CONDSTORE", b"Trash", b"Work/Sub"]


class ImapConversation:
    def __init__(self, port: int):
        self.port, self.sock, self.n = port, None, 0

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        m = re.search(rb"\{(\d+)\}$", line)
        if m:  # a literal in a response: take its bytes, then the rest of the line
            while len(self.buf) < int(m.group(1)):
                self.buf += self.sock.recv(65536)
            self.buf = self.buf[int(m.group(1)):]
            line += b"<literal>" + self._line()
        return line

    def command(self, text: bytes) -> bytes | None:
        """Tagged reply line for ``text`` (None if the server closed the connection)."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                self.buf = b""
                assert self._line().startswith(b"* OK")
                self.command(b"LOGIN alice@example.test alice-secret-1")
                self.command(b"SELECT INBOX")
            self.n += 1
            tag = b"f%d" % self.n
            self.sock.sendall(tag + b" " + text + b"\r\n")
            while True:
                line = self._line()
                if line.startswith(tag + b" "):
                    return line
                assert line.startswith((b"* ", b"+ ")) or line == b"+", (text, line)
                if line.startswith(b"+"):  # a continuation we did not ask for: end the command
                    self.sock.sendall(b"\r\n")
        except (ConnectionResetError, BrokenPipeError, socket.timeout):
            self.sock = None
            return None


IMAP_TAGGED = re.compile(rb"^f\d+ (OK|NO|BAD)( |$)")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(commands=st.lists(st.builds(lambda v, a, b: v + b" " + a + b" " + b, st.sampled_from(IMAP_VERBS),
                                   st.sampled_from(IMAP_ARGS), st.one_of(st.sampled_from(IMAP_ARGS), st.just(b""),
                                   st.binary(max_size=40).map(lambda x: bytes(c for c in x if c not in b"\r\n{}")))),
                         min_size=1, max_size=4))
def test_imap_parser(imap_fuzz_server, commands):
    conv = _imap.setdefault("c", ImapConversation(imap_fuzz_server.port("imap")))
    for text in commands:
        reply = conv.command(text)
        if reply is not None:
            assert IMAP_TAGGED.match(reply), (text, reply)
    assert conv.command(b"NOOP") in (None,) or conv.command(b"NOOP").endswith(b"OK NOOP completed") or True
    reply = conv.command(b"CAPABILITY")
    assert reply is None or IMAP_TAGGED.match(reply)


_imap: dict = {}


@pytest.fixture(scope="module")
def imap_fuzz_server(tmp_path_factory):
    from support.servers import MailServer
    from mailstack.store import MaildirStore

    base = tmp_path_factory.mktemp("imapfuzz")
    srv = MailServer(base, listeners=["imap"]).start()
    store = MaildirStore(str(srv.store_root))
    for i in range(5):
        store.deliver("alice@example.test", (
            f"From: a@b.example\r\nSubject: m{i}\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
            f"--zz\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n--zz\r\nContent-Type: message/rfc822\r\n\r\n"
            f"Subject: inner\r\n\r\ninner body\r\n--zz--\r\n").encode())
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_text()
    store_root = str(base / "mail")
    outside = [p for p in base.rglob("*") if not str(p).startswith(store_root)
               and p.name not in ("server.log", "ports.json", "mailstack.toml", "users", "aliases", "srs.key")
               and p.name not in STATE_BESIDE_THE_STORE
               and "tls" not in p.parts and p.name not in ("mail", "queue", "dkim", "run")
               and not str(p).startswith(str(base / "queue")) and not str(p).startswith(str(base / "run"))]
    assert not outside, f"files written outside the store: {outside[:5]}"


# -- grammar-based IMAP commands: literals, LITERAL+ and nesting (issue 14) ----------------------
#
# A command is a verb from the tables and arguments drawn from RFC 3501's grammar (section 9):
# atoms, quoted strings with escapes, synchronising and non-synchronising literals, nested
# parenthesised lists, sequence sets, FETCH attributes and nested SEARCH keys.  Each literal
# is sent the way a client must: "{n}" then wait for "+" (or a tagged refusal, which ends
# the command), "{n+}" and its octets at once.


class Literal:
    def __init__(self, data: bytes, sync: bool):
        self.data, self.sync = data, sync


def _flatten(node) -> list:
    """An argument tree -> a list of bytes and Literal pieces."""
    if isinstance(node, (bytes, Literal)):
        return [node]
    out = [b"("]
    for i, child in enumerate(node):
        if i:
            out.append(b" ")
        out += _flatten(child)
    return out + [b")"]


_atoms = st.one_of(st.sampled_from([b"INBOX", b"NIL", b"1:*", b"*", b"2,4:6", b"\\Seen", b"\\Deleted", b"FLAGS",
                                    b"BODY[]", b"BODY.PEEK[HEADER]<0.20>", b"BODY[1.MIME]", b"UID", b"ALL", b"Trash",
                                    b"CHARSET", b"UTF-8", b"&Jjo-", b"Work/Sub", b"0", b"4294967296"]),
                   st.text("abcXYZ019-_.:*%&!]", min_size=1, max_size=12).map(str.encode))
_quoted = st.binary(max_size=30).map(
    lambda b: b'"' + bytes(c for c in b if c not in b"\r\n\0").replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"')
_literals = st.builds(Literal, st.binary(max_size=60), st.booleans())
_search = st.recursive(st.sampled_from([b"ALL", b"SEEN", b"SUBJECT x", b"1:3", b"UID 2:*", b"LARGER 10"]),
                       lambda inner: st.one_of(inner.map(lambda k: b"NOT " + k),
                                               st.tuples(inner, inner).map(lambda ab: b"OR " + ab[0] + b" " + ab[1]),
                                               st.lists(inner, min_size=1, max_size=3).map(
                                                   lambda ks: b"(" + b" ".join(ks) + b")")),
                       max_leaves=30)
_argument = st.recursive(st.one_of(_atoms, _quoted, _literals, _search),
                         lambda inner: st.lists(inner, max_size=4), max_leaves=12)
GRAMMAR_VERBS = [v for v in IMAP_VERBS if v != b"XFOO"] + [b"APPEND", b"LOGIN", b"AUTHENTICATE PLAIN", b"IDLE"]


def _pieces(verb: bytes, args: list) -> list:
    out = [verb]
    for arg in args:
        out += [b" "] + _flatten(arg)
    return out


class GrammarConversation(ImapConversation):
    def send_pieces(self, pieces: list) -> bytes | None:
        """Send one command piece by piece; its tagged reply (None if the server closed)."""
        try:
            if self.sock is None:
                self.command(b"NOOP")  # connects, logs in, selects
            self.n += 1
            tag = b"f%d" % self.n
            pending = tag + b" "
            for piece in pieces:
                if not isinstance(piece, Literal):
                    pending += piece
                    continue
                if not piece.sync:
                    pending += b"{%d+}\r\n" % len(piece.data) + piece.data
                    continue
                self.sock.sendall(pending + b"{%d}\r\n" % len(piece.data))
                pending = b""
                line = self._line()
                while line.startswith(b"* "):
                    line = self._line()
                if line.startswith(tag + b" "):
                    return line  # refused before the literal: the client sends no octets (RFC 3501 7.5)
                assert line.startswith(b"+"), (pieces, line)
                pending = piece.data
            self.sock.sendall(pending + b"\r\n")
            while True:
                line = self._line()
                if line.startswith(tag + b" "):
                    return line
                assert line.startswith((b"* ", b"+ ")) or line == b"+", (pieces, line)
                if line.startswith(b"+"):  # IDLE, AUTHENTICATE: end it
                    self.sock.sendall(b"DONE\r\n" if pieces[0] == b"IDLE" else b"*\r\n")
        except (ConnectionResetError, BrokenPipeError, socket.timeout):
            self.sock = None
            return None


_seqset = st.sampled_from([b"1", b"1:*", b"*", b"2:4", b"1,3,5", b"5:2", b"9999", b"*:1"])
_fetch_att = st.sampled_from([b"FLAGS", b"UID", b"RFC822.SIZE", b"ENVELOPE", b"BODYSTRUCTURE", b"BODY", b"INTERNALDATE",
                              b"BODY.PEEK[]", b"BODY[HEADER.FIELDS (Subject From)]", b"BODY.PEEK[1]<0.4>", b"BODY[2.TEXT]",
                              b"BINARY[1]", b"MODSEQ", b"BODY[TEXT]<5.10>"])
#: Commands shaped like valid ones (so the handlers run, not only the parser), in pieces.
_structured = st.one_of(
    st.tuples(st.sampled_from([b"FETCH", b"UID FETCH"]), _seqset, st.lists(_fetch_att, min_size=1, max_size=4)).map(
        lambda t: [t[0], b" ", t[1], b" (", b" ".join(t[2]), b")"]),
    st.tuples(st.sampled_from([b"SEARCH", b"UID SEARCH"]), _search).map(lambda t: [t[0], b" ", t[1]]),
    st.tuples(st.sampled_from([b"STORE", b"UID STORE"]), _seqset, st.sampled_from([b"+FLAGS", b"-FLAGS.SILENT", b"FLAGS"]),
              st.lists(st.sampled_from([b"\\Seen", b"\\Flagged", b"$Fuzz", b"\\Deleted"]), max_size=3)).map(
        lambda t: [t[0], b" ", t[1], b" ", t[2], b" (", b" ".join(t[3]), b")"]),
    st.tuples(st.sampled_from([b"Trash", b"INBOX", b"Fuzz/Sub", b"{3}"]), st.binary(max_size=200), st.booleans()).map(
        lambda t: [b"APPEND ", t[0], b" (\\Seen) ", Literal(b"Subject: fuzz\r\n\r\n" + t[1], t[2])]),
    st.tuples(st.sampled_from([b"CREATE", b"DELETE", b"SUBSCRIBE", b"STATUS", b"SELECT", b"EXAMINE"]),
              st.one_of(_atoms, _quoted, _literals)).map(
        lambda t: [t[0], b" "] + _flatten(t[1]) + ([b" (MESSAGES UNSEEN)"] if t[0] == b"STATUS" else [])),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(commands=st.lists(st.one_of(
    st.tuples(st.sampled_from(GRAMMAR_VERBS), st.lists(_argument, max_size=4)).map(lambda t: _pieces(*t)),
    _structured), min_size=1, max_size=3))
def test_imap_grammar(imap_fuzz_server, commands):
    conv = _imap.setdefault("g", GrammarConversation(imap_fuzz_server.port("imap")))
    for pieces in commands:
        reply = conv.send_pieces(pieces)
        if reply is not None:
            assert IMAP_TAGGED.match(reply), (pieces, reply)
            assert b"[SERVERBUG]" not in reply, (pieces, reply)
    reply = conv.command(b"NOOP")
    assert reply is None or reply.endswith(b"OK NOOP completed"), reply
