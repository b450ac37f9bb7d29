from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess

import pytest
from mailrider.crypto import passwords, shacrypt, syscrypt
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
    ("$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$abc", "argon2"),  # libxcrypt has none
    ("{CRYPT}abJnggxhB/yWI", "CRYPT (not a $id$ hash)"),
    ("{BLF-CRYPT}" + SHA6, "BLF-CRYPT (mismatched prefix)"),
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


# -- crypt(3) schemes through the system library (libxcrypt) ---------------------

needs_lib = pytest.mark.skipif(not syscrypt.available(), reason="no system crypt(3) library")
MKPASSWD = shutil.which("mkpasswd")


@needs_lib
@pytest.mark.parametrize("prefix", ["$y$", "$gy$", "$2b$", "$2y$", "$7$", "$1$", "$5$", "$6$"])
def test_system_schemes_right_and_wrong(prefix: str) -> None:
    setting = syscrypt.gensalt(prefix)
    if setting is None:
        pytest.skip(f"the system library cannot make {prefix} hashes")
    stored = syscrypt.crypt("s3cret", setting)
    assert stored is not None and stored.startswith(prefix)
    assert verify_password("s3cret", stored) is True
    assert verify_password("s3cret ", stored) is False
    assert verify_password("", stored) is False
    assert verify_password("s3cret\0more", stored) is False
    assert verify_password("s3cret", "{CRYPT}" + stored) is True


@needs_lib
def test_known_bcrypt_vector() -> None:
    # Openwall crypt_blowfish's test vector, computed elsewhere
    stored = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
    assert verify_password("U*U", stored) is True
    assert verify_password("U*V", stored) is False
    assert verify_password("U*U", "{BLF-CRYPT}" + stored) is True


@needs_lib
@pytest.mark.skipif(MKPASSWD is None, reason="mkpasswd (Debian: whois) not installed")
@pytest.mark.parametrize("method", ["yescrypt", "bcrypt", "sha512crypt"])
def test_hashes_made_by_mkpasswd(method: str) -> None:
    assert MKPASSWD is not None
    res = subprocess.run([MKPASSWD, "-m", method, "-s"], input="wonder land\n",
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"mkpasswd cannot make {method}: {res.stderr.strip()}")
    stored = res.stdout.strip()
    assert verify_password("wonder land", stored) is True
    assert verify_password("wonder lane", stored) is False


@needs_lib
@pytest.mark.parametrize(("stored", "scheme"), [
    ("$y$j9T$salt$hash", "yescrypt (malformed)"),
    ("$2b$12$tooshort", "bcrypt"),  # the library refuses such a setting
])
def test_malformed_system_hashes_raise(stored: str, scheme: str) -> None:
    with pytest.raises(UnsupportedHash) as info:
        verify_password("s3cret", stored)
    assert info.value.scheme == scheme


def test_sha_crypt_falls_back_when_the_library_is_missing_or_refuses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscrypt, "crypt", lambda password, setting: None)
    assert verify_password("s3cret", SHA6) is True
    assert verify_password("s3cret", SHA5) is True
    assert verify_password("nope", SHA6) is False
    for stored, scheme in (("$y$j9T$abc$def", "yescrypt"), ("$2b$05$" + "a" * 53, "bcrypt")):
        with pytest.raises(UnsupportedHash) as info:
            verify_password("s3cret", stored)
        assert info.value.scheme == scheme


def test_no_library_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscrypt.paths, "LIBCRYPT_NAMES", ("libno-such-crypt.so.9",))
    monkeypatch.setattr(syscrypt, "_loaded", False)
    monkeypatch.setattr(syscrypt, "_impl", None)
    monkeypatch.setattr(syscrypt, "_lib", None)
    assert syscrypt.available() is False
    assert syscrypt.gensalt("$y$") is None
    assert syscrypt.crypt("s3cret", "$6$abc") is None
    assert verify_password("s3cret", SHA6) is True
    with pytest.raises(UnsupportedHash):
        passwords.verify_password("s3cret", "$y$j9T$abc$def")
