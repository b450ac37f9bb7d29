"""Pure-Python RSA private-key operations, the fallback when libcrypto is absent,
and the shapes of the signature encodings klondike agrees to sign.

Invariants: every private operation is blinded (a fresh random ``r`` per
call) and computed with the CRT, and its result is checked with the public
exponent before it leaves this module, so a fault in one CRT half can never
leak a factor of ``n`` (the Bellcore attack). Python integers are not
constant time: this is slower and weaker than libcrypto and only used when
libcrypto cannot be. There is no private decryption here: klondike signs and
never decrypts (see :func:`pss_encoded`, which keeps raw signing from being
decryption under another name).
"""

from __future__ import annotations

import hashlib
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


#: the hashes TLS pairs with RSASSA-PSS (RFC 8446 4.2.3): MGF1 uses the same hash
_PSS_HASHES = {32: "sha256", 48: "sha384", 64: "sha512"}
#: RFC 8017 9.2 note 1: DigestInfo DER prefixes, by hash
DIGEST_INFO_PREFIXES = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha224": bytes.fromhex("302d300d06096086480165030402040500041c"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_DIGEST_SIZES = {"sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64}
#: TLS 1.0/1.1 sign MD5 || SHA-1 with no DigestInfo (RFC 4346 7.4.3)
MD5_SHA1_SIZE = 36


def _mgf1(seed: bytes, length: int, hash_name: str) -> bytes:
    """RFC 8017 B.2.1."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.new(hash_name, seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def pss_encode(mhash: bytes, mod_bits: int, salt: bytes) -> bytes:
    """EMSA-PSS-ENCODE (RFC 8017 9.1.1), left-padded to the modulus size: what
    OpenSSL hands to a raw RSA signature for TLS (salt as long as the hash)."""
    hash_name = _PSS_HASHES[len(mhash)]
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    h = hashlib.new(hash_name, b"\x00" * 8 + mhash + salt).digest()
    db = b"\x00" * (em_len - len(salt) - len(h) - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1(h, len(db), hash_name), strict=True))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    em = bytes(masked) + h + b"\xbc"
    return em.rjust((mod_bits + 7) // 8, b"\x00")


def pss_encoded(data: bytes, mod_bits: int) -> bool:
    """Whether ``data`` (modulus-sized) is an EMSA-PSS encoding (RFC 8017 9.1.2
    steps 4-10, without the message hash) with SHA-256/384/512, MGF1 of the same
    hash and a salt as long as the hash, as TLS uses.

    A raw private operation on any other input would compute c^d for a c the
    caller chose, which is RSA decryption: the structure checked here (hundreds
    of fixed bits after unmasking) cannot be met by a blinded ciphertext.
    """
    k = (mod_bits + 7) // 8
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    if len(data) != k or any(data[: k - em_len]):
        return False
    em = data[k - em_len:]
    if em[-1] != 0xBC:
        return False
    top = 0xFF >> (8 * em_len - em_bits)
    for hlen, hash_name in _PSS_HASHES.items():
        db_len = em_len - hlen - 1
        ps = db_len - hlen - 1  # the zero octets before 0x01 || salt
        if ps < 0 or em[0] & ~top & 0xFF:
            continue
        h = em[db_len:-1]
        db = bytearray(a ^ b for a, b in zip(em[:db_len], _mgf1(h, db_len, hash_name), strict=True))
        db[0] &= top
        if not any(db[:ps]) and db[ps] == 0x01:
            return True
    return False


def pkcs1_digest_info(data: bytes) -> bool:
    """Whether ``data`` is what TLS signs with PKCS#1 v1.5 padding: a DigestInfo
    of SHA-1/224/256/384/512 (TLS 1.2) or MD5 || SHA-1 (TLS 1.0/1.1)."""
    if len(data) == MD5_SHA1_SIZE:
        return True
    for name, prefix in DIGEST_INFO_PREFIXES.items():
        if data.startswith(prefix) and len(data) == len(prefix) + _DIGEST_SIZES[name]:
            return True
    return False
