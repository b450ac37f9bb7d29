"""The OpenSSL (or LibreSSL) that ``_ssl`` uses, bound with ctypes.

We must call the very library the ``ssl`` module links against: an
``SSL_CTX *`` made by one copy of OpenSSL means nothing to another. So the
paths are those of the shared objects loaded after ``import _ssl``, listed
by ``dl_iterate_phdr(3)`` (Linux, FreeBSD, OpenBSD, NetBSD) or, without it,
read from Linux's ``/proc/self/maps``; exactly one libssl and one libcrypto
must be loaded, and the library's version number must equal
``ssl.OPENSSL_VERSION_NUMBER``. Anything else (a static build, two copies)
makes the binding unavailable, with the reason, rather than a guess.

Accepted: OpenSSL 1.1.1 and 3.x, and LibreSSL from :data:`LIBRESSL_MIN`
(the method APIs :mod:`mailrider.crypto.delegate` uses exist there). Where
the libraries name a function differently, :data:`ALTERNATIVES` lists the
names in order of preference and :func:`resolve_symbols` picks the first one
exported: LibreSSL's ``SSL_CTX_get_options`` is a macro over ``SSL_CTX_ctrl``
(no symbol), libraries older than OpenSSL 1.1 call the version function
``SSLeay``. A function with no exported name makes the binding unavailable,
naming it. Callers use :meth:`LibCrypto.ctx_options` and
:attr:`LibCrypto.version`, never the raw names. Whatever binds, the start-up
self-test (a TLS 1.2 and 1.3 handshake) still decides (docs/ports.md §4).
"""

from __future__ import annotations

import ctypes
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

_MAPS = "/proc/self/maps"
#: the oldest LibreSSL accepted: opaque structures, RSA_meth_*, EC_KEY_METHOD
LIBRESSL_MIN = (3, 5, 0)
#: SSL_CTX_ctrl's command behind LibreSSL's SSL_CTX_get_options macro (<openssl/ssl.h>)
SSL_CTRL_OPTIONS = 32
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
    # DKIM signatures (crypto/dkimkeys.py): RSA PKCS#1 v1.5 over SHA-256, Ed25519
    "EVP_sha256": (P, ()),
    "EVP_MD_CTX_new": (P, ()),
    "EVP_MD_CTX_free": (None, (P,)),
    "EVP_DigestSignInit": (I, (P, P, P, P, P)),
    "EVP_DigestSign": (I, (P, P, ctypes.POINTER(ctypes.c_size_t), P, ctypes.c_size_t)),
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
    "SSL_CTX_use_certificate_chain_file": (I, (P, ctypes.c_char_p)),
    "SSL_CTX_use_PrivateKey": (I, (P, P)),
    "SSL_CTX_check_private_key": (I, (P,)),
    "SSL_CTX_get0_certificate": (P, (P,)),
}


#: a function some libraries export under another name (or only as a macro
#: over another function): the names tried, in order, with their prototypes
ALTERNATIVES: dict[str, tuple[tuple[str, object, tuple[object, ...]], ...]] = {
    "version": (("OpenSSL_version_num", ctypes.c_ulong, ()),
                ("SSLeay", ctypes.c_ulong, ())),
    "ctx_options": (("SSL_CTX_get_options", ctypes.c_uint64, (P,)),
                    ("SSL_CTX_ctrl", ctypes.c_long, (P, I, ctypes.c_long, P))),
}
#: which library holds each alternative
_ALTERNATIVE_LIBRARY = {"version": "crypto", "ctx_options": "ssl"}


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
    #: the exported name chosen for each entry of ALTERNATIVES
    names: dict[str, str] = field(default_factory=dict)
    keep: list[object] = field(default_factory=list)  # objects C holds pointers to

    def ctx_options(self, ctx: int) -> int:
        """``SSL_CTX_get_options(ctx)``, through the macro's function where needed."""
        name = self.names.get("ctx_options", "SSL_CTX_get_options")
        fn = getattr(self.ssl, name)
        if name == "SSL_CTX_ctrl":
            return int(fn(ctx, SSL_CTRL_OPTIONS, 0, None)) & 0xFFFFFFFFFFFFFFFF
        return int(fn(ctx))

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


@dataclass(frozen=True, slots=True)
class Flavour:
    """Which library ``ssl.OPENSSL_VERSION`` names, and its version."""

    name: str  # "OpenSSL" or "LibreSSL" (anything else: unsupported)
    version: tuple[int, ...]


def flavour(text: str) -> Flavour:
    """``Flavour("LibreSSL", (3, 8, 2))`` from ``"LibreSSL 3.8.2"``."""
    match = re.match(r"\s*(\S+)\s+([0-9]+(?:\.[0-9]+)*)", text)
    if not match:
        return Flavour(text.split(" ", 1)[0], ())
    return Flavour(match.group(1), tuple(int(n) for n in match.group(2).split(".")))


def unsupported_reason(fl: Flavour, number: int) -> str:
    """Why this library cannot be used ("" when it can): ``number`` is its
    ``OPENSSL_VERSION_NUMBER``."""
    if fl.name == "LibreSSL":
        if fl.version < LIBRESSL_MIN:
            low = ".".join(map(str, LIBRESSL_MIN))
            return f"LibreSSL {'.'.join(map(str, fl.version))} is older than {low}"
        return ""
    if fl.name == "OpenSSL" and (number >> 28 == 3 or number >> 12 == 0x10101):
        return ""
    return f"untested TLS library {fl.name} {'.'.join(map(str, fl.version))}"


def resolve_symbols(exported: Callable[[str, str], bool]) -> dict[str, str]:
    """The name to call for each entry of :data:`ALTERNATIVES`: the first one
    ``exported(library, name)`` says exists (library is "crypto" or "ssl").
    Raises :class:`Unavailable` naming the function none of whose names exist."""
    out: dict[str, str] = {}
    for key, choices in ALTERNATIVES.items():
        library = _ALTERNATIVE_LIBRARY[key]
        for name, _, _ in choices:
            if exported(library, name):
                out[key] = name
                break
        else:
            tried = " or ".join(name for name, _, _ in choices)
            raise Unavailable(f"lib{library} exports neither {tried}")
    return out


class _PhdrInfo(ctypes.Structure):
    # struct dl_phdr_info begins alike on Linux and the BSDs: the load
    # address, then the object's path; nothing after is read
    _fields_ = [("dlpi_addr", ctypes.c_void_p), ("dlpi_name", ctypes.c_char_p)]


_PHDR_CALLBACK = ctypes.CFUNCTYPE(I, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t, P)


def loaded_objects() -> list[str] | None:
    """The paths of every loaded shared object, or None without dl_iterate_phdr."""
    try:
        iterate = ctypes.CDLL(None).dl_iterate_phdr
    except (OSError, AttributeError):
        return None
    iterate.argtypes = [_PHDR_CALLBACK, P]
    iterate.restype = I
    found: list[str] = []

    def collect(info: ctypes._Pointer[_PhdrInfo], size: int, data: int) -> int:
        name = info.contents.dlpi_name
        if name:
            found.append(os.fsdecode(name))
        return 0

    iterate(_PHDR_CALLBACK(collect), None)
    return found


def maps_objects() -> list[str] | None:
    try:
        f = open(_MAPS, encoding="utf-8", errors="replace")
    except OSError:
        return None
    out: list[str] = []
    with f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6:
                continue
            path = parts[5].strip()
            if path.endswith(" (deleted)"):
                path = path[: -len(" (deleted)")]
            out.append(path)
    return out


def split_libraries(paths: list[str]) -> tuple[set[str], set[str]]:
    """(libssl paths, libcrypto paths) among the loaded objects ``paths``."""
    ssl_paths: set[str] = set()
    crypto_paths: set[str] = set()
    for path in paths:
        base = os.path.basename(path)
        if _LIBSSL.match(base):
            ssl_paths.add(path)
        elif _LIBCRYPTO.match(base):
            crypto_paths.add(path)
    return ssl_paths, crypto_paths


def _mapped_libraries() -> tuple[set[str], set[str]]:
    import _ssl  # noqa: F401  (loads the libraries the ssl module really uses)

    objects = loaded_objects()
    if objects is None:
        objects = maps_objects()
    if objects is None:
        raise Unavailable(f"neither dl_iterate_phdr nor {_MAPS}: the loaded libraries "
                          "cannot be listed")
    return split_libraries(objects)


def _bind(lib: ctypes.CDLL, table: dict[str, tuple[object, tuple[object, ...]]]) -> None:
    for name, (restype, argtypes) in table.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise Unavailable(f"{name} is not exported by {lib._name}") from None
        fn.restype = restype
        fn.argtypes = argtypes


def _exported(libs: dict[str, ctypes.CDLL]) -> Callable[[str, str], bool]:
    def exported(library: str, name: str) -> bool:
        return hasattr(libs[library], name)

    return exported


def _load() -> LibCrypto:
    fl = flavour(ssl.OPENSSL_VERSION)
    reason = unsupported_reason(fl, ssl.OPENSSL_VERSION_NUMBER)
    if reason:
        raise Unavailable(reason)
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
    libs = {"crypto": crypto, "ssl": libssl}
    names = resolve_symbols(_exported(libs))
    for key, choices in ALTERNATIVES.items():
        for name, restype, argtypes in choices:
            if name == names[key]:
                _bind(libs[_ALTERNATIVE_LIBRARY[key]], {name: (restype, argtypes)})
    version = int(getattr(crypto, names["version"])())
    if version != ssl.OPENSSL_VERSION_NUMBER:
        raise Unavailable(f"libcrypto {version:#x} is not the ssl module's "
                          f"{ssl.OPENSSL_VERSION_NUMBER:#x}")
    _bind(crypto, _CRYPTO)
    _bind(libssl, _SSL)
    return LibCrypto(crypto, libssl, crypto_path, ssl_path, version, names)


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
