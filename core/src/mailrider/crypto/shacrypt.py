"""SHA-256-crypt (``$5$``) and SHA-512-crypt (``$6$``), written from Ulrich
Drepper's public specification "Unix crypt using SHA-256 and SHA-512".

Invariants: the salt is at most 16 characters and stops at the first ``$``;
rounds are clamped to [1000, 999999999] when read from a stored hash (as
the specification says) and refused outside it when asked for explicitly;
comparison of a computed hash with a stored one is constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ROUNDS_DEFAULT = 5000
ROUNDS_MIN = 1000
ROUNDS_MAX = 999_999_999
SALT_MAX = 16

_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SALT_CHARS = frozenset(_ALPHABET)

# The specification's byte order for the final encoding: groups of three
# digest bytes, each written as four characters, least significant first.
_ORDER_256 = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
)
_ORDER_512 = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4),
    (47, 5, 26), (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51),
    (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13), (56, 14, 35),
    (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
    (62, 20, 41),
)

_SCHEMES = {"$5$": ("sha256", 32), "$6$": ("sha512", 64)}


def _b64(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_ALPHABET[w & 0x3F])
        w >>= 6
    return "".join(out)


def _repeat(digest: bytes, length: int) -> bytes:
    """The digest repeated and cut to ``length`` bytes (sequences P and S)."""
    return (digest * (length // len(digest) + 1))[:length]


def _digest(scheme: str, key: bytes, salt: bytes, rounds: int) -> str:
    name, size = _SCHEMES[scheme]

    def h(*parts: bytes) -> bytes:
        ctx = hashlib.new(name)
        for p in parts:
            ctx.update(p)
        return ctx.digest()

    b = h(key, salt, key)
    a = hashlib.new(name)
    a.update(key)
    a.update(salt)
    a.update(_repeat(b, len(key)))
    n = len(key)
    while n:
        a.update(b if n & 1 else key)
        n >>= 1
    c = a.digest()
    p = _repeat(h(key * len(key)), len(key))
    s = _repeat(h(salt * (16 + c[0])), len(salt))
    for r in range(rounds):
        ctx = hashlib.new(name)
        ctx.update(p if r & 1 else c)
        if r % 3:
            ctx.update(s)
        if r % 7:
            ctx.update(p)
        ctx.update(c if r & 1 else p)
        c = ctx.digest()
    if size == 32:
        out = "".join(_b64(c[i], c[j], c[k], 4) for i, j, k in _ORDER_256)
        return out + _b64(0, c[31], c[30], 3)
    out = "".join(_b64(c[i], c[j], c[k], 4) for i, j, k in _ORDER_512)
    return out + _b64(0, 0, c[63], 2)


def _split(hashed: str) -> tuple[str, int, bool, str, str]:
    """(scheme, rounds, rounds given, salt, digest) of a stored hash; ValueError if malformed."""
    scheme = hashed[:3]
    if scheme not in _SCHEMES:
        raise ValueError("not a SHA-crypt hash")
    rest = hashed[3:]
    rounds, custom = ROUNDS_DEFAULT, False
    if rest.startswith("rounds="):
        text, sep, rest = rest[7:].partition("$")
        if not sep or not text.isdigit() or not text.isascii() or len(text) > 10:
            raise ValueError("bad rounds")
        rounds, custom = min(max(int(text), ROUNDS_MIN), ROUNDS_MAX), True
    salt, _, digest = rest.partition("$")
    salt = salt[:SALT_MAX]
    if not all(" " < ch < "\x7f" for ch in salt):
        raise ValueError("bad salt")
    return scheme, rounds, custom, salt, digest


def crypt(password: str, setting: str) -> str:
    """The hash of ``password`` with the scheme, rounds and salt of ``setting``
    (a stored hash or ``$6$[rounds=N$]salt``)."""
    scheme, rounds, custom, salt, _ = _split(setting)
    digest = _digest(scheme, password.encode("utf-8"), salt.encode("utf-8"), rounds)
    prefix = f"{scheme}rounds={rounds}$" if custom else scheme
    return f"{prefix}{salt}${digest}"


def hash_password(password: str, scheme: str = "$6$", rounds: int | None = None,
                  salt: str | None = None) -> str:
    """A new ``$5$``/``$6$`` hash of ``password`` with a random 16-character salt."""
    if scheme not in _SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: use $5$ or $6$")
    if rounds is not None and not ROUNDS_MIN <= rounds <= ROUNDS_MAX:
        raise ValueError(f"rounds must be between {ROUNDS_MIN} and {ROUNDS_MAX}")
    if salt is None:
        salt = "".join(secrets.choice(_ALPHABET) for _ in range(SALT_MAX))
    elif len(salt) > SALT_MAX or not _SALT_CHARS.issuperset(salt):
        raise ValueError(f"salt must be at most {SALT_MAX} characters of [./0-9A-Za-z]")
    setting = scheme if rounds is None else f"{scheme}rounds={rounds}$"
    return crypt(password, f"{setting}{salt}$")


def verify(password: str, hashed: str) -> bool:
    """Whether ``password`` matches the stored ``$5$``/``$6$`` hash.

    A malformed stored hash raises ``ValueError`` (it is not a wrong password).
    """
    scheme, rounds, _, salt, digest = _split(hashed)
    if len(digest) != (43 if scheme == "$5$" else 86) or not _SALT_CHARS.issuperset(digest):
        raise ValueError("bad digest")
    computed = _digest(scheme, password.encode("utf-8"), salt.encode("utf-8"), rounds)
    return hmac.compare_digest(computed.encode(), digest.encode())
