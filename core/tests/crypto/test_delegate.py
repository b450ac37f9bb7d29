"""Delegated contexts in one process (the key store stands in for klondike)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
from mailrider.crypto import delegate, keys, libcrypto
from pki_util import Pki

pytestmark = pytest.mark.skipif(not libcrypto.available(), reason=libcrypto.unavailable_reason())


@pytest.fixture
def store(pkis: dict[str, Pki]) -> Iterator[keys.KeyStore]:
    s = keys.KeyStore()
    for name in ("rsa", "p256", "p384", "other"):
        s.load(name, pkis[name].cert, pkis[name].key)
    yield s
    s.close()


def _client(cafile: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    return ctx


def test_ssl_ctx_pointer_is_verified() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    before = ctx.options
    ptr = delegate.ssl_ctx_pointer(ctx)
    lib = libcrypto.load()
    assert ptr and int(lib.ctx_options(ptr)) == int(ctx.options)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    assert int(lib.ctx_options(ptr)) & libcrypto.SSL_OP_NO_TICKET
    ctx.options = before
    assert ctx.options == before  # the check put the options back


@pytest.mark.parametrize("name", ["rsa", "p256", "p384"])
def test_self_test_signs_through_the_hook(pkis: dict[str, Pki], store: keys.KeyStore,
                                          name: str) -> None:
    ctx = delegate.delegated_context(pkis[name].cert, store.sign)
    info = delegate.key_info(ctx)
    assert info.kind == ("rsa" if name == "rsa" else "ec")
    assert info.cert_hash == store.names[name]
    before = store.counters["sign"]
    assert delegate.self_test(ctx) == ["TLSv1_2", "TLSv1_3"]
    assert info.calls == 2 and info.failures == 0
    assert store.counters["sign"] == before + 2


def test_verifying_client_and_hostname(pkis: dict[str, Pki], store: keys.KeyStore) -> None:
    ctx = delegate.delegated_context(pkis["rsa"].cert, store.sign)
    _, client = delegate.memory_handshake(ctx, _client(pkis["rsa"].cert), "localhost")
    assert client.version() == "TLSv1.3"
    assert dict(x[0] for x in client.getpeercert()["subject"])["commonName"] == "localhost"
    with pytest.raises(ssl.SSLCertVerificationError):
        delegate.memory_handshake(ctx, _client(pkis["rsa"].cert), "wrong.example")


def test_self_test_honours_the_configured_versions(pkis: dict[str, Pki],
                                                   store: keys.KeyStore) -> None:
    ctx = delegate.delegated_context(pkis["p256"].cert, store.sign,
                                     minimum_version=ssl.TLSVersion.TLSv1_3)
    assert delegate.self_test(ctx) == ["TLSv1_3"]
    ctx = delegate.delegated_context(pkis["p256"].cert, store.sign,
                                     maximum_version=ssl.TLSVersion.TLSv1_2)
    assert delegate.self_test(ctx) == ["TLSv1_2"]


@pytest.mark.parametrize("name", ["rsa", "p256"])
@pytest.mark.parametrize("failure", ["raise", "short", "long", "exit"])
def test_a_failing_sign_fails_the_handshake_only(pkis: dict[str, Pki], store: keys.KeyStore,
                                                 name: str, failure: str) -> None:
    def bad_sign(cert_hash: str, op: str, data: bytes, padding: int) -> bytes:
        good = store.sign(cert_hash, op, data, padding)
        if failure == "raise":
            raise keys.SignError("klondike is away")
        if failure == "exit":
            raise SystemExit(3)  # even this must not unwind into OpenSSL
        return good[:-1] if failure == "short" else good + b"\x00" * 200

    ctx = delegate.delegated_context(pkis[name].cert, bad_sign)
    if name == "p256" and failure == "short":
        # a truncated DER signature still fits the buffer: the peer must reject it
        with pytest.raises(ssl.SSLError):
            delegate.memory_handshake(ctx, _client())
        return
    with pytest.raises(delegate.DelegationUnavailable, match="self-test"):
        delegate.self_test(ctx)
    assert delegate.key_info(ctx).failures >= 1
    # the context is still usable once signing works again
    assert delegate.install(ctx, pkis[name].cert, store.sign)
    assert delegate.self_test(ctx)


def test_sni_selects_among_delegated_contexts(pkis: dict[str, Pki],
                                              store: keys.KeyStore) -> None:
    contexts = {"localhost": delegate.delegated_context(pkis["rsa"].cert, store.sign),
                "other.example": delegate.delegated_context(pkis["other"].cert, store.sign)}

    def pick(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        if name in contexts:
            obj.context = contexts[name]

    default = contexts["localhost"]
    default.sni_callback = pick
    for name, pki in (("localhost", "rsa"), ("other.example", "other")):
        calls = delegate.key_info(contexts[name]).calls
        _, client = delegate.memory_handshake(default, _client(pkis[pki].cert), name)
        cn = dict(x[0] for x in client.getpeercert()["subject"])["commonName"]
        assert cn == name
        assert delegate.key_info(contexts[name]).calls == calls + 1


def test_undelegated_context_and_bad_certificate(pkis: dict[str, Pki],
                                                 store: keys.KeyStore) -> None:
    with pytest.raises(delegate.DelegationUnavailable, match="no delegated key"):
        delegate.self_test(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    with pytest.raises(delegate.DelegationUnavailable):
        delegate.delegated_context(pkis["rsa"].key, store.sign)  # a key is not a certificate
    with pytest.raises(delegate.DelegationUnavailable):
        delegate.delegated_context("/nonexistent/cert.pem", store.sign)
