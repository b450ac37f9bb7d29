from __future__ import annotations

import hashlib
import os
import pathlib
import shutil

import pytest
from mailrider.crypto import der, keys, libcrypto, rsa
from pki_util import Pki, needs_openssl, openssl

needs_libcrypto = pytest.mark.skipif(not libcrypto.available(),
                                     reason=libcrypto.unavailable_reason())
BACKENDS = [pytest.param("libcrypto", marks=needs_libcrypto), "python"]


def _verify_ecdsa(pki: Pki, digest: bytes, sig: bytes, tmp: pathlib.Path) -> bool:
    (tmp / "pub").write_bytes(openssl("x509", "-in", pki.cert, "-pubkey", "-noout"))
    (tmp / "dgst").write_bytes(digest)
    (tmp / "sig").write_bytes(sig)
    try:
        out = openssl("pkeyutl", "-verify", "-pubin", "-inkey", str(tmp / "pub"),
                      "-in", str(tmp / "dgst"), "-sigfile", str(tmp / "sig"))
    except Exception:
        return False
    return b"Success" in out


@needs_openssl
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["rsa", "rsa-pkcs1"])
def test_rsa_operations(pkis: dict[str, Pki], backend: str, which: str) -> None:
    store = keys.KeyStore(backend)
    pki = pkis[which]
    h = store.load(which, pki.cert, pki.key)
    public = der.certificate_key(pathlib.Path(pki.cert).read_bytes())
    assert h == hashlib.sha256(public.spki).hexdigest() and h in store
    assert store.names == {which: h}
    mhash = hashlib.sha256(b"hello").digest()
    block = rsa.pss_encode(mhash, public.n.bit_length(), os.urandom(32))
    sig = store.sign(h, "rsa_priv_enc", block, rsa.RSA_NO_PADDING)
    assert pow(int.from_bytes(sig, "big"), public.e, public.n) == int.from_bytes(block, "big")
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + os.urandom(32)
    sig = store.sign(h, "rsa_priv_enc", digest_info, rsa.RSA_PKCS1_PADDING)
    em = pow(int.from_bytes(sig, "big"), public.e, public.n).to_bytes(256, "big")
    assert em == b"\x00\x01" + b"\xff" * (256 - 3 - 51) + b"\x00" + digest_info
    assert store.counters["sign"] == 2 and store.counters["sign.rsa_priv_enc"] == 2
    ciphertext = pow(int.from_bytes(block, "big"), public.e, public.n).to_bytes(256, "big")
    for bad in [("nope", "rsa_priv_enc", block, 3), (h, "ecdsa_sign", b"x" * 32, 0),
                (h, "rsa_priv_enc", b"x" * 257, 3), (h, "frobnicate", block, 3),
                # decryption is not offered, in any padding
                (h, "rsa_priv_dec", ciphertext, rsa.RSA_NO_PADDING),
                (h, "rsa_priv_dec", sig, rsa.RSA_PKCS1_PADDING),
                # raw RSA on anything but a PSS encoding would be decryption in disguise
                (h, "rsa_priv_enc", ciphertext, rsa.RSA_NO_PADDING),
                (h, "rsa_priv_enc", block[:-1] + b"\xbd", rsa.RSA_NO_PADDING),
                (h, "rsa_priv_enc", block[:100] + bytes([block[100] ^ 1]) + block[101:],
                 rsa.RSA_NO_PADDING),
                # PKCS#1 v1.5 over a DigestInfo only; OAEP and the rest are refused
                (h, "rsa_priv_enc", b"x" * 51, rsa.RSA_PKCS1_PADDING),
                (h, "rsa_priv_enc", digest_info + b"x", rsa.RSA_PKCS1_PADDING),
                (h, "rsa_priv_enc", digest_info, 4), (h, "rsa_priv_enc", block, 5)]:
        with pytest.raises(keys.SignError):
            store.sign(*bad)
    assert store.counters["sign.errors"] == 13
    store.close()


@needs_openssl
@needs_libcrypto
@pytest.mark.parametrize("which", ["p256", "p384", "p256-sec1"])
def test_ecdsa_signatures_verify(pkis: dict[str, Pki], which: str, tmp_path: pathlib.Path) -> None:
    store = keys.KeyStore("libcrypto")
    h = store.load(which, pkis[which].cert, pkis[which].key)
    digest = hashlib.sha256(b"hello").digest()
    sig = store.sign(h, "ecdsa_sign", digest, 0)
    assert sig[0] == 0x30  # DER SEQUENCE
    assert _verify_ecdsa(pkis[which], digest, sig, tmp_path)
    assert not _verify_ecdsa(pkis[which], hashlib.sha256(b"other").digest(), sig, tmp_path)
    for op, data, padding in [("rsa_priv_enc", digest, 1), ("rsa_priv_dec", digest, 3),
                              ("ecdsa_sign", digest + b"x", 0), ("ecdsa_sign", b"", 0),
                              ("ecdsa_sign", digest, 1)]:
        with pytest.raises(keys.SignError):
            store.sign(h, op, data, padding)
    assert store.counters["sign.errors"] == 5
    store.close()


@needs_openssl
def test_python_backend_refuses_ec_keys(pkis: dict[str, Pki]) -> None:
    with pytest.raises(keys.KeyLoadError, match="ECDSA keys need libcrypto"):
        keys.KeyStore("python").load("p256", pkis["p256"].cert, pkis["p256"].key)


@needs_openssl
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("mode", "ok"), [
    (0o600, True), (0o400, True), (0o640, True), (0o740, True),
    (0o644, False), (0o660, False), (0o604, False), (0o602, False), (0o650, False),
    (0o4600, False),
])
def test_key_file_permissions(pkis: dict[str, Pki], tmp_path: pathlib.Path, backend: str,
                              mode: int, ok: bool) -> None:
    key = tmp_path / "k.pem"
    shutil.copyfile(pkis["rsa"].key, key)
    os.chmod(key, mode)
    store = keys.KeyStore(backend)
    if ok:
        assert store.load("x", pkis["rsa"].cert, str(key))
    else:
        with pytest.raises(keys.KeyLoadError, match="insecure permissions"):
            store.load("x", pkis["rsa"].cert, str(key))
        assert len(store) == 0


@needs_openssl
@pytest.mark.parametrize("backend", BACKENDS)
def test_key_must_match_certificate(pkis: dict[str, Pki], backend: str) -> None:
    store = keys.KeyStore(backend)
    with pytest.raises(keys.KeyLoadError, match="does not match"):
        store.load("x", pkis["other"].cert, pkis["rsa"].key)
    with pytest.raises(keys.KeyLoadError):
        store.load("x", pkis["p256"].cert, pkis["rsa"].key)


@needs_openssl
@pytest.mark.parametrize("backend", BACKENDS)
def test_encrypted_and_missing_keys_are_refused_without_prompting(
        pkis: dict[str, Pki], tmp_path: pathlib.Path, backend: str) -> None:
    enc = tmp_path / "enc.pem"
    enc.write_bytes(openssl("pkey", "-in", pkis["rsa"].key, "-aes256", "-passout", "pass:pw"))
    os.chmod(enc, 0o600)
    store = keys.KeyStore(backend)
    with pytest.raises(keys.KeyLoadError, match="encrypted"):
        store.load("x", pkis["rsa"].cert, str(enc))
    with pytest.raises(keys.KeyLoadError):
        store.load("x", pkis["rsa"].cert, str(tmp_path / "absent.pem"))
    with pytest.raises(keys.KeyLoadError, match="not a regular file"):
        store.load("x", pkis["rsa"].cert, str(tmp_path))


@needs_openssl
def test_errors_never_carry_key_bytes(pkis: dict[str, Pki], tmp_path: pathlib.Path) -> None:
    body = pathlib.Path(pkis["rsa"].key).read_text().splitlines()[1]
    key = tmp_path / "k.pem"
    shutil.copyfile(pkis["rsa"].key, key)
    os.chmod(key, 0o644)
    with pytest.raises(keys.KeyLoadError) as info:
        keys.KeyStore().load("x", pkis["other"].cert, str(key))
    assert body not in str(info.value)
