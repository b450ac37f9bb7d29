"""DKIM test keys (openssl CLI) and the independent verifier (dkimpy), for the tests."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest
from pki_util import OPENSSL, openssl


def make_key(folder: pathlib.Path, name: str, kind: str) -> str:
    """A private key file (mode 0600): kind "rsa" (2048 bits) or "ed25519"."""
    if OPENSSL is None:
        pytest.skip("openssl CLI not installed")
    path = folder / f"{name}.key"
    if kind == "rsa":
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                "-out", str(path))
    else:
        openssl("genpkey", "-algorithm", "ed25519", "-out", str(path))
    os.chmod(path, 0o600)
    return str(path)


def dkimpy() -> Any:
    """The dkimpy module (tools/dev-requirements.txt), or skip."""
    return pytest.importorskip("dkim")


def verify(message: bytes, records: dict[str, str]) -> bool:
    """dkimpy's verdict on the first signature of ``message``; DNS is answered from
    ``records`` (name "selector._domainkey.domain." -> TXT), no query is sent."""
    mod = dkimpy()
    asked: list[str] = []

    def dnsfunc(name: Any, timeout: int = 5) -> bytes:
        text = name.decode() if isinstance(name, bytes) else str(name)
        asked.append(text)
        return records.get(text.rstrip(".") + ".", "").encode()

    ok = bool(mod.verify(message, dnsfunc=dnsfunc))
    assert asked, "dkimpy asked for no key"
    return ok
