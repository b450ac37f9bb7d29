"""SignClient against the real klondike process class, over a socketpair."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from mailrider import log
from mailrider.config.model import Config
from mailrider.config.model import Pki as ConfigPki
from mailrider.crypto import delegate, libcrypto, rsa
from mailrider.crypto.signclient import SignClient, SignFailed
from mailrider.errors import ConfigError
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.ipc.frame import FLAG_ERROR, FLAG_REPLY, HEADER
from mailrider.proc import common
from mailrider.proc.klondike import Klondike
from pki_util import Pki


class Running:
    def __init__(self, proc: Klondike, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 control: Channel, sign_line: socket.socket) -> None:
        self.proc, self.loop, self.sock, self.control = proc, loop, sock, control
        self.sign_line = sign_line

    def ask(self, msg: object) -> object:
        return asyncio.run_coroutine_threadsafe(self.control.ask(msg), self.loop).result(10)


def _config(pkis: dict[str, Pki], names: list[str]) -> Config:
    config = Config()
    for n in names:
        config.pkis[n] = ConfigPki(n, cert=pkis[n].cert, key=pkis[n].key)
    config.pkis["nokey"] = ConfigPki("nokey", cert=pkis["rsa"].cert)  # client-only: skipped
    return config


@pytest.fixture
def klondike(pkis: dict[str, Pki]) -> Iterator[Running]:
    names = ["rsa", "p256"] if libcrypto.available() else ["rsa"]
    proc = Klondike(common.Options(statedir="/nonexistent"), _config(pkis, names))
    loop = asyncio.new_event_loop()
    pony_end, klondike_end = socket.socketpair()
    ctl_a, ctl_b = socket.socketpair()
    sign_a, sign_b = socket.socketpair()
    ready = threading.Event()
    holder: dict[str, Channel] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            await proc.setup()
            proc.connect({"pony": klondike_end.detach(), "control": ctl_b.detach(),
                          "pony-sign": sign_b.detach()})
            holder["control"] = Channel(ctl_a, "klondike")
            ready.set()
            await proc.stopping.wait()

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield Running(proc, loop, pony_end, holder["control"], sign_a)
    loop.call_soon_threadsafe(proc.stopping.set)
    thread.join(10)
    pony_end.close()
    sign_a.close()


def _pss(seed: int) -> bytes:
    """A modulus-sized PSS encoding for the 2048-bit test key, as TLS hands it over."""
    return rsa.pss_encode(hashlib.sha256(bytes([seed])).digest(), 2048, bytes([seed]) * 32)


def test_sign_round_trip_and_stats(klondike: Running) -> None:
    keystore = klondike.proc.keys
    assert keystore is not None and set(keystore.names) == {"rsa", "p256"} & set(
        klondike.proc.config.pkis)
    client = SignClient(klondike.sock)
    h = keystore.names["rsa"]
    block = _pss(0x17)
    sig = client.sign(h, "rsa_priv_enc", block, 3)
    assert sig == keystore.sign(h, "rsa_priv_enc", block, 3)
    with pytest.raises(SignFailed, match="no key for this certificate"):
        client.sign("0" * 64, "rsa_priv_enc", block, 3)
    assert client.sign(h, "rsa_priv_enc", block, 3) == sig  # still in step after an error
    reply = klondike.ask(m.Control(command="stats"))
    assert isinstance(reply, m.ControlReply)
    counters = reply.data["counters"]
    assert counters["klondike.sign"] == 2
    assert counters["klondike.sign.errors"] == 1
    assert counters["klondike.keys"] == len(keystore)
    assert client.calls == 2 and client.failures == 1


def test_only_pony_may_ask_for_signatures(klondike: Running) -> None:
    keystore = klondike.proc.keys
    assert keystore is not None
    msg = m.Sign(cert_hash=keystore.names["rsa"], op="rsa_priv_enc",
                 data_b64=base64.b64encode(b"\x00" * 256).decode(), padding=3)
    # Sign from control is outside klondike's policy row: the channel is closed
    # before the frame is decoded, and klondike stops (the daemon goes down)
    asyncio.run_coroutine_threadsafe(klondike.control.ask(msg), klondike.loop)
    deadline = time.monotonic() + 10
    while not klondike.proc.stopping.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert klondike.proc.stopping.is_set()
    assert klondike.proc.peers["control"].closed
    assert klondike.proc.counters.get("klondike.sign", 0) == 0


@pytest.mark.skipif(not libcrypto.available(), reason=libcrypto.unavailable_reason())
def test_delegated_contexts_over_the_client(klondike: Running, pkis: dict[str, Pki]) -> None:
    client = SignClient(klondike.sock)
    for name in ("rsa", "p256"):
        ctx = delegate.delegated_context(pkis[name].cert, client.sign)
        assert delegate.self_test(ctx) == ["TLSv1_2", "TLSv1_3"]
    assert client.calls == 4


def test_threads_share_one_client(klondike: Running) -> None:
    keystore = klondike.proc.keys
    assert keystore is not None
    client = SignClient(klondike.sock)
    h = keystore.names["rsa"]
    blocks = [_pss(i) for i in range(8)]
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        results[i] = client.sign(h, "rsa_priv_enc", blocks[i], 3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == keystore.sign(h, "rsa_priv_enc", blocks[i], 3) for i in range(8))


def test_a_dead_klondike_breaks_the_client_for_good() -> None:
    a, b = socket.socketpair()
    b.close()
    client = SignClient(a)
    with pytest.raises(SignFailed, match="broken"):
        client.sign("x" * 64, "rsa_priv_enc", b"", 3)
    with pytest.raises(SignFailed, match="unusable"):
        client.sign("x" * 64, "rsa_priv_enc", b"", 3)


def test_a_bad_key_stops_klondike(pkis: dict[str, Pki]) -> None:
    config = Config()
    config.pkis["bad"] = ConfigPki("bad", cert=pkis["other"].cert, key=pkis["rsa"].key)
    proc = Klondike(common.Options(statedir="/nonexistent"), config)
    with pytest.raises(ConfigError, match="does not match"):
        asyncio.run(proc.setup())



def _frame(sock: socket.socket, reqid: int, payload: object) -> tuple[int, object]:
    """Play a hostile pony on the signing line: one raw frame out, the reply's flags and body."""
    body = json.dumps(payload).encode()
    sock.sendall(HEADER.pack(len(body), reqid, 0, 0) + body)
    sock.settimeout(10)
    header = b""
    while len(header) < HEADER.size:
        header += sock.recv(HEADER.size - len(header))
    length, rid, flags, nfds = HEADER.unpack(header)
    assert rid == reqid and nfds == 0 and flags & FLAG_REPLY
    data = b""
    while len(data) < length:
        data += sock.recv(length - len(data))
    return flags, m.decode(json.loads(data))


def test_a_pony_asking_to_decrypt_is_refused_and_logged(
        klondike: Running, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log, "_fast", None)  # through logging, where caplog sees it
    keystore = klondike.proc.keys
    assert keystore is not None
    h = keystore.names["rsa"]
    n = keystore.sign(h, "rsa_priv_enc", _pss(1), 3)  # any modulus-sized value below n
    b64 = base64.b64encode(n).decode()
    forged: list[dict[str, object]] = [
        {"t": "Sign", "cert_hash": h, "op": "rsa_priv_dec", "data_b64": b64, "padding": 3},
        {"t": "Sign", "cert_hash": h, "op": "rsa_priv_dec", "data_b64": b64, "padding": 1},
        # the same decryption asked as a raw "signature" of a ciphertext
        {"t": "Sign", "cert_hash": h, "op": "rsa_priv_enc", "data_b64": b64, "padding": 3},
        {"t": "Sign", "cert_hash": h, "op": "rsa_priv_enc", "data_b64": b64, "padding": 4},
        {"t": "Sign", "cert_hash": "../../etc/passwd", "op": "rsa_priv_enc", "data_b64": b64,
         "padding": 3},
        {"t": "Sign", "cert_hash": h, "op": ["rsa_priv_enc"], "data_b64": b64, "padding": 3},
        {"t": "Sign", "cert_hash": h, "op": "rsa_priv_enc", "data_b64": b64, "padding": "3"},
        {"t": "Sign", "cert_hash": h, "op": "rsa_priv_enc", "data_b64": "A" * 100000,
         "padding": 3},
        {"t": "Sign", "cert_hash": h, "op": "rsa_priv_enc", "data_b64": "%%%", "padding": 3},
    ]
    with caplog.at_level(logging.INFO):
        for i, payload in enumerate(forged, 1):
            flags, reply = _frame(klondike.sign_line, i, payload)
            assert flags & FLAG_ERROR and isinstance(reply, m.Error), payload
            assert not isinstance(reply, m.Signed)
        # the line still serves what TLS needs
        flags, reply = _frame(klondike.sign_line, 99, m.encode(m.Sign(
            cert_hash=h, op="rsa_priv_enc", padding=3,
            data_b64=base64.b64encode(_pss(2)).decode())))
        assert not flags & FLAG_ERROR and isinstance(reply, m.Signed)
    refused = [r.getMessage() for r in caplog.records if "sign-refused" in r.getMessage()]
    assert sum("op=rsa_priv_dec" in line and "operation not offered" in line
               for line in refused) == 2
    assert sum("malformed request" in line for line in refused) == 4
    failed = [r.getMessage() for r in caplog.records if "sign-failed" in r.getMessage()]
    assert len(failed) == 2 and "not a PSS encoding" in failed[0]
    assert klondike.proc.stats()["klondike.sign.refused"] == 7
    assert klondike.proc.stats()["klondike.sign.errors"] == 9
