"""The Sender Rewriting Scheme (SRS, Shevek's "Sender Rewriting Scheme" paper; libsrs2's and
Mail::SRS's address forms), so that forwarded mail passes SPF at its destination.

Forwarding keeps the message but not the envelope sender: the destination checks SPF (RFC 7208)
for the sender's domain against *our* address and fails it.  So a copy leaving the server for
someone else's sender (alias expansion, Sieve ``redirect``) gets an envelope sender in our SRS
domain that encodes the original, and a bounce to that address, arriving on the MX port, is
reversed and sent on to the original sender.  Addresses (``=`` after the tag; ``+`` and ``-``
are accepted there too, as libsrs2 does)::

    SRS0=HHHH=TT=orig.example=alice@srs.domain              (a plain sender, alice@orig.example)
    SRS1=HHHH=fwd1.example==HHHH=TT=orig.example=alice@srs.domain
                                                  (an SRS0 address of the forwarder fwd1.example)

``TT``: the day (Unix time // 86400) modulo 1024, two base32 letters (``A-Z2-7``), high five
bits first; an address is good for ``max_age_days`` after it, the wrap of 1024 days included.
``HHHH``: the first four base64 characters of HMAC-SHA1 over the lower-cased fields joined by
``=`` (SRS0: ``TT``, host, local part; SRS1: the SRS0 host and the SRS0 local part after
``SRS0``: a plain concatenation would let one host/local split pass for another), compared
without regard to case, since MTAs on the way may change the case of a local part.  SRS1 keeps
only the first forwarder (its hash is not ours to check; its holder checks it when the bounce
gets there) and has no timestamp of its own.  Reversal is one hop: SRS0 gives the original
sender, SRS1 the first forwarder's SRS0 address.

The key file holds one secret a line (blank and ``#`` lines ignored): the first signs, every
line verifies, so a key is rotated by adding a new first line and deleting the old one after
``max_age_days``.  It is made on first start with 32 random bytes (hex), mode 0600, by the
service user (the service makes it after dropping root; the CLI makes it as that user).
The secret is the line's text as bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets as secrets_mod
import sys
import time
from collections.abc import Iterable

from mailstack import fileaccess
from mailstack.errors import ConfigError, MailstackError

HASH_LENGTH = 4  # base64 characters: 24 bits, as libsrs2 and Mail::SRS make by default
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
TIME_SLOTS = 1024  # two base32 characters: 10 bits of days
DAY = 86400
SEPARATORS = "=+-"  # accepted after SRS0/SRS1; we write "="
MAX_AGE_LIMIT = 1000  # days; beyond ~1023 the 10-bit timestamp could not tell old from new


class SRSError(MailstackError):
    """An address that is not a valid SRS address of ours: forged hash, expired, malformed."""


def timestamp(now: float) -> str:
    day = int(now // DAY) % TIME_SLOTS
    return BASE32[day >> 5] + BASE32[day & 31]


def timestamp_age(stamp: str, now: float) -> int:
    """Days since ``stamp`` was made (modulo the 1024-day wrap); SRSError if it is not one."""
    stamp = stamp.upper()
    if len(stamp) != 2 or any(c not in BASE32 for c in stamp):
        raise SRSError(f"bad timestamp {stamp!r}")
    then = BASE32.index(stamp[0]) << 5 | BASE32.index(stamp[1])
    return (int(now // DAY) - then) % TIME_SLOTS


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise SRSError(f"not an address: {address!r}")
    return local, domain


def _tag(local: str) -> str:
    """"SRS0" / "SRS1" when ``local`` starts with that tag and a separator, else ""."""
    if len(local) > 5 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in SEPARATORS:
        return local[:4].upper()
    return ""


class SRS:
    """Rewrite senders for forwarding (:meth:`forward`) and undo it for bounces (:meth:`reverse`).

    ``secret``: one key, or several (the first signs, all verify).  ``local_domains``: senders
    there are ours and are never rewritten (the SRS domain is always among them).
    """

    def __init__(self, secret: bytes | Iterable[bytes], domain: str, max_age_days: int = 21,
                 local_domains: Iterable[str] = (), clock=time.time, key_file: str = ""):
        keys = [secret] if isinstance(secret, (bytes, bytearray)) else list(secret)
        if not keys or not all(keys):
            raise ValueError("SRS needs at least one non-empty secret")
        self.keys = [bytes(k) for k in keys]
        self.domain = domain.lower().rstrip(".")
        self.max_age_days = max_age_days
        self.local_domains = [d.lower() for d in local_domains]
        self.clock = clock
        self.key_file = key_file

    @classmethod
    def from_config(cls, cfg) -> SRS | None:
        """The SRS of ``[srs]`` (checked by :func:`check_config`), None when it is off.
        *Blocking*: makes the key file on first use and reads it."""
        s = getattr(cfg, "srs", None) or {}
        if not s.get("enabled"):
            return None
        try:
            ensure_key_file(s["key_file"])
        except OSError as e:
            raise ConfigError(cfg.path, "[srs] key_file", f"cannot make {s['key_file']}: {e.strerror}") from None
        return cls(load_keys(s["key_file"]), s["domain"], s["max_age_days"], cfg.domains, key_file=s["key_file"])

    def reload_keys(self) -> None:
        """Read the key file again (SIGHUP: a rotated key); ConfigError keeps the old keys."""
        if self.key_file:
            self.keys = load_keys(self.key_file)

    # -- the codec ----------------------------------------------------------------------------

    def _hash(self, key: bytes, *fields: str) -> str:
        # Joined with "=", which no host has: "a.com"+"x" and "a.co"+"mx" must not hash alike.
        digest = hmac.new(key, "=".join(fields).lower().encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")[:HASH_LENGTH]

    def _check_hash(self, given: str, *fields: str) -> None:
        if len(given) != HASH_LENGTH:
            raise SRSError("bad hash length")
        if not any(hmac.compare_digest(self._hash(k, *fields).lower(), given.lower()) for k in self.keys):
            raise SRSError("hash does not match (forged or made with another key)")

    def is_srs(self, address: str) -> bool:
        """An SRS0 or SRS1 address (any domain): the form only, nothing checked."""
        local = address.rpartition("@")[0]
        return bool(_tag(local))

    def is_ours(self, address: str) -> bool:
        """An SRS address in our SRS domain: what the MX reverses."""
        return self.is_srs(address) and address.rpartition("@")[2].lower().rstrip(".") == self.domain

    def is_local(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return domain == self.domain or domain in self.local_domains

    def forward(self, sender: str) -> str:
        """The envelope sender for a copy of a message from ``sender`` that we forward.

        Unchanged: the null sender, one of our own domains, and a quoted local part (it
        cannot be put inside another local part).
        """
        if not sender or "@" not in sender:
            return sender
        local, host = _split(sender)
        if self.is_local(host) or local.startswith('"'):
            return sender
        tag = _tag(local)
        if tag == "SRS0":  # another forwarder's: keep its host and what follows "SRS0"
            srs_host, srs_user = host, local[4:]
        elif tag == "SRS1":  # SRS1<sep>hash=host=<the SRS0 part>: keep the first forwarder
            try:
                _hash, srs_host, srs_user = local[5:].split("=", 2)
            except ValueError:
                srs_host, srs_user = "", ""
            if not srs_host or len(srs_user) < 2 or srs_user[0] not in SEPARATORS:  # not SRS1: wrap it as SRS0
                return self._srs0(local, host)
        else:
            return self._srs0(local, host)
        return f"SRS1={self._hash(self.keys[0], srs_host, srs_user)}={srs_host}={srs_user}@{self.domain}"

    def _srs0(self, local: str, host: str) -> str:
        stamp = timestamp(self.clock())
        return f"SRS0={self._hash(self.keys[0], stamp, host, local)}={stamp}={host}={local}@{self.domain}"

    def reverse(self, address: str) -> str:
        """The address one hop back; SRSError when it is not ours, forged, expired or malformed."""
        local, domain = _split(address)
        if domain.lower().rstrip(".") != self.domain:
            raise SRSError(f"not in the SRS domain {self.domain}")
        tag = _tag(local)
        if tag == "SRS0":
            parts = local[5:].split("=", 3)
            if len(parts) != 4 or not all(parts):
                raise SRSError("malformed SRS0 address")
            given, stamp, host, user = parts
            self._check_hash(given, stamp, host, user)
            age = timestamp_age(stamp, self.clock())
            if age > self.max_age_days:
                raise SRSError(f"expired ({age} days old, valid for {self.max_age_days})")
            return f"{user}@{host}"
        if tag == "SRS1":
            parts = local[5:].split("=", 2)
            if len(parts) != 3 or not all(parts) or len(parts[2]) < 2 or parts[2][0] not in SEPARATORS:
                raise SRSError("malformed SRS1 address")
            given, host, srs_user = parts
            self._check_hash(given, host, srs_user)
            return f"SRS0{srs_user}@{host}"
        raise SRSError("not an SRS address")


# -- the key file and [srs] ---------------------------------------------------------------------


def load_keys(path: str) -> list[bytes]:
    """The secrets of the key file, first (signing) first; ConfigError when there is none."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(path, "[srs] key_file", f"cannot read it: {e.strerror}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith(b"#")]
    if not keys:
        raise ConfigError(path, "[srs] key_file", "holds no key (one secret a line; the first signs)")
    return keys


def ensure_key_file(path: str) -> bool:
    """Make the key file with a new random secret unless it exists; True when made.  Written
    aside and linked into place, so two processes starting at once agree on one key."""
    if os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.{secrets_mod.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, f"# SRS secrets (mailstack.srs): the first line signs, every line verifies\n"
                         f"{secrets_mod.token_hex(32)}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    return True


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return len(domain) <= 253 and len(labels) >= 1 and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
        and not label.startswith("-") and not label.endswith("-") for label in labels)


def check_config(values: dict, domains: list[str], root: str, path: str) -> dict:
    """[srs], checked, with its defaults filled in: ``domain`` the first ``[server] domains``
    (the domain ``mailstack dns`` publishes MX and SPF records for, so bounces to the SRS
    addresses come here and the rewritten senders pass SPF), ``key_file`` ``srs.key`` beside
    the store root (the data directory, as the queue and DKIM keys)."""
    s = dict(values["srs"])
    s["domain"] = (s["domain"] or domains[0]).strip().lower().rstrip(".")
    if not _valid_domain(s["domain"]):
        raise ConfigError(path, "[srs] domain", f"not a domain name: {s['domain']!r}")
    if not 1 <= s["max_age_days"] <= MAX_AGE_LIMIT:
        raise ConfigError(path, "[srs] max_age_days", f"must be between 1 and {MAX_AGE_LIMIT}")
    s["key_file"] = s["key_file"] or os.path.join(os.path.dirname(root), "srs.key")
    if s["enabled"]:
        if os.path.isdir(s["key_file"]):
            raise ConfigError(path, "[srs] key_file", f"{s['key_file']} is a directory, not a file")
        if os.path.lexists(s["key_file"]):
            fileaccess.readable(path, "[srs] key_file", s["key_file"])
            fileaccess.private_key_file(path, "[srs] key_file", s["key_file"])
            load_keys(s["key_file"])
        else:
            fileaccess.writable_dir(path, "[srs] key_file", os.path.dirname(s["key_file"]))
    return s


def cmd_srs(cfg, action: str, address: str) -> int:
    """``mailstack srs forward|reverse ADDRESS``: what the server would write or accept."""
    srs = SRS.from_config(cfg)
    if srs is None:
        raise SystemExit(f"mailstack: [srs] enabled is false in {cfg.path}")
    if action == "forward":
        print(srs.forward(address))
        return 0
    try:
        print(srs.reverse(address))
    except SRSError as e:
        print(f"mailstack: {address}: {e}", file=sys.stderr)
        return 1
    return 0
