"""Checking a password against a stored hash, whatever format the table holds.

Formats (as OpenSMTPD's crypt(3) tables and Dovecot-style schemes write them):
``$5$``/``$6$`` SHA-crypt, optionally behind ``{CRYPT}``, ``{SHA256-CRYPT}`` or
``{SHA512-CRYPT}``; ``{SSHA512}``, ``{SSHA256}``, ``{SSHA}`` (base64 of
digest(password + salt) + salt); ``{SHA512}``, ``{SHA256}``, ``{SHA}``
(base64 of the digest).

Invariants: a plaintext stored value is never compared, whatever it looks
like; ``False`` means only "wrong password"; anything that cannot be
checked (bcrypt, yescrypt, MD5-crypt, DES, malformed values) raises
:class:`UnsupportedHash`, a temporary failure (RFC 4954 454 4.7.0) whose
text names the scheme and never the stored value or the password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from mailrider.crypto import shacrypt
from mailrider.errors import TempFail


class UnsupportedHash(TempFail):
    """The stored hash cannot be checked here; the caller tempfails and logs."""

    code = 454
    status = "4.7.0"

    def __init__(self, scheme: str) -> None:
        super().__init__(f"unsupported password hash scheme {scheme}")
        self.scheme = scheme


_DIGESTS = {"SHA512": ("sha512", 64), "SHA256": ("sha256", 32), "SHA": ("sha1", 20)}

#: prefixes of formats we recognise but cannot check without third-party code
_UNSUPPORTED = {
    "$2a$": "bcrypt", "$2b$": "bcrypt", "$2y$": "bcrypt", "$2x$": "bcrypt",
    "$y$": "yescrypt", "$gy$": "gost-yescrypt", "$7$": "scrypt", "$1$": "md5-crypt",
    "$argon2": "argon2", "$sha1$": "sha1-crypt", "$md5": "sun-md5",
}


def _b64(text: str, scheme: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UnsupportedHash(f"{scheme} (malformed)") from None


def _check_crypt(password: str, stored: str, scheme: str) -> bool:
    for prefix, name in _UNSUPPORTED.items():
        if stored.startswith(prefix):
            raise UnsupportedHash(name)
    if not stored.startswith(("$5$", "$6$")):
        raise UnsupportedHash(f"{scheme} (not SHA-crypt)")
    try:
        return shacrypt.verify(password, stored)
    except ValueError:
        raise UnsupportedHash(f"{stored[:3]} (malformed)") from None


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; :class:`UnsupportedHash` when unknowable."""
    stored = stored.strip()
    if stored.startswith("{"):
        scheme, sep, rest = stored[1:].partition("}")
        scheme = scheme.upper()
        if not sep:
            raise UnsupportedHash("unknown")
        if scheme in ("CRYPT", "SHA256-CRYPT", "SHA512-CRYPT"):
            want = {"SHA256-CRYPT": "$5$", "SHA512-CRYPT": "$6$"}.get(scheme)
            if want is not None and not rest.startswith(want):
                raise UnsupportedHash(f"{scheme} (mismatched prefix)")
            return _check_crypt(password, rest, scheme)
        salted = scheme.startswith("S") and scheme[1:] in _DIGESTS
        algo = _DIGESTS.get(scheme[1:] if salted else scheme)
        if algo is None:
            # {PLAIN}, {CLEARTEXT}, {MD5}, {BLF-CRYPT}, ...: never compared
            raise UnsupportedHash(scheme)
        name, size = algo
        raw = _b64(rest, scheme)
        if len(raw) < size + (1 if salted else 0) or (not salted and len(raw) != size):
            raise UnsupportedHash(f"{scheme} (malformed)")
        digest, salt = raw[:size], raw[size:]
        computed = hashlib.new(name, password.encode("utf-8") + salt).digest()
        return hmac.compare_digest(computed, digest)
    if stored.startswith("$"):
        return _check_crypt(password, stored, "crypt")
    # a bare word: plaintext or traditional DES crypt, both refused
    raise UnsupportedHash("unknown")


def hash_password(password: str, scheme: str = "$6$", rounds: int | None = None) -> str:
    """What ``mailriderctl encrypt`` prints: a new SHA-crypt hash."""
    return shacrypt.hash_password(password, scheme, rounds)
