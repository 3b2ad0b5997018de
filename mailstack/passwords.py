"""Password hashes: new ones are ``{ARGON2ID}`` (argon2-cffi, parameters from ``[auth]``);
``{ARGON2I}``, ``{BLF-CRYPT}`` (bcrypt) and the salted SHA-2 schemes ``doveadm pw`` makes are
verified too, so a users file comes over from Dovecot unchanged.  Passwords are SASLprepped
(RFC 4013) before hashing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from mailstack.sasl import saslprep

#: RFC 9106 4, the second recommended option (for when 2 GiB a hash is too much): Argon2id,
#: t=3 passes over m=64 MiB with p=4 lanes.  ``[auth] argon2_*`` may change them.
ARGON2_DEFAULTS = {"time_cost": 3, "memory_cost": 65536, "parallelism": 4}
_argon2 = None
_argon2_params = dict(ARGON2_DEFAULTS)


def configure_argon2(time_cost: int, memory_cost: int, parallelism: int) -> None:
    """The parameters new hashes get (``memory_cost`` in KiB); hashes made with others still
    verify, and are made again at their next login (:meth:`Accounts.authenticate`)."""
    global _argon2
    _argon2_params.update(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
    _argon2 = None


def _argon2_hasher():
    global _argon2
    if _argon2 is None:
        from argon2 import PasswordHasher

        _argon2 = PasswordHasher(**_argon2_params)
    return _argon2


def hash_password(password: str) -> str:
    """A new ``{ARGON2ID}`` hash (the parameters of :func:`configure_argon2`) of the SASLprepped
    password (RFC 4013); ValueError when it holds a character SASLprep prohibits."""
    return "{ARGON2ID}" + _argon2_hasher().hash(saslprep(password))


def needs_rehash(stored: str) -> bool:
    """An Argon2 hash made with other parameters (or as Argon2i) than new ones get."""
    m = _SCHEME_RE.match(stored)
    if not m or m.group(1) not in ("ARGON2ID", "ARGON2I"):
        return False
    from argon2.exceptions import InvalidHashError

    try:
        return m.group(1) != "ARGON2ID" or _argon2_hasher().check_needs_rehash(m.group(2))
    except (InvalidHashError, ValueError):
        return False


def _salted_sha(algorithm: str, digest_size: int):
    def verify(encoded: str, password: bytes) -> bool:
        raw = base64.b64decode(encoded)
        digest, salt = raw[:digest_size], raw[digest_size:]
        return hmac.compare_digest(hashlib.new(algorithm, password + salt).digest(), digest)

    return verify


def _plain_sha(algorithm: str):
    def verify(encoded: str, password: bytes) -> bool:
        return hmac.compare_digest(base64.b64decode(encoded), hashlib.new(algorithm, password).digest())

    return verify


def _verify_argon2(encoded: str, password: bytes) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _argon2_hasher().verify(encoded, password)
    except (VerificationError, InvalidHashError):
        return False


def _verify_bcrypt(encoded: str, password: bytes) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password, encoded.encode("ascii"))
    except ValueError:
        return False


SCHEMES = {
    "ARGON2ID": _verify_argon2,
    "ARGON2I": _verify_argon2,
    "BLF-CRYPT": _verify_bcrypt,
    "SSHA512": _salted_sha("sha512", 64),
    "SSHA256": _salted_sha("sha256", 32),
    "SSHA": _salted_sha("sha1", 20),
    "SHA512": _plain_sha("sha512"),
    "SHA256": _plain_sha("sha256"),
}
_SCHEME_RE = re.compile(r"^\{([A-Z0-9.-]+)\}(.+)$")
_DUMMY_HASH = None


def check_hash_syntax(stored: str) -> str | None:
    """None if ``stored`` is a hash we can verify, else why not."""
    m = _SCHEME_RE.match(stored)
    if not m:
        return "password must be {SCHEME}hash (make one with 'mailstack user add' or 'doveadm pw')"
    if m.group(1) not in SCHEMES:
        return f"password scheme {{{m.group(1)}}} is not supported (use one of {', '.join(SCHEMES)})"
    return None


def verify_password(stored: str, password: str) -> bool:
    """Does ``password`` match?  Its SASLprep form is tried first (what :func:`hash_password`
    stores), then, if different, the password as typed: a hash made elsewhere (Dovecot) or
    before SASLprep came in may be of that."""
    try:
        prepared = saslprep(password)
    except ValueError:
        prepared = None
    if prepared is not None and _verify(stored, prepared):
        return True
    return prepared != password and _verify(stored, password)


def _verify(stored: str, password: str) -> bool:
    m = _SCHEME_RE.match(stored)
    if not m or m.group(1) not in SCHEMES:
        return False
    try:
        return SCHEMES[m.group(1)](m.group(2), password.encode("utf-8"))
    except (ValueError, TypeError):
        return False


def burn_time(password: str) -> None:
    """Spend what a real verification costs, so unknown users cannot be told apart by timing."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password("not a password")
    verify_password(_DUMMY_HASH, password)
