"""klondike's DKIM keys: loaded by name from the ``dkim`` statements, and the
one operation offered on them, a DKIM signature (docs/dkim.md §3).

Invariants:

* these keys are kept apart from the TLS keys (:mod:`mailrider.crypto.keys`):
  a TLS request cannot reach them and a DKIM request cannot reach a TLS key;
* a key file passes the same permission check as a TLS key
  (:func:`mailrider.crypto.keys.read_key_file`) and must be of the kind its
  ``algorithm`` names (an RSA key for rsa-sha256, an Ed25519 key for
  ed25519-sha256), else :class:`~mailrider.crypto.keys.KeyLoadError`;
* :meth:`DkimKeyStore.sign` signs only what
  :func:`mailrider.dkim.check_signing_input` accepts for that key's entry
  (its domain, selector, algorithm and canonicalisation), and hashes the
  input itself: the caller never chooses the digest, the padding or raw
  input, so the key is no general signing oracle;
* rsa-sha256 is RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6376 3.3.1);
  ed25519-sha256 is PureEd25519 over the SHA-256 of the input (RFC 8463 3);
* with libcrypto the key lives in OpenSSL's memory; without it RSA keys
  sign through :mod:`mailrider.crypto.rsa` and Ed25519 keys are refused.
  Errors never carry key bytes.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
from dataclasses import dataclass

from mailrider import dkim, log
from mailrider.config.model import Dkim
from mailrider.crypto import der, libcrypto, rsa
from mailrider.crypto.keys import (
    KeyLoadError,
    SignError,
    choose_backend,
    i2d_pubkey,
    parse_private_key,
    read_key_file,
    read_private_key,
)
from mailrider.errors import ConfigError

#: which key kind each algorithm needs
KEY_KIND = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}


@dataclass
class _DkimKey:
    signer: dkim.Signer
    kind: str  # "rsa" or "ed25519"
    backend: str
    spki: bytes  # the public key, for the DNS record
    pkey: int = 0  # EVP_PKEY * (libcrypto)
    py: rsa.PrivateKey | None = None


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _der_int(n: int) -> bytes:
    raw = n.to_bytes(n.bit_length() // 8 + 1, "big")
    return _der(der.TAG_INTEGER, raw)


def rsa_spki(n: int, e: int) -> bytes:
    """SubjectPublicKeyInfo of an RSA key (RFC 8017 A.1.1, RFC 5280 4.1)."""
    alg = _der(der.TAG_SEQUENCE, _der(der.TAG_OID, bytes.fromhex("2a864886f70d010101"))
               + _der(der.TAG_NULL, b""))
    key = _der(der.TAG_SEQUENCE, _der_int(n) + _der_int(e))
    return _der(der.TAG_SEQUENCE, alg + _der(der.TAG_BIT_STRING, b"\x00" + key))


class DkimKeyStore:
    """DKIM keys by ``dkim`` name. ``backend`` as :class:`mailrider.crypto.keys.KeyStore`'s."""

    def __init__(self, backend: str = "auto") -> None:
        self.backend, self._lib = choose_backend(backend)
        self._keys: dict[str, _DkimKey] = {}
        self.counters: dict[str, int] = {"dkim.sign": 0, "dkim.sign.errors": 0}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def load(self, signer: dkim.Signer, key_path: str) -> None:
        """Load the key of the ``dkim`` entry ``signer`` from ``key_path``."""
        pem = read_key_file(key_path)
        try:
            kind, pykey = parse_private_key(pem)
        except ValueError as exc:
            raise KeyLoadError(f"{key_path}: {exc}") from None
        want = KEY_KIND[signer.algorithm]
        if kind != want:
            raise KeyLoadError(f"{key_path}: an {kind} key, but algorithm {signer.algorithm} "
                               f"needs an {want} key")
        if self._lib is not None:
            pkey, spki = self._load_libcrypto(pem, key_path)
            key = _DkimKey(signer, kind, "libcrypto", spki, pkey=pkey)
        elif kind == "ed25519":
            raise KeyLoadError(f"{key_path}: Ed25519 keys need libcrypto "
                               f"({libcrypto.unavailable_reason()})")
        else:
            assert pykey is not None
            key = _DkimKey(signer, kind, "python", rsa_spki(pykey.n, pykey.e), py=pykey)
        self._keys[signer.name] = key

    def _load_libcrypto(self, pem: bytes, key_path: str) -> tuple[int, bytes]:
        lib = self._lib
        assert lib is not None
        c = lib.crypto
        pkey = read_private_key(lib, pem, key_path)
        spki = i2d_pubkey(lib, pkey)
        if not spki:
            c.EVP_PKEY_free(pkey)
            raise KeyLoadError(f"{key_path}: {lib.errors()}")
        return int(pkey), spki

    def signer(self, name: str) -> dkim.Signer:
        """The entry of ``name``; KeyError when it is not loaded."""
        return self._keys[name].signer

    def dns_record(self, name: str) -> str:
        """The TXT record to publish at ``selector._domainkey.domain`` (RFC 6376 3.6.1,
        RFC 8463 4: an Ed25519 key is published as its 32 raw octets)."""
        key = self._keys[name]
        if key.kind == "ed25519":
            return "v=DKIM1; k=ed25519; p=" + base64.b64encode(key.spki[-32:]).decode("ascii")
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(key.spki).decode("ascii")

    def sign(self, name: str, data: bytes) -> bytes:
        """The ``b=`` of the signing input ``data`` with the key of ``name``;
        :class:`SignError` for an unknown name or an input that is not a DKIM
        signing input for that entry."""
        try:
            out = self._sign(name, data)
        except SignError:
            self.counters["dkim.sign.errors"] += 1
            raise
        except (ValueError, OSError) as exc:
            self.counters["dkim.sign.errors"] += 1
            raise SignError(f"dkim signature failed: {exc}") from None
        self.counters["dkim.sign"] += 1
        return out

    def _sign(self, name: str, data: bytes) -> bytes:
        key = self._keys.get(name)
        if key is None:
            raise SignError("no dkim key of this name")
        try:
            dkim.check_signing_input(data, key.signer)
        except dkim.DkimError as exc:
            raise SignError(f"not a DKIM signing input for this key: {exc}") from None
        digest = hashlib.sha256(data).digest()
        if key.py is not None:
            return rsa.private_encrypt(key.py, rsa.DIGEST_INFO_PREFIXES["sha256"] + digest,
                                       rsa.RSA_PKCS1_PADDING)
        lib = self._lib
        assert lib is not None
        c = lib.crypto
        # RSA: OpenSSL hashes the input (PKCS#1 v1.5 is the default padding);
        # Ed25519 takes no digest and signs the SHA-256 of the input (RFC 8463 3)
        md, tbs = (c.EVP_sha256(), data) if key.kind == "rsa" else (None, digest)
        ctx = c.EVP_MD_CTX_new()
        if not ctx:
            raise SignError(f"dkim: {lib.errors()}")
        try:
            if c.EVP_DigestSignInit(ctx, None, md, None, key.pkey) != 1:
                raise SignError(f"dkim: {lib.errors()}")
            size = ctypes.c_size_t(0)
            if c.EVP_DigestSign(ctx, None, ctypes.byref(size), tbs, len(tbs)) != 1:
                raise SignError(f"dkim: {lib.errors()}")
            buf = ctypes.create_string_buffer(size.value)
            if c.EVP_DigestSign(ctx, buf, ctypes.byref(size), tbs, len(tbs)) != 1:
                raise SignError(f"dkim: {lib.errors()}")
            return buf.raw[:size.value]
        finally:
            c.EVP_MD_CTX_free(ctx)

    def close(self) -> None:
        """Free every key (tests; klondike keeps its keys until exit)."""
        if self._lib is not None:
            for key in self._keys.values():
                if key.pkey:
                    self._lib.crypto.EVP_PKEY_free(key.pkey)
        self._keys.clear()


def load_dkim_keys(entries: dict[str, Dkim]) -> DkimKeyStore:
    """Every ``dkim`` statement's key (klondike at start, and ``-n`` in a
    forked child); :class:`ConfigError` at the statement's line."""
    store = DkimKeyStore()
    for name, entry in sorted(entries.items()):
        try:
            signer = dkim.Signer(name, entry.domain, entry.selector, entry.algorithm,
                                 entry.canonicalization)
            store.load(signer, entry.key)
        except (KeyLoadError, dkim.DkimError) as exc:
            text = exc.message if isinstance(exc, KeyLoadError) else str(exc)
            raise ConfigError(f"dkim {name}: {text}", entry.where.file,
                              entry.where.line) from None
        log.debug("klondike", "dkim-key-loaded", dkim=name, domain=entry.domain,
                  selector=entry.selector, algorithm=entry.algorithm, backend=store.backend)
    return store
