"""DKIM signatures made by the real klondike process, over its pony channel.

A klondike child holds a TLS key and two DKIM keys; this test plays pony:
it hashes a message, sends ``DkimSign`` frames and checks the signed message
with dkimpy. klondike refuses an unknown name, a TLS pki's name, and any
input that is not a DKIM signing input for the named entry.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mailrider
import pytest
from dkim_util import make_key, verify
from mailrider import dkim
from mailrider.crypto import libcrypto
from mailrider.crypto.dkimkeys import DkimKeyStore
from mailrider.ipc import messages as m
from mailrider.ipc.frame import FLAG_ERROR, HEADER, frame
from pki_util import OPENSSL, make_pki

HERE = pathlib.Path(__file__).parent
pytestmark = [
    pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed"),
    pytest.mark.skipif(not libcrypto.available(), reason=libcrypto.unavailable_reason()),
]

MSG = (b"From: Jane <jane@example.org>\nTo: bob@remote.test\nSubject: signed  by klondike\n"
       b"Date: Mon, 7 Dec 2026 16:00:00 +0000\n\nhello \t there\n\n")
ENTRIES = {
    "rsa": ("rsa-sha256", "relaxed/relaxed", "sr"),
    "ed": ("ed25519-sha256", "simple/simple", "se"),
}


@dataclass
class Klondike:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    signers: dict[str, dkim.Signer]
    records: dict[str, str]
    next_id: int = 1

    def request(self, msg: Any) -> tuple[bool, Any]:
        self.next_id += 1
        self.sock.sendall(frame(msg, self.next_id))
        while True:
            head = self._recv(HEADER.size)
            length, rid, flags, _ = HEADER.unpack(head)
            body = self._recv(length)
            if rid == self.next_id:
                return bool(flags & FLAG_ERROR), m.decode(json.loads(body))

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "klondike closed the channel"
            buf += chunk
        return buf


@pytest.fixture(scope="module")
def klondike(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Klondike]:
    d = tmp_path_factory.mktemp("dkimk")
    pki = make_pki(d, "tls", "rsa", cn="tls.test")
    keys = {"rsa": make_key(d, "rsa", "rsa"), "ed": make_key(d, "ed", "ed25519")}
    signers, records = {}, {}
    local = DkimKeyStore()  # only to learn the public records
    for name, (alg, canon, sel) in ENTRIES.items():
        signers[name] = dkim.Signer(name, "example.org", sel, alg, canon)
        local.load(signers[name], keys[name])
        records[f"{sel}._domainkey.example.org."] = local.dns_record(name)
    local.close()
    a, b = socket.socketpair()
    src = str(pathlib.Path(mailrider.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(HERE)])}
    specs = [f"tls.test={pki.cert}:{pki.key}"] + [
        f"dkim:{n}={keys[n]},{alg},{canon},example.org,{sel}"
        for n, (alg, canon, sel) in ENTRIES.items()]
    proc = subprocess.Popen([sys.executable, str(HERE / "klondike_child.py"), str(a.fileno()),
                             *specs], pass_fds=[a.fileno()], stdout=subprocess.PIPE, env=env)
    a.close()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split()[0] == b"ready"
        b.settimeout(20)
        yield Klondike(proc, b, signers, records)
    finally:
        proc.kill()
        proc.wait()
        b.close()


def _prepared(signer: dkim.Signer, message: bytes = MSG) -> dkim.Prepared:
    h = dkim.MessageHasher(signer.body_canon)
    h.feed(message)
    fields, bh = h.finish()
    return dkim.prepare(signer, fields, bh, 1796659200)


def _ask(k: Klondike, name: str, data: bytes) -> tuple[bool, Any]:
    return k.request(m.DkimSign(name=name, data_b64=base64.b64encode(data).decode()))


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_klondike_signs_and_dkimpy_verifies(klondike: Klondike, name: str) -> None:
    prepared = _prepared(klondike.signers[name])
    error, reply = _ask(klondike, name, prepared.signing_input)
    assert not error and isinstance(reply, m.Signed), reply
    signature = base64.b64decode(reply.data_b64)
    assert len(signature) == (256 if name == "rsa" else 64)
    signed = prepared.field(signature) + MSG.replace(b"\n", b"\r\n")
    assert verify(signed, klondike.records)
    assert not verify(signed.replace(b"hello", b"jello"), klondike.records)


def test_klondike_refuses_unknown_and_tls_names(klondike: Klondike) -> None:
    data = _prepared(klondike.signers["rsa"]).signing_input
    for name in ("nope", "tls.test", ""):
        error, reply = _ask(klondike, name, data)
        assert error and isinstance(reply, m.Error), reply
        assert "no dkim key" in reply.text


@pytest.mark.parametrize("data", [
    bytes.fromhex("3031300d060960864801650304020105000420") + bytes(32),  # a TLS DigestInfo
    b"\x00\x01" + b"\xff" * 200,
    b"arbitrary data to sign",
])
def test_klondike_is_no_signing_oracle(klondike: Klondike, data: bytes) -> None:
    error, reply = _ask(klondike, "rsa", data)
    assert error and "not a DKIM signing input" in reply.text


def test_klondike_refuses_another_entrys_input(klondike: Klondike) -> None:
    # the ed25519 entry's input (simple/simple, s=se, a=ed25519-sha256) is not the rsa key's
    data = _prepared(klondike.signers["ed"]).signing_input
    error, reply = _ask(klondike, "rsa", data)
    assert error and "not a DKIM signing input" in reply.text
    other = dkim.Signer("x", "evil.example", "sr", "rsa-sha256", "relaxed/relaxed")
    error, reply = _ask(klondike, "rsa", _prepared(other).signing_input)
    assert error and "d= does not fit" in reply.text
    # and after all that, it still signs
    error, reply = _ask(klondike, "rsa", _prepared(klondike.signers["rsa"]).signing_input)
    assert not error and isinstance(reply, m.Signed)
