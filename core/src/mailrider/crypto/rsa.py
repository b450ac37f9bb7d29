"""Pure-Python RSA private-key operations, the fallback when libcrypto is absent.

Invariants: every private operation is blinded (a fresh random ``r`` per
call) and computed with the CRT, and its result is checked with the public
exponent before it leaves this module, so a fault in one CRT half can never
leak a factor of ``n`` (the Bellcore attack). Python integers are not
constant time: this is slower and weaker than libcrypto and only used when
libcrypto cannot be.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from mailrider.crypto import der

RSA_PKCS1_PADDING = 1
RSA_NO_PADDING = 3


class RSAError(ValueError):
    """An operation that cannot be done with this key and input."""


@dataclass(frozen=True, slots=True, repr=False)
class PrivateKey:
    n: int
    e: int
    d: int
    p: int
    q: int
    dp: int
    dq: int
    qinv: int

    def __repr__(self) -> str:  # never print the secret parts
        return f"rsa.PrivateKey(bits={self.n.bit_length()})"

    @property
    def size(self) -> int:
        return (self.n.bit_length() + 7) // 8


def from_pkcs1(data: bytes) -> PrivateKey:
    """RSAPrivateKey (RFC 8017 A.1.2), two primes only."""
    node = der.expect(der.parse(data), der.TAG_SEQUENCE, 9)
    version, *values = (der.integer(c) for c in node.children[:9])
    if version != 0 or len(node.children) != 9:
        raise der.DERError("multi-prime RSA keys are not supported")
    key = PrivateKey(*values)
    check(key)
    return key


def check(key: PrivateKey) -> None:
    """Refuse an inconsistent key (a corrupted file must not sign)."""
    n, e, p, q = key.n, key.e, key.p, key.q
    ok = (
        p > 1 and q > 1 and p * q == n and e > 1 and n.bit_length() >= 1024
        and key.dp == key.d % (p - 1) and key.dq == key.d % (q - 1)
        and (key.qinv * q) % p == 1
        and (e * key.d) % math.lcm(p - 1, q - 1) == 1
    )
    if not ok:
        raise RSAError("inconsistent RSA key")


def _private(key: PrivateKey, c: int) -> int:
    """c^d mod n, blinded, by the CRT, verified."""
    n = key.n
    if not 0 <= c < n:
        raise RSAError("input out of range")
    while True:
        r = secrets.randbelow(n - 3) + 2
        if math.gcd(r, n) == 1:
            break
    blinded = (c * pow(r, key.e, n)) % n
    m1 = pow(blinded % key.p, key.dp, key.p)
    m2 = pow(blinded % key.q, key.dq, key.q)
    h = (key.qinv * (m1 - m2)) % key.p
    s = ((m2 + h * key.q) * pow(r, -1, n)) % n
    if pow(s, key.e, n) != c:
        raise RSAError("fault detected in RSA computation; result discarded")
    return s


def private_encrypt(key: PrivateKey, data: bytes, padding: int) -> bytes:
    """What OpenSSL's ``RSA_private_encrypt`` does: sign already-encoded data."""
    k = key.size
    if padding == RSA_PKCS1_PADDING:
        # RFC 8017 9.2 step 5: EM = 0x00 || 0x01 || PS (0xff, >= 8) || 0x00 || T
        if len(data) > k - 11:
            raise RSAError("data too long for PKCS#1 v1.5")
        em = b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data
    elif padding == RSA_NO_PADDING:
        if len(data) != k:
            raise RSAError("raw input must be the modulus size")
        em = data
    else:
        raise RSAError(f"unsupported padding {padding}")
    return _private(key, int.from_bytes(em, "big")).to_bytes(k, "big")


def private_decrypt(key: PrivateKey, data: bytes, padding: int) -> bytes:
    """Raw RSA decryption only: padded decryption would be a padding oracle."""
    if padding != RSA_NO_PADDING:
        raise RSAError(f"unsupported padding {padding} for decryption")
    if len(data) != key.size:
        raise RSAError("ciphertext must be the modulus size")
    return _private(key, int.from_bytes(data, "big")).to_bytes(key.size, "big")
