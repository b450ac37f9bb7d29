"""Fixtures of the crypto tests: keys and certificates made at test time."""

from __future__ import annotations

import os

import pytest
from pki_util import OPENSSL, Pki, make_pki, openssl


@pytest.fixture(scope="session")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pki]:
    if OPENSSL is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("pki")
    out = {"rsa": make_pki(d, "rsa", "rsa"), "p256": make_pki(d, "p256", "p256"),
           "p384": make_pki(d, "p384", "p384"),
           "other": make_pki(d, "other", "rsa", cn="other.example")}
    # the same RSA key in PKCS#1 ("BEGIN RSA PRIVATE KEY")
    pkcs1 = d / "rsa-pkcs1.key"
    pkcs1.write_bytes(openssl("rsa", "-in", out["rsa"].key, "-traditional"))
    os.chmod(pkcs1, 0o600)
    out["rsa-pkcs1"] = Pki("rsa-pkcs1", out["rsa"].cert, str(pkcs1))
    # the same EC key in SEC 1 ("BEGIN EC PRIVATE KEY")
    sec1 = d / "p256-sec1.key"
    sec1.write_bytes(openssl("ec", "-in", out["p256"].key))
    os.chmod(sec1, 0o600)
    out["p256-sec1"] = Pki("p256-sec1", out["p256"].cert, str(sec1))
    return out
