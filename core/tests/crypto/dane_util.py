"""Certificates for the DANE tests, made by the openssl CLI at test time.

:func:`make_dane_pki` makes, in ``folder``:

- ``ee``: a self-signed certificate for ``name`` (the DANE-EE(3) case);
- ``ca`` -> ``inter`` -> ``leaf``: a root, an intermediate CA and a leaf for
  ``name`` (the DANE-TA(2) case); ``leaf.chain`` holds leaf + intermediate,
  what a server sends;
- ``other``: a leaf for ``other.invalid`` under the same intermediate.

:func:`tlsa` gives the association data of a certificate for a selector and
matching type, computed here with hashlib and the openssl CLI (not with the
code under test).
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import subprocess
from dataclasses import dataclass

OPENSSL = shutil.which("openssl")


def _run(folder: pathlib.Path, *args: str) -> bytes:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], check=True, capture_output=True,
                          cwd=folder).stdout


@dataclass(frozen=True)
class Cert:
    pem: pathlib.Path
    key: pathlib.Path
    der: bytes


@dataclass(frozen=True)
class DanePki:
    ee: Cert
    ca: Cert
    inter: Cert
    leaf: Cert
    other: Cert
    #: leaf + intermediate, PEM: what a DANE-TA server presents
    leaf_chain: pathlib.Path
    other_chain: pathlib.Path


def _der(folder: pathlib.Path, pem: pathlib.Path) -> bytes:
    return _run(folder, "x509", "-in", str(pem), "-outform", "DER")


def _issue(folder: pathlib.Path, name: str, subj: str, issuer: str | None, ext: str,
           days: str = "2") -> Cert:
    key, pem = folder / f"{name}.key", folder / f"{name}.pem"
    _run(folder, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", subj, "-keyout", str(key), "-out", f"{name}.csr")
    (folder / f"{name}.ext").write_text(ext)
    if issuer is None:
        _run(folder, "x509", "-req", "-in", f"{name}.csr", "-signkey", str(key),
             "-days", days, "-out", str(pem), "-extfile", f"{name}.ext")
    else:
        _run(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem",
             "-CAkey", f"{issuer}.key", "-CAcreateserial", "-days", days, "-out", str(pem),
             "-extfile", f"{name}.ext")
    return Cert(pem, key, _der(folder, pem))


def make_dane_pki(folder: pathlib.Path, name: str = "mx.dane.test") -> DanePki:
    ca_ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
    leaf_ext = "basicConstraints=CA:FALSE\nsubjectAltName=DNS:{}\n"
    ee = _issue(folder, "ee", f"/CN={name}", None, leaf_ext.format("unrelated.invalid"))
    ca = _issue(folder, "ca", "/CN=DANE test root", None, ca_ext)
    inter = _issue(folder, "inter", "/CN=DANE test intermediate", "ca", ca_ext)
    leaf = _issue(folder, "leaf", f"/CN={name}", "inter", leaf_ext.format(name))
    other = _issue(folder, "other", "/CN=other.invalid", "inter",
                   leaf_ext.format("other.invalid"))
    chain = folder / "leaf.chain"
    chain.write_bytes(leaf.pem.read_bytes() + inter.pem.read_bytes())
    other_chain = folder / "other.chain"
    other_chain.write_bytes(other.pem.read_bytes() + inter.pem.read_bytes())
    for p in folder.iterdir():
        p.chmod(0o644)
    return DanePki(ee, ca, inter, leaf, other, chain, other_chain)


def spki(folder: pathlib.Path, cert: Cert) -> bytes:
    """The SubjectPublicKeyInfo, DER, as the openssl CLI extracts it."""
    pub = _run(folder, "x509", "-in", str(cert.pem), "-noout", "-pubkey")
    return subprocess.run([str(OPENSSL), "pkey", "-pubin", "-outform", "DER"], input=pub,
                          check=True, capture_output=True).stdout


def tlsa(folder: pathlib.Path, cert: Cert, selector: int, mtype: int) -> bytes:
    data = cert.der if selector == 0 else spki(folder, cert)
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def rdata(usage: int, selector: int, mtype: int, data: bytes) -> bytes:
    """TLSA RDATA (RFC 6698 §2.1) as a DNS server sends it."""
    return bytes([usage, selector, mtype]) + data
