"""Raw line-based clients over a plain socket, for what smtplib, imaplib and poplib will not send.

:class:`LineClient` holds the socket and splits what arrives into CRLF lines;
:class:`SmtpClient`, :class:`ImapClient` and :class:`Pop3Client` add each protocol's reply
framing.  ``sock`` and ``buf`` are plain attributes: a test may wrap ``sock`` in TLS itself or
check that the server closed it.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess

from support import rev2
from support.servers import PASSWORDS

__all__ = ["LineClient", "SmtpClient", "ImapClient", "Pop3Client", "Fetchmail", "imap_login", "pop3_login"]

BOB = "bob@example.test"


class LineClient:
    """One connection to 127.0.0.1:``port`` (TLS from the start when ``context`` is given)."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line, without its CRLF; ConnectionResetError when the server closes first."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError(f"closed; buffer {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def recv_exactly(self, size: int) -> bytes:
        """``size`` bytes (an IMAP literal, say), from the buffer first."""
        while len(self.buf) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError(f"closed; buffer {self.buf!r}")
            self.buf += chunk
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def starttls(self, context: ssl.SSLContext) -> None:
        """Wrap the socket in TLS now (the server has said go ahead); ``buf`` keeps whatever
        plain text came after the go-ahead, for tests of STARTTLS command injection."""
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def close(self) -> None:
        self.sock.close()


class SmtpClient(LineClient):
    """SMTP: replies are ``(code, text)``, multi-line ones joined (RFC 5321 4.2.1)."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None, timeout: float = 10):
        super().__init__(port, context, timeout)
        self.greeting = self.read()

    def read(self) -> tuple[int, str]:
        """One (possibly multi-line) reply."""
        lines = []
        while True:
            line = self.line()
            lines.append(line.decode())
            if line[3:4] == b" ":
                return int(line[:3]), "\n".join(text[4:] for text in lines)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.read()

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.cmd("STARTTLS")[0] == 220
        super().starttls(context)


class ImapClient(LineClient):
    """IMAP: a command's answer is its lines up to and including the tagged response."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None, timeout: float = 10):
        super().__init__(port, context, timeout)
        self.greeting = self.line()

    def until(self, tag: bytes) -> list[bytes]:
        """Lines up to and including the tagged response."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    rev2 = False  # after enable_rev2: answers compare as IMAP4rev2's (see support.rev2)

    def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        lines = self.until(tag)
        return rev2.Replies(lines, tag, text) if self.rev2 else lines

    def login(self, user: str = BOB) -> None:
        assert self.cmd(b"L", f'LOGIN {user} "{PASSWORDS[user]}"'.encode())[-1].startswith(b"L OK")

    def enable_rev2(self) -> None:
        """``ENABLE IMAP4rev2`` (RFC 9051 6.3.1); from now on replies compare as IMAP4rev2's."""
        assert self.cmd(*rev2.ENABLE) == rev2.ENABLED
        self.rev2 = True


class Pop3Client(LineClient):
    """POP3: lines are read as sent, CRLF included (b"" once the server has closed)."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None, timeout: float = 10):
        super().__init__(port, context, timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> bytes:
        return self.file.readline()

    def cmd(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def multiline(self) -> list[bytes]:
        """The lines of a multi-line response up to the terminating ".", as sent (RFC 1939 3)."""
        lines = []
        while (line := self.line()) != b".\r\n":
            assert line, "connection closed inside a multi-line response"
            lines.append(line)
        return lines

    def login(self, user: str = BOB) -> None:
        assert self.cmd(f"USER {user}").startswith(b"+OK")
        assert self.cmd(f"PASS {PASSWORDS[user]}").startswith(b"+OK")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def imap_login(srv, user: str = BOB) -> ImapClient:
    """A raw IMAP connection to ``srv``'s ``imap`` port, logged in as ``user``."""
    client = ImapClient(srv.port("imap"))
    client.login(user)
    return client


def pop3_login(srv, user: str = BOB) -> Pop3Client:
    """A raw POP3 connection to ``srv``'s ``pop3`` port, logged in as ``user`` (USER/PASS)."""
    client = Pop3Client(srv.port("pop3"))
    client.login(user)
    return client


class Fetchmail:
    """fetchmail polling ``srv`` as ``user`` over ``proto`` (IMAP or POP3) with TLS verified
    against the test CA, keeping the mail on the server and appending what it fetches to
    :attr:`mbox`.  ``extra`` goes on the poll line (``uidl``); ``args`` on each run's command
    line (``-i ids``)."""

    def __init__(self, srv, home, proto: str, user: str = BOB, extra: str = "", args: tuple[str, ...] = ()):
        home.mkdir(exist_ok=True)
        self.mbox = home / "mbox"
        self.rc = home / "fetchmailrc"
        service = srv.port("imap" if proto == "IMAP" else "pop3")
        self.rc.write_text(
            "set no syslog\n"
            f"poll localhost via 127.0.0.1 with proto {proto} service {service} {extra}\n"
            f'  user "{user}" there with password "{PASSWORDS[user]}" is root here\n'
            f'  keep sslproto TLS1.2+ sslcertck sslcertfile "{srv.ca_file}" sslcommonname localhost\n'
            f'  mda "cat >> {self.mbox}"\n'
        )
        self.rc.chmod(0o600)
        self.env = dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))
        self.args = list(args)

    def run(self):
        """One poll; fetchmail exits 0 when it fetched mail, 1 when there was none."""
        return subprocess.run(["fetchmail", "-f", str(self.rc), *self.args, "--nodetach", "-v"],
                              env=self.env, capture_output=True, text=True, timeout=60)

    def fetched(self, needle: bytes = b"Subject: message ") -> int:
        return self.mbox.read_bytes().count(needle)
