"""Test keys and certificates, made by the openssl CLI at test time (helpers)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from dataclasses import dataclass

import pytest

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


@dataclass(frozen=True)
class Pki:
    name: str
    cert: str
    key: str  # mode 0600


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], input=stdin, check=True,
                          capture_output=True).stdout


def make_pki(folder: pathlib.Path, name: str, kind: str, cn: str = "localhost") -> Pki:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    newkey = {"rsa": ["-newkey", "rsa:2048"],
              "p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
              "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"]}[kind]
    openssl("req", "-x509", *newkey, "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "2", "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}")
    os.chmod(key, 0o600)
    return Pki(name, str(cert), str(key))
