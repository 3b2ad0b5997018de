"""COMPRESS=DEFLATE (RFC 4978) against a real twistd process, with a raw-socket client that
deflates and inflates with zlib, over TLS as clients use it."""

from __future__ import annotations

import socket
import zlib

from support.servers import PASSWORDS
from test_imap import BOB, deliver, message


class Deflated:
    """An IMAP client whose traffic is raw DEFLATE after COMPRESS."""

    def __init__(self, sock):
        self.sock = sock
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def until(self, tag: bytes) -> bytes:
        while not (self.buf.startswith(tag + b" ") or b"\r\n" + tag + b" " in self.buf) or not self.buf.endswith(b"\r\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(self.buf[-200:])
            self.buf += self.inflate.decompress(chunk)
        data, self.buf = self.buf, b""
        return data


def plain_until(sock, tag: bytes) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or (tag + b" ") not in data:
        data += sock.recv(65536)
    return data


def test_compress_deflate_both_ways(server_factory):
    srv = server_factory(listeners=["imaps"]).start()
    big = message(1, body=b"".join(b"a compressible line of text number %06d\r\n" % i for i in range(20000)))
    (uid,) = deliver(srv, big)
    sock = srv.ssl_context().wrap_socket(socket.create_connection(("127.0.0.1", srv.port("imaps")), timeout=20),
                                         server_hostname="localhost")
    greeting = sock.recv(4096)
    assert b"COMPRESS=DEFLATE" not in greeting  # only once logged in
    sock.sendall(f'a LOGIN {BOB} "{PASSWORDS[BOB]}"\r\n'.encode())
    assert b"a OK" in plain_until(sock, b"a")
    sock.sendall(b"c CAPABILITY\r\n")
    assert b" COMPRESS=DEFLATE" in plain_until(sock, b"c")
    sock.sendall(b"z COMPRESS FOO\r\n")
    assert b"z BAD" in plain_until(sock, b"z")
    sock.sendall(b"z COMPRESS DEFLATE\r\n")
    assert plain_until(sock, b"z").startswith(b"z OK")
    client = Deflated(sock)
    client.send(b"s SELECT INBOX\r\n")
    assert b"s OK" in client.until(b"s")
    client.send(b"f UID FETCH %d BODY.PEEK[]\r\n" % uid)
    response = client.until(b"f")
    assert big in response and b"f OK" in response
    client.send(b"c CAPABILITY\r\n")
    caps = client.until(b"c")
    assert b"COMPRESS=DEFLATE" not in caps
    client.send(b"z COMPRESS DEFLATE\r\n")
    assert b"z NO [COMPRESSIONACTIVE]" in client.until(b"z")
    # A literal sent compressed (APPEND) arrives byte-exact.
    client.send(b"p APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
    assert b"p OK [APPENDUID" in client.until(b"p")
    client.send(b"l LOGOUT\r\n")
    assert b"* BYE" in client.until(b"l")
    sock.close()
    assert sum(1 for m in srv.messages(BOB) if m == big) == 2


def test_garbage_after_compress_is_refused_not_a_crash(server_factory):
    srv = server_factory(listeners=["imap"]).start()
    sock = socket.create_connection(("127.0.0.1", srv.port("imap")), timeout=20)
    sock.recv(4096)
    sock.sendall(f'a LOGIN {BOB} "{PASSWORDS[BOB]}"\r\nz COMPRESS DEFLATE\r\n'.encode())
    data = plain_until(sock, b"z")
    assert b"z OK" in data or b"z BAD" in data  # pipelined behind COMPRESS: may be refused
    if b"z OK" in data:
        sock.sendall(b"\xff\xfe not deflate at all \x00" * 10)
        rest = b""
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                rest += chunk
        except OSError:
            pass
        assert b"Compressed data error" in zlib.decompressobj(-15).decompress(rest) or rest == b""
    sock.close()
    # The server is still there for others.
    s2 = socket.create_connection(("127.0.0.1", srv.port("imap")), timeout=20)
    assert s2.recv(4096).startswith(b"* OK")
    s2.close()
