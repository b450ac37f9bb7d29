from __future__ import annotations

import pathlib

import pytest
from mailrider.crypto import der
from pki_util import Pki, needs_openssl, openssl


@needs_openssl
@pytest.mark.parametrize("name", ["rsa", "p256", "p384"])
def test_certificate_public_key_matches_openssl(pkis: dict[str, Pki], name: str) -> None:
    pki = pkis[name]
    pem = pathlib.Path(pki.cert).read_bytes()
    key = der.certificate_key(pem)
    spki = openssl("x509", "-in", pki.cert, "-pubkey", "-noout")
    spki_der = openssl("pkey", "-pubin", "-outform", "DER", stdin=spki)
    assert key.spki == spki_der
    if name == "rsa":
        modulus = openssl("x509", "-in", pki.cert, "-noout", "-modulus").decode()
        assert key.kind == "rsa" and key.n == int(modulus.split("=")[1], 16)
        assert key.e == 65537
    else:
        assert key.kind == "ec" and key.curve == {"p256": "P-256", "p384": "P-384"}[name]
        assert key.point[0] == 4 and len(key.point) == {"p256": 65, "p384": 97}[name]


def test_small_values() -> None:
    assert der.integer(der.parse(bytes.fromhex("020100"))) == 0
    assert der.integer(der.parse(bytes.fromhex("02020080"))) == 128
    assert der.oid(der.parse(bytes.fromhex("06092a864886f70d010101"))) == der.OID_RSA
    assert der.oid(der.parse(bytes.fromhex("06052b81040022"))) == "1.3.132.0.34"
    long = der.parse(bytes.fromhex("3081") + bytes([130]) + bytes.fromhex("0400") * 65)
    assert len(long.children) == 65 and long.content == bytes.fromhex("0400") * 65


@pytest.mark.parametrize("hexdata", [
    "",  # empty
    "30",  # no length
    "3080",  # indefinite length (BER, not DER)
    "30810100",  # non-minimal long length
    "300100",  # content shorter than announced (truncated inner)
    "3003020101ff",  # trailing byte
    "0403aabb",  # truncated content
    "1f0100",  # high tag number
    "3084ffffffff",  # length beyond the buffer
])
def test_malformed_is_refused(hexdata: str) -> None:
    with pytest.raises(der.DERError):
        der.parse(bytes.fromhex(hexdata))


@pytest.mark.parametrize(("hexdata", "reader"), [
    ("0201ff", der.integer),  # negative
    ("02020001", der.integer),  # non-minimal
    ("0200", der.integer),  # empty
    ("0602808f", der.oid),  # non-minimal subidentifier
    ("06022a86", der.oid),  # unterminated subidentifier
    ("03020701", der.bit_string),  # unused bits
])
def test_malformed_values_are_refused(hexdata: str, reader: object) -> None:
    node = der.parse(bytes.fromhex(hexdata))
    with pytest.raises(der.DERError):
        reader(node)  # type: ignore[operator]


def test_nesting_is_bounded() -> None:
    data = b""
    for _ in range(40):
        data = bytes([0x30, len(data)]) + data if len(data) < 128 else data
    with pytest.raises(der.DERError):
        der.parse(data)


def test_pem_blocks_and_encrypted_refusal() -> None:
    text = (b"junk\n-----BEGIN THING-----\nAQID\nBA==\n-----END THING-----\n"
            b"-----BEGIN OTHER-----\r\nBQ==\r\n-----END OTHER-----\r\n")
    assert der.pem_blocks(text) == [("THING", b"\x01\x02\x03\x04"), ("OTHER", b"\x05")]
    enc = (b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n"
           b"\nAQID\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(der.DERError, match="encrypted"):
        der.pem_blocks(enc)
    with pytest.raises(der.DERError, match="encrypted"):
        der.pem_blocks(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAQID\n"
                       b"-----END ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(der.DERError, match="base64"):
        der.pem_blocks(b"-----BEGIN X-----\n!!!!\n-----END X-----\n")
    with pytest.raises(der.DERError, match="no certificate"):
        der.certificate_key(b"nothing here")
