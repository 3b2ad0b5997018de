"""Quotas on SMTP (mailstack.smtp.quota), in process over a raw socket: 452 4.2.2 at RCPT
for a full mailbox (552 5.2.2 when configured permanent), SIZE checked at RCPT (RFC 1870 6),
the whole message refused after DATA only when no recipient has room."""

from __future__ import annotations

from support.clients import SmtpClient

BOB, ALICE, CAROL = "bob@example.test", "alice@example.test", "carol@example.test"
BODY = b"Subject: q\r\n\r\n" + b"x" * 986 + b"\r\n"  # 1000 octets


def start(factory, extra=""):
    return factory(listeners=["smtp"], extra='[quota]\nstorage = "3k"\nmessages = 2\nwarning_percent = 0\n' + extra).start()


def send(c, rcpts, body=BODY, size=None):
    assert c.cmd("MAIL FROM:<sender@outside.test>" + (f" SIZE={size}" if size else ""))[0] == 250
    replies = [c.cmd(f"RCPT TO:<{r}>") for r in rcpts]
    if not any(code == 250 for code, _ in replies):
        c.cmd("RSET")
        return replies, None
    assert c.cmd("DATA")[0] == 354
    c.send(body + b".\r\n")
    return replies, c.read()


def session(server):
    c = SmtpClient(server.port("smtp"))
    assert c.cmd("EHLO client.test")[0] == 250
    return c


def test_rcpt_is_refused_once_full(inproc_server_factory):
    server = start(inproc_server_factory)
    c = session(server)
    for _ in range(2):
        replies, final = send(c, [BOB])
        assert replies == [(250, f"2.1.5 Recipient <{BOB}> OK")] and final[0] == 250
    replies, final = send(c, [BOB, ALICE])
    assert replies[0] == (452, f"4.2.2 <{BOB}>: mailbox is full")
    assert replies[1][0] == 250 and final[0] == 250  # the other recipient still gets it
    assert len(server.messages(BOB)) == 2 and len(server.messages(ALICE)) == 1


def test_permanent_reply(inproc_server_factory):
    server = start(inproc_server_factory, 'smtp_reply = "permanent"\n')
    c = session(server)
    send(c, [BOB])
    send(c, [BOB])
    assert send(c, [BOB])[0] == [(552, f"5.2.2 <{BOB}>: mailbox is full")]


def test_size_is_checked_at_rcpt(inproc_server_factory):
    server = start(inproc_server_factory)
    c = session(server)
    assert send(c, [BOB], size=4000)[0] == [(452, f"4.2.2 <{BOB}>: mailbox is full")]
    assert send(c, [BOB], size=1000)[0][0][0] == 250


def test_data_too_big_for_every_recipient_is_refused_whole(inproc_server_factory):
    server = start(inproc_server_factory)
    c = session(server)
    big = b"Subject: big\r\n\r\n" + b"y" * 4000 + b"\r\n"
    replies, final = send(c, [BOB, CAROL], body=big)
    assert [code for code, _ in replies] == [250, 250]
    assert final == (452, "4.2.2 <every recipient>: mailbox is full")
    assert server.messages(BOB) == [] and server.messages(CAROL) == []


def test_data_that_fits_one_recipient_goes_to_all(inproc_server_factory):
    """carol has a bigger storage limit of her own, from the users file."""
    server = inproc_server_factory(listeners=["smtp"], extra='[quota]\nstorage = "3k"\nwarning_percent = 0\n')
    users = server.base / "users"
    users.write_text("".join(line + ("::::::userdb_quota_rule=*:storage=1M" if line.startswith(CAROL) else "") + "\n"
                             for line in users.read_text().splitlines()))
    server.start()
    c = session(server)
    big = b"Subject: big\r\n\r\n" + b"y" * 4000 + b"\r\n"
    replies, final = send(c, [BOB, CAROL], body=big)
    assert final[0] == 250  # one reply for all: bob gets it past his limit (a grace of one message)
    assert len(server.messages(BOB)) == 1 and len(server.messages(CAROL)) == 1
    assert send(c, [BOB])[0] == [(452, f"4.2.2 <{BOB}>: mailbox is full")]


def test_a_full_mailbox_that_also_forwards_does_not_stop_the_forwarded_copy(inproc_server_factory):
    """RCPT accepts a recipient that also forwards outside although its mailbox is full; the
    DATA reply must then not refuse the message for everyone (the forwarded copy would wait
    for bob to make room): 250, queued for carol, bob's copy stored with grace."""
    from support.servers import free_port

    from mailstack.outbound.queue import OutboundQueue

    extra = (f'[dns]\nnameservers = ["127.0.0.1"]\nport = {free_port()}\ntimeout = 0.5\n'
             "[relay]\nretry_schedule = [3600]\n")
    server = inproc_server_factory(listeners=["smtp"], aliases="both@example.test: bob@example.test, carol@remote.test\n",
                                   extra='[quota]\nstorage = "3k"\nmessages = 2\nwarning_percent = 0\n' + extra).start()
    c = session(server)
    for _ in range(2):
        assert send(c, [BOB])[1][0] == 250
    replies, final = send(c, ["both@example.test"])
    assert replies[0][0] == 250 and final[0] == 250
    queued = [[r.address for r in env.recipients] for env, _ in OutboundQueue(str(server.base / "queue")).all()]
    assert queued == [["carol@remote.test"]]
    assert len(server.messages(BOB)) == 3


def test_a_quota_that_cannot_be_read_answers_rcpt_451(inproc_server_factory):
    """RFC 5321 4.2: every command gets a reply.  A maildirsize the server cannot use (here a
    directory in its place) made the RCPT check fail with no MailError, and the errback let
    it pass unanswered: the client waited for its timeout."""
    server = start(inproc_server_factory)
    c = session(server)
    assert send(c, [BOB])[1][0] == 250
    size_file = server.maildir(BOB) / "maildirsize"
    size_file.unlink()
    size_file.mkdir()
    c.sock.settimeout(5)
    assert c.cmd("MAIL FROM:<sender@outside.test>")[0] == 250
    code, text = c.cmd(f"RCPT TO:<{BOB}>")
    assert (code, text.split(" ", 1)[0]) == (451, "4.3.0")
    assert c.cmd("NOOP")[0] == 250
