"""pony's side of klondike: ``ssl.SSLContext`` objects whose private key is elsewhere.

The context holds the certificate chain and a key object with public parts
only; OpenSSL's RSA private-encrypt/decrypt and ECDSA sign hooks of that key
call ``sign(cert_hash, op, data, padding)``, which the caller makes a
blocking round trip to klondike (see :mod:`mailrider.crypto.signclient`).

Invariants:

* the ``SSL_CTX *`` is taken from the context object and verified by toggling
  ``OP_NO_TICKET`` from Python and reading it back through OpenSSL before
  anything is written to it;
* every ctypes callback and method structure stays referenced for the life
  of the process (OpenSSL keeps raw pointers to them);
* no exception ever crosses into C: a callback that fails returns OpenSSL's
  failure value (-1 for RSA, 0 / NULL for ECDSA) and the handshake fails;
* nothing here ever holds private key material.

Operation names and paddings are those of :mod:`mailrider.crypto.keys`. TLS
1.3 RSA signatures arrive as ``RSA_NO_PADDING`` (OpenSSL did the PSS
encoding), TLS 1.2 ones as PSS or as ``RSA_PKCS1_PADDING`` over a DigestInfo;
ECDSA returns a DER signature. The key's private decryption hook refuses
without asking anyone: TLS with (EC)DHE never decrypts, static RSA key
exchange is excluded by the default cipher list, and klondike would refuse
the operation anyway.
"""

from __future__ import annotations

import ctypes
import os
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from mailrider.crypto import der, libcrypto

SignFn = Callable[[str, str, bytes, int], bytes]


class DelegationUnavailable(libcrypto.Unavailable):
    """Key delegation cannot work here; ``str()`` gives the reason."""


@dataclass
class DelegatedKey:
    """What a delegated context signs with, and how often it did."""

    cert_path: str
    cert_hash: str
    kind: str  # "rsa" or "ec"
    size: int  # RSA modulus bytes, or the largest DER ECDSA signature
    calls: int = 0
    failures: int = 0


#: callbacks and method structures OpenSSL points to: never released
_KEEP: list[object] = []
_KEYS: weakref.WeakKeyDictionary[ssl.SSLContext, DelegatedKey] = weakref.WeakKeyDictionary()


def _lib() -> libcrypto.LibCrypto:
    try:
        return libcrypto.load()
    except libcrypto.Unavailable as exc:
        raise DelegationUnavailable(str(exc)) from None


def ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` inside ``ctx``, verified against OpenSSL's view of its options."""
    lib = _lib()
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr:
        raise DelegationUnavailable("no SSL_CTX pointer in the context object")
    get = lib.ctx_options
    saved = ctx.options
    try:
        ctx.options = saved | ssl.OP_NO_TICKET
        on = int(get(ptr)) & libcrypto.SSL_OP_NO_TICKET
        ctx.options = saved & ~ssl.OP_NO_TICKET
        off = int(get(ptr)) & libcrypto.SSL_OP_NO_TICKET
    finally:
        ctx.options = saved
    if not on or off or int(get(ptr)) != int(ctx.options):
        raise DelegationUnavailable("the SSL_CTX pointer does not follow the context's options")
    return int(ptr)


def unavailable_reason() -> str:
    """Why private keys cannot be delegated in this interpreter, "" when they
    can: the library binding (libcrypto.py) and the ``SSL_CTX`` pointer of a
    fresh context. The self-test at start still has the last word."""
    try:
        ssl_ctx_pointer(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    except DelegationUnavailable as exc:
        return str(exc)
    return ""


def key_info(ctx: ssl.SSLContext) -> DelegatedKey:
    """The delegated key of ``ctx``; KeyError if it has none."""
    return _KEYS[ctx]


def _rsa_hook(info: DelegatedKey, sign: SignFn) -> Callable[[int, int, int, int, int], int]:
    def hook(flen: int, src: int, dst: int, rsa: int, padding: int) -> int:
        try:
            out = sign(info.cert_hash, "rsa_priv_enc", ctypes.string_at(src, flen), padding)
            if len(out) != info.size:
                raise ValueError("reply of the wrong length")
            ctypes.memmove(dst, out, len(out))
            info.calls += 1
            return len(out)
        except BaseException:  # nothing may unwind into OpenSSL
            info.failures += 1
            return -1
    return hook


def _refuse_decrypt(info: DelegatedKey) -> Callable[[int, int, int, int, int], int]:
    def hook(flen: int, src: int, dst: int, rsa: int, padding: int) -> int:
        info.failures += 1
        return -1
    return hook


def _ec_hooks(info: DelegatedKey, sign: SignFn, lib: libcrypto.LibCrypto) -> tuple[
        Callable[..., int], Callable[..., int | None]]:
    def ec_sign(kind: int, dgst: int, dlen: int, sig: int, siglen: ctypes._Pointer[ctypes.c_uint],
                kinv: int, r: int, eckey: int) -> int:
        try:
            out = sign(info.cert_hash, "ecdsa_sign", ctypes.string_at(dgst, dlen), 0)
            if not 0 < len(out) <= info.size:
                raise ValueError("reply of the wrong length")
            ctypes.memmove(sig, out, len(out))
            siglen[0] = len(out)
            info.calls += 1
            return 1
        except BaseException:
            info.failures += 1
            return 0

    def ec_sign_sig(dgst: int, dlen: int, kinv: int, r: int, eckey: int) -> int | None:
        try:
            out = sign(info.cert_hash, "ecdsa_sign", ctypes.string_at(dgst, dlen), 0)
            buf = ctypes.create_string_buffer(out, len(out))
            p = ctypes.c_void_p(ctypes.addressof(buf))
            made = lib.crypto.d2i_ECDSA_SIG(None, ctypes.byref(p), len(out))
            if not made:
                raise ValueError("bad DER signature")
            info.calls += 1
            return int(made)
        except BaseException:
            info.failures += 1
            return None

    return ec_sign, ec_sign_sig


def install(ctx: ssl.SSLContext, cert_path: str, sign: SignFn) -> DelegatedKey:
    """Load ``cert_path`` (leaf first, then its chain) into ``ctx`` with a delegated key."""
    lib = _lib()
    c, s = lib.crypto, lib.ssl
    try:
        with open(cert_path, "rb") as f:
            public = der.certificate_key(f.read())
    except (OSError, ValueError) as exc:
        raise DelegationUnavailable(f"{cert_path}: {exc}") from None
    ptr = ssl_ctx_pointer(ctx)
    c.ERR_clear_error()
    if s.SSL_CTX_use_certificate_chain_file(ptr, os.fsencode(cert_path)) != 1:
        raise DelegationUnavailable(f"{cert_path}: {lib.errors()}")
    pub = c.X509_get0_pubkey(s.SSL_CTX_get0_certificate(ptr))
    if not pub:
        raise DelegationUnavailable(f"{cert_path}: {lib.errors()}")
    keep: list[object] = []
    if public.kind == "rsa":
        size = (public.n.bit_length() + 7) // 8
        info = DelegatedKey(cert_path, public.hash, "rsa", size)
        meth = c.RSA_meth_dup(c.RSA_get_default_method())
        enc = libcrypto.RSA_PRIV_FN(_rsa_hook(info, sign))
        dec = libcrypto.RSA_PRIV_FN(_refuse_decrypt(info))
        keep += [enc, dec, meth]
        if not meth or c.RSA_meth_set_priv_enc(meth, enc) != 1 \
                or c.RSA_meth_set_priv_dec(meth, dec) != 1:
            raise DelegationUnavailable(f"RSA method: {lib.errors()}")
        src = c.EVP_PKEY_get1_RSA(pub)
        n, e = ctypes.c_void_p(), ctypes.c_void_p()
        c.RSA_get0_key(src, ctypes.byref(n), ctypes.byref(e), None)
        key = c.RSA_new()
        ok = bool(key) and c.RSA_set_method(key, meth) == 1 \
            and c.RSA_set0_key(key, c.BN_dup(n), c.BN_dup(e), None) == 1
        c.RSA_free(src)
        pkey = c.EVP_PKEY_new()
        ok = ok and bool(pkey) and c.EVP_PKEY_set1_RSA(pkey, key) == 1
        c.RSA_free(key)
    else:
        meth = c.EC_KEY_METHOD_new(c.EC_KEY_OpenSSL())
        psign, psetup, psig = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        c.EC_KEY_METHOD_get_sign(meth, ctypes.byref(psign), ctypes.byref(psetup),
                                 ctypes.byref(psig))
        src = c.EVP_PKEY_get1_EC_KEY(pub)
        size = int(c.ECDSA_size(src)) if src else 0
        info = DelegatedKey(cert_path, public.hash, "ec", size)
        ec_sign, ec_sign_sig = _ec_hooks(info, sign, lib)
        sign_cb = libcrypto.EC_SIGN_FN(ec_sign)
        sig_cb = libcrypto.EC_SIGN_SIG_FN(ec_sign_sig)
        keep += [sign_cb, sig_cb, meth]
        if not meth or not src or size <= 0:
            raise DelegationUnavailable(f"EC method: {lib.errors()}")
        c.EC_KEY_METHOD_set_sign(meth, ctypes.cast(sign_cb, ctypes.c_void_p), psetup,
                                 ctypes.cast(sig_cb, ctypes.c_void_p))
        key = c.EC_KEY_new()
        ok = bool(key) and c.EC_KEY_set_method(key, meth) == 1 \
            and c.EC_KEY_set_group(key, c.EC_KEY_get0_group(src)) == 1 \
            and c.EC_KEY_set_public_key(key, c.EC_KEY_get0_public_key(src)) == 1
        c.EC_KEY_free(src)
        pkey = c.EVP_PKEY_new()
        ok = ok and bool(pkey) and c.EVP_PKEY_set1_EC_KEY(pkey, key) == 1
        c.EC_KEY_free(key)
    _KEEP.extend(keep)
    if not ok:
        c.EVP_PKEY_free(pkey)
        raise DelegationUnavailable(f"building the public key: {lib.errors()}")
    used = s.SSL_CTX_use_PrivateKey(ptr, pkey) == 1
    c.EVP_PKEY_free(pkey)  # the SSL_CTX holds its own reference
    if not used or s.SSL_CTX_check_private_key(ptr) != 1:
        raise DelegationUnavailable(f"installing the delegated key: {lib.errors()}")
    c.ERR_clear_error()
    _KEYS[ctx] = info
    return info


def delegated_context(cert_path: str, sign: SignFn, *,
                      purpose: ssl.Purpose = ssl.Purpose.CLIENT_AUTH,
                      minimum_version: ssl.TLSVersion | None = None,
                      maximum_version: ssl.TLSVersion | None = None,
                      ciphers: str | None = None,
                      options: int = 0) -> ssl.SSLContext:
    """A default context for ``purpose`` (CLIENT_AUTH: a server) with a delegated key."""
    ctx = ssl.create_default_context(purpose)
    if minimum_version is not None:
        ctx.minimum_version = minimum_version
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if options:
        ctx.options |= options
    install(ctx, cert_path, sign)
    return ctx


def _pump(server: ssl.SSLObject, s_in: ssl.MemoryBIO, s_out: ssl.MemoryBIO,
          client: ssl.SSLObject, c_in: ssl.MemoryBIO, c_out: ssl.MemoryBIO) -> None:
    """Drive both ends of an in-memory handshake to completion."""
    done_c = done_s = False
    for _ in range(32):
        if not done_c:
            try:
                client.do_handshake()
                done_c = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not done_s:
            try:
                server.do_handshake()
                done_s = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if done_c and done_s:
            return
    raise ssl.SSLError("in-memory handshake did not finish")


def memory_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                     server_hostname: str | None = None) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """One complete handshake over MemoryBIOs; returns (server, client) objects."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    _pump(server, s_in, s_out, client, c_in, c_out)
    return server, client


def self_test(ctx: ssl.SSLContext, client_ctx: ssl.SSLContext | None = None, *,
              server_hostname: str | None = None) -> list[str]:
    """The start-up self-test (docs/processes.md §5): a TLS 1.2 and a TLS 1.3
    handshake in memory with ``ctx`` (a server context), each of which must make
    a delegated signature.

    Versions outside ``ctx``'s minimum/maximum are skipped. The default client
    does not verify the chain (only the handshake signature, which TLS always
    checks). Returns the versions tested; raises :class:`DelegationUnavailable`.
    """
    info = _KEYS.get(ctx)
    if info is None:
        raise DelegationUnavailable("the context has no delegated key")
    if client_ctx is None:
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
    lo, hi = ctx.minimum_version, ctx.maximum_version
    saved = client_ctx.minimum_version, client_ctx.maximum_version
    tested = []
    try:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            if lo != ssl.TLSVersion.MINIMUM_SUPPORTED and lo > version:
                continue
            if hi != ssl.TLSVersion.MAXIMUM_SUPPORTED and hi < version:
                continue
            client_ctx.minimum_version = client_ctx.maximum_version = version
            before = info.calls
            try:
                server, _ = memory_handshake(ctx, client_ctx, server_hostname)
            except ssl.SSLError as exc:
                raise DelegationUnavailable(f"self-test {version.name} failed: {exc}") from None
            if server.version() != version.name.replace("v1_", "v1."):
                raise DelegationUnavailable(f"self-test negotiated {server.version()}")
            if info.calls == before:
                raise DelegationUnavailable(f"self-test {version.name} made no delegated signature")
            tested.append(version.name)
    finally:
        client_ctx.minimum_version, client_ctx.maximum_version = saved
    if not tested:
        raise DelegationUnavailable("no TLS version to self-test")
    return tested
