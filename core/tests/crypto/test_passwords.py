from __future__ import annotations

import base64
import hashlib

import pytest
from mailrider.crypto import shacrypt
from mailrider.crypto.passwords import UnsupportedHash, hash_password, verify_password
from mailrider.errors import TempFail


def _salted(name: str, pw: str, salt: bytes) -> str:
    return base64.b64encode(hashlib.new(name, pw.encode() + salt).digest() + salt).decode()


def _plain(name: str, pw: str) -> str:
    return base64.b64encode(hashlib.new(name, pw.encode()).digest()).decode()


SHA6 = shacrypt.hash_password("s3cret", "$6$", salt="abcdefgh")
SHA5 = shacrypt.hash_password("s3cret", "$5$", rounds=2000)

GOOD = [
    SHA6, SHA5, "{CRYPT}" + SHA6, "{crypt}" + SHA5, "{SHA512-CRYPT}" + SHA6,
    "{SHA256-CRYPT}" + SHA5,
    "{SSHA512}" + _salted("sha512", "s3cret", b"\x00salt\xff"),
    "{SSHA256}" + _salted("sha256", "s3cret", b"pepper!!"),
    "{SSHA}" + _salted("sha1", "s3cret", b"\x01\x02\x03\x04"),
    "{SHA512}" + _plain("sha512", "s3cret"),
    "{SHA256}" + _plain("sha256", "s3cret"),
    "{SHA}" + _plain("sha1", "s3cret"),
    "  " + SHA6 + "\n",
]


@pytest.mark.parametrize("stored", GOOD)
def test_right_and_wrong_passwords(stored: str) -> None:
    assert verify_password("s3cret", stored) is True
    assert verify_password("s3cret ", stored) is False
    assert verify_password("", stored) is False


def test_known_dovecot_style_value() -> None:
    # {SSHA} of "password" with salt "salt", computed by hand from its definition
    stored = "{SSHA}" + base64.b64encode(hashlib.sha1(b"passwordsalt").digest() + b"salt").decode()
    assert verify_password("password", stored)


@pytest.mark.parametrize(("stored", "scheme"), [
    ("$2b$12$abcdefghijklmnopqrstuuAbCdEfGhIjKlMnOpQrStUvWxYz01234", "bcrypt"),
    ("$2y$10$abcdefghijklmnopqrstuuAbCdEfGhIjKlMnOpQrStUvWxYz01234", "bcrypt"),
    ("{CRYPT}$2b$10$abcdefghijklmnopqrstuu", "bcrypt"),
    ("$y$j9T$salt$hash", "yescrypt"),
    ("$1$salt$hash", "md5-crypt"),
    ("{PLAIN}s3cret", "PLAIN"),
    ("{CLEARTEXT}s3cret", "CLEARTEXT"),
    ("s3cret", "unknown"),
    ("abJnggxhB/yWI", "unknown"),  # traditional DES crypt
    ("{SHA512-CRYPT}" + SHA5, "SHA512-CRYPT (mismatched prefix)"),
    ("{SSHA512}not base64!", "SSHA512 (malformed)"),
    ("{SHA256}" + base64.b64encode(b"short").decode(), "SHA256 (malformed)"),
    ("$6$salt$tooshort", "$6$ (malformed)"),
])
def test_unsupported_or_malformed_raise_a_tempfail(stored: str, scheme: str) -> None:
    with pytest.raises(UnsupportedHash) as info:
        verify_password("s3cret", stored)
    assert info.value.scheme == scheme
    assert isinstance(info.value, TempFail)
    assert info.value.reply().startswith("454 4.7.0")
    assert "s3cret" not in str(info.value)


def test_plaintext_is_never_accepted_even_when_equal() -> None:
    for stored in ("s3cret", "{PLAIN}s3cret", "{CLEARTEXT}s3cret"):
        with pytest.raises(UnsupportedHash):
            verify_password("s3cret", stored)


def test_hash_password_output_verifies() -> None:
    stored = hash_password("tr0ub4dor&3")
    assert stored.startswith("$6$")
    assert verify_password("tr0ub4dor&3", stored)
    assert verify_password("tr0ub4dor&3", "{CRYPT}" + hash_password("tr0ub4dor&3", "$5$"))
