"""``mailstack init --dev``: a complete throw-away set-up for trying mailstack on one machine.

It writes a configuration on loopback dev ports, a private CA and a server certificate it
signs (``CA:FALSE``, SAN localhost/127.0.0.1/::1: Thunderbird refuses a self-signed CA
certificate used as a server certificate), an empty store, and two demo users with random
passwords recorded in ``dev-credentials.txt``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailstack.accounts import UsersFile
from mailstack.passwords import hash_password
from mailstack.config import DEV_PORTS, LISTENERS
from mailstack.fsutil import atomic_write
from mailstack.store import MaildirStore

DEMO_DOMAIN = "example.test"
DEMO_USERS = ("alice", "bob")


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    # Not fsynced: a throw-away set-up lost to a crash is made again by re-running the command.
    atomic_write(path, data, mode=mode, fsync=False)


def make_dev_ca(tls_dir: str, hostnames=("localhost",), addresses=("127.0.0.1", "::1")) -> dict[str, str]:
    """Make ca.pem/ca-key.pem and a leaf server.pem/server-key.pem signed by it."""
    os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailstack dev CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailstack development")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8, encryption_algorithm=serialization.NoEncryption())
    paths = {name: os.path.join(tls_dir, name) for name in ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem")}
    _write(paths["ca.pem"], ca_cert.public_bytes(pem))
    _write(paths["ca-key.pem"], ca_key.private_bytes(**pkcs8), 0o600)
    _write(paths["server.pem"], cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    _write(paths["server-key.pem"], key.private_bytes(**pkcs8), 0o600)
    return paths


def dev_config(listeners: dict[str, int], interface: str = "127.0.0.1") -> str:
    from mailstack.service import PROTOCOLS

    lines = [
        "# mailstack development configuration, written by 'mailstack init --dev'.",
        "# Every option is documented in etc/mailstack.toml.  Paths are relative to this file.",
        "",
        "[server]",
        'hostname = "localhost"',
        f'domains = ["{DEMO_DOMAIN}"]',
        'ports_file = "run/ports.json"',
        '# A dev server runs as whoever starts it; production runs as the "mailstack" user.',
        'user = ""',
        "",
        "[listeners]",
    ]
    for key, (protocol, _tls) in LISTENERS.items():
        line = f'{key} = "tcp:{listeners[key]}:interface={interface}"'
        lines.append(line if protocol in PROTOCOLS else f"# {line}   (the {protocol} server is not built yet)")
    lines += [
        "",
        "[tls]",
        'certificate = "tls/server.pem"',
        'key = "tls/server-key.pem"',
        "",
        "[accounts]",
        'users = "users"',
        'aliases = "aliases"',
        "",
        "[store]",
        'root = "mail"',
        "",
    ]
    return "\n".join(lines)


def init_dev(directory: str, ports: dict[str, int] | None = None) -> dict[str, str]:
    """Create a dev set-up in ``directory`` (which must not hold one yet)."""
    if os.path.exists(os.path.join(directory, "mailstack.toml")):
        raise FileExistsError(f"{directory}/mailstack.toml exists; remove {directory} to start afresh")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for sub in ("mail", "run"):
        os.makedirs(os.path.join(directory, sub), mode=0o700, exist_ok=True)
    make_dev_ca(os.path.join(directory, "tls"))
    passwords = {f"{u}@{DEMO_DOMAIN}": secrets.token_urlsafe(12) for u in DEMO_USERS}
    users_path = os.path.join(directory, "users")
    _write(users_path, b"# user@domain:{SCHEME}hash  (Dovecot passwd-file form); edit with 'mailstack user'\n", 0o640)
    users = UsersFile(users_path)
    store = MaildirStore(os.path.join(directory, "mail"))
    for address, password in passwords.items():
        users.set(address, hash_password(password), must_exist=False)
        store.mailbox(address)  # the Maildir with its special folders
    _write(os.path.join(directory, "aliases"),
           f"# alias@domain: target, target   or   @domain: catch-all target\npostmaster@{DEMO_DOMAIN}: alice@{DEMO_DOMAIN}\n".encode())
    _write(os.path.join(directory, "dev-credentials.txt"),
           ("# demo users made by 'mailstack init --dev' (throw-away passwords)\n"
            + "".join(f"{a}  password: {p}\n" for a, p in passwords.items())).encode(), 0o600)
    _write(os.path.join(directory, "mailstack.toml"), dev_config(ports or DEV_PORTS).encode())
    return passwords
