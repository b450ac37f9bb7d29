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
    block = rsa.pss_encode(hashlib.sha384(b"x").digest(), key.n.bit_length(), b"s" * 48)
    ours = rsa.private_encrypt(key, block, rsa.RSA_NO_PADDING)
    assert ours == store.sign(h, "rsa_priv_enc", block, rsa.RSA_NO_PADDING)
    assert pow(int.from_bytes(ours, "big"), key.e, key.n) == int.from_bytes(block, "big")
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
])
def test_bad_inputs_are_refused(pkis: dict[str, Pki], data: bytes, padding: int,
                                fn: object) -> None:
    with pytest.raises(rsa.RSAError):
        fn(_key(pkis["rsa"]), data, padding)  # type: ignore[operator]


def test_there_is_no_private_decryption() -> None:
    assert not hasattr(rsa, "private_decrypt")
    assert "rsa_priv_dec" not in keys.OPS


@needs_openssl
@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_openssl_pss_encodings_are_recognised(pkis: dict[str, Pki], tmp_path: pathlib.Path,
                                              digest: str) -> None:
    # what OpenSSL's TLS stack hands a raw RSA signature: PSS, salt as long as the hash
    key = _key(pkis["rsa"])
    bits = key.n.bit_length()
    (tmp_path / "dgst").write_bytes(hashlib.new(digest, b"mailrider").digest())

    def recovered(saltlen: str) -> bytes:
        sig = openssl("pkeyutl", "-sign", "-inkey", pkis["rsa"].key, "-in", str(tmp_path / "dgst"),
                      "-pkeyopt", f"digest:{digest}", "-pkeyopt", "rsa_padding_mode:pss",
                      "-pkeyopt", f"rsa_pss_saltlen:{saltlen}")
        return pow(int.from_bytes(sig, "big"), key.e, key.n).to_bytes(key.size, "big")

    em = recovered("digest")
    assert rsa.pss_encoded(em, bits)
    assert not rsa.pss_encoded(recovered("0"), bits)  # TLS always salts with the hash length
    assert not rsa.pss_encoded(em[:-1] + b"\xbb", bits)
    assert not rsa.pss_encoded(em[1:], bits)
    # and ours is one openssl accepts
    ours = rsa.pss_encode(hashlib.new(digest, b"mailrider").digest(), bits, b"\x07" *
                          hashlib.new(digest).digest_size)
    assert rsa.pss_encoded(ours, bits)
    (tmp_path / "sig").write_bytes(rsa.private_encrypt(key, ours, rsa.RSA_NO_PADDING))
    (tmp_path / "pub").write_bytes(openssl("x509", "-in", pkis["rsa"].cert, "-pubkey", "-noout"))
    out = openssl("pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub"),
                  "-in", str(tmp_path / "dgst"), "-sigfile", str(tmp_path / "sig"),
                  "-pkeyopt", f"digest:{digest}", "-pkeyopt", "rsa_padding_mode:pss",
                  "-pkeyopt", "rsa_pss_saltlen:digest")
    assert b"Success" in out


@pytest.mark.parametrize("bits", [1024, 1025, 2047, 2048, 3072, 4097])
def test_pss_shape_for_odd_modulus_sizes(bits: int) -> None:
    for hlen in (32, 48, 64):
        if (bits + 6) // 8 < 2 * hlen + 2:
            continue  # no room for SHA-512 with its salt in a 1024-bit modulus
        em = rsa.pss_encode(bytes(range(hlen)), bits, b"\x5a" * hlen)
        assert len(em) == (bits + 7) // 8 and rsa.pss_encoded(em, bits)
        assert not rsa.pss_encoded(em, bits + 8)
    for junk in (b"\x00" * ((bits + 7) // 8), b"\x00" * ((bits + 7) // 8 - 1) + b"\xbc",
                 b"\x01" + b"\xbc" * ((bits + 7) // 8 - 1)):
        assert not rsa.pss_encoded(junk, bits)
