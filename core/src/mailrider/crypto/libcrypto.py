"""The OpenSSL that ``_ssl`` uses, bound with ctypes.

We must call the very library the ``ssl`` module links against: an
``SSL_CTX *`` made by one copy of OpenSSL means nothing to another. So the
paths come from ``/proc/self/maps`` after ``import _ssl``; exactly one libssl
and one libcrypto must be mapped, and ``OpenSSL_version_num()`` must equal
``ssl.OPENSSL_VERSION_NUMBER``. Anything else (a static build, LibreSSL,
two copies) makes the binding unavailable, with the reason, rather than a
guess. Only OpenSSL 1.1.1 and 3.x are accepted (the method APIs used by
:mod:`mailrider.crypto.delegate` exist there).
"""

from __future__ import annotations

import ctypes
import os
import re
import ssl
from dataclasses import dataclass, field

_MAPS = "/proc/self/maps"
_LIBSSL = re.compile(r"^libssl\.so(\.[0-9.]+)?$")
_LIBCRYPTO = re.compile(r"^libcrypto\.so(\.[0-9.]+)?$")

P = ctypes.c_void_p
I = ctypes.c_int  # noqa: E741
PP = ctypes.POINTER(ctypes.c_void_p)

RSA_PKCS1_PADDING = 1
RSA_NO_PADDING = 3
SSL_OP_NO_TICKET = 0x00004000

#: int (*)(int flen, const unsigned char *from, unsigned char *to, RSA *rsa, int padding)
RSA_PRIV_FN = ctypes.CFUNCTYPE(I, I, P, P, P, I)
#: int (*)(int type, const unsigned char *dgst, int dlen, unsigned char *sig,
#:         unsigned int *siglen, const BIGNUM *kinv, const BIGNUM *r, EC_KEY *eckey)
EC_SIGN_FN = ctypes.CFUNCTYPE(I, I, P, I, P, ctypes.POINTER(ctypes.c_uint), P, P, P)
#: ECDSA_SIG *(*)(const unsigned char *dgst, int dgst_len, const BIGNUM *kinv,
#:                const BIGNUM *r, EC_KEY *eckey)
EC_SIGN_SIG_FN = ctypes.CFUNCTYPE(P, P, I, P, P, P)
#: int (*)(char *buf, int size, int rwflag, void *u)
PEM_PASSWORD_FN = ctypes.CFUNCTYPE(I, P, I, I, P)

# name: (restype, argtypes)
_CRYPTO: dict[str, tuple[object, tuple[object, ...]]] = {
    "OpenSSL_version_num": (ctypes.c_ulong, ()),
    "ERR_clear_error": (None, ()),
    "ERR_get_error": (ctypes.c_ulong, ()),
    "ERR_error_string_n": (None, (ctypes.c_ulong, ctypes.c_char_p, ctypes.c_size_t)),
    "BIO_new_mem_buf": (P, (P, I)),
    "BIO_free": (I, (P,)),
    "PEM_read_bio_PrivateKey": (P, (P, P, PEM_PASSWORD_FN, P)),
    "EVP_PKEY_new": (P, ()),
    "EVP_PKEY_free": (None, (P,)),
    "EVP_PKEY_set1_RSA": (I, (P, P)),
    "EVP_PKEY_set1_EC_KEY": (I, (P, P)),
    "EVP_PKEY_get1_RSA": (P, (P,)),
    "EVP_PKEY_get1_EC_KEY": (P, (P,)),
    "i2d_PUBKEY": (I, (P, PP)),
    "X509_get0_pubkey": (P, (P,)),
    "BN_dup": (P, (P,)),
    "BN_free": (None, (P,)),
    "RSA_new": (P, ()),
    "RSA_free": (None, (P,)),
    "RSA_size": (I, (P,)),
    "RSA_get0_key": (None, (P, PP, PP, PP)),
    "RSA_set0_key": (I, (P, P, P, P)),
    "RSA_set_method": (I, (P, P)),
    "RSA_get_default_method": (P, ()),
    "RSA_meth_dup": (P, (P,)),
    "RSA_meth_set_priv_enc": (I, (P, RSA_PRIV_FN)),
    "RSA_meth_set_priv_dec": (I, (P, RSA_PRIV_FN)),
    "RSA_private_encrypt": (I, (I, P, P, P, I)),
    "EC_KEY_new": (P, ()),
    "EC_KEY_free": (None, (P,)),
    "EC_KEY_get0_group": (P, (P,)),
    "EC_KEY_set_group": (I, (P, P)),
    "EC_KEY_get0_public_key": (P, (P,)),
    "EC_KEY_set_public_key": (I, (P, P)),
    "EC_KEY_set_method": (I, (P, P)),
    "EC_KEY_OpenSSL": (P, ()),
    "EC_KEY_METHOD_new": (P, (P,)),
    "EC_KEY_METHOD_get_sign": (None, (P, PP, PP, PP)),
    "EC_KEY_METHOD_set_sign": (None, (P, P, P, P)),
    "ECDSA_size": (I, (P,)),
    "ECDSA_sign": (I, (I, P, I, P, ctypes.POINTER(ctypes.c_uint), P)),
    "d2i_ECDSA_SIG": (P, (P, PP, ctypes.c_long)),
    # AES-256-GCM for queue encryption (mailrider.queue.codec)
    "EVP_aes_256_gcm": (P, ()),
    "EVP_CIPHER_CTX_new": (P, ()),
    "EVP_CIPHER_CTX_free": (None, (P,)),
    "EVP_CIPHER_CTX_ctrl": (I, (P, I, I, P)),
    "EVP_EncryptInit_ex": (I, (P, P, P, P, P)),
    "EVP_EncryptUpdate": (I, (P, P, ctypes.POINTER(I), P, I)),
    "EVP_EncryptFinal_ex": (I, (P, P, ctypes.POINTER(I))),
    "EVP_DecryptInit_ex": (I, (P, P, P, P, P)),
    "EVP_DecryptUpdate": (I, (P, P, ctypes.POINTER(I), P, I)),
    "EVP_DecryptFinal_ex": (I, (P, P, ctypes.POINTER(I))),
}
_SSL: dict[str, tuple[object, tuple[object, ...]]] = {
    "SSL_CTX_get_options": (ctypes.c_uint64, (P,)),
    "SSL_CTX_use_certificate_chain_file": (I, (P, ctypes.c_char_p)),
    "SSL_CTX_use_PrivateKey": (I, (P, P)),
    "SSL_CTX_check_private_key": (I, (P,)),
    "SSL_CTX_get0_certificate": (P, (P,)),
}


class Unavailable(RuntimeError):
    """The OpenSSL of ``_ssl`` cannot be used from here; ``str()`` says why."""


@dataclass
class LibCrypto:
    """The bound libraries. Function attributes have their prototypes set."""

    crypto: ctypes.CDLL
    ssl: ctypes.CDLL
    crypto_path: str
    ssl_path: str
    version: int
    keep: list[object] = field(default_factory=list)  # objects C holds pointers to

    def errors(self) -> str:
        """Drain OpenSSL's error queue of this thread into one line."""
        out = []
        buf = ctypes.create_string_buffer(256)
        for _ in range(16):
            code = int(self.crypto.ERR_get_error())
            if not code:
                break
            self.crypto.ERR_error_string_n(code, buf, len(buf))
            out.append(buf.value.decode("ascii", "replace"))
        self.crypto.ERR_clear_error()
        return "; ".join(out) or "no OpenSSL error"


def _mapped_libraries() -> tuple[set[str], set[str]]:
    import _ssl  # noqa: F401  (maps the libraries the ssl module really uses)

    ssl_paths: set[str] = set()
    crypto_paths: set[str] = set()
    with open(_MAPS, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6:
                continue
            path = parts[5].strip()
            if path.endswith(" (deleted)"):
                path = path[: -len(" (deleted)")]
            base = os.path.basename(path)
            if _LIBSSL.match(base):
                ssl_paths.add(path)
            elif _LIBCRYPTO.match(base):
                crypto_paths.add(path)
    return ssl_paths, crypto_paths


def _bind(lib: ctypes.CDLL, table: dict[str, tuple[object, tuple[object, ...]]]) -> None:
    for name, (restype, argtypes) in table.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise Unavailable(f"{name} is not exported by {lib._name}") from None
        fn.restype = restype
        fn.argtypes = argtypes


def _load() -> LibCrypto:
    if not os.path.exists(_MAPS):
        raise Unavailable(f"{_MAPS} is missing (not Linux?)")
    ssl_paths, crypto_paths = _mapped_libraries()
    if len(ssl_paths) != 1 or len(crypto_paths) != 1:
        raise Unavailable(
            f"_ssl maps {len(ssl_paths)} libssl and {len(crypto_paths)} libcrypto "
            "(statically linked or several copies)")
    ssl_path, crypto_path = ssl_paths.pop(), crypto_paths.pop()
    try:
        crypto = ctypes.CDLL(crypto_path)
        libssl = ctypes.CDLL(ssl_path)
    except OSError as exc:
        raise Unavailable(f"cannot load OpenSSL: {exc}") from None
    try:
        version = int(crypto.OpenSSL_version_num())
    except AttributeError:
        raise Unavailable("OpenSSL_version_num missing (not OpenSSL >= 1.1)") from None
    if version != ssl.OPENSSL_VERSION_NUMBER:
        raise Unavailable(f"libcrypto {version:#x} is not the ssl module's "
                          f"{ssl.OPENSSL_VERSION_NUMBER:#x}")
    major = version >> 28
    if not (major == 3 or version >> 12 == 0x10101) or "LibreSSL" in ssl.OPENSSL_VERSION:
        raise Unavailable(f"untested OpenSSL {ssl.OPENSSL_VERSION}")
    _bind(crypto, _CRYPTO)
    _bind(libssl, _SSL)
    return LibCrypto(crypto, libssl, crypto_path, ssl_path, version)


_cache: LibCrypto | Unavailable | None = None


def load() -> LibCrypto:
    """The binding (made once per process); :class:`Unavailable` when impossible."""
    global _cache
    if _cache is None:
        try:
            _cache = _load()
        except Unavailable as exc:
            _cache = exc
    if isinstance(_cache, Unavailable):
        raise _cache
    return _cache


def available() -> bool:
    try:
        load()
    except Unavailable:
        return False
    return True


def unavailable_reason() -> str:
    """Why :func:`load` fails, or "" when it works."""
    try:
        load()
    except Unavailable as exc:
        return str(exc)
    return ""
