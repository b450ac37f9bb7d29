"""Certificate path validation to one trust anchor, by the OpenSSL of ``_ssl``.

For DANE-TA(2) (RFC 7672 §3.1.2, docs/dane.md §4): the leaf must chain to
the certificate a TLSA record designated, with valid signatures and dates,
and carry one of the reference names. Signature checks over RSA, ECDSA and
Ed25519 are OpenSSL's own ``X509_verify_cert``, run with the anchor as the
only trusted certificate (``X509_V_FLAG_PARTIAL_CHAIN``: it need not be
self-signed) and the host names set in the verification parameters
(no partial wildcards).

Invariants: the functions are bound here with their own prototypes (the
shared binding of :mod:`mailrider.crypto.libcrypto` is not changed, so a
library lacking one of them costs DANE-TA only); every OpenSSL object made
is freed on every path; DER input that OpenSSL refuses is a failure with a
reason, never an exception.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailrider.crypto import libcrypto

__all__ = ["Unavailable", "available", "check_path", "peer_chain"]

Unavailable = libcrypto.Unavailable

P = ctypes.c_void_p
I = ctypes.c_int  # noqa: E741
X509_V_FLAG_PARTIAL_CHAIN = 0x80000
X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS = 0x4
#: the most certificates of a chain we hand OpenSSL (RFC 8446 allows more;
#: an SMTP server sends two or three)
CHAIN_MAX = 10

_PROTOS: dict[str, tuple[object, tuple[object, ...]]] = {
    "d2i_X509": (P, (P, ctypes.POINTER(P), ctypes.c_long)),
    "X509_free": (None, (P,)),
    "X509_STORE_new": (P, ()),
    "X509_STORE_free": (None, (P,)),
    "X509_STORE_add_cert": (I, (P, P)),
    "X509_STORE_set_flags": (I, (P, ctypes.c_ulong)),
    "X509_STORE_CTX_new": (P, ()),
    "X509_STORE_CTX_free": (None, (P,)),
    "X509_STORE_CTX_init": (I, (P, P, P, P)),
    "X509_STORE_CTX_get0_param": (P, (P,)),
    "X509_STORE_CTX_get_error": (I, (P,)),
    "X509_verify_cert": (I, (P,)),
    "X509_verify_cert_error_string": (ctypes.c_char_p, (ctypes.c_long,)),
    "X509_VERIFY_PARAM_set1_host": (I, (P, ctypes.c_char_p, ctypes.c_size_t)),
    "X509_VERIFY_PARAM_add1_host": (I, (P, ctypes.c_char_p, ctypes.c_size_t)),
    "X509_VERIFY_PARAM_set_hostflags": (None, (P, ctypes.c_uint)),
}
#: the stack functions: OpenSSL 1.1 and 3 name them OPENSSL_sk_*, LibreSSL sk_*
_STACK = {"new_null": (P, ()), "push": (I, (P, P)), "free": (None, (P,))}


@dataclass
class _Fns:
    fn: dict[str, Any]  # name -> ctypes function with its prototype set


_bound: _Fns | Unavailable | None = None


def _bind() -> _Fns:
    global _bound
    if _bound is None:
        try:
            lib = libcrypto.load().crypto
            fns: dict[str, Any] = {}
            f: Any
            for name, (restype, argtypes) in _PROTOS.items():
                f = lib[name]  # a fresh function object: the shared binding is left alone
                f.restype, f.argtypes = restype, argtypes
                fns[name] = f
            for short, (restype, argtypes) in _STACK.items():
                for name in (f"OPENSSL_sk_{short}", f"sk_{short}"):
                    try:
                        f = lib[name]
                    except AttributeError:
                        continue
                    f.restype, f.argtypes = restype, argtypes
                    fns[f"sk_{short}"] = f
                    break
                else:
                    raise Unavailable(f"libcrypto exports no sk_{short}")
            _bound = _Fns(fns)
        except AttributeError as exc:
            _bound = Unavailable(f"libcrypto lacks a certificate verification function: {exc}")
        except Unavailable as exc:
            _bound = exc
    if isinstance(_bound, Unavailable):
        raise _bound
    return _bound


def available() -> bool:
    try:
        _bind()
    except Unavailable:
        return False
    return True


def _x509(fns: _Fns, data: bytes) -> int | None:
    buf = ctypes.create_string_buffer(data, len(data))
    ptr = P(ctypes.addressof(buf))
    x = fns.fn["d2i_X509"](None, ctypes.byref(ptr), len(data))
    return int(x) if x else None


def check_path(leaf: bytes, intermediates: Sequence[bytes], anchor: bytes,
               names: Sequence[str]) -> str:
    """"" when ``leaf`` chains through ``intermediates`` to ``anchor`` (DER
    certificates) and matches one of ``names``; else why not. Raises
    :class:`Unavailable` when this OpenSSL cannot be reached."""
    fns = _bind()
    f = fns.fn
    if len(intermediates) > CHAIN_MAX:
        return "certificate chain too long"
    made: list[int] = []
    store = ctx = stack = None
    try:
        certs = [_x509(fns, d) for d in (leaf, anchor, *intermediates)]
        if any(c is None for c in certs):
            return "a certificate of the chain does not parse"
        made = [c for c in certs if c is not None]
        leaf_x, anchor_x, *inter_x = made
        store = f["X509_STORE_new"]()
        stack = f["sk_new_null"]()
        ctx = f["X509_STORE_CTX_new"]()
        if not store or not stack or not ctx:
            return "out of memory"
        if f["X509_STORE_add_cert"](store, anchor_x) != 1:
            return "the trust anchor is refused"
        f["X509_STORE_set_flags"](store, X509_V_FLAG_PARTIAL_CHAIN)
        for x in inter_x:
            if f["sk_push"](stack, x) <= 0:
                return "out of memory"
        if f["X509_STORE_CTX_init"](ctx, store, leaf_x, stack) != 1:
            return "cannot set up the verification"
        param = f["X509_STORE_CTX_get0_param"](ctx)
        f["X509_VERIFY_PARAM_set_hostflags"](param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
        first = True
        for name in names:
            raw = name.rstrip(".").encode("ascii", "replace")
            setter = f["X509_VERIFY_PARAM_set1_host" if first else "X509_VERIFY_PARAM_add1_host"]
            if setter(param, raw, len(raw)) != 1:
                return "cannot set the reference names"
            first = False
        if f["X509_verify_cert"](ctx) == 1:
            return ""
        err = int(f["X509_STORE_CTX_get_error"](ctx))
        text = f["X509_verify_cert_error_string"](err)
        return (text or b"verification failed").decode("ascii", "replace")
    finally:
        if ctx:
            f["X509_STORE_CTX_free"](ctx)
        if stack:
            f["sk_free"](stack)  # the certificates are ours: freed below
        if store:
            f["X509_STORE_free"](store)
        for x in made:
            f["X509_free"](x)


def peer_chain(ssl_object: object) -> list[bytes]:
    """The certificates the peer sent, leaf first, DER; [] when there are none.

    Python 3.13 has ``SSLObject.get_unverified_chain()`` (DER bytes); 3.10
    to 3.12 have the same call on the ``_ssl`` object inside, whose items
    give DER through ``public_bytes``. Without either, only the leaf
    (``getpeercert(binary_form=True)``) is known: DANE-EE still works,
    DANE-TA then finds no anchor in the chain (docs/dane.md §4).
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        inner = getattr(ssl_object, "_sslobj", None)
        getter = getattr(inner, "get_unverified_chain", None)
    out: list[bytes] = []
    if getter is not None:
        try:
            items = getter() or []
        except (ValueError, OSError):
            items = []
        for item in list(items)[:CHAIN_MAX + 2]:
            if isinstance(item, bytes):
                out.append(item)
            elif hasattr(item, "public_bytes"):
                out.append(bytes(item.public_bytes(_ENCODING_DER)))
        if out:
            return out
    leaf_of = getattr(ssl_object, "getpeercert", None)
    leaf = leaf_of(binary_form=True) if leaf_of is not None else None
    return [leaf] if isinstance(leaf, bytes) else []


#: ``_ssl.ENCODING_DER``, the argument of ``Certificate.public_bytes``
_ENCODING_DER = 2
