"""The system's crypt(3), bound with ctypes: yescrypt, bcrypt, scrypt, ...

Debian's ``passwd`` writes yescrypt (``$y$``) hashes, which only the system
library (libxcrypt on Linux, the C library on the BSDs) knows how to
compute. The library is looked for under the names of
:data:`mailrider.paths.LIBCRYPT_NAMES`, once per process.

Invariants:

- :func:`crypt` never raises for a refused or unknown setting: it returns
  None, and so it does when no library is found; the caller then uses the
  pure-Python SHA-crypt or reports the scheme unsupported.
- Reentrant: ``crypt_rn`` (libxcrypt) or ``crypt_r`` with a zeroed buffer of
  our own per call; the static-buffer ``crypt`` only where neither exists,
  under a lock.
- A password containing NUL is never passed (C would cut it there): the
  caller treats it as a wrong password.
- Nothing here logs; passwords and hashes never leave the function.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

from mailrider import paths

#: bytes given to crypt_rn/crypt_r: more than struct crypt_data of libxcrypt
#: (32 KiB) and of the former glibc libcrypt (about 128 KiB)
_DATA_SIZE = 256 * 1024

_lock = threading.Lock()
_loaded = False
_impl: Callable[[bytes, bytes], bytes | None] | None = None
_lib: ctypes.CDLL | None = None
_where = ""


def _bind(lib: ctypes.CDLL) -> Callable[[bytes, bytes], bytes | None] | None:
    if hasattr(lib, "crypt_rn"):
        rn = lib.crypt_rn
        rn.restype = ctypes.c_char_p
        rn.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)

        def call_rn(phrase: bytes, setting: bytes) -> bytes | None:
            data = ctypes.create_string_buffer(_DATA_SIZE)
            out: bytes | None = rn(phrase, setting, data, _DATA_SIZE)
            return out

        return call_rn
    if hasattr(lib, "crypt_r"):
        r = lib.crypt_r
        r.restype = ctypes.c_char_p
        r.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)

        def call_r(phrase: bytes, setting: bytes) -> bytes | None:
            data = ctypes.create_string_buffer(_DATA_SIZE)  # zeroed: "initialized" = 0
            out: bytes | None = r(phrase, setting, data)
            return out

        return call_r
    if hasattr(lib, "crypt"):
        c = lib.crypt
        c.restype = ctypes.c_char_p
        c.argtypes = (ctypes.c_char_p, ctypes.c_char_p)

        def call(phrase: bytes, setting: bytes) -> bytes | None:
            with _lock:
                out: bytes | None = c(phrase, setting)
                return out

        return call
    return None


def _load() -> Callable[[bytes, bytes], bytes | None] | None:
    global _loaded, _impl, _lib, _where
    with _lock:
        if _loaded:
            return _impl
        _loaded = True
        for name in paths.LIBCRYPT_NAMES:
            try:
                lib = ctypes.CDLL(name or None)
            except OSError:
                continue
            impl = _bind(lib)
            if impl is not None:
                _impl, _lib, _where = impl, lib, name or "the C library"
                break
        return _impl


def available() -> bool:
    """Whether a system crypt(3) was found."""
    return _load() is not None


def library() -> str:
    """The library in use, for messages ("" when none)."""
    _load()
    return _where


def crypt(password: str, setting: str) -> str | None:
    """crypt(3) of ``password`` with ``setting`` (a stored hash will do), or
    None when there is no library, or it refuses the setting."""
    impl = _load()
    if impl is None or "\0" in password or "\0" in setting:
        return None
    try:
        out = impl(password.encode("utf-8"), setting.encode("utf-8"))
    except (ValueError, UnicodeError):
        return None
    # libxcrypt and others return a "*0"/"*1" failure token instead of NULL
    if not out or out.startswith(b"*"):
        return None
    return out.decode("utf-8", "replace")


def gensalt(prefix: str) -> str | None:
    """A new setting for ``prefix`` (``$y$``, ``$2b$``, ...) with the library's
    default cost, from libxcrypt's crypt_gensalt_rn; None when unavailable."""
    _load()
    lib = _lib
    if lib is None or not hasattr(lib, "crypt_gensalt_rn"):
        return None
    fn = lib.crypt_gensalt_rn
    fn.restype = ctypes.c_char_p
    fn.argtypes = (ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int,
                   ctypes.c_char_p, ctypes.c_int)
    buf = ctypes.create_string_buffer(256)
    try:
        out: bytes | None = fn(prefix.encode("ascii"), 0, None, 0, buf, 256)
    except (ValueError, UnicodeError):
        return None
    if not out or out.startswith(b"*"):
        return None
    return out.decode("ascii", "replace")
