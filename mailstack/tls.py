"""TLS server contexts, shared by every listener and reloadable on SIGHUP.

TLS 1.2 is the minimum, only forward-secret AEAD cipher suites are offered, the server's
preference wins, and a reload swaps the context used for *new* handshakes only, so
sessions already running keep theirs.
"""

from __future__ import annotations

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from mailstack.errors import ConfigError


#: TLS 1.2 suites: forward-secret key exchange and AEAD only (TLS 1.3 suites are all of that
#: kind already).  Twisted sets server cipher preference by default.
MODERN_CIPHERS = ssl.AcceptableCiphers.fromOpenSSLCipherString(
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS")


def load_context_factory(cert_path: str, key_path: str, config_path: str = "") -> ssl.CertificateOptions:
    """Read a PEM certificate chain and key; raise ConfigError naming the file on failure."""
    try:
        with open(cert_path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ConfigError(config_path, "[tls] certificate", f"cannot read {cert_path}: {e.strerror}") from None
    try:
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise ConfigError(config_path, "[tls] key", f"cannot read {key_path}: {e.strerror}") from None
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + part for part in pem.split(marker)[1:]]
    if not blocks:
        raise ConfigError(config_path, "[tls] certificate", f"no PEM certificate in {cert_path}")
    try:
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
    except crypto.Error:
        raise ConfigError(config_path, "[tls] certificate", f"unreadable PEM certificate in {cert_path}") from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise ConfigError(config_path, "[tls] key", f"unreadable PEM private key in {key_path}") from None
    options = ssl.CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=MODERN_CIPHERS,
    )
    try:
        context = options.getContext()  # checks that the key matches the certificate (and is kept)
    except SSL.Error:
        raise ConfigError(config_path, "[tls] key", f"{key_path} does not match the certificate in {cert_path}") from None
    context.set_alpn_select_callback(select_alpn)
    return options


#: The ALPN ids (IANA's registry; RFC 2595 registered "imap" and "pop3") of what a listener speaks.
ALPN_IDS = {"imap": (b"imap",), "pop3": (b"pop3",), "smtp": (b"smtp",), "submission": (b"smtp",),
            "autoconfig": (b"http/1.1",), "https": (b"http/1.1",)}


def select_alpn(connection: SSL.Connection, offered: list[bytes]):
    """The listener's own protocol if the client offers it, else none at all: RFC 7301 3.2
    lets a server ignore the extension, and a TLS alert would only lock out curl, browsers,
    MTA-STS policy fetchers and mail apps that offer ALPN.  (Twisted's own callback answers
    "no overlap" with an empty choice, which OpenSSL turns into an internal-error alert.)
    The listener is found through the TLS protocol, the connection's app data."""
    tls_protocol = connection.get_app_data()
    factory = getattr(getattr(tls_protocol, "factory", None), "wrappedFactory", None)
    for protocol_id in getattr(factory, "alpn_ids", ()):
        if protocol_id in offered:
            return protocol_id
    return SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """A server connection creator whose certificate can be swapped while running."""

    def __init__(self, cert_path: str, key_path: str, config_path: str = ""):
        self.cert_path, self.key_path, self.config_path = cert_path, key_path, config_path
        self.options = load_context_factory(cert_path, key_path, config_path)
        self.before_connection = None  # called before each connection's TLS (a worker follows ACME)

    def reload(self) -> None:
        """Re-read the files; on error keep the old certificate and raise ConfigError."""
        self.options = load_context_factory(self.cert_path, self.key_path, self.config_path)

    def getContext(self) -> SSL.Context:
        if self.before_connection is not None:
            self.before_connection()
        return self.options.getContext()

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        if self.before_connection is not None:
            self.before_connection()
        connection = SSL.Connection(self.options.getContext(), None)
        # Twisted's ALPN callback finds the listener's protocols through the connection's app
        # data: without it, every client that offers ALPN (curl, browsers, MTA-STS fetchers,
        # some mail apps) got a TLS "internal error" alert instead of a handshake.
        connection.set_app_data(tlsProtocol)
        return connection


def tls_info(transport) -> tuple[str, str] | None:
    """(protocol version, cipher) of a transport's TLS session, or None if it has none."""
    try:
        handle = transport.getHandle()
    except Exception:
        return None
    if not isinstance(handle, SSL.Connection):
        return None
    try:
        return handle.get_protocol_version_name(), handle.get_cipher_name() or "unknown"
    except SSL.Error:
        return None
