"""End-to-end: a real Thunderbird against a real mailstack ``twistd`` process.

One server and one Thunderbird (under Xvfb, fresh profile, the dev CA imported into its NSS
database, accounts preset in ``user.js``; see ``thunderbird.py``) serve the module:

* alice's IMAP account over implicit TLS: a delivered message is listed, shown, and its body
  lands in Thunderbird's offline store (``ImapMail/127.0.0.1/INBOX``, an mbox file);
* carol's POP3 account with STLS: the message is downloaded into ``Mail/127.0.0.1/Inbox`` and
  deleted from the server, as Thunderbird does by default;
* alice sends to bob through submission with STARTTLS and AUTH (nsIMsgSend, what the compose
  window's Send calls): the message is in bob's Maildir, its copy in alice's Sent (IMAP
  APPEND), and bob's own IMAP account (STARTTLS) in the same Thunderbird downloads it;
* both IMAP sessions run COMPRESS=DEFLATE (the server logs it), Thunderbird's default;
* the account wizard's lookup finds the settings from alice's address alone, through the
  ISPDB setting (``mailnews.auto_config_url``) pointed at the autoconfig listener, and through
  ``http://autoconfig.example.test/`` on port 80 (a hosts entry and port 80 in the network
  namespace forwarded to the listener); a closed port or another domain gives nothing.

Thunderbird is scripted over Marionette with chrome-context scripts; passwords are given to
the account objects (as if typed into the prompt) before each first connection.  The tests
are skipped when thunderbird, Xvfb, certutil or ImageMagick is missing, but fail when the
environment variable CI is set (CI installs them).  ``THUNDERBIRD_SCREENSHOT=docs/thunderbird.png``
makes the IMAP test save its screenshot there.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import sys
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
try:
    from . import thunderbird as tb
except ImportError:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import thunderbird as tb

if str(HERE.parent) not in sys.path:  # run outside pytest: tests/ holds the support package
    sys.path.insert(0, str(HERE.parent))
from support.ci import on_ci  # noqa: E402
from support.servers import MailServer, PASSWORDS  # noqa: E402

pytestmark = [pytest.mark.thunderbird, pytest.mark.slow]

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
DOMAIN, HOST = "example.test", "mail.example.test"  # the server's domain and host name (tests/conftest.py)
DAVE, ERIN = "dave@example.org", "erin@example.net"  # only ever in From: lines
PROGRAMS = {"thunderbird": "thunderbird", "Xvfb": "xvfb", "certutil": "libnss3-tools",
            "import": "imagemagick", "convert": "imagemagick"}
STEP = 90.0  # seconds any one step may take
# Thunderbird's accounts, in user.js order (accountN / serverN / idN)
IMAP_ALICE, POP3_CAROL, IMAP_BOB = "account1", "account2", "account3"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Env:
    def __init__(self, server: MailServer, thunder: tb.Thunderbird):
        self.server, self.tb = server, thunder

    def why(self) -> str:
        """The ends of both logs, for a failure message."""
        tb_log = self.tb.log_path.read_text(errors="replace") if self.tb.log_path.exists() else ""
        return f"\n--- server log ---\n{self.server.log_text()[-3000:]}\n--- thunderbird log ---\n{tb_log[-3000:]}"

    def wait_file(self, path: Path, *needles: bytes, timeout: float = STEP) -> bytes:
        """The content of ``path`` once it holds every needle."""
        deadline = time.monotonic() + timeout
        data = b""
        while time.monotonic() < deadline:
            data = path.read_bytes() if path.exists() else b""
            if all(n in data for n in needles):
                return data
            time.sleep(0.2)
        raise AssertionError(f"{path} lacks {needles!r} after {timeout}s; it has {data[-2000:]!r}{self.why()}")

    def wait_log(self, *needles: str, timeout: float = 10.0) -> str:
        """The server's log once it holds every needle."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.server.log_text()
            if all(n in log for n in needles):
                return log
            if time.monotonic() > deadline:
                missing = [n for n in needles if n not in log]
                raise AssertionError(f"the server log lacks {missing!r} after {timeout}s{self.why()}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    missing = tb.missing_programs(*PROGRAMS)
    if missing:
        reason = (f"{', '.join(missing)} not installed "
                  f"(apt-get install {' '.join(sorted({PROGRAMS[m] for m in missing}))})")
        if on_ci():
            pytest.fail(f"{reason} - CI is set, so the Thunderbird tests must run", pytrace=False)
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("thunderbird")
    (base / "server").mkdir()
    nowhere = _closed_port()  # outbound mail and DNS could only ever reach a closed loopback port
    server = MailServer(base / "server", extra=(
        f'[dns]\nnameservers = ["127.0.0.1"]\nport = {nowhere}\ntimeout = 2.0\n'
        f'[relay]\nsmarthost = "127.0.0.1:{nowhere}"\nconnect_timeout = 2.0\n'))
    thunder = None
    try:
        server.start()
        port = server.port
        prefs = tb.account_prefs(
            [
                {"type": "imap", "host": "127.0.0.1", "port": port("imaps"), "user": ALICE, "socket": 3},
                {"type": "pop3", "host": "127.0.0.1", "port": port("pop3"), "user": CAROL, "socket": 2},
                {"type": "imap", "host": "127.0.0.1", "port": port("imap"), "user": BOB, "socket": 2},
            ],
            smtp={"host": "127.0.0.1", "port": port("submission"), "user": ALICE, "socket": 2},
        )
        thunder = tb.Thunderbird(base / "thunderbird", prefs, server.ca_file,
                                 forward_ports=[port(k) for k in ("imaps", "imap", "pop3", "submission", "autoconfig")])
        thunder.start(timeout=STEP)
        yield Env(server, thunder)
    finally:
        if thunder is not None:
            thunder.stop()
        server.stop()


def _message(sender: str, to: str, subject: str, body: str, n: int = 0) -> bytes:
    return (f"From: {sender.split('@')[0].title()} <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 01 Dec 2025 {9 + n:02d}:{10 * n:02d}:00 +0000\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"\r\n{body}\r\n").encode()


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", head
    return struct.unpack(">II", head[16:24])


def test_imap_message_downloaded_and_shown(env, tmp_path):
    token = uuid.uuid4().hex
    subject = f"Welcome to mailstack ({token[:8]})"
    body = (f"Hello Alice,\r\n\r\nthis message was delivered by mailstack and read by Thunderbird "
            f"over IMAP with TLS.\r\n\r\ncheck: {token}")
    # senders that are none of this Thunderbird's identities, so the list shows them as senders
    env.server.deliver(
        _message(DAVE, ALICE, "Lunch on Friday?", "Shall we? Dave", 0),
        _message(ERIN, ALICE, "Minutes of the Monday meeting", "In the body, as promised. Erin", 1),
        _message(DAVE, ALICE, subject, body, 2),
        user=ALICE,
    )
    # Give the account its password and open its Inbox in the 3-pane window: Thunderbird logs
    # in, selects INBOX, fetches the headers and, the folder being kept for offline use (the
    # default), the whole messages into its mbox store.
    listed = env.tb.js("""
        const [key, password, count] = arguments;
        serverOf(key).password = password;
        const inbox = inboxOf(key);
        window.gTabmail.currentAbout3Pane.displayFolder(inbox.URI);
        await waitFor(`${count} messages in the Inbox`, () => inbox.getTotalMessages(false) >= count);
        await waitFor("the messages kept offline",
                      () => [...inbox.messages].every(h => h.flags & Ci.nsMsgMessageFlags.Offline));
        return { mbox: inbox.filePath.path, subjects: subjectsOf(inbox), offline: inbox.getFlag(Ci.nsMsgFolderFlags.Offline) };
    """, IMAP_ALICE, PASSWORDS[ALICE], 3)
    assert sorted(listed["subjects"]) == sorted(["Lunch on Friday?", "Minutes of the Monday meeting", subject]), listed
    mbox = Path(listed["mbox"])
    assert mbox.parts[-3:] == ("ImapMail", "127.0.0.1", "INBOX") and listed["offline"], listed
    data = env.wait_file(mbox, f"Subject: {subject}".encode(), token.encode())
    assert [m for m in tb.mbox_messages(mbox) if token.encode() in m], data[-2000:]

    # Select the message: the message pane shows it and it is marked read.
    shown = env.tb.js("""
        const [key, subject, token] = arguments;
        const inbox = inboxOf(key);
        const about3 = window.gTabmail.currentAbout3Pane;
        const hdr = [...inbox.messages].find(h => h.mime2DecodedSubject == subject);
        about3.selectMessage(hdr);
        const aboutMessage = about3.messageBrowser.contentDocument;
        const state = () => ({
          body: !!about3.messageBrowser.contentWindow.getMessagePaneBrowser?.()?.contentDocument?.body?.textContent.includes(token),
          subject: !!aboutMessage.getElementById("expandedsubjectBox")?.textContent.includes(subject),
          header: aboutMessage.getElementById("messageHeader")?.getBoundingClientRect().height,
          read: hdr.isRead,
        });
        await waitFor("the message in the message pane", () => { const s = state(); return s.body && s.subject && s.header > 0 && s.read; }, 30000)
          .catch(e => { throw new Error(`${e.message}: ${JSON.stringify(state())}`); });
        // painted before the screenshot
        await new Promise(resolve => window.requestAnimationFrame(() => window.requestAnimationFrame(resolve)));
        await sleep(1000);
        return { selected: about3.gDBView.numSelected, ...state() };
    """, IMAP_ALICE, subject, token)
    assert shown["selected"] == 1, shown

    shot = env.tb.screenshot(tmp_path / "thunderbird.png")
    assert _png_size(shot) == env.tb.size and 10_000 < shot.stat().st_size < 300_000, shot.stat().st_size
    if os.environ.get("THUNDERBIRD_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["THUNDERBIRD_SCREENSHOT"])

    # reading it set \Seen on the server too (STORE), which the Maildir file name records
    deadline, flags = time.monotonic() + STEP, None
    while time.monotonic() < deadline:
        names = [p.name for p in (env.server.maildir(ALICE) / "cur").glob("*") if token.encode() in p.read_bytes()]
        flags = names[0].rpartition(":2,")[2] if names else None
        if flags and "S" in flags:
            break
        time.sleep(0.2)
    assert flags and "S" in flags, (flags, env.why())

    log = env.server.log_text()
    assert "session start imaps from 127.0.0.1" in log, env.why()
    assert f"imap login {ALICE} from 127.0.0.1" in log, env.why()
    # Thunderbird turns on COMPRESS=DEFLATE when offered (mail.server.default.use_compress_deflate
    # is true by default), so all of the above went through the deflated session
    assert f"imap compression on for {ALICE} from 127.0.0.1" in log, env.why()


def test_pop3_message_downloaded(env):
    token = uuid.uuid4().hex
    subject = f"Thunderbird over POP3 {token[:8]}"
    env.server.deliver(_message(ALICE, CAROL, subject, f"Hello Carol, this came over POP3 with STLS. token={token}"),
                       user=CAROL)
    # "Get Messages" for carol's POP3 account
    got = env.tb.js("""
        const [key, password, subject] = arguments;
        const server = serverOf(key);
        server.password = password;
        const inbox = inboxOf(key);
        const { listener, finished } = urlListener();
        server.getNewMessages(inbox, window.msgWindow, listener);
        const status = await Promise.race([finished, sleep(80000).then(() => "no answer in 80 s")]);
        await waitFor(`"${subject}" in the Inbox`, () => subjectsOf(inbox).includes(subject), 20000);
        return { status, mbox: inbox.filePath.path, subjects: subjectsOf(inbox) };
    """, POP3_CAROL, PASSWORDS[CAROL], subject)
    assert got["status"] == 0, (got, env.why())
    assert got["subjects"] == [subject], got
    mbox = Path(got["mbox"])
    assert mbox.parts[-3:] == ("Mail", "127.0.0.1", "Inbox"), mbox
    env.wait_file(mbox, f"Subject: {subject}".encode(), token.encode())

    # Thunderbird deletes what it downloaded (leave_on_server is false by default)
    deadline = time.monotonic() + STEP
    while env.server.messages(CAROL) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert env.server.messages(CAROL) == [], env.why()
    # the session may be a worker's: its log lines reach the main process's log through a pipe,
    # a moment after the files are gone
    logout = f"pop3 logout {CAROL} from 127.0.0.1: 1 messages deleted"
    deadline = time.monotonic() + STEP
    while logout not in env.server.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = env.server.log_text()
    assert "session start pop3 from 127.0.0.1" in log, env.why()
    assert re.search(rf"pop3 login {re.escape(CAROL)} from 127\.0\.0\.1 .*1 messages\)", log), env.why()
    assert logout in log, env.why()


def test_smtp_submission_to_another_user(env):
    token = uuid.uuid4().hex
    subject = f"Thunderbird over submission {token[:8]}"
    # What the compose window's Send does: nsIMsgSend with the identity's SMTP server
    # (STARTTLS, AUTH), then a copy into the identity's Sent folder on the IMAP server.
    sent = env.tb.js("""
        const [key, password, to, subject, body] = arguments;
        const account = MailServices.accounts.getAccount(key);
        const identity = account.defaultIdentity;
        const smtp = MailServices.outgoingServer.getServerByKey(identity.smtpServerKey);
        smtp.password = password;
        const fields = Cc["@mozilla.org/messengercompose/composefields;1"].createInstance(Ci.nsIMsgCompFields);
        fields.from = `${identity.fullName} <${identity.email}>`;
        fields.to = to;
        fields.subject = subject;
        fields.fcc = identity.fccFolderURI;
        const events = [];
        const outcome = new Promise(resolve => {
          const listener = {
            QueryInterface: ChromeUtils.generateQI(["nsIMsgSendListener", "nsIMsgCopyServiceListener"]),
            onStartSending() {}, onProgress() {}, onGetDraftFolderURI() {}, onStartCopy() {},
            setMessageKey() {}, getMessageId() { return null; },
            onStatus(id, message) { events.push(`status ${message}`); },
            onStopSending(id, status, message) {
              events.push(`sent ${id} ${status} ${message}`);
              if (status != 0) resolve("send failed");
            },
            onSendNotPerformed(id, status) { events.push(`not performed ${status}`); resolve("not performed"); },
            onTransportSecurityError(id, status) { events.push(`TLS error ${status}`); resolve("TLS error"); },
            onStopCopy(status) { events.push(`copied ${status}`); resolve(status == 0 ? "sent and copied" : "copy failed"); },
          };
          const send = Cc["@mozilla.org/messengercompose/send;1"].createInstance(Ci.nsIMsgSend);
          send.createAndSendMessage(null, identity, account.key, fields, false, false, Ci.nsIMsgSend.nsMsgDeliverNow,
                                    null, "text/plain", body, null, null, listener, "", null, Ci.nsIMsgCompType.New);
        });
        const result = await Promise.race([outcome, sleep(80000).then(() => "no answer in 80 s")]);
        return { result, events, smtp: smtp.serverURI.spec, fcc: identity.fccFolderURI };
    """, IMAP_ALICE, PASSWORDS[ALICE], BOB, subject, f"Hello Bob, Thunderbird sent this. token={token}\n")
    assert sent["result"] == "sent and copied", (sent, env.why())

    msgs = [m for m in env.server.wait_for_messages(BOB, 1, timeout=STEP) if token.encode() in m]
    assert len(msgs) == 1, env.why()
    msg = msgs[0]
    assert f"Subject: {subject}".encode() in msg and b"User-Agent: Mozilla Thunderbird" in msg, msg
    received = msg.split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPSA" in received and b"(using TLS" in received, received  # STARTTLS, then AUTH
    assert f"(authenticated as {ALICE})".encode() in received, received
    copies = [m for m in env.server.wait_for_messages(ALICE, 1, folder="Sent", timeout=STEP) if token.encode() in m]
    assert len(copies) == 1, env.why()
    log = env.server.log_text()
    assert "session start submission from 127.0.0.1" in log, env.why()
    assert f"auth ok submission from 127.0.0.1 as {ALICE}" in log, env.why()
    assert re.search(rf"status=accepted .*from=<{ALICE}> to=<{BOB}> .*listener=submission", log), env.why()
    assert re.search(rf"status=sent .*to=<{BOB}> .*relay=local dsn=2\.0\.0 folder=INBOX", log), env.why()

    # bob's own IMAP account (STARTTLS on the imap port) in the same Thunderbird gets it
    got = env.tb.js("""
        const [key, password, subject] = arguments;
        const server = serverOf(key);
        server.password = password;
        const inbox = inboxOf(key);
        server.getNewMessages(inbox, window.msgWindow, null);
        await waitFor(`"${subject}" in bob's Inbox`, () => subjectsOf(inbox).includes(subject));
        return { mbox: inbox.filePath.path, subjects: subjectsOf(inbox) };
    """, IMAP_BOB, PASSWORDS[BOB], subject)
    assert subject in got["subjects"], got
    env.wait_file(Path(got["mbox"]), f"Subject: {subject}".encode(), token.encode())
    log = env.server.log_text()
    assert "session start imap from 127.0.0.1" in log, env.why()
    assert f"imap login {BOB} from 127.0.0.1" in log, env.why()
    assert f"imap compression on for {BOB} from 127.0.0.1" in log, env.why()  # after STARTTLS


def _servers(config: dict, which: str) -> list[tuple]:
    """(type, hostname, port, socketType) of the wizard's ``which`` server and its alternatives."""
    return [(s["type"], s["hostname"], s["port"], s["socketType"])
            for s in [config[which], *config[f"{which}Alternatives"]]]


def test_account_wizard_finds_the_settings_from_the_address(env):
    """Thunderbird's account wizard finds the settings from alice's address alone.

    Its own lookup runs (``FindConfig.parallelAutoDiscovery`` and ``replaceVariables``, see
    ``thunderbird.FIND_CONFIG_JS``): the isp/ folder, ``autoconfig.example.test`` and
    ``example.test/.well-known`` over https and http, the ISPDB, the MX host's domain and
    Microsoft Autodiscover.  It finds the server (1) through the ISPDB setting pointed at the
    autoconfig listener, as a dev user sets it in the Config Editor, and (2) through
    ``http://autoconfig.example.test/mail/config-v1.1.xml``, the name resolving to 127.0.0.1
    (``network.dns.localDomains``, Thunderbird's own hosts entry) and port 80 of the network
    namespace forwarded to the listener.  The lookup asks DNS (MX, SRV) with the system's
    resolver, which prefs do not turn off, so it runs only in the namespace, where no packet
    can leave.
    """
    if not env.tb.jail.isolated:
        pytest.skip(f"the wizard's lookup asks DNS, so it needs the network namespace ({env.tb.jail.reason})")
    port = env.server.port
    assert "autoconfig" in env.server.ports, env.server.ports
    SSL, STARTTLS = 3, 2  # nsMsgSocketType
    # what the server's answer lists: its host name (tests/conftest.py) and bound ports
    expected_incoming = [("imap", HOST, port("imaps"), SSL), ("imap", HOST, port("imap"), STARTTLS),
                         ("pop3", HOST, port("pop3s"), SSL), ("pop3", HOST, port("pop3"), STARTTLS)]
    expected_outgoing = [("smtp", HOST, port("submissions"), SSL), ("smtp", HOST, port("submission"), STARTTLS)]

    def found(address, prefs, source):
        got = env.tb.find_config(address, prefs)
        assert "error" not in got and got.get("config"), (got, env.why())
        config = got["config"]
        assert (config["source"], config["subSource"], config["id"]) == ("xml", source, DOMAIN), config
        assert _servers(config, "incoming") == expected_incoming, config
        assert _servers(config, "outgoing") == expected_outgoing, config
        for which in ("incoming", "outgoing"):  # "normal password" with the whole address
            assert (config[which]["auth"], config[which]["username"]) == (3, address), config
        assert got["elapsed"] < 20_000, got
        return config

    def nothing(address, prefs):
        got = env.tb.find_config(address, prefs)
        assert "error" not in got and got.get("config", "missing") is None, (got, env.why())

    # (1) mailnews.auto_config_url, the ISPDB: GET /v1.1/example.test
    ispdb = {"mailnews.auto_config_url": f"http://127.0.0.1:{port('autoconfig')}/v1.1/"}
    found(ALICE, ispdb, "xml-from-db")
    env.wait_log('"GET /v1.1/example.test HTTP/1.1" 200')
    # and what is found is the server's answer: a closed port gives nothing (the wizard would
    # go on to guess host names), and so does a domain the server does not have
    nothing(ALICE, {"mailnews.auto_config_url": f"http://127.0.0.1:{_closed_port()}/v1.1/"})
    nothing("someone@other.example", ispdb)
    env.wait_log('"GET /v1.1/other.example HTTP/1.1" 404')

    # (2) autoconfig.example.test on port 80, the ISPDB off
    hosts = {"mailnews.auto_config_url": "", "network.dns.localDomains": f"autoconfig.{DOMAIN}",
             "network.proxy.no_proxies_on": f"localhost, 127.0.0.1, autoconfig.{DOMAIN}"}
    nothing(ALICE, hosts)  # nothing listens on port 80 yet
    env.tb.jail.forward(80, port("autoconfig"))
    found(ALICE, hosts, "xml-from-isp-http")
    env.wait_log('"GET /mail/config-v1.1.xml?emailaddress=alice%40example.test HTTP/1.1" 200')
    # the lookup's prefs were for it alone
    assert env.tb.js("return Services.prefs.getCharPref(arguments[0])", "mailnews.auto_config_url") == ""
