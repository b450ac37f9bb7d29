"""Checking a password against a stored hash, whatever format the table holds.

Formats (as OpenSMTPD's crypt(3) tables and Dovecot-style schemes write them):
every ``$id$`` crypt(3) hash the system's library computes (yescrypt ``$y$``,
bcrypt ``$2b$``/``$2y$``, scrypt ``$7$``, SHA-crypt ``$5$``/``$6$``, ...),
optionally behind ``{CRYPT}``, ``{SHA256-CRYPT}``, ``{SHA512-CRYPT}``,
``{BLF-CRYPT}`` or ``{MD5-CRYPT}``; ``{SSHA512}``, ``{SSHA256}``, ``{SSHA}``
(base64 of digest(password + salt) + salt); ``{SHA512}``, ``{SHA256}``,
``{SHA}`` (base64 of the digest).

crypt(3) hashes go to the system library (:mod:`mailrider.crypto.syscrypt`);
SHA-crypt falls back to the pure-Python :mod:`mailrider.crypto.shacrypt`
when there is no library or it refuses the scheme.

Invariants: a plaintext stored value is never compared, whatever it looks
like; ``False`` means only "wrong password"; anything that cannot be
checked (a scheme neither the library nor we know, traditional DES,
malformed values) raises :class:`UnsupportedHash`, a temporary failure
(RFC 4954 454 4.7.0) whose text names the scheme and never the stored value
or the password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from mailrider.crypto import shacrypt, syscrypt
from mailrider.errors import TempFail


class UnsupportedHash(TempFail):
    """The stored hash cannot be checked here; the caller tempfails and logs."""

    code = 454
    status = "4.7.0"

    def __init__(self, scheme: str) -> None:
        super().__init__(f"unsupported password hash scheme {scheme}")
        self.scheme = scheme


_DIGESTS = {"SHA512": ("sha512", 64), "SHA256": ("sha256", 32), "SHA": ("sha1", 20)}

#: names of crypt(3) schemes, for messages
_SCHEMES = {
    "$2a$": "bcrypt", "$2b$": "bcrypt", "$2y$": "bcrypt", "$2x$": "bcrypt",
    "$y$": "yescrypt", "$gy$": "gost-yescrypt", "$7$": "scrypt", "$1$": "md5-crypt",
    "$argon2": "argon2", "$sha1$": "sha1-crypt", "$md5": "sun-md5",
}


#: Dovecot's crypt(3) schemes and the prefix their hashes start with
_CRYPT_SCHEMES = {"CRYPT": "", "SHA256-CRYPT": "$5$", "SHA512-CRYPT": "$6$",
                  "BLF-CRYPT": "$2", "MD5-CRYPT": "$1$"}


def _b64(text: str, scheme: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UnsupportedHash(f"{scheme} (malformed)") from None


def _scheme(stored: str) -> str:
    for prefix, name in _SCHEMES.items():
        if stored.startswith(prefix):
            return name
    return stored[:stored.find("$", 1) + 1] if stored.count("$") >= 2 else "crypt"


def _check_crypt(password: str, stored: str, scheme: str) -> bool:
    if not stored.startswith("$"):
        raise UnsupportedHash(f"{scheme} (not a $id$ hash)")  # DES or plaintext: refused
    sha = stored.startswith(("$5$", "$6$"))
    name = stored[:3] if sha else _scheme(stored)
    if "\0" in password:
        return False  # C cuts a string at NUL: such a password never matches
    computed = syscrypt.crypt(password, stored)
    if computed is not None:
        # the library recomputes the whole hash from the settings in ``stored``:
        # a value of another shape (cut short, bad salt) is malformed, not a mismatch
        if (len(computed) != len(stored)
                or computed[:computed.rfind("$")] != stored[:stored.rfind("$")]):
            raise UnsupportedHash(f"{name} (malformed)")
        return hmac.compare_digest(computed.encode("utf-8"), stored.encode("utf-8"))
    if not sha:
        # no library, or one that does not know this scheme
        raise UnsupportedHash(name)
    try:
        return shacrypt.verify(password, stored)
    except ValueError:
        raise UnsupportedHash(f"{name} (malformed)") from None


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; :class:`UnsupportedHash` when unknowable."""
    stored = stored.strip()
    if stored.startswith("{"):
        scheme, sep, rest = stored[1:].partition("}")
        scheme = scheme.upper()
        if not sep:
            raise UnsupportedHash("unknown")
        if scheme in _CRYPT_SCHEMES:
            want = _CRYPT_SCHEMES[scheme]
            if not rest.startswith(want):
                raise UnsupportedHash(f"{scheme} (mismatched prefix)")
            return _check_crypt(password, rest, scheme)
        salted = scheme.startswith("S") and scheme[1:] in _DIGESTS
        algo = _DIGESTS.get(scheme[1:] if salted else scheme)
        if algo is None:
            # {PLAIN}, {CLEARTEXT}, {MD5}, ...: never compared
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
