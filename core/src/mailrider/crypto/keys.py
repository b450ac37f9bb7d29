"""klondike's key store: private keys, indexed by the hash of their certificate's
public key, and the private operations pony's TLS stack delegates.

Invariants: a key file is refused unless it is a regular file with no mode
bits outside 0740 (as OpenSMTPD refuses keys others can read); every key must
match its certificate's public key before it is stored; with libcrypto the
key lives in OpenSSL's memory and OpenSSL signs, else RSA keys are used by
:mod:`mailrider.crypto.rsa` and EC keys are refused (an ECDSA nonce made
with Python integers is too easy to get wrong). Errors never carry key
bytes.

Only signing is offered, and only on the inputs TLS signs: a PSS encoding for
raw RSA (:func:`mailrider.crypto.rsa.pss_encoded`), a DigestInfo (or TLS 1.0's
MD5 || SHA-1) for PKCS#1 v1.5, a digest of a known size for ECDSA. RSA
decryption is never offered, so a hostile pony cannot use the key to decrypt
(a recorded RSA key exchange, a Bleichenbacher oracle) or sign arbitrary values.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass

from mailrider.crypto import der, libcrypto, rsa
from mailrider.errors import ConfigError, TempFail

#: the private operations TLS signing needs, and nothing else: no RSA decryption
OPS = ("rsa_priv_enc", "ecdsa_sign")
#: the mode bits a key file may have (OpenSMTPD: owner rw, group r at most)
KEY_MODE_ALLOWED = 0o740
_KEY_FILE_MAX = 1024 * 1024
#: digest sizes ECDSA signs in TLS: SHA-1 (TLS 1.2 at most), SHA-224/256/384/512
_ECDSA_DIGEST_SIZES = frozenset({20, 28, 32, 48, 64})


class KeyLoadError(ConfigError):
    """A key that cannot be loaded: klondike must not start."""


class SignError(TempFail):
    """A private operation that failed; the handshake fails, the session goes on."""


@dataclass
class _Key:
    name: str
    cert_hash: str
    kind: str  # "rsa" or "ec"
    size: int  # RSA modulus bytes, or the largest ECDSA signature
    backend: str  # "libcrypto" or "python"
    bits: int = 0  # RSA modulus bits
    handle: int = 0  # RSA * or EC_KEY * (libcrypto)
    pkey: int = 0  # EVP_PKEY * (libcrypto)
    py: rsa.PrivateKey | None = None


def read_key_file(path: str) -> bytes:
    """The bytes of a key file, after the permission check."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise KeyLoadError(f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyLoadError(f"{path}: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & ~KEY_MODE_ALLOWED:
            raise KeyLoadError(f"{path}: insecure permissions {mode:04o} "
                               f"(at most {KEY_MODE_ALLOWED:04o})")
        if st.st_size > _KEY_FILE_MAX:
            raise KeyLoadError(f"{path}: too large for a key")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_private_key(pem: bytes) -> tuple[str, rsa.PrivateKey | None]:
    """("rsa", key), ("ec", None) or ("ed25519", None) for the first private
    key block of ``pem`` (TLS keys are RSA or EC; DKIM keys RSA or Ed25519)."""
    for label, data in der.pem_blocks(pem):
        if label == "RSA PRIVATE KEY":
            return "rsa", rsa.from_pkcs1(data)
        if label == "EC PRIVATE KEY":
            return "ec", None
        if label == "PRIVATE KEY":
            # RFC 5208 5: PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey }
            node = der.expect(der.parse(data), der.TAG_SEQUENCE, 3)
            alg = der.oid(der.expect(node.children[1], der.TAG_SEQUENCE, 1).children[0])
            inner = der.expect(node.children[2], der.TAG_OCTET_STRING).content
            if alg == der.OID_RSA:
                return "rsa", rsa.from_pkcs1(inner)
            if alg == der.OID_EC:
                return "ec", None
            if alg == der.OID_ED25519:
                return "ed25519", None
            raise der.DERError(f"unsupported key algorithm {alg}")
    raise der.DERError("no private key found")



def choose_backend(backend: str) -> tuple[str, libcrypto.LibCrypto | None]:
    """A key store's backend: "auto" is libcrypto when it is available, else
    pure Python; with libcrypto, the loaded library."""
    if backend not in ("auto", "libcrypto", "python"):
        raise ValueError(f"unknown backend {backend}")
    if backend == "auto":
        backend = "libcrypto" if libcrypto.available() else "python"
    return backend, libcrypto.load() if backend == "libcrypto" else None


def read_private_key(lib: libcrypto.LibCrypto, pem: bytes, key_path: str) -> int:
    """libcrypto's EVP_PKEY for a PEM private key (the caller frees it);
    :class:`KeyLoadError` naming ``key_path`` when it cannot be read."""
    c = lib.crypto
    c.ERR_clear_error()
    bio = c.BIO_new_mem_buf(pem, len(pem))
    if not bio:
        raise KeyLoadError(f"{key_path}: {lib.errors()}")
    try:
        # a callback that refuses: never prompt for a passphrase on a tty
        pkey: int = c.PEM_read_bio_PrivateKey(bio, None, NO_PASSWORD, None)
    finally:
        c.BIO_free(bio)
    if not pkey:
        raise KeyLoadError(f"{key_path}: {lib.errors()}")
    return pkey


class KeyStore:
    """Private keys and their operations, with counters.

    ``backend``: "auto" (libcrypto when :func:`libcrypto.available`, else pure
    Python), "libcrypto" or "python".
    """

    def __init__(self, backend: str = "auto") -> None:
        self.backend, self._lib = choose_backend(backend)
        self._keys: dict[str, _Key] = {}
        self.names: dict[str, str] = {}  # pki name -> cert hash
        self.counters: dict[str, int] = {"sign": 0, "sign.errors": 0}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, cert_hash: object) -> bool:
        return cert_hash in self._keys

    def load(self, name: str, cert_path: str, key_path: str) -> str:
        """Load the key of pki ``name``; returns the hash it is indexed by."""
        try:
            with open(cert_path, "rb") as f:
                public = der.certificate_key(f.read())
        except OSError as exc:
            raise KeyLoadError(f"{cert_path}: {exc.strerror}") from None
        except ValueError as exc:
            raise KeyLoadError(f"{cert_path}: {exc}") from None
        pem = read_key_file(key_path)
        try:
            kind, pykey = parse_private_key(pem)
        except ValueError as exc:
            raise KeyLoadError(f"{key_path}: {exc}") from None
        if kind != public.kind:
            raise KeyLoadError(f"{key_path}: a {kind} key for a {public.kind} certificate")
        if self._lib is not None:
            key = self._load_libcrypto(name, public, pem, key_path)
        elif kind == "ec":
            raise KeyLoadError(f"{key_path}: ECDSA keys need libcrypto "
                               f"({libcrypto.unavailable_reason()})")
        else:
            assert pykey is not None
            if (pykey.n, pykey.e) != (public.n, public.e):
                raise KeyLoadError(f"{key_path}: key does not match {cert_path}")
            key = _Key(name, public.hash, "rsa", pykey.size, "python",
                       bits=pykey.n.bit_length(), py=pykey)
        old = self._keys.get(key.cert_hash)
        if old is not None and old.name != name:
            # two pki entries, one key pair: either name's key signs
            key = old
        self._keys[key.cert_hash] = key
        self.names[name] = key.cert_hash
        return key.cert_hash

    def _load_libcrypto(self, name: str, public: der.PublicKey, pem: bytes,
                        key_path: str) -> _Key:
        lib = self._lib
        assert lib is not None
        c = lib.crypto
        pkey = read_private_key(lib, pem, key_path)
        try:
            ours = i2d_pubkey(lib, pkey)
            if ours != public.spki:
                raise KeyLoadError(f"{key_path}: key does not match its certificate")
            if public.kind == "rsa":
                handle = c.EVP_PKEY_get1_RSA(pkey)
                size = c.RSA_size(handle) if handle else 0
            else:
                handle = c.EVP_PKEY_get1_EC_KEY(pkey)
                size = c.ECDSA_size(handle) if handle else 0
            if not handle or size <= 0:
                raise KeyLoadError(f"{key_path}: {lib.errors()}")
        except BaseException:
            c.EVP_PKEY_free(pkey)
            raise
        return _Key(name, public.hash, public.kind, int(size), "libcrypto",
                    bits=public.n.bit_length() if public.kind == "rsa" else 0,
                    handle=int(handle), pkey=int(pkey))

    def sign(self, cert_hash: str, op: str, data: bytes, padding: int) -> bytes:
        """One private operation with the key of ``cert_hash``; :class:`SignError` on failure."""
        try:
            out = self._sign(cert_hash, op, data, padding)
        except SignError:
            self.counters["sign.errors"] += 1
            raise
        except (ValueError, OSError) as exc:
            self.counters["sign.errors"] += 1
            raise SignError(f"{op} failed: {exc}") from None
        self.counters["sign"] += 1
        self.counters[f"sign.{op}"] = self.counters.get(f"sign.{op}", 0) + 1
        return out

    def _sign(self, cert_hash: str, op: str, data: bytes, padding: int) -> bytes:
        key = self._keys.get(cert_hash)
        if key is None:
            raise SignError("no key for this certificate")
        if op not in OPS:
            raise SignError("operation not offered")
        if (op == "ecdsa_sign") != (key.kind == "ec"):
            raise SignError(f"operation {op} does not fit a {key.kind} key")
        if op == "ecdsa_sign":
            if padding != 0 or len(data) not in _ECDSA_DIGEST_SIZES:
                raise SignError("not a digest TLS signs")
        elif padding == rsa.RSA_PKCS1_PADDING:
            if not rsa.pkcs1_digest_info(data):
                raise SignError("not a DigestInfo TLS signs")
        elif padding == rsa.RSA_NO_PADDING:
            # TLS hands raw input only PSS-encoded; anything else would be decryption
            if not rsa.pss_encoded(data, key.bits):
                raise SignError("raw input is not a PSS encoding")
        else:
            raise SignError("padding not offered")
        if key.py is not None:
            return rsa.private_encrypt(key.py, data, padding)
        lib = self._lib
        assert lib is not None
        c = lib.crypto
        buf = ctypes.create_string_buffer(key.size)
        if op == "ecdsa_sign":
            siglen = ctypes.c_uint(key.size)
            if c.ECDSA_sign(0, data, len(data), buf, ctypes.byref(siglen), key.handle) != 1:
                raise SignError(f"ECDSA_sign: {lib.errors()}")
            return buf.raw[: siglen.value]
        n = int(c.RSA_private_encrypt(len(data), data, buf, key.handle, padding))
        if n < 0:
            raise SignError(f"{op}: {lib.errors()}")
        return buf.raw[:n]

    def close(self) -> None:
        """Free every key (tests; klondike keeps its keys until exit)."""
        if self._lib is not None:
            c = self._lib.crypto
            for key in {id(k): k for k in self._keys.values()}.values():
                if key.backend == "libcrypto":
                    (c.RSA_free if key.kind == "rsa" else c.EC_KEY_free)(key.handle)
                    c.EVP_PKEY_free(key.pkey)
        self._keys.clear()
        self.names.clear()


def i2d_pubkey(lib: libcrypto.LibCrypto, pkey: int) -> bytes:
    """The DER SubjectPublicKeyInfo of an EVP_PKEY (b"" on failure)."""
    n = int(lib.crypto.i2d_PUBKEY(pkey, None))
    if n <= 0:
        return b""
    buf = ctypes.create_string_buffer(n)
    ptr = ctypes.c_void_p(ctypes.addressof(buf))
    if int(lib.crypto.i2d_PUBKEY(pkey, ctypes.byref(ptr))) != n:
        return b""
    return buf.raw


def _refuse_password(buf: int, size: int, rwflag: int, u: int) -> int:
    return -1


#: a PEM passphrase callback that refuses: never prompt on a tty
NO_PASSWORD = libcrypto.PEM_PASSWORD_FN(_refuse_password)
