"""End to end: TLS with the key in another process, and the memory test.

A klondike child (the real process class) holds the keys; a server child
that never reads a key file serves TLS 1.2 and 1.3 with delegated RSA and
ECDSA keys (chosen by SNI) to a stdlib client that verifies the chain. Then
the memory of both children is scanned for the keys' secrets.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import mailrider
import pytest
from mailrider.crypto import der, keys, libcrypto
from pki_util import OPENSSL, Pki, make_pki

HERE = pathlib.Path(__file__).parent
pytestmark = [
    pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed"),
    pytest.mark.skipif(not libcrypto.available(), reason=libcrypto.unavailable_reason()),
    pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs /proc"),
]


@dataclass
class Daemon:
    klondike: subprocess.Popen[bytes]
    server: subprocess.Popen[bytes]
    port: int
    pkis: dict[str, Pki]


def _env() -> dict[str, str]:
    src = str(pathlib.Path(mailrider.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(HERE)])}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = tmp_path_factory.mktemp("tls")
    pkis = {"rsa.test": make_pki(d, "rsa", "rsa", cn="rsa.test"),
            "ec.test": make_pki(d, "ec", "p256", cn="ec.test")}
    a, b = socket.socketpair()
    k = subprocess.Popen(
        [sys.executable, str(HERE / "klondike_child.py"), str(a.fileno()),
         *(f"{n}={p.cert}:{p.key}" for n, p in pkis.items())],
        pass_fds=[a.fileno()], stdout=subprocess.PIPE, env=_env())
    s = subprocess.Popen(
        [sys.executable, str(HERE / "tls_server_child.py"), str(b.fileno()),
         *(f"{n}={p.cert}" for n, p in pkis.items())],
        pass_fds=[b.fileno()], stdout=subprocess.PIPE, env=_env())
    a.close()
    b.close()
    try:
        assert k.stdout is not None and s.stdout is not None
        assert k.stdout.readline().split()[0] == b"ready"
        line = s.stdout.readline().split()
        assert line[0] == b"port", line
        yield Daemon(k, s, int(line[1]), pkis)
    finally:
        for p in (s, k):
            p.kill()
            p.wait()


def _talk(daemon: Daemon, name: str, version: ssl.TLSVersion) -> tuple[str, str, int, dict]:
    ctx = ssl.create_default_context(cafile=daemon.pkis[name].cert)
    ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", daemon.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(b"hello\n")
        f = tls.makefile("rb")
        got, cipher, calls = f.readline().decode().split()
        assert tls.version() == got
        return got, cipher, int(calls), tls.getpeercert()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize("name", ["rsa.test", "ec.test"])
def test_delegated_handshake_verifies(daemon: Daemon, name: str,
                                      version: ssl.TLSVersion) -> None:
    _, _, before, _ = _talk(daemon, name, version)
    got, cipher, after, cert = _talk(daemon, name, version)
    assert got == version.name.replace("v1_", "v1.")
    # the chosen certificate is the one the client asked for by name (SNI)
    assert dict(x[0] for x in cert["subject"])["commonName"] == name
    if version is ssl.TLSVersion.TLSv1_2:
        assert ("ECDSA" if name == "ec.test" else "RSA") in cipher
    assert after == before + 1  # exactly one delegated signature per full handshake


def test_wrong_name_fails_verification(daemon: Daemon) -> None:
    ctx = ssl.create_default_context(cafile=daemon.pkis["ec.test"].cert)
    with socket.create_connection(("127.0.0.1", daemon.port)) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname="unknown.test")


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
def test_tls12_pkcs1_signature_with_openssl_client(daemon: Daemon) -> None:
    # force RSA PKCS#1 v1.5 (RSA_PKCS1_PADDING through the hook) rather than PSS
    out = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{daemon.port}", "-tls1_2",
         "-servername", "rsa.test", "-sigalgs", "RSA+SHA256",
         "-CAfile", daemon.pkis["rsa.test"].cert, "-verify_return_error", "-brief"],
        input=b"hello\n", capture_output=True, timeout=30)
    text = out.stdout.decode() + out.stderr.decode()
    assert "Verification: OK" in text, text
    # "RSA" is PKCS#1 v1.5 (PSS shows as "RSA-PSS")
    assert re.search(r"^(Peer )?Signature type: RSA$", text, re.MULTILINE), text
    assert "TLSv1.2" in text


# -- the memory test --------------------------------------------------------------


def _digits30(n: int) -> bytes:
    """CPython's in-memory form of a big int: 30-bit digits in 32-bit words."""
    out = bytearray()
    while n:
        out += (n & (2**30 - 1)).to_bytes(4, "little")
        n >>= 30
    return bytes(out)


def _needles(pki: Pki) -> dict[str, bytes]:
    pem = pathlib.Path(pki.key).read_bytes()
    out: dict[str, bytes] = {}
    lines = [ln for ln in pem.splitlines() if ln and not ln.startswith(b"-----")]
    for i, ln in enumerate(lines[1:-1]):  # full 64-character lines
        out[f"pem line {i}"] = ln
    _, rsakey = keys.parse_private_key(pem)
    if rsakey is not None:
        for label, value in (("d", rsakey.d), ("p", rsakey.p), ("q", rsakey.q)):
            size = (value.bit_length() + 7) // 8
            out[f"{label} big-endian"] = value.to_bytes(size, "big")
            out[f"{label} limbs"] = value.to_bytes(size, "little")
            out[f"{label} python int"] = _digits30(value)
    else:
        # PKCS#8 wrapping SEC 1 ECPrivateKey: the scalar is its OCTET STRING
        info = der.parse(der.pem_blocks(pem)[0][1])
        inner = der.parse(info.children[2].content)
        scalar = inner.children[1].content
        out["ec scalar big-endian"] = scalar
        out["ec scalar limbs"] = scalar[::-1]
        out["ec scalar python int"] = _digits30(int.from_bytes(scalar, "big"))
    return out


def _scan(pid: int, needles: dict[str, bytes]) -> set[str]:
    found: set[str] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                region = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            for label, needle in needles.items():
                if label not in found and needle in region:
                    found.add(label)
    return found


def test_keys_are_absent_from_the_serving_process(daemon: Daemon) -> None:
    for name in daemon.pkis:  # make sure both keys have been used
        _talk(daemon, name, ssl.TLSVersion.TLSv1_3)
    for name, pki in daemon.pkis.items():
        needles = _needles(pki)
        in_server = _scan(daemon.server.pid, needles)
        in_klondike = _scan(daemon.klondike.pid, needles)
        assert in_server == set(), f"{name}: server memory holds {sorted(in_server)}"
        # the scan can fail: the key-holding process does show the secret
        secret = {"d limbs", "d python int", "ec scalar limbs", "ec scalar big-endian",
                  "ec scalar python int"}
        assert in_klondike & secret, f"{name}: klondike shows only {sorted(in_klondike)}"
