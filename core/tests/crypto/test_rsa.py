"""The pure-Python RSA fallback, checked against the openssl CLI and libcrypto."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

import pytest
from mailrider.crypto import der, keys, libcrypto, rsa
from pki_util import Pki, needs_openssl, openssl

# RFC 8017 9.2 note 1: DigestInfo prefix of SHA-256
SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")


def _key(pki: Pki) -> rsa.PrivateKey:
    kind, key = keys.parse_private_key(pathlib.Path(pki.key).read_bytes())
    assert kind == "rsa" and key is not None
    return key


@needs_openssl
@pytest.mark.parametrize("which", ["rsa", "rsa-pkcs1"])
def test_parsed_key_matches_certificate(pkis: dict[str, Pki], which: str) -> None:
    key = _key(pkis[which])
    public = der.certificate_key(pathlib.Path(pkis[which].cert).read_bytes())
    assert (key.n, key.e) == (public.n, public.e)
    assert key.size == 256
    assert "d=" not in repr(key) and str(key.d) not in repr(key)


@needs_openssl
def test_pkcs1_signature_verifies_with_openssl(pkis: dict[str, Pki], tmp_path:
                                               pathlib.Path) -> None:
    key = _key(pkis["rsa"])
    data = SHA256_PREFIX + hashlib.sha256(b"mailrider").digest()
    sig = rsa.private_encrypt(key, data, rsa.RSA_PKCS1_PADDING)
    assert len(sig) == 256
    (tmp_path / "sig").write_bytes(sig)
    (tmp_path / "pub").write_bytes(openssl("x509", "-in", pkis["rsa"].cert, "-pubkey", "-noout"))
    recovered = openssl("pkeyutl", "-verifyrecover", "-pubin", "-inkey", str(tmp_path / "pub"),
                        "-in", str(tmp_path / "sig"))
    assert recovered == data
    # and openssl's own signature of the same DigestInfo is identical (v1.5 is deterministic)
    (tmp_path / "data").write_bytes(data)
    theirs = openssl("pkeyutl", "-sign", "-inkey", pkis["rsa"].key, "-in", str(tmp_path / "data"))
    assert theirs == sig


@needs_openssl
@pytest.mark.skipif(not libcrypto.available(), reason=libcrypto.unavailable_reason())
def test_raw_operations_agree_with_libcrypto(pkis: dict[str, Pki]) -> None:
    key = _key(pkis["rsa"])
    store = keys.KeyStore("libcrypto")
    h = store.load("rsa", pkis["rsa"].cert, pkis["rsa"].key)
    block = b"\x00\x01" + bytes(range(254))
    ours = rsa.private_encrypt(key, block, rsa.RSA_NO_PADDING)
    assert ours == store.sign(h, "rsa_priv_enc", block, rsa.RSA_NO_PADDING)
    assert pow(int.from_bytes(ours, "big"), key.e, key.n) == int.from_bytes(block, "big")
    assert rsa.private_decrypt(key, ours, rsa.RSA_NO_PADDING) == \
        store.sign(h, "rsa_priv_dec", ours, rsa.RSA_NO_PADDING)
    store.close()


@needs_openssl
def test_a_fault_is_never_returned(pkis: dict[str, Pki]) -> None:
    # Bellcore: a wrong CRT half would reveal a factor; the check must catch it
    good = _key(pkis["rsa"])
    faulty = dataclasses.replace(good, dp=good.dp ^ 2)
    with pytest.raises(rsa.RSAError, match="fault"):
        rsa.private_encrypt(faulty, b"\x00" * 32, rsa.RSA_PKCS1_PADDING)
    with pytest.raises(rsa.RSAError, match="inconsistent"):
        rsa.check(faulty)


@needs_openssl
def test_blinding_gives_the_same_result(pkis: dict[str, Pki]) -> None:
    key = _key(pkis["rsa"])
    data = b"\x00" + b"\x42" * 255
    results = {rsa.private_encrypt(key, data, rsa.RSA_NO_PADDING) for _ in range(5)}
    assert len(results) == 1


@needs_openssl
@pytest.mark.parametrize(("data", "padding", "fn"), [
    (b"x" * 246, rsa.RSA_PKCS1_PADDING, rsa.private_encrypt),  # > k - 11
    (b"x" * 255, rsa.RSA_NO_PADDING, rsa.private_encrypt),  # not k bytes
    (b"\xff" * 256, rsa.RSA_NO_PADDING, rsa.private_encrypt),  # >= n
    (b"x" * 32, 4, rsa.private_encrypt),  # OAEP is no signature padding
    (b"x" * 256, rsa.RSA_PKCS1_PADDING, rsa.private_decrypt),  # padding oracle refused
])
def test_bad_inputs_are_refused(pkis: dict[str, Pki], data: bytes, padding: int,
                                fn: object) -> None:
    with pytest.raises(rsa.RSAError):
        fn(_key(pkis["rsa"]), data, padding)  # type: ignore[operator]
